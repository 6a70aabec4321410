"""The knowledge / MoDE ablation at equal training compute (ERNIE-ViLG 2.0, section 4.3).

Trains the variants on the same data, with the same number of U-Net training steps and
samples, and evaluates each with FID and the detector-judged composition score
(tools/evaluate.py):

  a  1 U-Net, no knowledge            stage 1 only, base.steps + experts.steps steps
  b  a + textual knowledge            (key-word attention emphasis, POS tokens)
  c  a + visual knowledge             (salient-box loss weights, label enrichment)
  d  10 experts, no knowledge         stage 1 for base.steps, then stage 2 for experts.steps
  e  ERNIE-ViLG 2.0: d + both kinds of knowledge
  f  e with LoRA experts               (model.expert_type: lora; benchmarks/lora_experts.py --quality)

One VAE is trained once (or given with --vae) and shared by every run: it is not part of
the comparison. Each (variant, seed) is an ordinary training run folder under --out, so an
interrupted ablation continues where it stopped (train.py --resume; evaluate.py keeps the
images it already wrote). Runs go --jobs at a time, one CPU thread each (Paddle gains
little from a second thread on these U-Nets, so two single-threaded runs use 2 cores best).

    python benchmarks/ablation.py --out output/ablation --seeds 0 1 --jobs 2 \\
        --detector-weights output/detector/detector.safetensors \\
        --labels output/detector-data/emoji-32/labels.json

Larger settings for a GPU: --config with a bigger model/resolution, -o overrides applied
to every run (e.g. -o train.base.steps=20000), --threads, --samples-per-prompt.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (description, mixture of experts, textual knowledge, visual knowledge)
VARIANTS = {
    "a": ("1 U-Net, no knowledge", False, False, False),
    "b": ("+ textual knowledge", False, True, False),
    "c": ("+ visual knowledge", False, False, True),
    "d": ("10 experts, no knowledge", True, False, False),
    "e": ("ERNIE-ViLG 2.0 (experts + both)", True, True, True),
    "f": ("e with LoRA experts", True, True, True),
}
LORA_VARIANTS = {"f"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "tiny.yaml"), help="base experiment YAML")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override applied to every run (repeatable)")
    p.add_argument("--out", default="output/ablation", help="folder of the runs, reports and results.json")
    p.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v not in LORA_VARIANTS],
                   choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobs", type=int, default=2, help="runs trained / evaluated at the same time")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    p.add_argument("--vae", help="a trained VAE folder to share (default: train one under --out/vae-run)")
    p.add_argument("--fid-ref", help="real held-out images (folder or .npz); default: the data's val images")
    p.add_argument("--detector-config", help="PaddleDetection YAML of the judge (default: the shipped PicoDet)")
    p.add_argument("--detector-weights", help="the judge's weights (tools/train_detector.py)")
    p.add_argument("--labels", help="the judge's labels.json")
    p.add_argument("--samples-per-prompt", type=int, default=2)
    p.add_argument("--train-only", action="store_true", help="train the runs, evaluate later")
    p.add_argument("--eval-args", default="", help="extra arguments for tools/evaluate.py (one string)")
    p.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="also print B - A paired over seeds and prompts (repeatable), e.g. --compare a e")
    return p.parse_args(argv)


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), GLOG_minloglevel="2")
    return env


def _run(cmd, log_path: str, threads: int) -> None:
    """Run a command with its output in log_path; raises on failure."""
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(threads), cwd=ROOT)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {rc}); see {log_path}")


def variant_overrides(name: str, base_steps: int, expert_steps: int, num_experts: int):
    """Config overrides of one variant: equal U-Net steps for all (batch size unchanged)."""
    _, experts, textual, visual = VARIANTS[name]
    if experts:
        opts = ["train.stages=[base,experts]", f"model.num_experts={num_experts}"]
    else:
        opts = ["train.stages=[base]", "model.num_experts=1", f"train.base.steps={base_steps + expert_steps}"]
    opts += [f"textual_knowledge.enabled={str(textual).lower()}", f"visual_knowledge.enabled={str(visual).lower()}"]
    return opts + (["model.expert_type=lora"] if name in LORA_VARIANTS else [])


def train_vae(args, out: str) -> str:
    if args.vae:
        return args.vae
    run = os.path.join(out, "vae-run")
    cmd = [sys.executable, "tools/train.py", "-c", args.config, "--stage", "vae",
           *sum((["-o", o] for o in args.opt), []), "-o", f"train.output_dir={run}"]
    if os.path.exists(os.path.join(run, "config.yaml")):
        cmd.append("--resume")
    print(f"training the shared VAE in {run} ...", flush=True)
    _run(cmd, os.path.join(out, "vae-run.log"), max(args.threads, 2 if args.jobs == 1 else 1))
    return os.path.join(run, "vae")


def stages_finished(run: str, name: str) -> bool:
    """Whether the run's last stage saved its model (then train.py would only reload it)."""
    return os.path.isfile(os.path.join(run, "experts" if VARIANTS[name][1] else "base", "model_index.json"))


