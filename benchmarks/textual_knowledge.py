"""Textual knowledge cost: lexical analysis throughput and the training-step overhead.

    python benchmarks/textual_knowledge.py                 # ViLG-300 prompts, tiny U-Net, batch 16
    python benchmarks/textual_knowledge.py --repeats 30 --skip-lexical

Rows:
  LAC single / batched          prompts/s of LacRunner on the 300 Chinese ViLG-300 prompts,
                                one call per prompt vs one call for all (LoD batches of 64);
                                "+ importance" also runs LAC's rank model
  English tagger                prompts/s of the TextBlob tagger on the 300 English prompts
                                (no batch mode: "batched" is TextAnalyzer.analyze on the list)
  build_text_inputs             batches/s of 16 mixed captions analysed on the fly
                                (tokenize + align; POS tokens p = 0.5)
  key words                     not a speed: what the default rule selects on the prompts
                                (all / spatial words / function verbs / pronouns), and the
                                share of English words the Chinese-BERT WordPiece splits
  U-Net train step              the tiny U-Net (8x8 latents, channels 32/64, text dim 64),
                                batch 16, MSE + AdamW step, with the stock AttnProcessor vs
                                FastAttnProcessor(w_t=0.01) and a key-token mask (and
                                w_t=0, which is the stock processor: shows the noise level);
                                median and min of interleaved, rotated repeats; the ratio of
                                medians has target <= 1.05
  cross-attention layer         one Attention layer at a 32x32-latent size, forward + backward:
                                the emphasis scales the keys, not the score matrix
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

from ernie_vilg2.utils.cpu_report import machine_report
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process

os.environ.setdefault("GLOG_minloglevel", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VILG300 = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "ViLG-300.csv"))
TARGET = 1.05
FALLBACK_PROMPTS = (["一辆红色的汽车停在路边", "一只戴着墨镜的柯基", "油画风格的星空下的城市"],
                    ["a red car parked by the road", "a corgi wearing sunglasses", "a city under a starry sky, oil painting"])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", default=VILG300, help="ViLG-300 CSV (columns Prompt, 文本)")
    p.add_argument("--batch", type=int, default=16, help="training batch")
    p.add_argument("--max-length", type=int, default=32, help="text tokens L")
    p.add_argument("--repeats", type=int, default=30, help="timed training steps per processor")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--skip-lexical", action="store_true")
    p.add_argument("--skip-unet", action="store_true")
    args = p.parse_args(argv)
    if min(args.batch, args.max_length, args.repeats) < 1 or args.max_length < 3:
        p.error("--batch, --repeats must be >= 1 and --max-length >= 3")
    return args


def load_prompts(path):
    if not os.path.isfile(path):
        print(f"note: {path} not found, using {len(FALLBACK_PROMPTS[0])} built-in prompts per language")
        return FALLBACK_PROMPTS
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["文本"] for r in rows], [r["Prompt"] for r in rows]


def rate(fn, n_items, min_seconds=1.0):
    """Items per second of fn() (which handles n_items), repeated for at least min_seconds."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * n_items / elapsed


