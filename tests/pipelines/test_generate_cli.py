"""tools/generate.py and tools/branch_experts.py run as subprocesses on a tiny saved pipeline."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers.paths import REPO_ROOT


GENERATE = os.path.join(REPO_ROOT, "tools", "generate.py")
BRANCH = os.path.join(REPO_ROOT, "tools", "branch_experts.py")


def _run(script, *args, check=True):
    env = {**os.environ, "GLOG_minloglevel": "2"}
    proc = subprocess.run(
        [sys.executable, script, *map(str, args)], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _csv_rows(path, column, n):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [row[column] for row, _ in zip(csv.DictReader(f), range(n))]


@pytest.mark.slow
def test_generate_from_csv_writes_grid_singles_and_captions(tiny_pipeline_dir, vilg300_csv, tmp_path):
    out = tmp_path / "samples" / "vilg.png"
    proc = _run(GENERATE, "--model", tiny_pipeline_dir, "--prompt-file", vilg300_csv, "--limit", 2,
                "--steps", 2, "--sampler", "ddim", "--seed", 0, "--out", out)
    assert str(out) in proc.stdout  # it says where it wrote
    singles = [tmp_path / "samples" / f"vilg_{i:03d}.png" for i in range(2)]
    for path in singles:
        assert Image.open(path).size == (32, 32)
    # 2 images side by side (near-square layout), 2-pixel padding
    assert Image.open(out).size == (2 * 32 + 3 * 2, 32 + 2 * 2)
    record = json.loads((tmp_path / "samples" / "vilg.json").read_text(encoding="utf-8"))
    assert record["images"] == dict(zip(["vilg_000.png", "vilg_001.png"], _csv_rows(vilg300_csv, "文本", 2)))
    assert not [p for p in os.listdir(tmp_path / "samples") if p.startswith(".")]  # no temp files left


@pytest.mark.slow
def test_generate_prompts_and_text_file_with_several_images_per_prompt(tiny_pipeline_dir, tmp_path):
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\ufeff一只黄色的猫\n\n", encoding="utf-8")
    out = tmp_path / "grid.png"
    _run(GENERATE, "--model", tiny_pipeline_dir, "--prompt", "a red apple", "--prompt-file", prompt_file,
         "--num-images-per-prompt", 2, "--height", 16, "--width", 24, "--steps", 2, "--sampler", "dpm",
         "--batch-size", 1, "--out", out)
    images = [np.asarray(Image.open(tmp_path / f"grid_{i:03d}.png")) for i in range(4)]
    assert all(im.shape == (16, 24, 3) for im in images)
    assert not np.array_equal(images[0], images[1])  # two draws per prompt, not copies
    assert Image.open(out).size == (2 * 24 + 3 * 2, 2 * 16 + 3 * 2)  # one row per prompt
    captions = json.loads((tmp_path / "grid.json").read_text(encoding="utf-8"))["images"]
    assert list(captions.values()) == ["a red apple", "a red apple", "一只黄色的猫", "一只黄色的猫"]


@pytest.mark.slow
def test_branch_experts_cli_makes_identical_experts(tiny_pipeline_dir, tiny_pipeline, tmp_path):
    from ernie_vilg2.pipelines import ErnieViLG2Pipeline

    out = tmp_path / "stage2"
    proc = _run(BRANCH, "--model", tiny_pipeline_dir, "--num-experts", 4, "--out", out)
    assert str(out) in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage2"]  # the temp folder was renamed away
    pipe = ErnieViLG2Pipeline.from_pretrained(str(out))
    assert pipe.unet.num_experts == 4
    source = {k: v.numpy() for k, v in tiny_pipeline.unet.experts[0].state_dict().items()}
    for expert in pipe.unet.experts:
        state = expert.state_dict()
        assert state.keys() == source.keys()
        assert all(np.array_equal(state[k].numpy(), source[k]) for k in source)
    for name in ("vae", "text_encoder"):
        ref = getattr(tiny_pipeline, name).state_dict()
        assert all(np.array_equal(v.numpy(), ref[k].numpy()) for k, v in getattr(pipe, name).state_dict().items())
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(pipe.scheduler.config) == public(tiny_pipeline.scheduler.config)

    # a multi-expert folder is not a stage-1 model
    again = _run(BRANCH, "--model", out, "--num-experts", 2, "--out", tmp_path / "x", check=False)
    assert again.returncode != 0 and "--model" in again.stderr and "1 expert" in again.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,expected",
    [
        (["--model", "{missing}", "--prompt", "a cat"], ["--model", "{missing}"]),
        (["--model", "{model}", "--prompt-file", "{missing}.txt"], ["--prompt-file", "{missing}.txt"]),
        (["--model", "{model}", "--prompt-file", "{csv}", "--column", "Caption"],
         ["--column", "Caption", "Prompt, 文本, 类别, 来源"]),
        (["--model", "{model}"], ["no prompt"]),
        (["--model", "{model}", "--prompt", "a cat", "--steps", "0"], ["--steps"]),
        (["--model", "{model}", "--prompt", "a cat", "--out", "grid.jpg"], ["--out"]),
        # DPM-Solver++ (the default sampler) repeats a timestep at >= T steps: refused before sampling
        (["--model", "{model}", "--prompt", "a cat", "--steps", "1000", "--out", "{out}"], ["--steps", "999", "1000"]),
        (["--model", "{model}", "--prompt", "a cat", "--steps", "1001", "--sampler", "ddim", "--out", "{out}"],
         ["--steps", "1000", "1001"]),
        (["--model", "{model}", "--prompt", "a cat", "--seed", "-1", "--out", "{out}"], ["--seed", "-1"]),
        # the C++ runner's range: a signed 64-bit integer
        (["--model", "{model}", "--prompt", "a cat", "--seed", str(2**63), "--out", "{out}"],
         ["--seed must be an integer >= 0 and <= 2**63 - 1, got 9223372036854775808"]),
        # NaN/inf guidance makes every latent NaN: black images
        (["--model", "{model}", "--prompt", "a cat", "--guidance", "nan", "--out", "{out}"],
         ["--guidance must be >= 0 and finite, got nan"]),
        (["--model", "{model}", "--prompt", "a cat", "--guidance", "inf", "--out", "{out}"],
         ["--guidance must be >= 0 and finite, got inf"]),
        (["--model", "{model}", "--prompt", "a cat", "--guidance=-inf", "--out", "{out}"], ["--guidance", "-inf"]),
        (["--model", "{model}", "--prompt-file", "{tsv}", "--column", "Caption", "--out", "{out}"],
         ["--column", "Caption", "Prompt, 文本"]),
    ],
)
def test_generate_errors_name_the_flag(tiny_pipeline_dir, tmp_path, args, expected):
    csv_path = tmp_path / "set.csv"
    csv_path.write_text("\ufeffPrompt,文本,类别,来源\na,一,颜色,x\n", encoding="utf-8")
    tsv_path = tmp_path / "set.tsv"
    tsv_path.write_text("Prompt\t文本\na\t一\n", encoding="utf-8")
    names = dict(missing=str(tmp_path / "nope"), model=tiny_pipeline_dir, csv=str(csv_path), tsv=str(tsv_path),
                 out=str(tmp_path / "g.png"))
    proc = _run(GENERATE, *[a.format(**names) for a in args], check=False)
    assert proc.returncode == 2  # as argparse and every other tool of the project
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr  # one line that says what is wrong
    for text in expected:
        assert text.format(**names) in errors[0], proc.stderr
    assert not list(tmp_path.glob("g*"))  # refused before anything is written


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--model", "{missing}", "--num-experts", "2", "--out", "{out}"], ["--model", "{missing}"]),
        (["--model", "{model}", "--num-experts", "0", "--out", "{out}"], ["--num-experts"]),
        (["--model", "{model}", "--num-experts", "3", "--out", "{out}"], ["--num-experts", "divide"]),
        (["--model", "{model}", "--num-experts", "2", "--out", "{model}"], ["--out", "exists"]),
    ],
)
def test_branch_errors_name_the_flag(tiny_pipeline_dir, tmp_path, args, expected):
    names = dict(missing=str(tmp_path / "nope"), model=tiny_pipeline_dir, out=str(tmp_path / "out"))
    proc = _run(BRANCH, *[a.format(**names) for a in args], check=False)
    assert proc.returncode == 2
    for text in expected:
        assert text.format(**names) in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


INFER = os.path.join(REPO_ROOT, "deploy", "python", "infer.py")


@pytest.mark.parametrize("script", [GENERATE, INFER])
@pytest.mark.parametrize("args,expected", [
    ([b"--prompt", b"ok", b"--prompt", b"red \xff apple"], "--prompt #2: not valid UTF-8 (byte 0xff at offset 4)"),
    ([b"--prompt", "红苹".encode("utf-8")[:-1]], "--prompt #1: not valid UTF-8 (byte 0xe8 at offset 3)"),  # cut
    ([b"--prompt", b"ok", b"--negative-prompt", b"\xc3("],
     "--negative-prompt: not valid UTF-8 (byte 0xc3 at offset 0)"),
    ([b"--prompt-file", b"{prompts}"], "--prompt-file: {prompts}: not valid UTF-8 (byte 0xfe at offset 19, line 2)"),
    ([b"--prompt", b"ok", b"--out", b"{tmp}/g\xff.png"], "--out: not valid UTF-8 (byte 0xff at offset "),  # a name
])
def test_text_that_is_not_utf8_is_refused_before_any_image(tiny_pipeline_dir, tmp_path, script, args, expected):
    """Undecodable argument bytes (Python keeps them as lone surrogates) and file bytes: one line
    naming the flag, exit 2, nothing written (not images first, then a failing captions JSON)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("\ufeff红苹果\na cat ".encode("utf-8") + b"\xfe\n")  # BOM 3 + 9 + 1 + 6 bytes, then 0xfe
    args = [a.replace(b"{prompts}", os.fsencode(prompts)).replace(b"{tmp}", os.fsencode(tmp_path)) for a in args]
    command = [sys.executable, script, "--model", tiny_pipeline_dir, "--steps", "1", "--out", str(tmp_path / "g.png"),
               *args]
    proc = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "GLOG_minloglevel": "2"}, capture_output=True,
                          timeout=300)
    stderr = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    assert proc.returncode == 2, stderr
    assert len(stderr) == 1 and stderr[0].startswith("error: " + expected.format(prompts=prompts)), stderr
    assert not list(tmp_path.glob("g*"))


