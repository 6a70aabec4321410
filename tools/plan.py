"""Memory plan of a training run: parameters per component and memory per GPU for a layout.

The models are built under paddle.LazyGuard (nothing allocated; counts from the shapes), so
the 24B config is planned in seconds on a laptop. The layout: --gpus ranks in --expert-groups
equal groups, each group owning num_experts / groups experts, sharded within the group
(LoRA experts, model.expert_type: lora, have no groups: one frozen U-Net and all adapters per rank).

    python tools/plan.py --config configs/ernie_vilg2_24b.yaml --gpus 320 --gpu-mem 80 --expert-groups 10
    python tools/plan.py --config configs/ernie_vilg2_mid.yaml --gpus 1 --gpu-mem 80
    python tools/plan.py -c configs/tiny.yaml --gpus 2 --gpu-mem 16 -o model.num_experts=4 --json
    python tools/plan.py -c configs/ernie_vilg2_24b.yaml --gpus 320 --gpu-mem 80 \
        -o model.expert_type=lora -o train.expert_parallel=false
"""
import argparse
import os
import sys

os.environ.setdefault("GLOG_minloglevel", "2")
from ernie_vilg2.cli_utils import fail  # noqa: E402
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        fail(message)


def parse_args(argv=None):
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", required=True, help="experiment YAML (see configs/)")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, as in tools/train.py (repeatable)")
    p.add_argument("--gpus", type=int, required=True, help="ranks (GPUs) of the job")
    p.add_argument("--gpu-mem", type=float, required=True, metavar="GiB",
                   help="memory of one GPU in GiB (an '80 GB' A100/H100: 80)")
    p.add_argument("--expert-groups", type=int,
                   help="equal groups of ranks; each owns num_experts / groups experts (default: as the trainer "
                        "forms them: with train.expert_parallel train.expert_groups or min(num_experts, gpus), "
                        "else 1, every rank holding all experts; LoRA experts have none)")
    p.add_argument("--sharding-stage", type=int, choices=(0, 1, 2, 3),
                   help="within a group: 1 shards the optimizer state, 2 also gradients, 3 also parameters "
                        "(default: train.sharding_stage if train.sharding_degree > 1, else 0)")
    p.add_argument("--micro-batch", type=int, help="samples per rank and step (default: the stage's batch size / gpus)")
    p.add_argument("--precision", choices=("bf16", "fp32"), help="default: train.mixed_precision")
    p.add_argument("--recompute", action=argparse.BooleanOptionalAction, default=None,
                   help="U-Net gradient checkpointing (default: train.recompute)")
    p.add_argument("--attention", choices=("fused", "unfused"),
                   help="attention kernels (default: fused, as the experts' FastAttnProcessor runs on CUDA; "
                        "unfused: a stock processor that keeps the probabilities)")
    p.add_argument("--margin", type=float, default=0.1,
                   help="fraction of GPU memory kept free for the CUDA context, allocator and buffers (default 0.1)")
    p.add_argument("--json", action="store_true",
                   help="print the plan as JSON on stdout (the tables go to stderr)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    from ernie_vilg2.planning.memory_plan import build_plan, default_layout, format_plan, plan_to_dict
    from ernie_vilg2.training.config import load_config

    try:
        cfg = load_config(args.config, args.opt)
        layout = default_layout(cfg, args.gpus, args.gpu_mem, expert_groups=args.expert_groups,
                                sharding_stage=args.sharding_stage, micro_batch=args.micro_batch,
                                precision=args.precision, recompute=args.recompute, attention=args.attention,
                                margin=args.margin)
        layout.validate(cfg.model)  # before the slow imports
        from ernie_vilg2.cli_utils import quiet_third_party_logs

        quiet_third_party_logs()
        plan = build_plan(cfg, layout, config_path=args.config)
    except (ErnieViLG2Error, FileNotFoundError) as exc:
        fail(str(exc))
    if args.json:
        import json

        print(format_plan(plan), file=sys.stderr)
        print(json.dumps(plan_to_dict(plan), indent=2))
    else:
        print(format_plan(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
