"""The COCO zero-shot FID-30k protocol (ernie_vilg2/evaluation/coco_protocol.py and
tools/evaluate.py --protocol coco-fid30k) on the 4-image folder of tests/helpers/tiny_coco.py with a
tiny pipeline: the choice of images and captions, the resize, the report, resuming, errors.
The FID of 3 images means nothing, but it is computed as for 30,000."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from helpers.fid_runs import EVALUATE, run_tool
from helpers.paths import REPO_ROOT
from helpers.tiny_coco import IMAGES, write_tiny_coco


@pytest.fixture
def coco_root(tmp_path):
    return write_tiny_coco(tmp_path / "coco")


@pytest.fixture
def coco(coco_root):
    from ernie_vilg2.data.coco import CocoCaptions

    return CocoCaptions(coco_root, "val2014")


def test_selection_is_one_caption_per_distinct_image_fixed_by_the_seed(coco):
    from ernie_vilg2.evaluation.coco_protocol import ProtocolError, select_captions

    chosen = select_captions(coco, 3, seed=0)
    assert len(set(chosen.image_ids)) == 3 and set(chosen.image_ids) <= set(IMAGES)
    by_key = {r["key"]: r for r in coco}
    for image_id, key, caption, path in zip(chosen.image_ids, chosen.keys, chosen.captions, chosen.image_paths):
        assert key.startswith(f"{image_id}_") and by_key[key]["caption"] == caption and by_key[key]["image"] == path
    assert select_captions(coco, 3, seed=0) == chosen
    # A smaller N takes the first images and captions of a larger one.
    smaller, larger = select_captions(coco, 2, seed=0), select_captions(coco, 4, seed=0)
    assert smaller.keys == chosen.keys[:2] and larger.keys[:3] == chosen.keys
    assert {select_captions(coco, 3, seed=s).keys for s in range(1, 6)} - {chosen.keys}, "the seed changes nothing"
    with pytest.raises(ProtocolError, match="5 samples need as many distinct images; .* has captions of 4 images"):
        select_captions(coco, 5, seed=0)


def test_both_sets_are_resized_to_the_shorter_side_and_centre_cropped():
    from ernie_vilg2.evaluation.coco_protocol import CenterCrop

    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = (255, 0, 0)
    wide[:, 10:30] = (0, 255, 0)
    wide[:, 30:] = (0, 0, 255)
    out = CenterCrop(10)(wide)  # 40x20 -> 20x10, the middle 10 columns: the green part
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert (out[:, 1:-1, 1] > 200).all() and (out[:, 1:-1, [0, 2]] < 60).all()
    assert CenterCrop(64)(wide).shape == (64, 64, 3)  # a small image is enlarged
    assert CenterCrop(64).name != CenterCrop(32).name


def test_a_missing_real_image_is_named_before_anything_is_generated(coco):
    from ernie_vilg2.data.coco import CocoError
    from ernie_vilg2.evaluation.coco_protocol import check_real_images, select_captions

    chosen = select_captions(coco, 3, seed=0)
    check_real_images(chosen)
    os.remove(chosen.image_paths[1])
    with pytest.raises(CocoError, match=f"^COCO image not found: {chosen.image_paths[1]}$"):
        check_real_images(chosen)
    with open(chosen.image_paths[1], "wb") as f:
        f.write(b"not an image")
    with pytest.raises(CocoError, match=f"^{chosen.image_paths[1]}: cannot read image"):
        check_real_images(chosen)


@pytest.mark.slow
def test_protocol_generates_resumes_and_reports(tiny_pipeline_dir, fid_cache, coco, tmp_path):
    from ernie_vilg2.evaluation.coco_protocol import CenterCrop, select_captions
    from ernie_vilg2.evaluation.fid import FeatureExtractor, frechet_distance, read_image, statistics
    from ernie_vilg2.utils.integrity import sha256_file

    out = tmp_path / "coco-fid"
    args = ["--model", tiny_pipeline_dir, "--protocol", "coco-fid30k", "--coco-root", coco.image_dir[:-len("/val2014")],
            "--num-samples", 3, "--steps", 1, "--sampler", "ddim", "--guidance", 3, "--seed", 2, "--out", out]
    env = {"XDG_CACHE_HOME": fid_cache["dir"]}
    first = run_tool(EVALUATE, *args, env=env)
    names = ["00000.png", "00001.png", "00002.png"]
    assert sorted(os.listdir(out / "images")) == names
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    chosen = select_captions(coco, 3, seed=0)
    protocol = report["protocol"]
    assert protocol["name"] == "coco-fid30k" and protocol["split"] == "val2014"
    assert (protocol["num_samples"], protocol["protocol_seed"], protocol["image_size"]) == (3, 0, 256)
    assert protocol["image_ids_sha256"] == chosen.image_ids_sha256()
    assert protocol["captions_file"] == coco.captions_json and protocol["image_folder"] == coco.image_dir
    assert protocol["resize"].startswith("shorter side to 256 px with PIL bicubic (antialiased), centre crop 256x256")
    assert protocol["selection_file"] == "coco_selection.json" and "permutation" in protocol["selection"]
    assert (report["seed"], report["sampler"], report["steps"], report["guidance"]) == (2, "ddim", 1, 3.0)
    assert report["num_samples"] == 3 and report["num_images_per_prompt"] == 1 and (report["height"], report["width"]) \
        == (32, 32)
    fid = report["fid"]
    assert fid["reference_kind"] == "coco" and fid["num_reference_images"] == 3
    assert fid["weights"] == fid_cache["weights"] and fid["weights_sha256"] == sha256_file(fid_cache["weights"])
    assert fid["network"].startswith("TF inception-2015-12-05") and fid["resize"].startswith("299x299")
    selection = json.loads((out / "coco_selection.json").read_text(encoding="utf-8"))
    assert [s["coco_image_id"] for s in selection["samples"]] == list(chosen.image_ids)
    assert [(s["image"], s["key"], s["caption"], s["real_image"]) for s in selection["samples"]] == list(
        zip(names, chosen.keys, chosen.captions, chosen.image_paths))
    generation = json.loads((out / "generation.json").read_text(encoding="utf-8"))
    assert generation["prompts"] == list(chosen.captions) and list(generation["images"]) == names
    assert f"COCO FID-3 {fid['value']:.3f}" in first.stdout

    # The value: both sets through the same resize, here in this process.
    extractor = FeatureExtractor(fid_cache["model"], batch_size=3)
    resize = CenterCrop(256)
    generated = extractor.features([resize(read_image(str(out / "images" / n))) for n in names])
    real = extractor.features([resize(read_image(p)) for p in chosen.image_paths])
    assert fid["value"] == pytest.approx(frechet_distance(*statistics(generated), *statistics(real)), rel=1e-5)
    cached = [f for f in os.listdir(os.path.join(fid_cache["dir"], "ernie_vilg2", "fid", "stats"))
              if f.startswith(f"coco_val2014_{chosen.image_ids_sha256()[:16]}_256px")]
    assert len(cached) == 1  # the real images' features, for the next model

    # Resume: a lost image is made again from its own noise; the others are kept.
    before = {n: np.asarray(Image.open(out / "images" / n)) for n in names}
    mtime = os.path.getmtime(out / "images" / names[0])
    os.remove(out / "images" / names[1])
    second = run_tool(EVALUATE, *args, env=env)
    assert "2 images already in" in second.stdout and "generated 1" in second.stdout
    assert os.path.getmtime(out / "images" / names[0]) == mtime
    assert all(np.array_equal(np.asarray(Image.open(out / "images" / n)), before[n]) for n in names)
    again = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert again["fid"]["value"] == pytest.approx(fid["value"], rel=1e-9)
    assert again["protocol"]["image_ids_sha256"] == protocol["image_ids_sha256"]

    # Another protocol seed in the same folder: other captions, refused.
    proc = run_tool(EVALUATE, *args, "--protocol-seed", 1, env=env, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --out: {out} holds images made with other settings (different prompts); "
        "choose another --out or remove that folder"]


def _evaluate_main():
    spec = importlib.util.spec_from_file_location("evaluate_tool", os.path.join(REPO_ROOT, "tools", "evaluate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("extra,expected", [
    ([], "error: --protocol coco-fid30k needs --coco-root DIR"),
    (["--coco-root", "{nowhere}"], "error: --coco-root: COCO folder not found: {nowhere}"),
    (["--coco-root", "{root}", "--coco-split", "val2017"],
     "error: --coco-root: COCO captions file not found: {root}/annotations/captions_val2017.json"),
    (["--coco-root", "{root}", "--num-samples", "5"],
     "error: --num-samples: 5 samples need as many distinct images; {root}/annotations/captions_val2014.json has "
     "captions of 4 images"),
    (["--coco-root", "{root}", "--num-samples", "1"],
     "error: --num-samples must be >= 2 (FID needs 2 images of each set), got 1"),
    (["--coco-root", "{root}", "--prompts", "p.txt"],
     "error: --prompts does not apply to --protocol coco-fid30k (its prompts and reference are COCO's)"),
    (["--coco-root", "{root}", "-k", "2"],
     "error: --num-images-per-prompt: --protocol coco-fid30k makes one image per caption"),
])
def test_protocol_flag_errors_are_one_line(tiny_pipeline_dir, coco_root, tmp_path, capsys, extra, expected):
    values = {"root": coco_root, "nowhere": str(tmp_path / "nowhere")}
    argv = ["--model", tiny_pipeline_dir, "--protocol", "coco-fid30k", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        _evaluate_main()(argv + [a.format(**values) for a in extra])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [expected.format(**values)]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,expected", [
    (["--coco-root", "x"], "error: --coco-root applies to --protocol coco-fid30k only"),
    (["--num-samples", "10"], "error: --num-samples applies to --protocol coco-fid30k only"),
    ([], "error: --fid-ref is required (unless --protocol, or --detector-weights to score with the judge only)"),
])
def test_protocol_flags_need_the_protocol_and_fid_ref_is_needed_without_it(tiny_pipeline_dir, tmp_path, capsys,
                                                                           argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        _evaluate_main()(["--model", tiny_pipeline_dir, "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [expected]