def lexical_rows(zh, en, batch):
    import numpy as np

    from ernie_vilg2.knowledge.textual import TextAnalyzer, TextualKnowledgeConfig, build_text_inputs
    from ernie_vilg2.knowledge.textual.english import EnglishTagger
    from ernie_vilg2.knowledge.textual.lac import LacRunner
    from ernie_vilg2.text.tokenizer import build_tokenizer

    rows = []
    lac = LacRunner()
    start = time.perf_counter()
    lac.analyze(zh[:1], with_importance=True)  # vocab + both predictors
    rows.append(("LAC first call (load vocab + 2 predictors)", f"{time.perf_counter() - start:.2f} s"))
    for importance in (False, True):
        tag = " + importance" if importance else ""
        single = rate(lambda: [lac.analyze([p], with_importance=importance) for p in zh], len(zh))
        batched = rate(lambda: lac.analyze(zh, with_importance=importance), len(zh))
        rows.append((f"LAC{tag}, single", f"{single:.0f} prompts/s"))
        rows.append((f"LAC{tag}, batched (64)", f"{batched:.0f} prompts/s"))
    english = EnglishTagger()
    english.analyze(en[0])
    rows.append(("English tagger (TextBlob), single", f"{rate(lambda: [english.analyze(p) for p in en], len(en)):.0f} prompts/s"))
    # TextBlob has no batch mode; "batched" is the analyzer's list call (runs, offsets, trimming).
    analyzer = TextAnalyzer()
    rows.append(("English via TextAnalyzer, batched (300 per call)",
                 f"{rate(lambda: analyzer.analyze(en), len(en)):.0f} prompts/s"))
    rows.append(("Chinese via TextAnalyzer + importance, batched (300 per call)",
                 f"{rate(lambda: analyzer.analyze(zh, with_importance=True), len(zh)):.0f} prompts/s"))

    tokenizer = build_tokenizer()
    cfg = TextualKnowledgeConfig(enabled=True)
    mixed = [p for pair in zip(zh, en) for p in pair]
    batches = [mixed[i:i + batch] for i in range(0, len(mixed) - batch + 1, batch)] or [mixed]
    rng = np.random.default_rng(0)
    seconds = []
    for captions in batches:
        t = time.perf_counter()
        build_text_inputs(captions, tokenizer, 32, cfg, rng)
        seconds.append(time.perf_counter() - t)
    rows.append((f"build_text_inputs, batch {batch}, on the fly", f"{1000 * statistics.median(seconds):.1f} ms/batch"))
    return rows + keyword_rows(zh, en, analyzer, cfg, tokenizer)


def keyword_rows(zh, en, analyzer, cfg, tokenizer):
    """What the default rule selects (docs/knowledge.md quotes these counts)."""
    from ernie_vilg2.knowledge.textual import select_keywords
    from ernie_vilg2.knowledge.textual.english import SPATIAL_WORDS, english_tokens
    from ernie_vilg2.knowledge.textual.tags import FUNCTION_VERBS

    rows = []
    for name, prompts in (("en", en), ("zh", zh)):
        words = selected = spatial = spatial_selected = function_selected = pronouns_selected = 0
        for prompt, analysed in zip(prompts, analyzer.analyze(prompts)):
            keys = {(k.start, k.end) for k in select_keywords(analysed, cfg)}
            for w in analysed:
                chosen = (w.start, w.end) in keys
                is_spatial = w.tag in ("f", "s") or w.text.lower() in SPATIAL_WORDS
                words += w.tag != "w"
                selected += chosen
                spatial += is_spatial
                spatial_selected += chosen and is_spatial
                function_selected += chosen and w.text.lower() in FUNCTION_VERBS
                pronouns_selected += chosen and w.tag == "r"
        rows.append((f"key words ({name}): selected; spatial selected; function verbs, pronouns selected",
                     f"{selected} of {words}; {spatial_selected} of {spatial}; {function_selected}, {pronouns_selected}"))
    pieces = [len(tokenizer.tokenize(p[s:e])) for p in en for s, e in english_tokens(p) if p[s:e].isalpha()]
    split = sum(n > 1 for n in pieces)
    rows.append(("English words split into WordPiece fragments", f"{split} of {len(pieces)} ({split / len(pieces):.1%})"))
    return rows


