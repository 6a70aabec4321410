"""benchmarks/data_loader.py's memory probe: each fresh process reports its own peak RSS."""
import os
import subprocess
import sys

from helpers.paths import REPO_ROOT

BENCHMARKS = os.path.join(REPO_ROOT, "benchmarks")


def test_a_child_reports_its_own_peak_not_its_parents():
    """On Linux getrusage's ru_maxrss keeps the peak of the image before exec, so a child started
    by a process holding 256 MiB would report at least that; the probe must not."""
    held = bytearray(256 << 20)
    held[::4096] = b"\1" * len(held[::4096])  # touched: resident
    code = f"import sys; sys.path.insert(0, {BENCHMARKS!r}); import data_loader; print(data_loader.peak_rss_kib())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 128 << 10  # KiB: the imports of numpy and Pillow, far below the parent's 256 MiB
