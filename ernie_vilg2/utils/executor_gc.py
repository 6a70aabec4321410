"""Let Paddle's program executor free dead tensors in batches instead of one by one.

The executor behind Paddle Inference (the exported programs of both runners) hands each
tensor whose last reader has run to its garbage-collector thread as a task of its own, with
Paddle's default ``FLAGS_eager_delete_tensor_gb=0``: a futex wake-up of that thread per
intermediate tensor, a few hundred per U-Net call, which on the tiny model's small tensors is
more than a tenth of the call (docs/performance.md has the figures). With a threshold the
collector gathers dead tensors until they hold that many GiB and frees them in one task.
:func:`batch_freed_tensors` sets 0.005 GiB (5 MiB of garbage held at most), which the entry
points apply through :func:`~ernie_vilg2.utils.cpu_tuning.tune_cpu_process`; the C++ runner
sets the same (deploy/cpp/src/inference_engine.cc). The dynamic graph frees tensors by
reference count and is not affected.

Nothing changes where ``FLAGS_eager_delete_tensor_gb`` is already set:
``FLAGS_eager_delete_tensor_gb=0`` gives Paddle's own behaviour back.
"""
from __future__ import annotations

import os
import sys

VARIABLE = "FLAGS_eager_delete_tensor_gb"
BATCH_GB = "0.005"


def batch_freed_tensors(environ=os.environ) -> bool:
    """Set the threshold unless the user did; return whether it was set here."""
    if VARIABLE in environ:
        return False
    environ[VARIABLE] = BATCH_GB  # Paddle reads FLAGS_* from the environment at its import
    paddle = sys.modules.get("paddle")
    if environ is os.environ and paddle is not None and hasattr(paddle, "set_flags"):
        paddle.set_flags({VARIABLE: float(BATCH_GB)})  # imported already
    return True
