"""What the benchmarks print about the machine (ernie_vilg2/utils/cpu_report.py), from a faked
/proc/cpuinfo and sysfs."""
import os

from ernie_vilg2.utils import cpu_report

XEON = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\ncpu MHz\t\t: 2600.000\n"
        "flags\t\t: fpu sse2 sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512dq amx_tile\n\n"
        "processor\t: 1\nmodel name\t: another\n")
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 1500.000\nflags\t\t: sse4_2 avx avx2 fma\n"


def write(folder, files):
    for name, text in files.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")
    return str(folder)


def test_the_first_processor_of_cpuinfo(tmp_path):
    info = cpu_report.read_cpuinfo(write(tmp_path, {"cpuinfo": XEON}) + "/cpuinfo")
    assert cpu_report.cpu_model(info) == "Intel(R) Xeon(R) Processor"
    assert cpu_report.vector_extensions(info) == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                                                  "avx512dq", "amx_tile"]
    assert cpu_report.read_cpuinfo(str(tmp_path / "missing")) == {}


def test_cache_sizes_per_instance_from_sysfs(tmp_path):
    caches = write(tmp_path, {"index0/level": "1", "index0/type": "Data", "index0/size": "48K",
                              "index1/level": "1", "index1/type": "Instruction", "index1/size": "64K",
                              "index2/level": "2", "index2/type": "Unified", "index2/size": "2048K",
                              "index3/level": "3", "index3/type": "Unified", "index3/size": "480M"})
    assert cpu_report.cache_sizes(caches) == {"L1d": 48 << 10, "L1i": 64 << 10, "L2": 2 << 20, "L3": 480 << 20}
    assert cpu_report.cache_sizes(str(tmp_path / "none")) == {}


def test_the_clock_prefers_cpufreqs_maximum(tmp_path):
    info = cpu_report.read_cpuinfo(write(tmp_path, {"cpuinfo": XEON}) + "/cpuinfo")
    cpufreq = write(tmp_path / "cpufreq", {"cpuinfo_max_freq": "3800000"})
    assert cpu_report.clock_mhz(info, cpufreq) == (3800.0, "cpufreq maximum")
    assert cpu_report.clock_mhz(info, str(tmp_path / "none")) == (2600.0, "/proc/cpuinfo, current")
    assert cpu_report.clock_mhz({}, str(tmp_path / "none")) == (None, "unknown")


def test_the_peak_is_lanes_times_two_fma_units_times_two_flops_times_the_clock(tmp_path):
    xeon = cpu_report.vector_extensions(cpu_report.read_cpuinfo(write(tmp_path, {"x": XEON}) + "/x"))
    epyc = cpu_report.vector_extensions(cpu_report.read_cpuinfo(write(tmp_path, {"e": EPYC}) + "/e"))
    assert cpu_report.peak_gflops_per_core(xeon, 2600.0) == 16 * 2 * 2 * 2.6
    assert cpu_report.peak_gflops_per_core(epyc, 1500.0) == 8 * 2 * 2 * 1.5
    assert cpu_report.peak_gflops_per_core(["sse4_2"], 1000.0) == 4 * 2 * 2 * 1.0
    assert cpu_report.peak_gflops_per_core(xeon, None) is None


def test_the_lines(tmp_path):
    info = cpu_report.read_cpuinfo(write(tmp_path, {"cpuinfo": XEON}) + "/cpuinfo")
    line = cpu_report.cpu_line(info, {"L1d": 48 << 10, "L2": 2 << 20}, (2600.0, "/proc/cpuinfo, current"))
    assert line == (f"CPU: Intel(R) Xeon(R) Processor, {os.cpu_count()} logical CPUs; vector extensions: sse4_2 avx "
                    "avx2 fma avx512f avx512bw avx512vl avx512dq amx_tile; caches: L1d 48 KiB, L2 2 MiB; clock 2,600 MHz "
                    "(/proc/cpuinfo, current); float32 peak 166.4 GFLOP/s per core (512-bit FMA x 2 units assumed x "
                    "2 flops x clock)")
    config = {"isa": "avx2", "requested": "avx2", "paths": ["avx512", "avx2", "generic"], "l1d_bytes": 48 << 10,
              "l1d_source": "sysconf", "l2_bytes": 2 << 20, "l2_source": "sysfs", "attention_block_bytes": 128 << 10,
              "mkl": "AVX2", "onednn": "avx2"}
    assert cpu_report.ops_line(config) == (
        "C++ CPU operators: avx2 row loops (ERNIE_VILG2_CPU_ISA=avx2; paths here: avx512, avx2, generic); L1d 48 KiB "
        "(sysconf), L2 2 MiB (sysfs): attention blocks of 128 KiB of scores; MKL AVX2, oneDNN avx2")
    assert "not in use" in cpu_report.ops_line(None)
