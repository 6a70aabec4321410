"""What a benchmark's figures were measured on, printed with every table: the CPU's model,
vector extensions, caches, clock and float32 peak, and the code paths of the C++ operators.

The peak of one core is vector lanes x 2 FMA units x 2 flops x clock: the unit count is an
assumption (two on the AVX2 and AVX-512 cores of recent server CPUs; some Xeons have one
512-bit unit), and the clock is cpufreq's maximum where the kernel exposes it, else
/proc/cpuinfo's current "cpu MHz" (a virtual machine's nominal clock). Pure Python; only
:func:`machine_report` loads Paddle (through :func:`ernie_vilg2.ops.cpu_ops_config`).
"""
from __future__ import annotations

import os
import platform
import subprocess
from typing import Optional, Tuple

# The extensions that decide float32 and matrix speed (x86, then Arm), in this order.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")
FMA_UNITS = 2
SYSFS_CPU = "/sys/devices/system/cpu"


def read_cpuinfo(path: str = "/proc/cpuinfo") -> dict:
    """The first processor's fields of /proc/cpuinfo ({} where it cannot be read)."""
    fields = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model(cpuinfo: dict) -> str:
    """/proc/cpuinfo's model name, else lscpu's (Arm), else the platform's processor string."""
    if cpuinfo.get("model name"):
        return cpuinfo["model name"]
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def vector_extensions(cpuinfo: dict) -> list:
    flags = set((cpuinfo.get("flags") or cpuinfo.get("Features") or "").split())
    return [flag for flag in VECTOR_FLAGS if flag in flags]


def _first_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip()
    except OSError:
        return ""


def cache_sizes(cache_dir: str = os.path.join(SYSFS_CPU, "cpu0", "cache")) -> dict:
    """{"L1d": bytes, "L1i": ..., "L2": ..., "L3": ...} of one instance each, from sysfs."""
    sizes = {}
    for index in range(32):
        folder = os.path.join(cache_dir, f"index{index}")
        level, kind, size = (_first_line(os.path.join(folder, name)) for name in ("level", "type", "size"))
        if not (level and size[:-1].isdigit() and size[-1] in "KM"):
            continue
        name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
        sizes.setdefault(name, int(size[:-1]) << (10 if size[-1] == "K" else 20))
    return sizes


def clock_mhz(cpuinfo: dict,
              cpufreq_dir: str = os.path.join(SYSFS_CPU, "cpu0", "cpufreq")) -> Tuple[Optional[float], str]:
    """(MHz, where it came from): cpufreq's maximum, else /proc/cpuinfo's current clock."""
    khz = _first_line(os.path.join(cpufreq_dir, "cpuinfo_max_freq"))
    if khz.isdigit():
        return int(khz) / 1000.0, "cpufreq maximum"
    try:
        return float(cpuinfo["cpu MHz"]), "/proc/cpuinfo, current"
    except (KeyError, ValueError):
        return None, "unknown"


def vector_bits(extensions: list) -> int:
    return 512 if "avx512f" in extensions else 256 if "avx2" in extensions or "avx" in extensions else 128


def peak_gflops_per_core(extensions: list, mhz: Optional[float]) -> Optional[float]:
    """float32 FLOP/s of one core: lanes x FMA units x 2 x clock (None without a clock)."""
    if not mhz:
        return None
    return vector_bits(extensions) // 32 * FMA_UNITS * 2 * mhz / 1000.0


def core_peak_gflops() -> Optional[float]:
    """This machine's float32 peak per core, GFLOP/s (None without a clock)."""
    cpuinfo = read_cpuinfo()
    return peak_gflops_per_core(vector_extensions(cpuinfo), clock_mhz(cpuinfo)[0])


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20:,} MiB" if nbytes >= 1 << 20 and nbytes % (1 << 20) == 0 else f"{nbytes >> 10:,} KiB"


def cpu_line(cpuinfo: Optional[dict] = None, caches: Optional[dict] = None,
             clock: Optional[Tuple[Optional[float], str]] = None) -> str:
    """One line: model, logical CPUs, vector extensions, caches, clock and float32 peak per core."""
    cpuinfo = read_cpuinfo() if cpuinfo is None else cpuinfo
    caches = cache_sizes() if caches is None else caches
    mhz, source = clock_mhz(cpuinfo) if clock is None else clock
    extensions = vector_extensions(cpuinfo)
    peak = peak_gflops_per_core(extensions, mhz)
    parts = [f"CPU: {cpu_model(cpuinfo)}, {os.cpu_count()} logical CPUs",
             "vector extensions: " + (" ".join(extensions) or "none listed"),
             "caches: " + (", ".join(f"{name} {_size(n)}" for name, n in sorted(caches.items())) or "unknown"),
             f"clock {mhz:,.0f} MHz ({source})" if mhz else "clock unknown"]
    if peak:
        parts.append(f"float32 peak {peak:,.1f} GFLOP/s per core ({vector_bits(extensions)}-bit FMA x "
                     f"{FMA_UNITS} units assumed x 2 flops x clock)")
    return "; ".join(parts)


def ops_line(config: Optional[dict]) -> str:
    """One line from :func:`ernie_vilg2.ops.cpu_ops_config` (None: the operators are not in use)."""
    if config is None:
        return "C++ CPU operators: not in use (not built, or ERNIE_VILG2_CPU_OPS=0)"
    return (f"C++ CPU operators: {config['isa']} row loops (ERNIE_VILG2_CPU_ISA={config['requested']}; paths here: "
            f"{', '.join(config['paths'])}); L1d {_size(config['l1d_bytes'])} ({config['l1d_source']}), "
            f"L2 {_size(config['l2_bytes'])} ({config['l2_source']}): attention blocks of "
            f"{_size(config['attention_block_bytes'])} of scores; MKL {config['mkl']}, oneDNN {config['onednn']}")


def machine_report() -> str:
    """The CPU line and the operators' line of this process (loads Paddle and the operators)."""
    from ernie_vilg2 import ops

    return cpu_line() + "\n" + ops_line(ops.cpu_ops_config())
