"""Expert-parallel stage 2 (train.expert_parallel): 4 ranks over gloo in 2 expert groups.

One tiny run folder with the VAE and base stages is made in-process; the experts stage is then
launched with 4 ranks (2 groups of 2 ranks, 1 expert each, text encoder trained), interrupted
and resumed in a second folder, and trained in one process as the reference.
"""
import glob
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from ernie_vilg2.config import ConfigError
from ernie_vilg2.training import runner as runner_mod
from ernie_vilg2.training.config import load_config
from ernie_vilg2.training.diffusion_step import TimestepSampler
from ernie_vilg2.training.expert_layout import ExpertLayout, expert_group_count, layout_from_config

from helpers.paths import REPO_ROOT as REPO

TINY_YAML = os.path.join(REPO, "configs", "tiny.yaml")
WORKER = os.path.join(REPO, "tests", "helpers", "expert_parallel_worker.py")
RANKS, GROUPS = 4, 2
FOUR_RANKS = ExpertLayout(num_experts=2, world_size=RANKS, groups=GROUPS)
LAUNCH_TIMEOUT = 600  # seconds per launch (a loaded 2-core machine needs minutes); a hang is killed and retried
# Gloo gives up on a peer after 30 s: group creation fails now and then, and on a CPU starved by
# other jobs a collective can wait longer than that for a rank. Such a launch is retried (with
# --resume it continues from its last checkpoint, which gives the same weights); a real
# mismatch of collectives times out in every attempt and fails.
GLOO_FAILURE = ("expert groups failed", "TIMEOUT")
CRASHED = "EP-TEST: crashing after the checkpoint of step 2"  # tests/helpers/expert_parallel_worker.py

# configs/tiny.yaml shrunk to a few hundred thousand parameters; 4 expert steps, checkpoints at 2 and 4;
# a gradient-norm limit that clips every step (the clipping must use the whole model's norm).
OPTS = {
    "data.builtin.num_scenes": 6, "data.builtin.num_val_scenes": 2, "data.builtin.max_emoji": 6,
    "model.num_experts": 2, "model.text_encoder.hidden_size": 16, "model.text_encoder.intermediate_size": 32,
    "model.text_encoder.num_hidden_layers": 1, "model.text_encoder.max_length": 12,
    "model.unet.block_out_channels": "[16, 32]", "model.vae.block_out_channels": "[8, 16, 16]",
    "train.batch_size": 4, "train.vae.steps": 2, "train.base.steps": 2, "train.experts.steps": 4,
    "train.experts.train_text_encoder": "true", "train.experts.max_grad_norm": 0.01,
    "train.checkpoint_every": 2, "train.log_every": 1,
    "sample.steps": 2, "sample.prompts": "[红苹果, a blue heart]",
}


