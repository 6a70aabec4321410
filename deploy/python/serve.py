"""Serve an export folder over HTTP: POST /generate, GET /health and a page at GET /.

    python deploy/python/serve.py --model output/tiny/export --port 8000
    curl -s localhost:8000/generate -H 'Accept: image/png' -d '{"prompt": "红苹果", "seed": 0}' > apple.png

Requests are checked with the runners' rules (a bad field is a 4xx naming it), queued (429
past --max-queue), batched (compatible requests share pipeline calls of up to --max-batch
images) and answered within --timeout seconds (504 after it). The same seed gives the image
of deploy/python/infer.py. SIGINT/SIGTERM: stop listening, finish the requests in flight,
exit. See deploy/README.md (Serving).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.cli_utils import argument_text_error, fail, one_line_warnings  # noqa: E402
from ernie_vilg2.deploy.predictor import ENGINES  # noqa: E402  (NumPy only: cheap)
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="export folder (with manifest.json) from tools/export_model.py")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one, printed in the log)")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-batch", type=int, default=8, help="images per pipeline call (default 8; 1: no batching)")
    limits.add_argument("--max-queue", type=int, default=32,
                        help="requests waiting or being generated (default 32); more are answered 429 with Retry-After")
    limits.add_argument("--timeout", type=float, default=60.0,
                        help="seconds from a request's arrival to its answer (default 60); 504 after it, "
                             "its work dropped")
    limits.add_argument("--max-images", type=int, default=8, help="images one request may ask for (default 8)")
    limits.add_argument("--max-body", type=int, default=64 * 1024,
                        help="bytes of a request body (default 65536; 413 past it)")
    run = p.add_argument_group("Paddle Inference (as deploy/python/infer.py)")
    run.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="gpu needs paddlepaddle-gpu")
    run.add_argument("--threads", type=int, help="CPU math library threads per predictor (default: Paddle's, 1)")
    run.add_argument("--engine", choices=ENGINES, default="paddle",
                     help="paddle (native kernels, the images of the dynamic graph), onednn, openvino or tensorrt")
    run.add_argument("--verify", choices=("sha256", "size"), default="sha256",
                     help="check the export's files by SHA-256 (default) or by size only")
    run.add_argument("--expert-offload", choices=("disk",),
                     help="create an expert's predictor only when its timesteps come (memory of one expert)")
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING"), default="INFO")
    return p.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    for flag in ("max_batch", "max_queue", "max_images", "max_body", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            fail(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if not 0 <= args.port <= 65535:
        fail(f"--port must be in [0, 65535], got {args.port}")
    if not args.timeout > 0:
        fail(f"--timeout must be > 0, got {args.timeout}")
    problem = argument_text_error(args.model)
    if problem:
        fail(f"--model: {problem}")
    if not os.path.isdir(args.model):
        fail(f"--model: export folder not found: {args.model}")


def main(argv=None) -> int:
    tune_cpu_process()
    one_line_warnings()
    args = parse_args(argv)
    check_arguments(args)
    from ernie_vilg2.deploy.serving.request_log import configure_logging

    configure_logging(args.log_level)

    from ernie_vilg2.deploy.serving import ExportLoader, Service, ServiceConfig, run

    loader = ExportLoader(args.model, verify=args.verify, device=args.device, threads=args.threads, engine=args.engine,
                          expert_offload=args.expert_offload)
    config = ServiceConfig(model=os.path.abspath(args.model), max_batch=args.max_batch, max_queue=args.max_queue,
                           timeout=args.timeout, max_images=args.max_images, max_body=args.max_body)
    try:
        run(Service(config, loader, args.log_level), args.host, args.port)
    except FileNotFoundError as exc:
        fail(f"--model: {exc}")
    except (ErnieViLG2Error, ValueError) as exc:  # ours name the file or field; ValueError: the settings
        fail(str(exc))
    except OSError as exc:  # the address is taken or not ours
        fail(f"--host/--port: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
