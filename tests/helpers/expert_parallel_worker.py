"""tools/train.py for one rank of a launched test job, with test hooks (environment):

- ``EP_TEST_DUMP``: a folder; when the experts stage has trained, every rank writes the
  parameters it trained to ``rank-<r>.safetensors`` there (what each rank holds).
- ``EP_TEST_CRASH_AFTER``: a step; when the experts stage's checkpoint of that step is
  complete, every rank exits at once with status 17 (``os._exit``: no cleanup, as if killed).
- ``EP_TEST_GROUP_FAILURE``: a rank; its first attempt at creating the process groups fails
  (after creating them, so that its peers are not left waiting), which every rank must retry.
- ``EP_TEST_FAIL_RANK``: a rank; it fails alone (disk full) in its first gradient synchronisation
  of the experts stage, while the others are in or near the all-reduce.

    python -m paddle.distributed.launch --nproc_per_node 4 tests/helpers/expert_parallel_worker.py --config ...
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools"))


def install_hooks() -> None:
    import errno

    import paddle.distributed as dist

    from ernie_vilg2.training import process_groups
    from ernie_vilg2.training.expert_parallel import ExpertParallelHooks, GradientSync
    from ernie_vilg2.training.loop import Trainer

    dump = os.environ.get("EP_TEST_DUMP")
    crash_after = os.environ.get("EP_TEST_CRASH_AFTER")
    group_failure = os.environ.get("EP_TEST_GROUP_FAILURE")
    fail_rank = os.environ.get("EP_TEST_FAIL_RANK")
    rank = dist.get_rank()
    if dump:
        finalize = Trainer.finalize_weights

        def dump_then_finalize(self):
            from safetensors.numpy import save_file

            if self.settings.stage == "experts":
                os.makedirs(dump, exist_ok=True)
                save_file({n: p.numpy() for n, p in self.module.named_parameters() if not p.stop_gradient},
                          os.path.join(dump, f"rank-{dist.get_rank()}.safetensors"))
            finalize(self)

        Trainer.finalize_weights = dump_then_finalize
    if crash_after:
        save = ExpertParallelHooks.save_checkpoint

        def save_then_crash(self, folder, step, *args, **kwargs):
            path = save(self, folder, step, *args, **kwargs)
            if step == int(crash_after):
                process_groups.barrier(dist.get_world_size())  # rank 0 has committed the checkpoint
                print(f"EP-TEST: crashing after the checkpoint of step {step}", file=sys.stderr, flush=True)
                os._exit(17)
            return path

        ExpertParallelHooks.save_checkpoint = save_then_crash
    if group_failure is not None and rank == int(group_failure):
        create_once = process_groups._create_once

        def create_then_fail_first(group_ranks, rank, attempt):
            groups = create_once(group_ranks, rank, attempt)
            if attempt == 0:
                raise RuntimeError("EP-TEST: injected failure to create the groups")
            return groups

        process_groups._create_once = create_then_fail_first
    if fail_rank is not None and rank == int(fail_rank):
        def disk_full(self):
            raise OSError(errno.ENOSPC, "No space left on device (EP-TEST)")

        GradientSync.__call__ = disk_full


if __name__ == "__main__":
    install_hooks()
    import train

    sys.exit(train.main())
