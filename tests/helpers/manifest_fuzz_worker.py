"""Opens export folders with the Python runner under a memory limit and reports what happened.

    python tests/helpers/manifest_fuzz_worker.py LIMIT_BYTES FOLDER [FOLDER ...]

For each folder: ``InferencePipeline.from_export`` and one 2-step generation; prints one JSON
line ``{"folder", "outcome": "ok" | "error", "type", "message"}``. The address-space limit
makes a runner that allocates by a manifest's numbers fail here (MemoryError) instead of
taking the machine's memory (tests/deploy/test_deploy_hardening.py).
"""
from __future__ import annotations

import json
import os
import resource
import sys

os.environ.setdefault("GLOG_minloglevel", "2")


def main(argv) -> int:
    limit = int(argv[0])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np

    from ernie_vilg2.deploy import InferencePipeline

    for folder in argv[1:]:
        try:
            pipe = InferencePipeline.from_export(folder, verify="size")
            images = pipe(["a red apple"], num_inference_steps=2, guidance_scale=2.0, seed=0, output_type="np").images
            outcome = {"outcome": "ok" if np.isfinite(images).all() else "non-finite image"}
        except Exception as exc:  # noqa: BLE001  (reported, judged by the test)
            outcome = {"outcome": "error", "type": type(exc).__name__, "message": str(exc)}
        print(json.dumps({"folder": folder, **outcome}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