def unet_rows(batch, max_length, repeats, warmup):
    import numpy as np
    import paddle
    from ppdiffusers import UNet2DConditionModel
    from ppdiffusers.models.attention_processor import AttnProcessor

    from ernie_vilg2.models.attention_processor import FastAttnProcessor

    paddle.set_device("cpu")
    paddle.seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8)
    unet.train()
    opt = paddle.optimizer.AdamW(learning_rate=1e-4, parameters=unet.parameters())
    rng = np.random.default_rng(0)
    x = paddle.randn([batch, 4, 8, 8])
    noise = paddle.randn([batch, 4, 8, 8])
    t = paddle.to_tensor(rng.integers(0, 1000, batch), dtype="int64")
    text = paddle.randn([batch, max_length, 64])
    mask = paddle.to_tensor((rng.random([batch, max_length]) < 0.3).astype("float32"))

    setups = {
        "stock AttnProcessor": (AttnProcessor(), None),
        "FastAttnProcessor w_t=0.01 + mask": (FastAttnProcessor(0.01), {"key_token_mask": mask}),
        "FastAttnProcessor w_t=0 (= stock)": (FastAttnProcessor(0.0), {"key_token_mask": mask}),
    }

    def step(kwargs):
        out = unet(x, t, encoder_hidden_states=text, cross_attention_kwargs=kwargs).sample
        loss = paddle.nn.functional.mse_loss(out, noise)
        loss.backward()
        opt.step()
        opt.clear_grad()

    times = {name: [] for name in setups}
    for name, (processor, kwargs) in setups.items():
        unet.set_attn_processor(processor)
        for _ in range(warmup):
            step(kwargs)
    names = list(setups)
    for r in range(repeats):  # interleaved and rotated, so drift in machine load hits all alike
        for name in names[r % len(names):] + names[:r % len(names)]:
            processor, kwargs = setups[name]
            unet.set_attn_processor(processor)
            start = time.perf_counter()
            step(kwargs)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(v) for name, v in times.items()}
    base, base_min = medians["stock AttnProcessor"], min(times["stock AttnProcessor"])
    rows = [(f"U-Net train step, {name}", f"median {1000 * m:.1f} ms ({m / base:.3f}x), "
             f"min {1000 * min(times[name]):.1f} ms ({min(times[name]) / base_min:.3f}x)")
            for name, m in medians.items()]
    ratio = medians["FastAttnProcessor w_t=0.01 + mask"] / base
    rows.append(("ratio knowledge / stock (target <= 1.05)", f"{ratio:.3f} {'OK' if ratio <= TARGET else 'ABOVE TARGET'}"))
    return rows


def attention_rows(batch, max_length, repeats):
    """One cross-attention layer alone (32x32 latent: 1024 queries, 128 channels, 8 heads), fwd + bwd."""
    import numpy as np
    import paddle
    from ppdiffusers.models.attention_processor import Attention, AttnProcessor

    from ernie_vilg2.models.attention_processor import FastAttnProcessor

    paddle.seed(0)
    attn = Attention(query_dim=128, cross_attention_dim=64, heads=8, dim_head=16)
    x = paddle.randn([batch, 1024, 128])
    x.stop_gradient = False
    text = paddle.randn([batch, max_length, 64])
    mask = paddle.to_tensor((np.random.default_rng(0).random([batch, max_length]) < 0.3).astype("float32"))
    setups = {"stock": (AttnProcessor(), {}), "knowledge": (FastAttnProcessor(0.01), {"key_token_mask": mask})}
    times = {name: [] for name in setups}
    for r in range(repeats + 2):
        for name in (list(setups) if r % 2 else list(setups)[::-1]):
            processor, kwargs = setups[name]
            attn.set_processor(processor)
            start = time.perf_counter()
            attn(x, text, **kwargs).sum().backward()
            if r >= 2:
                times[name].append(time.perf_counter() - start)
            attn.clear_gradients()
            x.clear_gradient()
    stock, knowledge = (statistics.median(times[n]) for n in ("stock", "knowledge"))
    return [(f"cross-attention layer fwd+bwd (B={batch}, 1024x{max_length}), stock / knowledge",
             f"{1000 * stock:.1f} / {1000 * knowledge:.1f} ms ({knowledge / stock:.3f}x)")]


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("ernie_vilg2").setLevel(logging.ERROR)  # truncation warnings of long prompts
    rows = []
    if not args.skip_lexical:
        zh, en = load_prompts(args.prompts)
        rows += lexical_rows(zh, en, args.batch)
    if not args.skip_unet:
        rows += unet_rows(args.batch, args.max_length, args.repeats, args.warmup)
        rows += attention_rows(args.batch, args.max_length, args.repeats)
    print(machine_report())
    print(f"\nTextual knowledge benchmark (CPU threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"batch {args.batch}, L={args.max_length}, {args.repeats} interleaved steps)\n")
    print("| measurement | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
