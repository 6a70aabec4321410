"""Stage 2's timestep draws follow model.expert_boundaries: each expert draws from its own range."""
import numpy as np

from ernie_vilg2.models.routing import TimestepRouter
from ernie_vilg2.training.diffusion_step import TimestepSampler
from ernie_vilg2.training.expert_layout import ExpertLayout

BOUNDARIES = [10, 700]  # stages of 10, 690 and 300 timesteps


def test_restricted_draws_stay_in_the_experts_ranges_in_proportion_to_their_length():
    sampler = TimestepSampler(1000, 3, expert_ids=[0, 2], boundaries=BOUNDARIES)
    t = sampler.sample(200_000, np.random.default_rng(0))
    experts = TimestepRouter(3, 1000, BOUNDARIES).expert_index(t)
    assert set(experts.tolist()) == {0, 2}
    assert ((t >= 0) & (t < 10)).sum() + ((t >= 700) & (t < 1000)).sum() == len(t)
    assert abs((experts == 0).mean() - 10 / 310) < 0.005  # chosen in proportion to the stage's length
    assert set(t[experts == 0].tolist()) == set(range(10))  # uniform within the stage: every step drawn
    counts = np.bincount(t[experts == 2] - 700, minlength=300)
    assert counts.min() > 0.8 * counts.mean()


def test_one_expert_per_step_keeps_the_batch_in_one_range():
    sampler = TimestepSampler(1000, 3, one_expert_per_step=True, boundaries=BOUNDARIES)
    router = TimestepRouter(3, 1000, BOUNDARIES)
    rng = np.random.default_rng(1)
    chosen = []
    for _ in range(3000):
        experts = router.expert_index(sampler.sample(8, rng))
        assert len(set(experts.tolist())) == 1
        chosen.append(int(experts[0]))
    shares = np.bincount(chosen, minlength=3) / len(chosen)
    assert np.allclose(shares, [0.01, 0.69, 0.30], atol=0.03)


def test_all_experts_draw_uniformly_over_all_timesteps():
    t = TimestepSampler(1000, 3, boundaries=BOUNDARIES).sample(300_000, np.random.default_rng(2))
    counts = np.bincount(t, minlength=1000)
    assert t.min() == 0 and t.max() == 999 and counts.min() > 0.8 * counts.mean()


def test_expert_groups_draw_from_their_experts_ranges():
    layout = ExpertLayout(4, 4, 2)  # group 0: experts 0-1, group 1: experts 2-3
    boundaries = [5, 40, 600]
    sampler = TimestepSampler(1000, 4, layout=layout, boundaries=boundaries)
    groups = layout.row_groups(8)
    t = np.stack([sampler.sample(8, np.random.default_rng(s)) for s in range(500)])
    assert (t[:, groups == 0] < 40).all() and (t[:, groups == 1] >= 40).all()
    experts = TimestepRouter(4, 1000, boundaries).expert_index(t[:, groups == 1].ravel())
    assert abs((experts == 2).mean() - 560 / 960) < 0.05


def test_uniform_boundaries_draw_as_before():
    # the paper's rule keeps the former draws bit for bit (runs resume and reproduce)
    old = TimestepSampler(1000, 4, expert_ids=[1, 3]).sample(64, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    experts = rng.choice(np.asarray([1, 3]), size=64)
    assert (old == experts * 250 + rng.integers(0, 250, size=64)).all()