@pytest.mark.slow
def test_nan_weights_are_an_error_not_black_images(make_tiny_pipeline, tmp_path):
    import paddle

    pipe = make_tiny_pipeline()
    bias = pipe.unet.experts[0].conv_out.bias
    bias.set_value(paddle.full_like(bias, float("nan")))
    pipe.save_pretrained(str(tmp_path / "nan-model"))
    proc = _run(GENERATE, "--model", tmp_path / "nan-model", "--prompt", "a cat", "--steps", 2, "--sampler", "ddim",
                "--out", tmp_path / "g.png", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: sampling produced non-finite latents (NaN/inf) at step 1 of 2; check the guidance scale, "
        "the number of steps and the model weights"]
    assert not list(tmp_path.glob("g*"))


def test_seed_boundary_of_the_cli_checks():
    import argparse

    from ernie_vilg2.cli_utils import add_generation_arguments, check_generation_arguments

    parser = argparse.ArgumentParser()
    add_generation_arguments(parser)
    check_generation_arguments(parser.parse_args(["--prompt", "x", "--seed", str(2**63 - 1)]))
    with pytest.raises(SystemExit) as exc:
        check_generation_arguments(parser.parse_args(["--prompt", "x", "--seed", str(2**63)]))
    assert exc.value.code == 2


