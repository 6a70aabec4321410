"""Build the custom CPU operators (``make install`` runs this).

    python -m ernie_vilg2.ops.build [--verbose]

Needs a C++17 compiler and two libraries that Paddle's CPU wheel ships in paddle/libs: MKL
(libmklml_intel.so, the BLAS behind Paddle's own matmul) and oneDNN (libdnnl.so.3).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import sysconfig

from ernie_vilg2 import ops
from ernie_vilg2.errors import ErnieViLG2Error


class BuildError(ErnieViLG2Error, RuntimeError):
    pass


def compiler() -> str:
    """The C++ compiler setuptools will call (CXX, else Python's configured one)."""
    cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    return cxx.split()[0]


# A function of the operators' AVX-512 path: compiled and assembled, or the path is left out.
AVX512_PROBE = """
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
float dot(const float* x, const float* y, long n) {
  float s = 0.0f;
  for (long j = 0; j < n; ++j) s += x[j] * y[j];
  return s;
}
"""


def avx512_flags(cxx: str) -> list:
    """[] where ``cxx`` (and its assembler) can emit AVX-512 or the target is not x86, else
    the define that builds the operators without their AVX-512 path."""
    import platform
    import subprocess
    import tempfile

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return []
    with tempfile.TemporaryDirectory(prefix="ernie_vilg2_probe_") as tmp:
        source = os.path.join(tmp, "probe.cc")
        with open(source, "w", encoding="utf-8") as f:
            f.write(AVX512_PROBE)
        try:
            done = subprocess.run([cxx, "-O3", "-c", source, "-o", os.path.join(tmp, "probe.o")],
                                  capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return ["-DERNIE_VILG2_NO_AVX512"]
    return [] if done.returncode == 0 else ["-DERNIE_VILG2_NO_AVX512"]


def paddle_libs_dir() -> str:
    import paddle

    return os.path.join(os.path.dirname(paddle.__file__), "libs")


def build(verbose: bool = False) -> str:
    """Compile the operators into ops.BUILD_DIR; return the library path."""
    if shutil.which(compiler()) is None:
        raise BuildError(f"no C++ compiler: {compiler()!r} not found (install g++, or set CXX)")
    libs = paddle_libs_dir()
    for lib, what in (("libmklml_intel.so", "MKL, which the attention operator calls"),
                      ("libdnnl.so.3", "oneDNN, which the convolution operator calls")):
        if not os.path.isfile(os.path.join(libs, lib)):
            raise BuildError(f"{libs}/{lib} not found: this Paddle wheel ships no {what}")
    from paddle.utils.cpp_extension import load

    os.makedirs(ops.BUILD_DIR, exist_ok=True)
    for stale in (ops.STAMP_FILE, ops.library_path()):  # setuptools would keep a library whose headers changed
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)
    try:  # quiet: Paddle's progress prints (the compiler's errors reach stderr anyway)
        with contextlib.redirect_stdout(sys.stdout if verbose else io.StringIO()):
            load(name=ops.LIBRARY, sources=ops.SOURCES, build_directory=ops.BUILD_DIR,
                 # OpenMP from MKL's runtime (libiomp5), not GCC's: one thread pool for our loops
                 # and MKL's calls; two runtimes fight over the cores.
                 extra_cxx_cflags=["-O3", "-fopenmp"] + avx512_flags(compiler()),
                 extra_ldflags=[f"-L{libs}", "-l:libmklml_intel.so", "-l:libiomp5.so", "-l:libdnnl.so.3",
                                f"-Wl,-rpath,{libs}"],
                 verbose=verbose)
    except Exception as exc:  # the compiler's own output above says why
        raise BuildError(f"compiling {', '.join(ops.SOURCES)} failed ({exc}); rerun with --verbose") from None
    with open(ops.STAMP_FILE, "w", encoding="utf-8") as f:
        json.dump(ops.build_stamp(), f)
    return ops.library_path()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--verbose", action="store_true", help="show the compiler's commands and output")
    args = p.parse_args(argv)
    try:
        path = build(args.verbose)
    except BuildError as exc:
        print(f"error: CPU operators: {exc}", file=sys.stderr)
        return 1
    print(f"built {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
