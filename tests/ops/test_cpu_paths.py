"""The C++ CPU operators' code paths (ERNIE_VILG2_CPU_ISA) and cache sizes (ernie_vilg2/ops/cpu_dispatch.cc).

The path is chosen once per process, so each forced path runs the operators' reference tests
(tests/ops/test_cpu_ops.py: attention and convolution, tests/ops/test_cpu_layer_norm.py: layer
norm, tests/ops/test_cpu_group_norm.py: group norm, tests/ops/test_cpu_geglu.py: GEGLU; against
float64, forward and backward) in a process of its own."""
import os
import subprocess
import sys

import pytest

from ernie_vilg2 import ops
from ernie_vilg2.utils.isa_caps import PATHS

from helpers.cpu_ops import require_cpu_ops
from helpers.paths import REPO_ROOT

CPU_OPS_TESTS = [os.path.join(REPO_ROOT, "tests", "ops", name)
                 for name in ("test_cpu_ops.py", "test_cpu_layer_norm.py", "test_cpu_group_norm.py",
                              "test_cpu_geglu.py")]
GENERIC, AVX2, AVX512 = (1 << PATHS.index(name) for name in PATHS)


def run_python(code: str, isa: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ERNIE_VILG2_CPU_ISA": isa, "GLOG_minloglevel": "2"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env=env)


@pytest.mark.parametrize("isa", PATHS)
def test_each_path_equals_the_reference(isa):
    require_cpu_ops()
    if isa not in ops.cpu_ops_config()["paths"]:
        pytest.skip(f"this CPU or build has no {isa} path")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CPU_OPS_TESTS,
         "-k", "equals_the_reference or runs_the_path"],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT, env={**env, "ERNIE_VILG2_CPU_ISA": isa})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


def test_an_unknown_path_is_a_one_line_error():
    require_cpu_ops()
    done = run_python("import paddle\nfrom ernie_vilg2 import ops\n"
                      "try:\n    ops.cpu_attention(*[paddle.ones([1, 8, 1, 4])] * 3)\n"
                      "except ops.CpuIsaError as exc:\n    print(exc)\n", "avx3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines() == [
        "ERNIE_VILG2_CPU_ISA=avx3: not one of auto, generic, avx2, avx512"]


@pytest.mark.parametrize("asked,cpu,build,expected,message", [
    ("", GENERIC | AVX2 | AVX512, GENERIC | AVX2 | AVX512, "avx512", ""),
    ("auto", GENERIC | AVX2, GENERIC | AVX2 | AVX512, "avx2", ""),
    ("auto", GENERIC | AVX2 | AVX512, GENERIC | AVX2, "avx2", ""),  # a compiler without AVX-512
    (None, GENERIC, GENERIC, "generic", ""),  # not x86
    ("generic", GENERIC | AVX2 | AVX512, GENERIC | AVX2 | AVX512, "generic", ""),
    ("avx2", GENERIC | AVX2 | AVX512, GENERIC | AVX2 | AVX512, "avx2", ""),
    ("avx512", GENERIC | AVX2, GENERIC | AVX2 | AVX512, None,
     "ERNIE_VILG2_CPU_ISA=avx512: this CPU lacks AVX-512 (F, BW, VL and DQ); the paths here: avx2, generic"),
    ("avx2", GENERIC, GENERIC | AVX2 | AVX512, None,
     "ERNIE_VILG2_CPU_ISA=avx2: this CPU lacks AVX2 and FMA; the paths here: generic"),
    ("avx512", GENERIC | AVX2 | AVX512, GENERIC | AVX2, None,
     "ERNIE_VILG2_CPU_ISA=avx512: the operators were built without that path (the compiler cannot emit it); "
     "the paths here: avx2, generic"),
    ("AVX2", GENERIC | AVX2, GENERIC | AVX2, None, "ERNIE_VILG2_CPU_ISA=AVX2: not one of auto, generic, avx2, avx512"),
])
def test_the_choice_of_a_path(asked, cpu, build, expected, message):
    """A path the CPU (or the build) lacks is refused, never replaced by another."""
    require_cpu_ops()
    error = bytes(300)
    isa = ops._library().ernie_vilg2_choose_cpu_isa(None if asked is None else asked.encode(), cpu, build,
                                                    error, len(error))
    assert (PATHS[isa] if isa >= 0 else None) == expected
    assert error.rstrip(b"\0").decode() == message


def fake_sysfs(root, caches):
    """A /sys/devices/system/cpu/cpu0/cache folder: (level, type, size) per index."""
    for index, (level, kind, size) in enumerate(caches):
        folder = root / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(f"{value}\n")
    return str(root)


@pytest.mark.parametrize("caches,expected", [
    ([(1, "Data", "48K"), (1, "Instruction", "64K"), (2, "Unified", "2048K"), (3, "Unified", "491520K")],
     (48 << 10, 2 << 20, "sysfs", "sysfs")),
    ([(1, "Instruction", "32K"), (1, "Data", "32K"), (2, "Unified", "1M")], (32 << 10, 1 << 20, "sysfs", "sysfs")),
    ([(1, "Data", "64K")], (64 << 10, 512 << 10, "sysfs", "default")),  # no L2 listed
    ([(1, "Data", "garbage"), (2, "Unified", "")], (32 << 10, 512 << 10, "default", "default")),
    ([], (32 << 10, 512 << 10, "default", "default")),  # an empty folder (no sysfs in a container)
])
def test_cache_sizes_from_sysfs_else_the_defaults(tmp_path, caches, expected):
    require_cpu_ops()
    got = ops.cache_sizes(fake_sysfs(tmp_path, caches), use_sysconf=False)
    assert (got["l1d_bytes"], got["l2_bytes"], got["l1d_source"], got["l2_source"]) == expected


def test_cache_sizes_of_this_machine():
    """sysconf first (glibc answers from CPUID); the process sizes its blocks from the same reading."""
    require_cpu_ops()
    read = ops.cache_sizes("/sys/devices/system/cpu/cpu0/cache")
    config = ops.cpu_ops_config()
    assert {k: config[k] for k in read} == read
    assert read["l1d_bytes"] >= 16 << 10 and read["l2_bytes"] >= 128 << 10
    assert ops.cache_sizes(None, use_sysconf=False)["l2_source"] == "default"


@pytest.mark.parametrize("l2,expected", [(2 << 20, 128 << 10), (512 << 10, 128 << 10), (256 << 10, 64 << 10),
                                         (32 << 10, 16 << 10)])
def test_attention_blocks_are_a_quarter_of_l2_at_most_128_kib(l2, expected):
    require_cpu_ops()
    assert ops._library().ernie_vilg2_attention_block_bytes(l2) == expected
