"""PaddleNLP with the rest of its package __init__ deferred (ernie_vilg2/utils/paddlenlp_import.py):
ERNIE and PPDiffusers import without PaddleNLP's taskflow, server and datasets stacks, every name
of the real package is still reachable, the opt-out and a failing lean import give the full one.
Each case is a fresh process: the deferral acts on the first ``import paddlenlp``."""
import json
import subprocess
import sys

import pytest

from helpers.paths import TOOL_ENV

UNUSED = ["paddlenlp.taskflow", "paddlenlp.server", "paddlenlp.datasets", "pandas", "pyarrow", "sklearn", "fastapi"]
PROBE = """
import json, sys, warnings
warnings.simplefilter("always")
from ernie_vilg2.utils import paddlenlp_import
%s
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process
deferred = tune_cpu_process().paddlenlp_deferred
with warnings.catch_warnings(record=True) as caught:
    import ppdiffusers
    from paddlenlp.transformers import ErnieModel
    import paddlenlp
unused = [m for m in %r if m in sys.modules]
version = paddlenlp.__version__
from paddlenlp import Taskflow  # the rest of the __init__, on first use
try:
    paddlenlp.no_such_name
    missing = "no error"
except AttributeError as exc:
    missing = str(exc)
print(json.dumps({"deferred": deferred, "unused_before": unused, "version": version,
                  "taskflow": Taskflow.__module__, "server": paddlenlp.SimpleServer.__name__,
                  "missing": missing, "warnings": [str(w.message) for w in caught if "LEAN" in str(w.message)]}))
"""


def _probe(env=None, before=""):
    done = subprocess.run([sys.executable, "-c", PROBE % (before, UNUSED)], capture_output=True, text=True,
                          env={**TOOL_ENV, **(env or {})}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def full():
    return _probe({"ERNIE_VILG2_LEAN_IMPORT": "0"})


def test_the_opt_out_imports_paddlenlp_whole(full):
    assert not full["deferred"]
    assert set(full["unused_before"]) == set(UNUSED)  # what the lean import leaves out


def test_ernie_imports_without_the_unused_stacks_and_every_name_stays_reachable(full):
    lean = _probe()
    assert lean["deferred"] and lean["unused_before"] == [] and lean["warnings"] == []
    assert lean["version"] == full["version"]  # the header of the real __init__ ran
    assert lean["taskflow"] == full["taskflow"] == "paddlenlp.taskflow.taskflow"
    assert lean["server"] == full["server"] == "SimpleServer"
    assert "no_such_name" in lean["missing"]


def test_a_paddlenlp_the_lean_import_does_not_fit_is_imported_whole_with_a_warning(full):
    broken = _probe(before="paddlenlp_import.FIRST_MODULE = 'paddlenlp.no_such_module'")
    assert broken["deferred"] and len(broken["warnings"]) == 1 and "imported whole" in broken["warnings"][0]
    assert set(broken["unused_before"]) == set(UNUSED)
    assert broken["taskflow"] == full["taskflow"] and broken["version"] == full["version"]
