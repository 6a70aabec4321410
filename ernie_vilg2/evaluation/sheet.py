"""Side-by-side comparison sheets (the paper's ViLG-300 protocol): one self-contained HTML page
where a rater sees, for each prompt, two models' images in a random left/right order and
says which side is better or calls a tie.

The page needs no network and no server: images are embedded as PNG data URIs, CSS and
JavaScript are inline, votes are kept in the browser's localStorage under the sheet's id
(a reload or a later visit keeps them) and exported as JSON. The page knows which side
holds which model; it shows the model names only when the rater reveals them, and counts
every vote in model terms (A, B, tie) per category.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from ..utils.images import ImageLike, to_pil
from ..utils.io import atomic_save_image, atomic_write_text

MODELS = ("A", "B")
SMALL_IMAGE = 128  # pixels: smaller images are scaled up without smoothing, so pixels stay sharp


@dataclass
class SheetItem:
    """One prompt: its images from model A and from model B (the same number, K >= 1)."""

    prompt: str
    images_a: Sequence[ImageLike]
    images_b: Sequence[ImageLike]
    category: str = ""
    lang: Optional[str] = None


def left_models(count: int, seed: int) -> List[str]:
    """The model shown on the left of each item ("A" or "B"): as many A as B (one more A for an
    odd count), shuffled by ``seed``, so a rater's preference for one side cancels out."""
    order = ["A"] * ((count + 1) // 2) + ["B"] * (count // 2)
    random.Random(seed).shuffle(order)
    return order


def write_sheet(items: Sequence[SheetItem], out_dir: str, name_a: str = "A", name_b: str = "B", seed: int = 0,
                settings: Optional[Dict] = None, metadata: Optional[Dict] = None) -> Dict[str, str]:
    """Write ``out_dir/index.html`` (the sheet), the images as PNGs under ``out_dir/images/{A,B}/``
    and ``out_dir/sheet.json`` (models, settings and each item's prompt, category, left model and
    image files). ``seed`` draws the left/right order; ``settings`` (e.g. sampler, steps) are shown
    on the page and recorded; ``metadata`` (e.g. the models' folders) is recorded in sheet.json only.
    Returns the paths written and the sheet's id."""
    if not items:
        raise ValueError("write_sheet: no items")
    for i, item in enumerate(items):
        if not item.images_a or len(item.images_a) != len(item.images_b):
            raise ValueError(f"item {i} ({item.prompt!r}): needs the same number (>= 1) of images from A and B, "
                             f"got {len(item.images_a)} and {len(item.images_b)}")
    names = {"A": name_a, "B": name_b}
    lefts = left_models(len(items), seed)
    digits = max(4, len(str(len(items) - 1)))
    records, pngs = [], []
    for i, (item, left) in enumerate(zip(items, lefts)):
        files, widths = {}, []
        for model, images in zip(MODELS, (item.images_a, item.images_b)):
            files[model] = []
            for k, image in enumerate(images):
                image = to_pil(image).convert("RGB")
                rel = f"images/{model}/{i:0{digits}d}_{k}.png"
                path = atomic_save_image(image, os.path.join(out_dir, rel))
                files[model].append(rel)
                widths.append(image.width)
                pngs.append(path.read_bytes())
        records.append({"index": i, "prompt": item.prompt, "category": item.category, "lang": item.lang,
                        "left": left, "images": files, "pixelated": min(widths) < SMALL_IMAGE})
    sheet_id = _sheet_id(names, records, settings, pngs)
    data_uris = iter("data:image/png;base64," + base64.b64encode(png).decode("ascii") for png in pngs)
    uris = [{model: [next(data_uris) for _ in record["images"][model]] for model in MODELS} for record in records]
    page = render_page(sheet_id, names, records, uris, settings or {})
    html_path = atomic_write_text(os.path.join(out_dir, "index.html"), page)
    record = {"sheet": sheet_id, "models": names, **(metadata or {}), "order_seed": seed, "settings": settings or {},
              "items": records}
    json_path = atomic_write_text(os.path.join(out_dir, "sheet.json"),
                                  json.dumps(record, ensure_ascii=False, indent=2))
    return {"html": str(html_path), "json": str(json_path), "id": sheet_id}


def _sheet_id(names, records, settings, pngs) -> str:
    """Same models, prompts, order and images -> same id (and the same saved votes)."""
    digest = hashlib.sha256(json.dumps([names, records, settings], ensure_ascii=False, sort_keys=True).encode())
    for png in pngs:
        digest.update(hashlib.sha256(png).digest())
    return digest.hexdigest()[:16]


def render_page(sheet_id: str, names: Dict[str, str], records: List[Dict], uris: List[Dict[str, List[str]]],
                settings: Dict) -> str:
    """The HTML of a sheet (see :func:`write_sheet`); ``uris`` are each item's image sources per model."""
    esc = html.escape
    categories = sorted({r["category"] for r in records if r["category"]})
    title = f"{names['A']} vs {names['B']}"
    about = "".join(f" &middot; {esc(str(k))} {esc(str(v))}" for k, v in settings.items())
    rows = []
    for record, sources in zip(records, uris):
        sides = []
        for side, model in (("left", record["left"]), ("right", "B" if record["left"] == "A" else "A")):
            small = " small" if record["pixelated"] else ""
            imgs = "".join(f'<img src="{src}" alt="{side} image {k + 1}">' for k, src in enumerate(sources[model]))
            sides.append(
                f'<figure class="side {side}{small}" data-model="{model}">'
                f'<div class="imgs" style="--k: {len(sources[model])}">{imgs}</div>'
                f'<figcaption>{side}<span class="model-label"> &middot; {model}: {esc(names[model])}</span>'
                "</figcaption></figure>"
            )
        category = f'<span class="cat">{esc(record["category"])}</span>' if record["category"] else ""
        lang = f'<span class="lang">{esc(record["lang"])}</span>' if record["lang"] else ""
        rows.append(
            f'<section class="item" id="item-{record["index"]}" data-index="{record["index"]}">'
            f'<h2><span class="num">#{record["index"] + 1}</span>{category}{lang}'
            f'<span class="prompt">{esc(record["prompt"])}</span></h2>'
            f'<div class="pair">{"".join(sides)}</div>'
            '<div class="votes"><button data-choice="left">&#9664; left better</button>'
            '<button data-choice="tie">tie</button><button data-choice="right">right better &#9654;</button></div>'
            "</section>"
        )
    tally_rows = "".join(
        f'<tr data-category="{esc(c)}"><th>{esc(c)}</th><td data-count="A">0</td><td data-count="B">0</td>'
        f'<td data-count="tie">0</td><td data-count="voted">0</td></tr>'
        for c in categories
    )
    data = {"sheet": sheet_id, "models": names, "settings": settings,
            "items": [{k: r[k] for k in ("prompt", "category", "lang", "left")} for r in records]}
    # JSON inside <script>: escape "<" so no prompt can close the element.
    data_json = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Side-by-side: {esc(title)}</title>
<style>{_CSS}</style></head>
<body data-sheet="{sheet_id}">
<header>
<h1>Side-by-side: {esc(names['A'])} <small>vs</small> {esc(names['B'])}</h1>
<p class="about">{len(records)} prompts &middot; sheet {sheet_id}{about}.
For each prompt, which side matches it better? Sides are in random order.
Keys: <kbd>&larr;</kbd>/<kbd>1</kbd> left, <kbd>t</kbd>/<kbd>2</kbd> tie, <kbd>&rarr;</kbd>/<kbd>3</kbd> right,
<kbd>&darr;</kbd>/<kbd>j</kbd> next, <kbd>&uarr;</kbd>/<kbd>k</kbd> previous.</p>
</header>
<div id="bar"><span id="progress">0 / {len(records)} voted</span>
<progress id="progress-bar" max="{len(records)}" value="0"></progress>
<label><input type="checkbox" id="reveal"> show which model is which</label>
<button id="export">export votes</button><span id="storage-warning" hidden>votes cannot be saved in this
browser: export them before you close the page</span></div>
<details id="tally-box" open><summary>votes per category, in model terms</summary>
<table id="tally"><thead><tr><th>category</th><th>A: {esc(names['A'])}</th><th>B: {esc(names['B'])}</th>
<th>tie</th><th>voted</th></tr></thead>
<tbody><tr data-category="" class="all"><th>all</th><td data-count="A">0</td><td data-count="B">0</td>
<td data-count="tie">0</td><td data-count="voted">0</td></tr>{tally_rows}</tbody></table></details>
<textarea id="export-json" readonly hidden rows="8"></textarea>
<main>{''.join(rows)}</main>
<script type="application/json" id="sheet-data">{data_json}</script>
<script>{_JS}</script>
</body></html>
"""


_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; background: #f4f4f4; color: #222; }
header { background: #fff; padding: 8px 16px 0; }
h1 { font-size: 1.2em; margin: 0 0 4px; } h1 small { font-weight: normal; color: #777; }
.about { margin: 0 0 6px; font-size: .85em; color: #555; }
#bar { position: sticky; top: 0; z-index: 1; background: #fff; border-bottom: 1px solid #ccc;
  padding: 6px 16px; display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
#tally-box { padding: 4px 16px; } summary { cursor: pointer; color: #555; font-size: .9em; }
#storage-warning { color: #b00; }
#tally { border-collapse: collapse; margin: 4px 0; font-size: .85em; }
#tally th, #tally td { border: 1px solid #ddd; padding: 1px 8px; text-align: right; }
#tally th:first-child { text-align: left; } #tally tr.all { font-weight: bold; }
#export-json { width: calc(100% - 32px); margin: 4px 16px; font-family: monospace; font-size: .8em; }
main { padding: 8px 16px; }
.item { background: #fff; border: 2px solid transparent; border-radius: 6px; margin: 10px 0; padding: 8px 12px; }
.item.current { border-color: #36c; }
.item.voted { background: #f7fbf7; }
.item h2 { font-size: 1em; font-weight: normal; margin: 0 0 8px; display: flex; gap: 8px; align-items: baseline; }
.num { color: #888; } .cat, .lang { font-size: .8em; background: #eee; border-radius: 3px; padding: 0 5px; }
.pair { display: flex; gap: 24px; }
.side { margin: 0; flex: 0 1 auto; padding: 6px; border: 1px solid #ddd; border-radius: 4px;
  background: #fafafa; }
.imgs { display: flex; gap: 4px; }
.imgs img { width: min(256px, calc((50vw - 90px) / var(--k))); background: #ddd; }
.side.small img { image-rendering: pixelated; }
figcaption { text-align: center; color: #777; font-size: .85em; }
.model-label { display: none; color: #a40; }
body.revealed .model-label { display: inline; }
.votes { display: flex; gap: 8px; margin-top: 6px; }
.votes button { padding: 4px 14px; }
.votes button.chosen { background: #36c; color: #fff; border-color: #36c; }
"""

_JS = r"""
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("sheet-data").textContent);
  const items = Array.from(document.querySelectorAll(".item"));
  const other = {A: "B", B: "A"};
  let votes = {};  // item index -> "A" | "B" | "tie" (model terms)
  let current = 0;

  // Votes are stored under the sheet id in IndexedDB, or in localStorage where there is no
  // IndexedDB. Not localStorage first: Chromium can show a reloaded file:// page an empty
  // localStorage after a download (the export), while IndexedDB reads what was stored.
  const store = new Promise(resolve => {
    let request;
    try { request = indexedDB.open("ernie-vilg2-sheets", 1); } catch (e) { resolve(null); return; }
    request.onupgradeneeded = () => request.result.createObjectStore("votes");
    request.onsuccess = () => resolve(request.result);
    request.onerror = request.onblocked = () => resolve(null);
  }).then(db => {
    if (db) {
      const done = (r, ok, fail) => {  // r: a request or a transaction
        r.onsuccess = r.oncomplete = () => ok(r.result);
        r.onerror = r.onabort = () => fail(r.error);
      };
      return {
        load: () => new Promise((ok, fail) =>
          done(db.transaction("votes").objectStore("votes").get(data.sheet), ok, fail)),
        save: value => new Promise((ok, fail) => {
          const tx = db.transaction("votes", "readwrite");
          tx.objectStore("votes").put(value, data.sheet);
          done(tx, ok, fail);
        }),
      };
    }
    try {
      const ls = window.localStorage, key = "ernie-vilg2-sheet:" + data.sheet;
      ls.getItem(key);
      return {load: async () => JSON.parse(ls.getItem(key) || "null"),
              save: async value => ls.setItem(key, JSON.stringify(value))};
    } catch (e) { return null; }
  });
  function warnStorage() { document.getElementById("storage-warning").hidden = false; }
  let unsaved = 0;  // saves not yet committed (shown as data-unsaved on <body>)
  function save() {  // saves run in the order of the votes: each is one transaction, queued in turn
    const value = {votes: Object.assign({}, votes)};
    document.body.dataset.unsaved = ++unsaved;
    store.then(s => s ? s.save(value) : Promise.reject(new Error("no storage"))).catch(warnStorage)
      .finally(() => { document.body.dataset.unsaved = --unsaved; });
  }

  function sideOf(i, choice) {  // the button of a vote in model terms
    if (choice === "tie") return "tie";
    return data.items[i].left === choice ? "left" : "right";
  }
  // Category names are data: a Map, so "__proto__" or "constructor" is a category like any other.
  function countOf(map, category, zero) {
    if (!map.has(category)) map.set(category, Object.assign({}, zero));
    return map.get(category);
  }
  function render() {
    const counts = new Map();
    const add = (cat, choice) => {
      const c = countOf(counts, cat, {A: 0, B: 0, tie: 0, voted: 0});
      c[choice] += 1; c.voted += 1;
    };
    items.forEach((el, i) => {
      const choice = votes[i];
      el.classList.toggle("voted", choice !== undefined);
      el.classList.toggle("current", i === current);
      el.querySelectorAll("button").forEach(b =>
        b.classList.toggle("chosen", choice !== undefined && b.dataset.choice === sideOf(i, choice)));
      if (choice !== undefined) { add("", choice); if (data.items[i].category) add(data.items[i].category, choice); }
    });
    document.querySelectorAll("#tally tbody tr").forEach(row => {
      const c = counts.get(row.dataset.category) || {A: 0, B: 0, tie: 0, voted: 0};
      row.querySelectorAll("td").forEach(td => { td.textContent = c[td.dataset.count]; });
    });
    const done = Object.keys(votes).length;
    document.getElementById("progress").textContent = done + " / " + items.length + " voted";
    document.getElementById("progress-bar").value = done;
  }
  function nextUnvoted(from) {
    for (let k = 1; k <= items.length; k++) {
      const i = (from + k) % items.length;
      if (votes[i] === undefined) return i;
    }
    return from;
  }
  function focusItem(i) {
    current = Math.max(0, Math.min(items.length - 1, i));
    render();
    items[current].scrollIntoView({block: "center"});
  }
  function vote(i, side) {
    const left = data.items[i].left;
    votes[i] = side === "tie" ? "tie" : side === "left" ? left : other[left];
    save();
    current = i;
    const next = nextUnvoted(i);
    if (next !== i) focusItem(next); else render();
  }
  function exportVotes() {
    const overall = {A: 0, B: 0, tie: 0};
    const categories = new Map();
    const list = [];
    items.forEach((el, i) => {
      const choice = votes[i];
      if (choice === undefined) return;
      const it = data.items[i];
      list.push({index: i, prompt: it.prompt, category: it.category, lang: it.lang, choice: choice,
                 preferred: choice === "tie" ? null : data.models[choice], left: it.left,
                 left_model: data.models[it.left]});
      overall[choice] += 1;
      if (it.category) countOf(categories, it.category, {A: 0, B: 0, tie: 0})[choice] += 1;
    });
    const out = {sheet: data.sheet, models: data.models, settings: data.settings,
                 exported: new Date().toISOString(), voted: list.length, total: items.length,
                 tally: {overall: overall, categories: Object.fromEntries(categories)}, votes: list};
    const text = JSON.stringify(out, null, 2);
    const area = document.getElementById("export-json");
    area.value = text;
    area.hidden = false;
    const url = URL.createObjectURL(new Blob([text], {type: "application/json"}));
    const link = document.createElement("a");
    link.href = url;
    link.download = "votes-" + data.sheet + ".json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  items.forEach((el, i) => {
    el.addEventListener("click", () => { if (current !== i) { current = i; render(); } });
    el.querySelectorAll(".votes button").forEach(b =>
      b.addEventListener("click", ev => { ev.stopPropagation(); vote(i, b.dataset.choice); }));
  });
  document.getElementById("reveal").addEventListener("change", ev =>
    document.body.classList.toggle("revealed", ev.target.checked));
  document.getElementById("export").addEventListener("click", exportVotes);
  document.addEventListener("keydown", ev => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.target.closest("textarea")) return;
    const actions = {ArrowLeft: "left", "1": "left", t: "tie", "2": "tie", ArrowRight: "right", "3": "right"};
    if (actions[ev.key]) { vote(current, actions[ev.key]); }
    else if (ev.key === "ArrowDown" || ev.key === "j") { focusItem(current + 1); }
    else if (ev.key === "ArrowUp" || ev.key === "k") { focusItem(current - 1); }
    else return;
    ev.preventDefault();
  });
  render();
  store.then(s => s ? s.load() : Promise.reject(new Error("no storage"))).then(saved => {
    const early = Object.keys(votes).length;  // votes cast before the saved ones arrived win
    for (const [i, choice] of Object.entries((saved && saved.votes) || {})) {
      if (data.items[i] && ["A", "B", "tie"].includes(choice) && votes[i] === undefined) votes[i] = choice;
    }
    if (early) save(); else if (votes[0] !== undefined) current = nextUnvoted(0);
  }).catch(warnStorage).finally(() => { render(); document.body.dataset.ready = "true"; });
})();
"""