# -- the package helpers behind the CLI (in process, fast) ------------------------------
def test_read_prompts_csv_and_text(vilg300_csv, tmp_path):
    from ernie_vilg2.utils.prompts import PromptColumnError, read_prompts

    assert read_prompts(vilg300_csv, limit=2) == _csv_rows(vilg300_csv, "文本", 2)  # BOM header handled
    assert read_prompts(vilg300_csv, column="Prompt", limit=1) == _csv_rows(vilg300_csv, "Prompt", 1)
    assert len(read_prompts(vilg300_csv)) == len(_csv_rows(vilg300_csv, "文本", 10_000))
    with pytest.raises(PromptColumnError, match="Prompt, 文本, 类别, 来源"):
        read_prompts(vilg300_csv, column="caption")

    english_only = tmp_path / "en.csv"
    english_only.write_text("id,Prompt\n1,a cat\n2,\n3,a dog\n", encoding="utf-8")
    assert read_prompts(str(english_only)) == ["a cat", "a dog"]  # falls back to Prompt, skips blanks
    no_default = tmp_path / "x.csv"
    no_default.write_text("id,caption\n1,a cat\n", encoding="utf-8")
    with pytest.raises(PromptColumnError, match="id, caption"):
        read_prompts(str(no_default))

    text = tmp_path / "p.txt"
    text.write_text("\ufeff 红苹果 \n\nblue heart\n", encoding="utf-8")
    assert read_prompts(str(text)) == ["红苹果", "blue heart"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(str(empty))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_prompts(str(tmp_path / "missing.txt"))


@pytest.mark.parametrize("suffix", [".tsv", ".tab", ".TSV"])
def test_read_prompts_tsv_like_csv(vilg300_csv, tmp_path, suffix):
    from ernie_vilg2.utils.prompts import PromptColumnError, read_prompts

    with open(vilg300_csv, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    tsv = tmp_path / f"vilg300{suffix}"
    with open(tsv, "w", encoding="utf-8", newline="") as f:  # with a BOM, as spreadsheets write it
        f.write("\ufeff")
        csv.writer(f, delimiter="\t").writerows(rows)
    assert read_prompts(str(tsv), limit=3) == _csv_rows(vilg300_csv, "文本", 3)  # header is not a prompt
    assert read_prompts(str(tsv), column="Prompt", limit=2) == _csv_rows(vilg300_csv, "Prompt", 2)
    assert len(read_prompts(str(tsv))) == len(rows) - 1
    with pytest.raises(PromptColumnError, match="Prompt, 文本, 类别, 来源"):
        read_prompts(str(tsv), column="caption")

    # a .txt file is one prompt per line, even if its first line looks like a header
    text = tmp_path / "p.txt"
    text.write_text("Prompt\t文本\na cat\t一只猫\n", encoding="utf-8")
    assert read_prompts(str(text)) == ["Prompt\t文本", "a cat\t一只猫"]
    with pytest.raises(PromptColumnError, match=r"\.csv, \.tsv"):
        read_prompts(str(text), column="Prompt")


@pytest.mark.slow
def test_generate_from_tsv_with_column(tiny_pipeline_dir, tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("id\tPrompt\tnote\n1\ta red apple\tx\n2\ta blue heart\ty\n", encoding="utf-8")
    out = tmp_path / "grid.png"
    _run(GENERATE, "--model", tiny_pipeline_dir, "--prompt-file", tsv, "--steps", 1, "--out", out)
    captions = json.loads((tmp_path / "grid.json").read_text(encoding="utf-8"))["images"]
    assert captions == {"grid_000.png": "a red apple", "grid_001.png": "a blue heart"}
    _run(GENERATE, "--model", tiny_pipeline_dir, "--prompt-file", tsv, "--column", "note", "--steps", 1, "--out", out)
    captions = json.loads((tmp_path / "grid.json").read_text(encoding="utf-8"))["images"]
    assert list(captions.values()) == ["x", "y"]


@pytest.mark.parametrize("count,width", [(3, 3), (999, 3), (1000, 4), (1001, 4)])
def test_single_image_names_are_padded_to_the_count(tmp_path, count, width):
    from ernie_vilg2.pipelines import save_generation

    images = [Image.new("RGB", (2, 2), (i % 256, 0, 0)) for i in range(count)]
    captions = [f"prompt {i}" for i in range(count)]
    written = save_generation(images, captions, str(tmp_path / "grid.png"), cols=50)
    names = [os.path.basename(p) for p in written["images"]]
    assert names[0] == "grid_" + "0" * width + ".png" and names[-1] == f"grid_{count - 1:0{width}d}.png"
    assert sorted(os.listdir(tmp_path)) == sorted(names + ["grid.json", "grid.png"])
    assert sorted(names) == names  # file order is generation order
    record = json.loads((tmp_path / "grid.json").read_text(encoding="utf-8"))
    assert list(record["images"]) == names and list(record["images"].values()) == captions
    assert np.asarray(Image.open(written["images"][-1]))[0, 0, 0] == (count - 1) % 256


def test_make_grid_layout_and_errors():
    from ernie_vilg2.utils.images import make_grid

    tiles = [np.full((4, 6, 3), v, dtype=np.uint8) for v in (10, 20, 30)]
    grid = np.asarray(make_grid(tiles, cols=2, padding=1))
    assert grid.shape == (2 * 4 + 3, 2 * 6 + 3, 3)
    assert (grid[1:5, 1:7] == 10).all() and (grid[1:5, 8:14] == 20).all() and (grid[6:10, 1:7] == 30).all()
    assert (grid[6:10, 8:14] == 255).all()  # the empty cell keeps the background
    floats = make_grid([np.ones((4, 6, 3), dtype="float32")], padding=0)
    assert np.asarray(floats).min() == 255
    with pytest.raises(ValueError, match="image 1"):
        make_grid([tiles[0], np.zeros((5, 6, 3), dtype=np.uint8)])
    with pytest.raises(ValueError, match="no images"):
        make_grid([])


def test_atomic_directory_keeps_the_old_folder_on_error(tmp_path):
    from ernie_vilg2.utils.io import atomic_directory

    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(FileExistsError):
        with atomic_directory(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("2")
            raise RuntimeError("crash while saving")
    assert (target / "a.txt").read_text() == "1"
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folders left


def test_fewer_images_into_the_same_out_remove_the_stale_numbered_ones(tmp_path):
    from ernie_vilg2.pipelines import save_generation

    out = str(tmp_path / "g.png")
    save_generation([Image.new("RGB", (2, 2))] * 4, list("abcd"), out)
    kept = ["g_extra.png", "g_001.jpg", "g_002.png.bak", "g_3.txt", "other_005.png", "g.txt",
            "g_007.png", "g_007.json"]  # the last two: another run's grid (--out g_007.png) and its captions
    for name in kept + ["g_0000.png"]:  # g_0000.png: a single of an earlier run with 1,000+ images
        (tmp_path / name).write_bytes(b"x")
    save_generation([Image.new("RGB", (2, 2))] * 2, list("ab"), out)
    assert sorted(os.listdir(tmp_path)) == sorted(["g.png", "g.json", "g_000.png", "g_001.png"] + kept)
    assert list(json.loads((tmp_path / "g.json").read_text(encoding="utf-8"))["images"]) == ["g_000.png",
                                                                                            "g_001.png"]