def overrides(out_dir, data_dir, **extra):
    return [f"{k}={v}" for k, v in {**OPTS, "train.output_dir": str(out_dir), "data.builtin.out_dir": str(data_dir),
                                     **extra}.items()]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A run folder holding the VAE and base stages (made in-process) and the dataset."""
    root = tmp_path_factory.mktemp("ep")
    cfg = load_config(TINY_YAML, overrides(root / "stage1", root / "data", **{"train.stages": "[vae, base]"}))
    runner_mod.run_training(cfg)
    return root


def copy_stage1(stage1, name):
    out = stage1 / name
    out.mkdir()
    for stage in ("vae", "base"):
        shutil.copytree(stage1 / "stage1" / stage, out / stage)
    return out


def launch(stage1, out, name, env_extra=None, attempts=3):
    """The experts stage of ``out`` on 4 ranks, retried when gloo gave up (see GLOO_FAILURE) or
    the launch hung (a run told to crash ends with its crash). Returns (return code, the logs)."""
    opts = []
    for o in overrides(out, stage1 / "data", **{"train.expert_parallel": "true"}):
        opts += ["-o", o]
    env = {**os.environ, "GLOG_minloglevel": "2", **(env_extra or {})}
    for attempt in range(attempts):
        log_dir = out.parent / f"{name}-launch{attempt}"
        launcher_log = out.parent / f"{name}-launcher{attempt}.txt"  # which rank failed, and how
        with open(launcher_log, "wb") as launcher_out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(RANKS), "--log_dir",
                 str(log_dir), WORKER, "--config", TINY_YAML, "--resume", *opts],
                cwd=str(out.parent), env=env, stdout=launcher_out, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            rc = proc.wait(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        logs = "\n".join(open(p, errors="replace").read() for p in sorted(glob.glob(str(log_dir / "workerlog.*"))))
        if rc:
            logs += "\n--- launcher ---\n" + launcher_log.read_text(errors="replace")[-1500:]
        if rc is not None and (CRASHED in logs or not any(s in logs for s in GLOO_FAILURE)):
            return rc, logs
        print(f"launch attempt {attempt + 1}: gloo gave up or the launch hung (rc {rc}); retrying")
    pytest.fail(f"4 ranks failed to communicate in {attempts} attempts:\n{logs[-3000:]}")


@pytest.fixture(scope="module")
def ep_run(stage1):
    """The experts stage on 4 ranks, uninterrupted; each rank's trained parameters dumped. Rank 3's
    first attempt at creating the process groups fails, so the groups trained with are the retry's."""
    out = copy_stage1(stage1, "ep")
    rc, logs = launch(stage1, out, "ep", {"EP_TEST_DUMP": str(stage1 / "ep-dump"), "EP_TEST_GROUP_FAILURE": "3"})
    assert rc == 0, logs[-3000:]
    (stage1 / "ep-logs.txt").write_text(logs)
    return out


def _unet(run):
    return load_file(os.path.join(run, "experts", "unet", "diffusion_paddle_model.safetensors"))


def _text_encoder(run):
    (path,) = glob.glob(os.path.join(run, "experts", "text_encoder", "*.safetensors"))
    return load_file(path)


