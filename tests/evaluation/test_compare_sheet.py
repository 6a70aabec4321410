"""Side-by-side sheets: the prompt sets, tools/compare.py and its errors, and the HTML page in a
real headless Chromium (clicks and keys, the tally, the JSON export, votes kept over a reload).

The browser is Debian's chromium, installed by scripts/install_browser.sh (make test runs it;
the fixture runs it too). Without it the browser test is skipped with the reason, except on CI
(CI set), where it fails.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.headless_chromium import HeadlessChromium
from helpers.paths import REPO_ROOT


COMPARE = os.path.join(REPO_ROOT, "tools", "compare.py")


def _compare(*args):
    env = {**os.environ, "GLOG_minloglevel": "2"}
    return subprocess.run([sys.executable, COMPARE, *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _table(path: Path, rows, header=("Prompt", "文本", "类别", "来源")) -> Path:
    lines = [",".join(header)] + [",".join(row) for row in rows]
    path.write_text("\ufeff" + "\r\n".join(lines) + "\r\n", encoding="utf-8")  # as ViLG-300: BOM, CRLF
    return path


# -- prompt sets --------------------------------------------------------------------------------
def test_prompt_set_vilg300_languages_categories_and_limit(vilg300_csv):
    from ernie_vilg2.evaluation.prompt_sets import read_prompt_set

    zh = read_prompt_set(vilg300_csv, "zh")
    en = read_prompt_set(vilg300_csv, "en")
    assert len(zh) == len(en) == 300  # quoted cells spanning lines are one row each
    assert (zh[0].text, zh[0].category, zh[0].lang) == ("一辆红色的汽车。", "颜色", "zh")
    assert (en[0].text, en[0].category, en[0].lang) == ("A red colored car.", "颜色", "en")
    assert read_prompt_set(vilg300_csv) == zh  # 文本 by default, as tools/generate.py
    both = read_prompt_set(vilg300_csv, "both", limit=3)
    assert [p.text for p in both] == [p.text for pair in zip(zh[:3], en[:3]) for p in pair]
    assert len({p.category for p in zh}) == 16 and all(p.category for p in zh)


def test_prompt_set_text_file_and_other_column(tmp_path):
    from ernie_vilg2.evaluation.prompt_sets import EvalPrompt, read_prompt_set
    from ernie_vilg2.utils.prompts import PromptColumnError

    txt = tmp_path / "p.txt"
    txt.write_text("\ufeffa red apple\n\n红苹果\n", encoding="utf-8")
    assert read_prompt_set(str(txt)) == [EvalPrompt("a red apple"), EvalPrompt("红苹果")]
    with pytest.raises(PromptColumnError, match="not a table"):
        read_prompt_set(str(txt), lang="en")
    tsv = tmp_path / "p.tsv"
    tsv.write_text("text\tnote\nblue heart\tx\n\t\npurple circle\ty\n", encoding="utf-8")
    assert [p.text for p in read_prompt_set(str(tsv), column="text", limit=2)] == ["blue heart", "purple circle"]
    with pytest.raises(PromptColumnError, match="available: text, note"):
        read_prompt_set(str(tsv))


# -- tools/compare.py -----------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_cli_same_seeds_for_both_models(tiny_pipeline_dir, tmp_path):
    from ernie_vilg2.pipelines import generate_images, load_pipeline

    table = _table(tmp_path / "prompts.csv", [("a red apple", "红苹果", "颜色", "x"), ("a cat face", "猫脸", "动物", "y")])
    out = tmp_path / "sheet"
    proc = _compare("--model-a", tiny_pipeline_dir, "--model-b", tiny_pipeline_dir, "--prompts", table,
                    "--lang", "both", "--images-per-prompt", 2, "--steps", 2, "--sampler", "ddim", "--seed", 1,
                    "--guidance", 3, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert str(out / "index.html") in proc.stdout
    record = json.loads((out / "sheet.json").read_text(encoding="utf-8"))
    assert record["models"] == {"A": "pipeline (A)", "B": "pipeline (B)"}  # one folder twice: told apart
    assert record["settings"] == {"sampler": "ddim", "steps": 2, "guidance": 3.0, "seed": 1, "images per prompt": 2}
    assert [(i["prompt"], i["category"], i["lang"]) for i in record["items"]] == [
        ("红苹果", "颜色", "zh"), ("a red apple", "颜色", "en"), ("猫脸", "动物", "zh"), ("a cat face", "动物", "en")]

    def load(rel):
        return np.asarray(Image.open(out / rel))

    # The same model under the same seeds: A's and B's images are the same, and they are the
    # images generate_images makes with these settings.
    pipe = load_pipeline(tiny_pipeline_dir, sampler="ddim")
    expected = generate_images(pipe, [i["prompt"] for i in record["items"]], seed=1, num_images_per_prompt=2,
                               num_inference_steps=2, guidance_scale=3.0)
    files_a = [f for item in record["items"] for f in item["images"]["A"]]
    files_b = [f for item in record["items"] for f in item["images"]["B"]]
    assert len(files_a) == len(files_b) == 8
    for fa, fb, image in zip(files_a, files_b, expected):
        assert load(fa).shape == (32, 32, 3)
        np.testing.assert_array_equal(load(fa), load(fb))
        np.testing.assert_array_equal(load(fa), np.asarray(image))
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 16  # every image embedded
    assert "http://" not in page and "https://" not in page  # nothing to fetch


@pytest.mark.parametrize("case", ["missing model", "missing column", "no prompt column", "header only",
                                  "empty text file", "bad limit"])
def test_compare_cli_bad_input_is_one_error_line(case, tiny_pipeline_dir, tmp_path):
    rows = [("a red apple", "红苹果", "颜色", "x")]
    prompts, extra, model_a = _table(tmp_path / "p.csv", rows), [], tiny_pipeline_dir
    expected = {
        "missing model": "error: --model-a: model folder not found:",
        "missing column": "error: --lang: ",
        "no prompt column": "error: --prompts: ",
        "header only": "error: --prompts: no prompts in",
        "empty text file": "error: --prompts: no prompts in",
        "bad limit": "error: --limit must be >= 1, got 0",
    }[case]
    if case == "missing model":
        model_a = str(tmp_path / "no-such-model")
    elif case == "missing column":
        prompts, extra = _table(tmp_path / "zh.csv", [("红苹果", "颜色")], header=("文本", "类别")), ["--lang", "en"]
    elif case == "no prompt column":
        prompts = _table(tmp_path / "t.csv", [("red apple", "颜色")], header=("text", "类别"))
    elif case == "header only":
        prompts = _table(tmp_path / "h.csv", [])
    elif case == "empty text file":
        prompts = tmp_path / "empty.txt"
        prompts.write_text("\n  \n", encoding="utf-8")
    elif case == "bad limit":
        extra = ["--limit", 0]
    out = tmp_path / "out"
    proc = _compare("--model-a", model_a, "--model-b", tiny_pipeline_dir, "--prompts", prompts, *extra, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.startswith(expected) and proc.stderr.count("\n") == 1, proc.stderr
    if case == "missing column":
        assert "'Prompt'" in proc.stderr and "文本, 类别" in proc.stderr  # what is missing, what there is
    assert not out.exists()


def test_left_right_order_is_balanced_and_seeded():
    from ernie_vilg2.evaluation.sheet import left_models

    order = left_models(9, seed=0)
    assert order.count("A") == 5 and order.count("B") == 4
    assert left_models(9, seed=0) == order
    assert any(left_models(9, seed=s) != order for s in range(1, 5))


# -- the page in a browser ------------------------------------------------------------------------
CATEGORIES = ["颜色", "颜色", "位置", "位置", "计数", "", "颜色"]
NAMES = {"A": "model-one", "B": "model-two"}


def _sheet_items(categories=CATEGORIES):
    """Model A's images are red, model B's blue (K = 2 per prompt, 32 px)."""
    from ernie_vilg2.evaluation.sheet import SheetItem

    def image(rgb):
        return np.tile(np.array(rgb, np.uint8), (32, 32, 1))

    prompts = ["红苹果", "a blue heart", "猫在狗的左边", "</script><b>not bold</b>", "三只猫", "一只青蛙", "黄色方块"]
    return [SheetItem(p, [image((220, 20 + 10 * i, 20)), image((200, 20, 40))],
                      [image((20, 20 + 10 * i, 220)), image((40, 20, 200))], c, "zh")
            for i, (p, c) in enumerate(zip(prompts, categories))]


READY = "document.body.dataset.ready === 'true'"  # the stored votes are loaded
SAVED = "document.body.dataset.unsaved === '0'"  # every vote is stored (a reload aborts pending saves)
NO_STORAGE_WARNING = "document.getElementById('storage-warning').hidden"
PAGE_STATE = """(() => {
  const tally = [];  // [category, counts] pairs: a category may be named "__proto__"
  document.querySelectorAll('#tally tbody tr').forEach(row => {
    const c = {}; row.querySelectorAll('td').forEach(td => { c[td.dataset.count] = +td.textContent; });
    tally.push([row.dataset.category || 'all', c]);
  });
  const chosen = Array.from(document.querySelectorAll('.item')).map(item =>
    Array.from(item.querySelectorAll('button.chosen')).map(b => b.dataset.choice));
  return {tally: Object.fromEntries(tally), chosen: chosen, progress: document.getElementById('progress').textContent,
          bar: document.getElementById('progress-bar').value,
          current: document.querySelector('.item.current').dataset.index};
})()"""

SIDES = """Array.from(document.querySelectorAll('.item')).map(item => {
  const sides = {};
  item.querySelectorAll('figure.side').forEach(fig => {
    const img = fig.querySelector('img');
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d'); ctx.drawImage(img, 0, 0);
    const [r, g, b] = ctx.getImageData(4, 4, 1, 1).data;
    sides[fig.classList.contains('left') ? 'left' : 'right'] =
      {red: r > b, text: fig.innerText, shown: getComputedStyle(fig.querySelector('.model-label')).display !== 'none'};
  });
  return sides;
})"""


def _expected(sides, lefts, categories=CATEGORIES):
    """Votes in model terms and the tally the page must show, from the sides clicked."""
    other = {"A": "B", "B": "A"}
    choices = {i: "tie" if s == "tie" else lefts[i] if s == "left" else other[lefts[i]] for i, s in sides.items()}
    tally = {c or "all": {"A": 0, "B": 0, "tie": 0, "voted": 0} for c in [""] + categories}
    for i, choice in choices.items():
        for cat in {"all", categories[i] or "all"}:
            tally[cat][choice] += 1
            tally[cat]["voted"] += 1
    return choices, tally


@pytest.mark.slow
def test_sheet_in_headless_chromium(chromium, tmp_path):
    from ernie_vilg2.evaluation.sheet import write_sheet

    written = write_sheet(_sheet_items(), str(tmp_path / "sheet"), NAMES["A"], NAMES["B"], seed=3,
                          settings={"steps": 2})
    record = json.loads(Path(written["json"]).read_text(encoding="utf-8"))
    lefts = [item["left"] for item in record["items"]]
    assert sorted(lefts) == ["A"] * 4 + ["B"] * 3
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    with HeadlessChromium(chromium, timeout=30) as browser:
        browser.allow_downloads(str(downloads))
        browser.goto(Path(written["html"]).as_uri())
        browser.wait_for(READY)
        # Each side shows the images of the model the page records for it; names stay hidden.
        shown = browser.evaluate(SIDES)
        assert [s["left"]["red"] for s in shown] == [left == "A" for left in lefts]
        assert [s["right"]["red"] for s in shown] == [left == "B" for left in lefts]
        for s in shown:
            assert not s["left"]["shown"] and not s["right"]["shown"]
            assert not any(name in s[side]["text"] for name in NAMES.values() for side in ("left", "right"))
        assert browser.evaluate("document.querySelector('#item-3 .prompt').textContent") == "</script><b>not bold</b>"

        # Clicks, then keys (a vote moves to the next unvoted prompt), then a changed vote.
        browser.click('#item-0 button[data-choice="left"]')
        browser.click('#item-1 button[data-choice="right"]')
        browser.click('#item-2 button[data-choice="tie"]')
        assert browser.evaluate(PAGE_STATE)["current"] == "3"
        browser.press("ArrowRight", "ArrowRight", 39)  # item 3: right
        browser.press("1", "Digit1", 49)  # item 4: left
        browser.press("t", "KeyT", 84)  # item 5: tie
        browser.click('#item-0 button[data-choice="right"]')  # item 0: changed to right; item 6 unvoted
        sides = {0: "right", 1: "right", 2: "tie", 3: "right", 4: "left", 5: "tie"}
        choices, tally = _expected(sides, lefts)
        assert len({choices[i] for i in choices}) == 3  # the votes cover A, B and tie
        state = browser.evaluate(PAGE_STATE)
        assert state["tally"] == tally
        assert state["chosen"] == [[sides[i]] if i in sides else [] for i in range(7)]
        assert (state["progress"], state["bar"], state["current"]) == ("6 / 7 voted", 6, "6")

        # Export: a download and the same JSON in the text area, votes in model terms.
        browser.click("#export")
        name = browser.wait_download()
        assert name == f"votes-{written['id']}.json"
        exported = json.loads((downloads / name).read_text(encoding="utf-8"))
        assert json.loads(browser.evaluate("document.getElementById('export-json').value")) == exported
        assert exported["sheet"] == written["id"] and exported["models"] == NAMES
        assert (exported["voted"], exported["total"]) == (6, 7)
        items = record["items"]
        assert exported["votes"] == [
            {"index": i, "prompt": items[i]["prompt"], "category": CATEGORIES[i], "lang": "zh", "choice": choices[i],
             "preferred": None if choices[i] == "tie" else NAMES[choices[i]], "left": lefts[i],
             "left_model": NAMES[lefts[i]]}
            for i in sorted(choices)
        ]
        assert exported["tally"]["overall"] == {k: tally["all"][k] for k in ("A", "B", "tie")}
        assert exported["tally"]["categories"] == {
            c: {k: v for k, v in t.items() if k != "voted"} for c, t in tally.items() if c != "all" and t["voted"]}

        # Revealing shows each side's model.
        browser.click("#reveal")
        shown = browser.evaluate(SIDES)
        for s, left in zip(shown, lefts):
            assert s["left"]["shown"] and NAMES[left] in s["left"]["text"]
            assert NAMES["B" if left == "A" else "A"] in s["right"]["text"]

        # A reload after the download keeps the votes (stored under the sheet id).
        browser.wait_for(SAVED)
        browser.reload()
        browser.wait_for(READY)
        state = browser.evaluate(PAGE_STATE)
        assert state["tally"] == tally and state["progress"] == "6 / 7 voted"
        assert state["chosen"] == [[sides[i]] if i in sides else [] for i in range(7)]
        assert state["current"] == "6"  # the first unvoted prompt
        assert browser.evaluate("localStorage.length") == 0  # IndexedDB holds them
        browser.click("#export")
        again = json.loads(browser.evaluate("document.getElementById('export-json').value"))
        assert again["votes"] == exported["votes"]

        # Another sheet (another order and settings, so another id) starts with no votes.
        other = write_sheet(_sheet_items(), str(tmp_path / "other"), NAMES["A"], NAMES["B"], seed=4)
        assert other["id"] != written["id"]
        browser.goto(Path(other["html"]).as_uri())
        browser.wait_for(READY)
        assert browser.evaluate(PAGE_STATE)["progress"] == "0 / 7 voted"

        assert browser.evaluate(NO_STORAGE_WARNING)
        assert browser.errors == []  # no JavaScript error
        assert all(url.split(":", 1)[0] in ("file", "data", "blob", "about") for url in browser.requests), \
            browser.requests  # nothing from the network


@pytest.mark.slow
def test_sheet_keeps_votes_in_local_storage_without_indexeddb(chromium, tmp_path):
    """Browsers without IndexedDB for files keep the votes in localStorage."""
    from ernie_vilg2.evaluation.sheet import write_sheet

    written = write_sheet(_sheet_items(), str(tmp_path / "sheet"), NAMES["A"], NAMES["B"], seed=3)
    with HeadlessChromium(chromium, timeout=30) as browser:
        browser.send("Page.addScriptToEvaluateOnNewDocument",
                     {"source": "Object.defineProperty(window, 'indexedDB', {value: undefined})"})
        browser.goto(Path(written["html"]).as_uri())
        browser.wait_for(READY)
        browser.click('#item-2 button[data-choice="left"]')
        browser.click('#item-5 button[data-choice="tie"]')
        browser.wait_for(SAVED)
        browser.reload()
        browser.wait_for(READY)
        state = browser.evaluate(PAGE_STATE)
        assert state["progress"] == "2 / 7 voted"
        assert state["chosen"] == [[], [], ["left"], [], [], ["tie"], []]
        assert browser.evaluate("Object.keys(localStorage)") == [f"ernie-vilg2-sheet:{written['id']}"]
        assert browser.evaluate(NO_STORAGE_WARNING) and browser.errors == []


@pytest.mark.slow
def test_sheet_tally_of_categories_named_like_object_properties(chromium, tmp_path):
    """Category names are data: "__proto__" or "constructor" count like any other."""
    from ernie_vilg2.evaluation.sheet import write_sheet

    categories = ["__proto__", "constructor", "__proto__", "toString", "hasOwnProperty", "", "constructor"]
    written = write_sheet(_sheet_items(categories), str(tmp_path / "sheet"), NAMES["A"], NAMES["B"], seed=3)
    lefts = [item["left"] for item in json.loads(Path(written["json"]).read_text(encoding="utf-8"))["items"]]
    sides = {0: "left", 1: "right", 2: "tie", 3: "left", 4: "right", 5: "tie", 6: "left"}
    choices, tally = _expected(sides, lefts, categories)
    with HeadlessChromium(chromium, timeout=30) as browser:
        browser.goto(Path(written["html"]).as_uri())
        browser.wait_for(READY)
        for i, side in sides.items():
            browser.click(f'#item-{i} button[data-choice="{side}"]')
        assert browser.evaluate(PAGE_STATE)["tally"] == tally
        browser.click("#export")
        exported = json.loads(browser.evaluate("document.getElementById('export-json').value"))
        assert exported["tally"]["categories"] == {
            c: {k: v for k, v in t.items() if k != "voted"} for c, t in tally.items() if c != "all"}
        assert exported["tally"]["overall"] == {k: tally["all"][k] for k in ("A", "B", "tie")}
        # the page left the built-in objects alone
        assert browser.evaluate("[({}).A, ({}).voted, Object.A, Object.getPrototypeOf({}) === Object.prototype]") \
            == [None, None, None, True]
        assert browser.errors == []
