"""The process-wide CPU settings: importing the package sets none of them; the entry points
apply them through one call (ernie_vilg2/utils/cpu_tuning.py), each with its opt-out and never
over the user's own setting."""
import json
import os
import subprocess
import sys

import pytest

from ernie_vilg2.utils import executor_gc, isa_caps
from ernie_vilg2.utils.cpu_tuning import CpuTuning, tune_cpu_process

from helpers.paths import REPO_ROOT as REPO

# The entry points that own their process (tools, the deployment runner); each applies the
# settings first thing in main(), so even --help shows them.
ENTRY_POINTS = ["tools/branch_experts.py", "tools/compare.py", "tools/convert_fid_inception.py", "tools/evaluate.py",
                "tools/export_model.py", "tools/extract_knowledge.py", "tools/generate.py", "tools/judge_accuracy.py",
                "tools/plan.py", "tools/prepare_data.py", "tools/train.py", "tools/train_detector.py",
                "deploy/python/infer.py", "deploy/python/serve.py"]

AMD_CPUINFO = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
# Runs the given code on a CPU that reads as an AMD one with AVX2 and FMA (where MKL's setting
# applies), with ctypes.CDLL recording each libc function looked up (mallopt is only reached
# through it), then prints the environment's changes, the MKL setting and the lookups.
PROBE = """
import builtins, ctypes, io, json, os, sys

looked_up = []
real_open = builtins.open


def amd_open(file, *args, **kwargs):
    if file == "/proc/cpuinfo":
        return io.StringIO(%r)
    return real_open(file, *args, **kwargs)


builtins.open = amd_open


class Recording(ctypes.CDLL):
    def __getattr__(self, name):
        if "libc" in str(self._name):
            looked_up.append(name)
        return super().__getattr__(name)


ctypes.CDLL = Recording
environ = dict(os.environ)
try:
    exec(sys.argv[1])
except SystemExit:
    pass
changed = sorted(k for k in set(environ) | set(os.environ) if environ.get(k) != os.environ.get(k))
print(json.dumps({"changed": changed, "mkl": os.environ.get("MKL_DEBUG_CPU_TYPE"), "libc": looked_up}))
""" % AMD_CPUINFO


def _probe(code: str) -> dict:
    base = {k: v for k, v in os.environ.items()
            if k not in ("MKL_DEBUG_CPU_TYPE", "ERNIE_VILG2_MKL_AVX2", "ERNIE_VILG2_MALLOC_TUNING",
                         "ERNIE_VILG2_CPU_ISA", executor_gc.VARIABLE)
            and not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", PROBE, code], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**base, "GLOG_minloglevel": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_package_changes_nothing_in_the_process():
    result = _probe("import ernie_vilg2, ernie_vilg2.cli_utils, ernie_vilg2.data, ernie_vilg2.deploy, "
                    "ernie_vilg2.pipelines, ernie_vilg2.utils.cpu_tuning; ernie_vilg2.ConfigError")
    assert result == {"changed": [], "mkl": None, "libc": []}


def test_one_call_applies_the_settings():
    result = _probe("from ernie_vilg2.utils.cpu_tuning import tune_cpu_process; print(tune_cpu_process())")
    assert result["mkl"] == "5" and result["changed"] == ["FLAGS_eager_delete_tensor_gb", "MKL_DEBUG_CPU_TYPE"]
    assert "mallopt" in result["libc"]


@pytest.mark.parametrize("paddle_first", [False, True])
def test_the_executor_frees_tensors_in_batches(paddle_first):
    """Paddle reads FLAGS_* from the environment at its import; imported before, it is told directly."""
    code = ("import paddle; " if paddle_first else "") + (
        "from ernie_vilg2.utils.cpu_tuning import tune_cpu_process; tune_cpu_process(); import paddle; "
        "print(paddle.get_flags(['FLAGS_eager_delete_tensor_gb']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={k: v for k, v in os.environ.items() if k != executor_gc.VARIABLE})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "{'FLAGS_eager_delete_tensor_gb': 0.005}"


@pytest.mark.parametrize("environ", [
    {"ERNIE_VILG2_MKL_AVX2": "0", "ERNIE_VILG2_MALLOC_TUNING": "0", "ERNIE_VILG2_LEAN_IMPORT": "0",  # opted out
     "FLAGS_eager_delete_tensor_gb": "0"},
    {"MKL_DEBUG_CPU_TYPE": "2", "MALLOC_MMAP_THRESHOLD_": "131072", "ERNIE_VILG2_LEAN_IMPORT": "0",  # the user's own
     "FLAGS_eager_delete_tensor_gb": "0.1"},
])
def test_opt_outs_and_the_users_settings_are_kept(environ):
    given = dict(environ)
    assert tune_cpu_process(environ) == CpuTuning(mkl_avx2=False, malloc_thresholds=False, library_isa_caps=False,
                                                  paddlenlp_deferred=False, executor_gc_batched=False)
    assert environ == given


@pytest.mark.parametrize("environ,expected", [
    ({"ERNIE_VILG2_CPU_ISA": "generic"}, {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}),
    ({"ERNIE_VILG2_CPU_ISA": "avx2"}, {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ({"ERNIE_VILG2_CPU_ISA": "avx512"}, {}),  # our widest loops; the libraries keep theirs (AMX)
    ({"ERNIE_VILG2_CPU_ISA": "auto"}, {}),
    ({"ERNIE_VILG2_CPU_ISA": "avx3"}, {}),  # refused by the operators at their first call
    ({}, {}),
    # the user's own settings (oneDNN's under its former name too)
    ({"ERNIE_VILG2_CPU_ISA": "avx2", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "DNNL_MAX_CPU_ISA": "SSE41"}, {}),
])
def test_a_forced_code_path_caps_mkl_and_onednn(environ, expected):
    given = dict(environ)
    assert isa_caps.cap_libraries(environ) is bool(expected)
    assert environ == {**given, **expected}


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_entry_points_apply_them_first(script):
    path = os.path.join(REPO, script)
    result = _probe(f"import runpy; sys.argv = [{path!r}, '--help']; runpy.run_path({path!r}, run_name='__main__')")
    assert result["mkl"] == "5" and "mallopt" in result["libc"] and "FLAGS_eager_delete_tensor_gb" in result["changed"]