@pytest.mark.multiproc
@pytest.mark.slow
def test_each_rank_holds_and_syncs_only_its_experts(stage1, ep_run):
    ranks = [load_file(str(stage1 / "ep-dump" / f"rank-{r}.safetensors")) for r in range(RANKS)]
    expert_size = sum(v.size for k, v in _unet(ep_run).items() if k.startswith("experts.0."))
    for r, params in enumerate(ranks):
        held = {k.split(".")[2] for k in params if k.startswith("unet.")}
        assert held == {str(r // 2)}, (r, held)  # ranks 0, 1: expert 0; ranks 2, 3: expert 1
        assert sum(v.size for k, v in params.items() if k.startswith("unet.")) == expert_size
    for a, b in ((0, 1), (2, 3)):  # within a group: bit-identical
        assert ranks[a].keys() == ranks[b].keys()
        for k in ranks[a]:
            np.testing.assert_array_equal(ranks[a][k], ranks[b][k], err_msg=k)
    own = lambda params, e: {k.split(f"experts.{e}.")[1]: v for k, v in params.items() if f"experts.{e}." in k}  # noqa
    e0, e1 = own(ranks[0], 0), own(ranks[2], 1)
    assert any(not np.array_equal(e0[k], e1[k]) for k in e0), "the two groups trained the same expert"
    text = [{k: v for k, v in p.items() if k.startswith("text_encoder.")} for p in ranks]
    base_text = load_file(glob.glob(str(stage1 / "stage1" / "base" / "text_encoder" / "*.safetensors"))[0])
    assert any(not np.array_equal(text[0][f"text_encoder.{k}"], v) for k, v in base_text.items()), \
        "the text encoder did not train"
    for r in range(1, RANKS):  # the shared text encoder: all-reduced over all ranks
        for k in text[0]:
            np.testing.assert_array_equal(text[0][k], text[r][k], err_msg=f"rank {r}: {k}")
    # The saved pipeline is the whole bank (rank 0 assembled it) in the usual format.
    from ernie_vilg2 import ErnieViLG2Pipeline

    pipe = ErnieViLG2Pipeline.from_pretrained(str(ep_run / "experts"))
    assert pipe.unet.num_experts == 2 and pipe.unet.expert_ids == [0, 1]
    for e, r in ((0, 0), (1, 2)):
        for k, v in own(ranks[r], e).items():
            np.testing.assert_array_equal(pipe.unet.experts[e].state_dict()[k].numpy(), v, err_msg=k)


@pytest.mark.multiproc
@pytest.mark.slow
def test_equals_one_process_training_the_same_experts_on_the_same_samples(stage1, ep_run, monkeypatch):
    """One process with both experts, the same global batches and the 4-rank layout's timesteps
    (rows of ranks 0, 1 in expert 0's stage, of ranks 2, 3 in expert 1's): the same training,
    up to the order of float sums (all-reduce over gloo vs one batch)."""
    out = copy_stage1(stage1, "reference")

    def four_rank_timesteps(*args, layout=None, **kwargs):
        return TimestepSampler(*args, layout=FOUR_RANKS, **kwargs)

    monkeypatch.setattr(runner_mod, "TimestepSampler", four_rank_timesteps)
    cfg = load_config(TINY_YAML, overrides(out, stage1 / "data"))
    runner_mod.run_training(cfg, resume=True)
    for got, want in ((_unet(ep_run), _unet(out)), (_text_encoder(ep_run), _text_encoder(out))):
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=2e-5, err_msg=k)


@pytest.mark.multiproc
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(stage1, ep_run):
    out = copy_stage1(stage1, "killed")
    rc, logs = launch(stage1, out, "killed", {"EP_TEST_CRASH_AFTER": "2"})
    assert rc != 0 and CRASHED in logs, logs[-3000:]
    assert not (out / "experts").exists()
    ckpt = out / "checkpoints" / "experts" / "step-000002"
    assert sorted(os.listdir(ckpt)) == ["config.yaml", "expert-00", "expert-01", "model.safetensors",
                                        "optimizer.json", "optimizer.safetensors", "state.json"]
    rc, logs = launch(stage1, out, "resumed")
    assert rc == 0, logs[-3000:]
    assert "resumed stage experts from" in logs
    for got, want in ((_unet(out), _unet(ep_run)), (_text_encoder(out), _text_encoder(ep_run))):
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.multiproc
@pytest.mark.slow
def test_one_process_loads_the_per_expert_checkpoint(ep_run):
    from ernie_vilg2.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(str(ep_run / "checkpoints" / "experts" / "step-000004"))
    final = _unet(ep_run)
    assert {f"unet.{k}" for k in final} | {k for k in ckpt["model"] if k.startswith("text_encoder.")} == \
        set(ckpt["model"])
    for k, v in final.items():
        np.testing.assert_array_equal(ckpt["model"][f"unet.{k}"].numpy(), v, err_msg=k)
    assert any(k.startswith("unet.experts.1.") for k in ckpt["optimizer"])


@pytest.mark.multiproc
@pytest.mark.slow
def test_every_rank_retries_creating_the_groups_when_one_failed(stage1, ep_run):
    logs = (stage1 / "ep-logs.txt").read_text()
    assert "rank 3: creating the process groups failed (attempt 1 of 3): EP-TEST" in logs
    for r in (0, 1, 2):
        assert f"rank {r}: 1 rank(s) failed to create the process groups (attempt 1 of 3)" in logs
    assert logs.count("process groups created at attempt 2") == RANKS


@pytest.mark.slow
def test_nothing_left_to_do_is_decided_before_joining_the_job(stage1, monkeypatch, caplog):
    def join(cfg):
        raise AssertionError("joined the job although every stage is finished")

    monkeypatch.setattr(runner_mod, "init_distributed", join)
    cfg = load_config(TINY_YAML, overrides(stage1 / "stage1", stage1 / "data", **{"train.stages": "[vae, base]"}))
    with caplog.at_level("INFO"):
        assert runner_mod.run_training(cfg, resume=True) == str(stage1 / "stage1" / "base")
    assert "nothing left to do: the stages of this run (vae, base) are finished" in caplog.text


@pytest.mark.multiproc
@pytest.mark.slow
def test_resuming_a_finished_run_has_nothing_to_do_and_joins_no_group(stage1, ep_run):
    rc, logs = launch(stage1, ep_run, "finished", attempts=1)
    assert rc == 0, logs[-3000:]
    assert logs.count("nothing left to do: the stages of this run (vae, base, experts) are finished") == RANKS
    # No rank created a process group (connect logs the layout once it has) or waited for a peer.
    assert "expert group(s) x" not in logs and "TIMEOUT" not in logs and "Traceback" not in logs


@pytest.mark.multiproc
@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_one_line_naming_it(stage1):
    out = copy_stage1(stage1, "failing")
    rc, logs = launch(stage1, out, "failing", {"EP_TEST_FAIL_RANK": "2"}, attempts=1)
    shown = (out.parent / "failing-launcher0.txt").read_text(errors="replace")  # what the user sees
    assert rc != 0
    errors = [line for line in shown.splitlines() if line.startswith("error:")]
    assert errors == ["error: rank 2: [Errno 28] No space left on device (EP-TEST)"], shown[-3000:]
    assert "Traceback" not in shown and "Traceback" not in logs, logs[-3000:]


# -- a bank of some experts, the layout and its errors (no processes) ---------------------------------
def test_a_bank_holds_the_experts_it_is_given_by_id(tiny_unet_kwargs):
    import paddle

    from ernie_vilg2.models.expert_bank import MixtureOfDenoisingExperts

    full = MixtureOfDenoisingExperts(num_experts=4, unet=tiny_unet_kwargs)
    part = MixtureOfDenoisingExperts(num_experts=4, unet=tiny_unet_kwargs, expert_ids=[3, 2])
    assert part.expert_ids == [2, 3] and part.num_experts == 4 and part.is_partial and not full.is_partial
    names = set(part.state_dict())
    assert {k.split(".")[1] for k in names} == {"2", "3"} and names < set(full.state_dict())
    assert sum(int(p.size) for p in part.parameters()) * 2 == sum(int(p.size) for p in full.parameters())
    part.set_state_dict({k: v for k, v in full.state_dict().items() if k in names})
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal([2, 4, 8, 8]).astype("float32"))
    ctx = paddle.to_tensor(rng.standard_normal([2, 5, 32]).astype("float32"))
    t = paddle.to_tensor([600, 990])  # experts 2 and 3
    np.testing.assert_array_equal(part(x, t, ctx).sample.numpy(), full(x, t, ctx).sample.numpy())
    with pytest.raises(KeyError, match="expert 0 is not in this bank"):
        part(x, paddle.to_tensor([10]), ctx)
    part.experts[3] = full.experts[0]  # a swap keeps the id (expert offload does it)
    assert part.experts[3] is full.experts[0] and part.expert_ids == [2, 3]
    with pytest.raises(KeyError, match="expert 1 is not in this bank"):
        part.experts[1] = full.experts[1]
    with pytest.raises(ValueError, match="holds experts"):
        part.save_pretrained("unused")
    with pytest.raises(ValueError, match="expert_ids"):
        MixtureOfDenoisingExperts(num_experts=4, unet=tiny_unet_kwargs, expert_ids=[4])


