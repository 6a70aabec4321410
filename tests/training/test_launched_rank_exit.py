"""How a launched rank ends (ernie_vilg2/training/distributed.py: end_launched_rank): with its
exit code, after the atexit handlers ran and the logs and streams were flushed, and without C++
static destruction, where Paddle's TCP-store server threads aborted ranks that had finished."""
import subprocess
import sys

from helpers.paths import TOOL_ENV

SCRIPT = """
import atexit, logging, sys
from ernie_vilg2.training.distributed import end_launched_rank
log = logging.getLogger("rank")
log.addHandler(logging.FileHandler(sys.argv[1]))
log.warning("trained")
atexit.register(lambda: print("atexit ran"))  # buffered too
sys.stdout.write("unflushed line")  # no newline, no flush: os._exit alone would lose it
end_launched_rank(3)
print("not reached")
"""


def test_a_launched_rank_exits_with_its_code_after_the_exit_handlers_and_flushes(tmp_path):
    log = tmp_path / "rank.log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True,
                          env=TOOL_ENV, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "unflushed lineatexit ran\n"
    assert log.read_text() == "trained\n"
