"""Train ERNIE-ViLG 2.0: VAE, then the base U-Net (stage 1), then the experts (stage 2).

    python -m paddle.distributed.launch --nproc_per_node 1 tools/train.py --config configs/tiny.yaml
    python tools/train.py --config configs/tiny.yaml -o train.base.steps=200 --resume --allow-config-change
"""
import argparse
import logging
import os
import signal
import sys
import time
import traceback

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.cli_utils import quiet_third_party_logs  # noqa: E402
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402

PEER_FAILURE_GRACE = 10  # seconds; paddle.distributed.launch notices a failed rank within about 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", required=True, help="experiment YAML (see configs/)")
    parser.add_argument("-o", "--opt", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. -o train.base.steps=100 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in train.output_dir: skip finished stages, resume the current one")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue although training settings (lr, batch size, steps, ...) differ "
                             "from the checkpoint's config; the changes are logged and recorded in "
                             "OUTPUT/config_changes.jsonl (model-shape changes are always refused)")
    parser.add_argument("--stage", action="append", choices=["vae", "base", "experts"],
                        help="run only these stages (repeatable); default: train.stages of the config")
    return parser.parse_args(argv)


def _stop_on_sigterm(signum, frame):
    # Unwind like an exception so that the run folder's lock is released and logs are closed;
    # the launcher may signal again while this runs (it kills what is left soon after).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("train.py: stopped by SIGTERM; continue later with --resume", file=sys.stderr)
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    if args.allow_config_change and not args.resume:
        print("error: --allow-config-change needs --resume", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_third_party_logs()  # PaddleNLP/PPDiffusers INFO lines; ours stay at INFO
    from ernie_vilg2.training.distributed import end_launched_rank, launch_position

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    rank, world = launch_position()
    code = _train(args, f"rank {rank}: " if world > 1 else "", world)  # the launcher shows the first failed rank's log
    if world > 1:
        end_launched_rank(code)
    return code


def _train(args, who: str, world: int) -> int:
    from ernie_vilg2.training.config import load_config
    from ernie_vilg2.training.distributed import is_communication_error
    from ernie_vilg2.training.runner import run_training

    try:
        cfg = load_config(args.config, args.opt)
        model_dir = run_training(cfg, resume=args.resume, stages=args.stage,
                                 allow_config_change=args.allow_config_change)
    except (ErnieViLG2Error, OSError) as exc:
        print(f"error: {who}{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("train.py: interrupted; continue later with --resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if world == 1:
            raise
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        if is_communication_error(exc):
            # Mostly another rank failed and closed its connections: the launcher reports the first
            # rank to exit and stops the others, so wait to be stopped rather than be reported first.
            time.sleep(PEER_FAILURE_GRACE)
            print(f"error: {who}lost contact with the other ranks ({first_line}); continue later with --resume",
                  file=sys.stderr)
            return 1
        traceback.print_exc()
        print(f"error: {who}{type(exc).__name__}: {first_line} (traceback above)", file=sys.stderr)
        return 1
    print(f"model: {model_dir}" if model_dir else f"done (no pipeline yet in {cfg.train.output_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
