"""Paired comparison of two training variants' composition scores (numpy only).

Two variants trained with the same seeds are sampled with the same prompts and seeds
(tools/evaluate.py), so their images pair up by (training seed, prompt). A prompt's score in a
run is the share of its K images that pass a metric; its difference between the variants is
averaged over the seeds both variants ran. The test is the paired sign-flip (randomisation)
test over prompts: under "no difference" each prompt's difference is as likely negative as
positive, so its p-value is the share of random sign flips whose mean difference is at least as
far from zero as the observed one. The interval resamples prompts (bootstrap), as
:func:`~ernie_vilg2.evaluation.composition.summarize` does for one variant.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import numpy as np


def prompt_scores(records: Sequence[dict], metric: str) -> Dict[str, float]:
    """{prompt: share of its images passing ``metric``} of one run's per-image records."""
    hits: Dict[str, list] = {}
    for record in records:
        hits.setdefault(record["prompt"], []).append(bool(record[metric]))
    return {prompt: float(np.mean(values)) for prompt, values in hits.items()}


def paired_difference(runs_a: Mapping[int, Sequence[dict]], runs_b: Mapping[int, Sequence[dict]], metric: str,
                      n_boot: int = 2000, n_flips: int = 20000, seed: int = 0) -> dict:
    """Variant b minus variant a on ``metric`` over the (seed, prompt) pairs both have.

    ``runs_x``: {training seed: per-image records (dicts with "prompt" and the metric)}. Returns
    the seeds and prompts used, both variants' means, the mean difference with a 95% bootstrap
    interval over prompts, and the two-sided p-value of the sign-flip test over prompts.
    """
    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds:
        raise ValueError(f"no training seed in both variants (a: {sorted(runs_a)}, b: {sorted(runs_b)})")
    per_seed = [(prompt_scores(runs_a[s], metric), prompt_scores(runs_b[s], metric)) for s in seeds]
    prompts = sorted(set.intersection(*(set(a) & set(b) for a, b in per_seed)))
    if not prompts:
        raise ValueError(f"no prompt was judged in both variants for seeds {seeds}")
    a = np.array([[scores_a[p] for p in prompts] for scores_a, _ in per_seed]).mean(axis=0)
    b = np.array([[scores_b[p] for p in prompts] for _, scores_b in per_seed]).mean(axis=0)
    diff = b - a
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    flips = rng.choice([-1.0, 1.0], size=(n_flips, len(diff)))
    observed = abs(diff.mean())
    # the observed signs count as one of the flips, so p is never 0
    p_value = (1 + int(np.sum(np.abs((flips * diff).mean(axis=1)) >= observed - 1e-12))) / (n_flips + 1)
    return {"metric": metric, "seeds": seeds, "prompts": len(prompts), "mean_a": round(float(a.mean()), 4),
            "mean_b": round(float(b.mean()), 4), "difference": round(float(diff.mean()), 4),
            "low": round(float(np.percentile(boot, 2.5)), 4), "high": round(float(np.percentile(boot, 97.5)), 4),
            "p_value": round(float(p_value), 4)}
