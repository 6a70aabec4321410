"""make demo stays honest: its data holds every object its prompts name, in the scenes they
describe; the judge reads every demo prompt in both languages (a single object or a scene); and
a few-step run of the demo config goes through training, the grid and the judge's scoring as
the Makefile runs them."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from ernie_vilg2.data.emoji_catalog import find_by_name
from ernie_vilg2.data.prepare import prepare_builtin_dataset
from ernie_vilg2.data.scenes import SCENE_CLASSES
from ernie_vilg2.evaluation.composition import parse_scene_prompt
from ernie_vilg2.evaluation.object_prompts import parse_object_prompt
from ernie_vilg2.training.config import load_config

from helpers.paths import REPO_ROOT, TOOL_ENV


def makefile_variable(name):
    """The value of a Makefile variable (``=`` or ``?=``), continuation lines joined."""
    with open(os.path.join(REPO_ROOT, "Makefile"), encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    match = re.search(rf"^{name}\s*\??=\s*(.*)$", text, re.M)
    assert match, f"Makefile has no {name}"
    return match.group(1).strip()


def demo_prompts():
    words = shlex.split(makefile_variable("DEMO_PROMPTS"))
    assert words[::2] == ["--prompt"] * (len(words) // 2) and len(words) % 2 == 0
    return words[1::2]


def demo_config_path():
    return os.path.join(REPO_ROOT, makefile_variable("DEMO_CONFIG"))


def judge_labels():
    """The detector's labels: the built-in scene classes (tools/train_detector.py's data)."""
    return [{"id": i, "en": e.name_en, "zh": e.name_zh} for i, e in enumerate(map(find_by_name, SCENE_CLASSES))]


def read_prompts(labels):
    """{prompt: ("object", name) or ("scene", (a, b, relation))}; None for a prompt the judge cannot read."""
    found = {}
    for prompt in demo_prompts():
        obj, scene = parse_object_prompt(prompt, labels), parse_scene_prompt(prompt, labels)
        found[prompt] = (("object", obj.name) if obj else ("scene", (scene.a, scene.b, scene.relation)) if scene
                         else None)
    return found


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The demo config's built-in data, built as training builds it (a second or two)."""
    cfg = load_config(demo_config_path())
    folder = prepare_builtin_dataset(cfg.data.builtin, cfg.data.resolution,
                                     out_dir=str(tmp_path_factory.mktemp("demo") / "data"), progress=False)
    with open(os.path.join(folder, "labels.json"), encoding="utf-8") as f:
        labels = json.load(f)
    with open(os.path.join(folder, "train.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return labels, records


def test_the_demo_data_holds_every_object_and_scene_its_prompts_name(demo_data):
    labels, records = demo_data
    singles = {r["labels"][0] for r in records if r["image"].startswith("images/single_") and r["labels"]}
    scenes = {(*r["labels"], r["relation"]) for r in records if r.get("relation")}
    read = read_prompts(labels)
    assert None not in read.values(), [p for p, v in read.items() if v is None]
    for prompt, (kind, what) in read.items():
        if kind == "object":  # the object has images of its own, not only in scenes
            assert what in singles, prompt
        else:
            assert what in scenes, prompt
    assert {kind for kind, _ in read.values()} == {"object", "scene"}


def test_the_judge_reads_every_demo_prompt_in_both_languages():
    read = read_prompts(judge_labels())
    assert None not in read.values(), [p for p, v in read.items() if v is None]
    by_lang = {}
    for prompt, verdict in read.items():
        by_lang.setdefault("zh" if re.search(r"[\u4e00-\u9fff]", prompt) else "en", []).append(verdict)
    # The prompts come in pairs, Chinese then English, saying the same.
    assert by_lang["zh"] == by_lang["en"]
    assert sum(kind == "scene" for kind, _ in by_lang["en"]) >= 2


def run(args, cwd):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=TOOL_ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_a_few_steps_of_the_demo_train_draw_the_grid_and_are_judged(tmp_path):
    """The demo's commands (Makefile: demo, demo-score) on its config with a few steps of
    tiny models; a judge with random weights stands in for the trained detector."""
    from ernie_vilg2.knowledge.visual.detector import Detector

    run_dir = tmp_path / "demo"
    shrink = {"train.output_dir": run_dir, "data.builtin.out_dir": tmp_path / "data",
              "data.builtin.num_scenes": 8, "data.builtin.num_val_scenes": 2, "model.num_experts": 2,
              "model.text_encoder.hidden_size": 16, "model.text_encoder.intermediate_size": 32,
              "model.text_encoder.num_hidden_layers": 1, "model.unet.block_out_channels": "[16, 32]",
              "model.vae.block_out_channels": "[8, 16, 16]", "train.batch_size": 4, "train.vae.steps": 2,
              "train.base.steps": 3, "train.experts.steps": 2, "sample.steps": 2, "sample.prompts": "[红苹果]"}
    overrides = [a for k, v in shrink.items() for a in ("-o", f"{k}={v}")]
    run(["tools/train.py", "--config", demo_config_path(), *overrides, "--resume"], REPO_ROOT)
    sampling = shlex.split(makefile_variable("DEMO_SAMPLING"))
    sampling[sampling.index("--steps") + 1] = "2"
    prompts = demo_prompts()
    run(["tools/generate.py", "--model", run_dir / "experts", *sampling, "--seed", "0",
         *[a for p in prompts for a in ("--prompt", p)], "--out", run_dir / "demo" / "grid.png"], REPO_ROOT)
    assert (run_dir / "demo" / "grid.png").is_file()

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(judge_labels(), ensure_ascii=False), encoding="utf-8")
    weights = tmp_path / "judge.safetensors"
    Detector(os.path.join(REPO_ROOT, "configs", "detector", "picodet_lcnet_tiny.yml"), str(labels)).save_weights(
        str(weights))
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
    proc = run(["tools/evaluate.py", "--model", run_dir / "experts", "--prompts", prompt_file, "-k", 1, *sampling,
                "--out", run_dir / "score", "--detector-weights", weights, "--labels", labels], REPO_ROOT)
    composition = json.loads((run_dir / "score" / "report.json").read_text(encoding="utf-8"))["composition"]
    kinds = [kind for kind, _ in read_prompts(judge_labels()).values()]
    assert composition["num_prompts"] == kinds.count("scene") and composition["objects"]["num_prompts"] == kinds.count(
        "object")
    assert "composition (" in proc.stdout and "single objects (" in proc.stdout
