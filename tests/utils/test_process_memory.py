"""peak_rss_mib: a child reports its own peak, not its parent's (getrusage's ru_maxrss, which
on Linux keeps the peak of the image before exec, would report at least the parent's)."""
import subprocess
import sys

from helpers.paths import TOOL_ENV


def test_a_child_reports_its_own_peak_not_its_parents():
    held = bytearray(512 << 20)
    held[::4096] = b"\1" * len(held[::4096])  # touched: resident
    code = "from ernie_vilg2.utils.process_memory import peak_rss_mib; print(peak_rss_mib())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=TOOL_ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 1 < float(done.stdout) < 128  # MiB: the interpreter, far below the parent's 512 MiB
    grow = "import ernie_vilg2.utils.process_memory as m; b = bytearray(300 << 20); b[::4096] = b'1' * len(b[::4096]); print(m.peak_rss_mib())"
    done = subprocess.run([sys.executable, "-c", grow], capture_output=True, text=True, env=TOOL_ENV, timeout=120)
    assert 300 < float(done.stdout) < 450  # its own 300 MiB counted