def train_and_evaluate(args, out: str, vae: str, name: str, seed: int, steps) -> dict:
    run = os.path.join(out, f"{name}-seed{seed}")
    log = run + ".log"
    os.makedirs(run, exist_ok=True)
    if not os.path.exists(os.path.join(run, "vae")):
        shutil.copytree(vae, os.path.join(run, "vae"))
    opts = [*args.opt, f"train.output_dir={run}", f"train.seed={seed}", *variant_overrides(name, *steps)]
    train_cmd = [sys.executable, "tools/train.py", "-c", args.config, "--resume", *sum((["-o", o] for o in opts), [])]
    if not stages_finished(run, name):
        print(f"[{name} seed {seed}] training ...", flush=True)
        _run(train_cmd, log, args.threads)
    if args.train_only:
        return {"variant": name, "seed": seed}
    model = os.path.join(run, "experts" if VARIANTS[name][1] else "base")
    eval_dir = os.path.join(run, "eval")
    eval_cmd = [sys.executable, "tools/evaluate.py", "--model", model, "--out", eval_dir, "--seed", str(seed),
                "-k", str(args.samples_per_prompt),
                "--detector-weights", args.detector_weights, "--labels", args.labels, *args.eval_args.split()]
    if args.fid_ref:
        eval_cmd += ["--fid-ref", args.fid_ref]
    if args.detector_config:
        eval_cmd += ["--detector-config", args.detector_config]
    print(f"[{name} seed {seed}] evaluating ...", flush=True)
    _run(eval_cmd, log, args.threads)
    with open(os.path.join(eval_dir, "report.json")) as f:
        report = json.load(f)
    print(f"[{name} seed {seed}] FID {report['fid']['value']:.2f}, relation "
          f"{report['composition']['summary']['all']['relation_correct']['mean']:.3f}", flush=True)
    return {"variant": name, "seed": seed, "report": report}


def _interval(stat: dict) -> str:
    return f"{stat['mean']:.2f} [{stat['low']:.2f}, {stat['high']:.2f}]"


def table(results, variants) -> str:
    """Markdown table: FID per seed and mean; composition accuracies pooled over seeds."""
    from ernie_vilg2.evaluation.composition import summarize_records

    rows = ["| variant | FID (per seed) | FID mean | A present | B present | both objects | relation | relation zh "
            "| relation en |",
            "|---|---|---:|---|---|---|---|---|---|"]
    for name in variants:
        mine = [r for r in results if r["variant"] == name]
        if not mine:
            continue
        fids = [r["report"]["fid"]["value"] for r in mine]
        pooled = summarize_records([rec for r in mine for rec in r["report"]["composition"]["images"]])
        cells = [pooled["all"][m] for m in ("a_present", "b_present", "both_present", "relation_correct")]
        cells += [pooled[lang]["relation_correct"] for lang in ("zh", "en")]
        rows.append(f"| {name}: {VARIANTS[name][0]} | {', '.join(f'{v:.1f}' for v in fids)} | "
                    f"{sum(fids) / len(fids):.1f} | " + " | ".join(_interval(c) for c in cells) + " |")
    return "\n".join(rows)


def comparison_table(results, pairs) -> str:
    """Markdown: for each (a, b) of ``pairs``, b - a on the composition metrics over the (seed,
    prompt) pairs both ran (paired sign-flip test over prompts, evaluation/paired.py), and FID
    per shared seed."""
    from ernie_vilg2.evaluation.paired import paired_difference

    rows = ["| comparison | metric | a | b | b - a [95% interval] | p (sign flips over prompts) |",
            "|---|---|---:|---:|---|---:|"]
    for a, b in pairs:
        reports = {v: {r["seed"]: r["report"] for r in results if r["variant"] == v and "report" in r} for v in (a, b)}
        for metric in ("both_present", "relation_correct"):
            d = paired_difference(*({seed: rep["composition"]["images"] for seed, rep in reports[v].items()}
                                    for v in (a, b)), metric)
            rows.append(f"| {a} vs {b} (seeds {', '.join(map(str, d['seeds']))}; {d['prompts']} prompts) | {metric} | "
                        f"{d['mean_a']:.3f} | {d['mean_b']:.3f} | {d['difference']:+.3f} [{d['low']:+.3f}, "
                        f"{d['high']:+.3f}] | {'< 0.001' if d['p_value'] < 0.001 else format(d['p_value'], '.3f')} |")
        seeds = sorted(set(reports[a]) & set(reports[b]))
        fids = {v: [reports[v][seed]["fid"]["value"] for seed in seeds] for v in (a, b)}
        per_seed = ", ".join(f"{y - x:+.1f}" for x, y in zip(fids[a], fids[b]))
        rows.append(f"| {a} vs {b} | FID (lower is better) | {np.mean(fids[a]):.1f} | {np.mean(fids[b]):.1f} | "
                    f"{np.mean(fids[b]) - np.mean(fids[a]):+.1f} (per seed: {per_seed}) | |")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    from ernie_vilg2.training.config import load_config

    cfg = load_config(args.config, args.opt)
    steps = (cfg.train.base.steps, cfg.train.experts.steps, cfg.model.num_experts)
    print(f"U-Net steps per run: {steps[0] + steps[1]} (MoDE: {steps[0]} base + {steps[1]} experts, "
          f"N={steps[2]})", flush=True)
    vae = train_vae(args, out)
    jobs = [(name, seed) for seed in args.seeds for name in args.variants]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda job: train_and_evaluate(args, out, vae, *job, steps), jobs))
    if args.train_only:
        return 0
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"config": args.config, "overrides": args.opt, "seeds": args.seeds, "steps": steps,
                   "runs": results}, f, indent=1, ensure_ascii=False)
    print(table(results, args.variants))
    if args.compare:
        print("\n" + comparison_table(results, [tuple(pair) for pair in args.compare]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
