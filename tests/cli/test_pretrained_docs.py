"""docs/pretrained.md's commands run as written on the fixture folder (in a scratch folder that
sees the repository's configs/, tests/ and tools/, so that their outputs stay out of it)."""
import os
import re
import subprocess
import sys

import pytest

from helpers.paths import REPO_ROOT

FENCE = re.compile(r"^```bash\n(.*?)^```$", re.M | re.S)
pytestmark = pytest.mark.slow


def test_the_pages_commands_run_as_written(tmp_path):
    with open(os.path.join(REPO_ROOT, "docs", "pretrained.md"), encoding="utf-8") as f:
        blocks = FENCE.findall(f.read())
    assert len(blocks) == 3  # a Stable-Diffusion-style folder; with a PaddleNLP ERNIE; LoRA experts
    for name in ("configs", "tests", "tools"):
        os.symlink(os.path.join(REPO_ROOT, name), tmp_path / name)
    python_dir = os.path.dirname(sys.executable)  # `python` in the commands: this interpreter
    env = {**os.environ, "GLOG_minloglevel": "2", "PYTHONPATH": REPO_ROOT,
           "PATH": python_dir + os.pathsep + os.environ.get("PATH", "")}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(blocks)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "output"
    assert sorted(os.listdir(out / "tiny_pretrained" / "diffusers"))[:2] == ["expert-00", "expert-01"]
    assert os.path.isfile(out / "branched" / "model_index.json")
    assert os.path.isfile(out / "sd_ernie" / "experts" / "text_encoder" / "config.json")
    with open(out / "sd_lora" / "experts" / "unet" / "config.json", encoding="utf-8") as f:
        assert '"_class_name": "LoRAExperts"' in f.read()
    assert os.path.isfile(out / "sd_lora" / "grid.png")
    assert os.path.isfile(out / "sd_lora" / "export" / "manifest.json")
