"""benchmarks/ablation.py's tables from a results.json (no training): the paired comparison rows
and benchmarks/lora_experts.py --quality reading them."""
import json
import os
import subprocess
import sys

from helpers.paths import REPO_ROOT, TOOL_ENV

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
import ablation  # noqa: E402


def _run(variant, seed, relation, fid):
    images = [{"prompt": f"p{i}", "lang": ("zh", "en")[i % 2], "a_present": True, "b_present": True, "both_present": True,
               "relation_correct": ok} for i, ok in enumerate(relation)]
    return {"variant": variant, "seed": seed, "report": {"fid": {"value": fid}, "composition": {"images": images}}}


RESULTS = [_run("e", 0, [0, 0, 1, 0], 40.0), _run("e", 1, [0, 1, 0, 0], 42.0),
           _run("f", 0, [1, 1, 1, 0], 38.0), _run("f", 1, [1, 1, 0, 1], 43.0)]


def test_comparison_rows():
    lines = ablation.comparison_table(RESULTS, [("e", "f")]).splitlines()
    relation = next(line for line in lines if "| relation_correct |" in line)
    # per prompt, seeds averaged: e .0 .5 .5 .0, f 1 1 .5 .5 -> +.5 on average
    assert relation.startswith("| e vs f (seeds 0, 1; 4 prompts) | relation_correct | 0.250 | 0.750 | +0.500 [")
    assert lines[-1].startswith("| e vs f | FID (lower is better) | 41.0 | 40.5 | -0.5 (per seed: -2.0, +1.0) |")


def test_lora_quality_reads_an_ablation(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"runs": RESULTS}), encoding="utf-8")
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "benchmarks", "lora_experts.py"), "--configs",
                           "--quality", str(path)], capture_output=True, text=True, env=TOOL_ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| e vs f (seeds 0, 1; 4 prompts) | relation_correct |" in proc.stdout
    path.write_text(json.dumps({"runs": RESULTS[:2]}), encoding="utf-8")
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "benchmarks", "lora_experts.py"), "--configs",
                           "--quality", str(path)], capture_output=True, text=True, env=TOOL_ENV, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].endswith("needs evaluated runs of variants e and f")