# -- the layout and its errors (no processes) ---------------------------------------------------------
def test_layout_splits_ranks_experts_and_rows():
    lay = ExpertLayout(num_experts=10, world_size=320, groups=10, rank=37)
    assert (lay.ranks_per_group, lay.group, lay.experts, lay.is_group_leader) == (32, 1, [1], False)
    lay = ExpertLayout(num_experts=4, world_size=4, groups=2, rank=2)
    assert lay.experts == [2, 3] and lay.group_ranks(1) == [2, 3] and lay.is_group_leader
    assert lay.row_groups(8).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert lay.holds("unet.experts.3.conv_in.weight") and not lay.holds("unet.experts.1.conv_in.weight")
    assert lay.holds("text_encoder.embeddings.word_embeddings.weight")
    assert expert_group_count(10, 320) == 10 and expert_group_count(10, 4, requested=2) == 2


def test_timesteps_of_each_group_stay_in_its_experts_and_cover_t_uniformly():
    sampler = TimestepSampler(1000, 4, one_expert_per_step=True, layout=ExpertLayout(4, 4, 2))
    rng = np.random.default_rng(0)
    draws = np.stack([sampler.sample(8, rng) for _ in range(4000)])  # [steps, rows]
    groups = ExpertLayout(4, 4, 2).row_groups(8)
    assert (draws[:, groups == 0] < 500).all() and (draws[:, groups == 1] >= 500).all()
    counts = np.bincount(draws.ravel() // 100, minlength=10) / draws.size  # ten bins of 100 timesteps
    np.testing.assert_allclose(counts, 0.1, atol=0.01)


def test_the_memory_plan_forms_the_trainers_groups():
    from ernie_vilg2.planning.memory_plan import PlanError, default_layout

    cfg = load_config(os.path.join(REPO, "configs", "ernie_vilg2_24b.yaml"))  # train.expert_parallel: true
    trainer = layout_from_config(cfg, world_size=320, rank=0, on_gpu=True)
    assert default_layout(cfg, 320, 80).expert_groups == trainer.groups == 10  # 32 ranks per group
    assert default_layout(cfg, 10, 80).expert_groups == 10  # one rank per group
    off = load_config(os.path.join(REPO, "configs", "ernie_vilg2_24b.yaml"), ["train.expert_parallel=false"])
    assert default_layout(off, 320, 80).expert_groups == 1  # every rank holds all experts
    with pytest.raises(PlanError, match="--expert-groups"):
        default_layout(cfg, 12, 80)  # 12 ranks cannot form 10 groups


@pytest.mark.parametrize("experts, ranks, requested, field, needle", [
    (10, 4, None, "train.expert_parallel", "[1, 2]"),
    (4, 6, None, "train.expert_parallel", "[1, 2]"),
    (4, 4, 3, "train.expert_groups", "[1, 2, 4]"),
])
def test_uneven_splits_are_refused(experts, ranks, requested, field, needle):
    with pytest.raises(ConfigError, match=field) as err:
        expert_group_count(experts, ranks, requested)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("extra, field", [
    ({"train.batch_size": 6}, "train.batch_size"),
    ({"train.experts.batch_size": 2}, "train.experts.batch_size"),
    ({"train.sharding_degree": 2}, "train.sharding_degree"),
])
def test_config_the_ranks_cannot_run_is_refused(tmp_path, extra, field):
    cfg = load_config(TINY_YAML, overrides(tmp_path, tmp_path, **{"train.expert_parallel": "true", **extra}))
    with pytest.raises(ConfigError, match=field):
        layout_from_config(cfg, world_size=4, rank=0, on_gpu=False)


@pytest.mark.parametrize("extra, field", [
    ({"train.expert_ids": "[0]"}, "train.expert_ids"),
    ({"train.sharding_stage": 3}, "train.sharding_stage"),
    ({"train.expert_groups": 2, "train.expert_parallel": "false"}, "train.expert_groups"),
])
def test_contradictory_settings_are_refused(tmp_path, extra, field):
    with pytest.raises(ConfigError, match=field):
        load_config(TINY_YAML, overrides(tmp_path, tmp_path, **{"train.expert_parallel": "true", **extra}))


@pytest.mark.slow
def test_cli_names_the_field_in_one_line(tmp_path):
    opts = []
    for o in overrides(tmp_path / "run", tmp_path / "data", **{"train.expert_parallel": "true",
                                                               "train.expert_groups": 4}):
        opts += ["-o", o]
    bad = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train.py"), "--config", TINY_YAML, *opts],
                         capture_output=True, text=True, env={**os.environ, "GLOG_minloglevel": "2"}, timeout=120)
    assert bad.returncode == 2, bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.expert_groups" in errors[0], bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "run").exists()
