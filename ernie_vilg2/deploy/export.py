"""Export a saved ErnieViLG2Pipeline folder to Paddle Inference programs.

One PIR program (``inference.json`` + ``inference.pdiparams``, ``paddle.jit.save``) each for
the ERNIE text encoder, every expert U-Net and the VAE decoder, plus the tokenizer's vocab
and ``manifest.json`` (layout: deploy/README.md). The scheduler loop and the timestep router
stay outside the graphs, as in PPDiffusers' own Paddle Inference pipelines; the manifest
carries each sampler's settings as ``build_sampler`` resolves them (:mod:`.sampler_export`).

Two ops are rewritten into exact equivalents first (:mod:`.rewrites`) so that the programs
also run under oneDNN; the experts then take integer timesteps in ``[0, T)``.

Memory: the parts are loaded one after the other and freed after their export, and the
experts are read from the safetensors file one expert at a time into a single U-Net (the
program is traced once; each expert then only swaps its weights in and saves), so exporting
a bank of N experts needs about the memory of one expert, not N.

The exporter may import the whole training stack (PPDiffusers, PaddleNLP); the runner
(:mod:`ernie_vilg2.deploy.pipeline`) imports neither.
"""
from __future__ import annotations

import gc
import json
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from .. import __version__
from ..errors import ErnieViLG2Error
from ..models.fast_layers import use_fast_layers
from ..models.routing import TimestepRouter
from ..models.speedups import apply_speedups
from ..models.text_encoder import context_width
from ..ops import cpu_ops_available
from ..text.normalize import TYPOGRAPHIC_MAP
from ..text.tokenizer import tokenize
from ..utils.integrity import check_safetensors
from ..utils.io import DiskFullError, atomic_directory, atomic_write_text, free_space
from .cpu_ops import export_library
from .manifest import write_manifest
from .program_writer import program_layers, save_program, static_program
from .rewrites import rewrite_for_export
from .sampler_export import resolve_samplers
from .tokenizer import WordPieceTokenizer, load_vocab

VOCAB_FILE = "tokenizer/vocab.txt"
MODEL_INDEX = "model_index.json"

# Prompts on which the exported tokenizer must give the model tokenizer's ids (checked at
# export, so that an unusual tokenizer can never be exported with silently different ids).
TOKENIZER_PROBES = (
    "红苹果在猫脸的左边",
    "A Red Apple to the LEFT of a cat face!",
    "一只red apple在桌子上，[n]猫[a]红色的",
    "Café déjà vu — “quoted” corgi’s toy",
    "Ｆｕｌｌ　ｗｉｄｔｈ ＡＢＣ１２３，emoji 🍎😀 x²",
    "[CLS] [N] [cls] [UNK]x unaffable puppeteer",
    "ΣΑΣ naïve\tTAB\u00adsoft\u200bhyphen",
    "ａ" * 3 + "x" * 120,
)


class ExportError(ErnieViLG2Error, ValueError):
    """The model folder or an export setting cannot be exported; one line naming it."""


def _log_default(message: str) -> None:
    print(message, flush=True)


# -- the model folder -------------------------------------------------------------------
def _read_json(path: str) -> Dict:
    if not os.path.isfile(path):
        raise ExportError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None


def _component_class(index: Dict, name: str, model_dir: str):
    """The class model_index.json names for a component (library, class)."""
    import importlib

    entry = index.get(name)
    if not (isinstance(entry, list) and len(entry) == 2):
        raise ExportError(f"{os.path.join(model_dir, MODEL_INDEX)}: no component {name!r}")
    library, class_name = entry
    return getattr(importlib.import_module(library), class_name)


def _expert_weight_files(unet_dir: str) -> Dict[str, str]:
    """``{parameter name: safetensors file}`` of the saved MixtureOfDenoisingExperts."""
    from ppdiffusers.utils import PADDLE_SAFETENSORS_WEIGHTS_NAME, PADDLE_SAFETENSORS_WEIGHTS_NAME_INDEX_NAME

    single = os.path.join(unet_dir, PADDLE_SAFETENSORS_WEIGHTS_NAME)
    index = os.path.join(unet_dir, PADDLE_SAFETENSORS_WEIGHTS_NAME_INDEX_NAME)
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        weight_map = _read_json(index).get("weight_map", {})
        files = [os.path.join(unet_dir, f) for f in sorted(set(weight_map.values()))]
    else:
        found = ", ".join(sorted(os.listdir(unet_dir))) if os.path.isdir(unet_dir) else "no folder"
        raise ExportError(
            f"{unet_dir}: no {PADDLE_SAFETENSORS_WEIGHTS_NAME} (found: {found}); the exporter reads the experts "
            "from safetensors one at a time: re-save the pipeline with save_pretrained()"
        )
    from safetensors import safe_open

    owner: Dict[str, str] = {}
    for path in files:
        check_safetensors(path)  # one-line DamagedFileError for a truncated file
        with safe_open(path, framework="np") as f:
            if (f.metadata() or {}).get("format") == "pt":
                raise ExportError(f"{path}: weights in PyTorch layout; re-save the pipeline with PPDiffusers")
            owner.update({key: path for key in f.keys()})
    return owner


def _read_expert(owner: Dict[str, str], index: int) -> Dict[str, np.ndarray]:
    from safetensors import safe_open

    prefix = f"experts.{index}."
    state: Dict[str, np.ndarray] = {}
    for path in sorted({p for k, p in owner.items() if k.startswith(prefix)}):
        with safe_open(path, framework="np") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    state[key[len(prefix):]] = f.get_tensor(key)
    return state


# -- the tokenizer -------------------------------------------------------------------------
def write_vocab(tokenizer, path: str) -> None:
    """The full vocabulary, added tokens included, one token per line, line number = id."""
    id_to_token = dict(tokenizer.vocab.idx_to_token)
    id_to_token.update(tokenizer.added_tokens_decoder)
    size = len(tokenizer)
    missing = [i for i in range(size) if i not in id_to_token]
    if missing or len(id_to_token) != size:
        raise ExportError(f"tokenizer: ids are not contiguous (e.g. id {missing[:1] or size} has no token)")
    tokens = [id_to_token[i] for i in range(size)]
    bad = next((t for t in tokens if not t or "\n" in t or "\r" in t), None)
    if bad is not None:
        raise ExportError(f"tokenizer: token {bad!r} cannot be written one per line")
    atomic_write_text(path, "\n".join(tokens) + "\n")


def tokenizer_spec(tokenizer, max_length: int) -> Dict:
    """The manifest's ``tokenizer`` section for a PaddleNLP ErnieTokenizer."""
    never_split = list(tokenizer.unique_no_split_tokens)
    loose = [t for t in tokenizer.all_special_tokens if t not in never_split]
    if loose:
        raise ExportError(f"tokenizer: special tokens {loose} are not in unique_no_split_tokens; cannot export")
    return {
        "vocab": VOCAB_FILE,
        "max_length": int(max_length),
        "do_lower_case": bool(getattr(tokenizer, "do_lower_case", False)),
        "unk_token": tokenizer.unk_token,
        "cls_token": tokenizer.cls_token,
        "sep_token": tokenizer.sep_token,
        "pad_token": tokenizer.pad_token,
        "never_split": never_split,
        "normalization": dict(TYPOGRAPHIC_MAP),
    }


def check_tokenizer(folder: str, spec: Dict, tokenizer, probes=TOKENIZER_PROBES) -> None:
    """The exported tokenizer must give the model tokenizer's ids on ``probes`` (compared
    at a length that fits them all, so that every token counts and nothing warns)."""
    length = 160
    ours = WordPieceTokenizer.from_manifest(folder, {**spec, "max_length": length})
    if len(load_vocab(os.path.join(folder, spec["vocab"]))) != len(tokenizer):
        raise ExportError("tokenizer: the written vocab has duplicate tokens; cannot export it exactly")
    expected = tokenize(tokenizer, list(probes), length)
    got = ours(list(probes))
    for probe, a, b in zip(probes, expected, got):
        if not np.array_equal(a, b):
            raise ExportError(f"tokenizer: the exported tokenizer differs from the model's on {probe!r}")


# -- programs --------------------------------------------------------------------------------
def _check_free_space(model_dir: str, out_dir: str) -> None:
    """Refuse up front when the export (about the size of the model's weights) cannot fit."""
    needed = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(model_dir) for name in names
                 if name.endswith((".safetensors", ".pdparams")))
    if free_space(out_dir) < needed:
        raise DiskFullError(out_dir, needed=needed)


def _samplers(model_dir: str, scheduler_config: Dict, num_train_timesteps: int, log) -> Dict:
    """The manifest's ``samplers`` (:mod:`.sampler_export`), before anything is written."""
    path = os.path.join(model_dir, "scheduler", "scheduler_config.json")
    try:
        samplers = resolve_samplers(scheduler_config, log)
    except ValueError as exc:
        raise ExportError(f"{path}: {exc}") from None
    for name, entry in samplers.items():
        if name != "default" and entry["config"]["num_train_timesteps"] != num_train_timesteps:
            raise ExportError(f"{path}: num_train_timesteps {entry['config']['num_train_timesteps']} differs from the "
                              f"experts' ({num_train_timesteps}, unet/config.json)")
    return samplers


# -- the export --------------------------------------------------------------------------------
def export_pipeline(
    model_dir: str,
    out_dir: str,
    height: Optional[int] = None,
    width: Optional[int] = None,
    overwrite: bool = False,
    log: Callable[[str], None] = _log_default,
    cpu_ops: Optional[bool] = None,
) -> Dict:
    """Export the pipeline folder ``model_dir`` to ``out_dir``; return the manifest.

    ``height``/``width`` (pixels) default to the model's resolution and must be multiples of
    the VAE factor; the programs are fixed to that size, with a dynamic batch. ``out_dir`` is
    written into a temporary folder beside it and renamed when complete; an existing
    ``out_dir`` is an error unless ``overwrite``. ``cpu_ops``: also the experts' and the VAE
    decoder's programs with the project's C++ CPU operators, and their library (None: where
    they are built; True: they must be).
    """
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model folder not found: {model_dir}")
    index = _read_json(os.path.join(model_dir, MODEL_INDEX))
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass --overwrite to replace it)")
    _check_free_space(model_dir, out_dir)
    unet_config = _read_json(os.path.join(model_dir, "unet", "config.json"))
    vae_config = _read_json(os.path.join(model_dir, "vae", "config.json"))
    scheduler_config = _read_json(os.path.join(model_dir, "scheduler", "scheduler_config.json"))
    expert_config = {k: v for k, v in (unet_config.get("unet") or {}).items() if not k.startswith("_")}
    if unet_config.get("_class_name") == "LoRAExperts":
        raise ExportError(f"{os.path.join(model_dir, 'unet', 'config.json')}: LoRA experts; merge them into full "
                          f"experts first (python tools/merge_lora_experts.py --model {model_dir} --out MERGED) "
                          "and export that folder")
    if "num_experts" not in unet_config:
        raise ExportError(f"{os.path.join(model_dir, 'unet', 'config.json')}: not a MixtureOfDenoisingExperts config")
    num_experts = int(unet_config["num_experts"])
    num_train_timesteps = int(unet_config.get("num_train_timesteps", 1000))

    vae_factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    default_size = int(expert_config.get("sample_size", 64)) * vae_factor
    height = default_size if height is None else height
    width = default_size if width is None else width
    for flag, value in (("--height", height), ("--width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % vae_factor:
            raise ExportError(f"{flag}: must be a positive multiple of {vae_factor} (the VAE factor), got {value}")
    latent_channels = int(expert_config.get("in_channels", vae_config.get("latent_channels", 4)))
    latent_hw = [height // vae_factor, width // vae_factor]

    import paddle
    from paddle.static import InputSpec

    try:  # validates N, T and the boundaries (none saved: uniform)
        router = TimestepRouter(num_experts, num_train_timesteps, unet_config.get("expert_boundaries"))
    except ValueError as exc:
        raise ExportError(f"{os.path.join(model_dir, 'unet', 'config.json')}: expert_boundaries: {exc}") from None
    paddle.set_device("cpu")  # export on the CPU: the programs run on any device
    if cpu_ops is None:
        cpu_ops = cpu_ops_available()
        if not cpu_ops:
            log("C++ CPU operators not built (python -m ernie_vilg2.ops.build) or switched off: "
                "exporting the programs without them")
    elif cpu_ops and not cpu_ops_available():
        raise ExportError("cpu_ops: the C++ CPU operators are not built or are switched off "
                          "(python -m ernie_vilg2.ops.build; ERNIE_VILG2_CPU_OPS)")
    samplers = _samplers(model_dir, scheduler_config, num_train_timesteps, log)
    TextEncoderProgram, ExpertProgram, VAEDecoderProgram = program_layers()
    owner = _expert_weight_files(os.path.join(model_dir, "unet"))

    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        tmp = str(tmp)
        started = time.time()
        # tokenizer + text encoder
        tokenizer = _component_class(index, "tokenizer", model_dir).from_pretrained(os.path.join(model_dir, "tokenizer"))
        text_encoder = _component_class(index, "text_encoder", model_dir).from_pretrained(
            os.path.join(model_dir, "text_encoder")
        )
        max_length = int(min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings))
        write_vocab(tokenizer, os.path.join(tmp, VOCAB_FILE))
        tok_spec = tokenizer_spec(tokenizer, max_length)
        check_tokenizer(tmp, tok_spec, tokenizer)
        hidden_size = context_width(text_encoder)  # its output: ERNIE's width, or its projection's
        layer = static_program(TextEncoderProgram(text_encoder), [InputSpec([None, max_length], "int64", "input_ids")])
        programs: Dict = {"text_encoder": {**save_program(layer, tmp, "text_encoder"), "hidden_size": hidden_size}}
        del tokenizer, text_encoder, layer
        gc.collect()
        log(f"text encoder exported ({time.time() - started:.1f} s)")

        # VAE decoder
        t0 = time.time()
        vae = _component_class(index, "vae", model_dir).from_pretrained(os.path.join(model_dir, "vae"))
        rewrite_for_export(vae, num_train_timesteps)
        use_fast_layers(vae)  # plain ops in a static graph, the operators' convolutions in with_ops
        scaling_factor = float(vae.config.scaling_factor)
        spec = [InputSpec([None, latent_channels, *latent_hw], "float32", "latents")]
        layer = static_program(VAEDecoderProgram(vae), spec)
        with_ops = static_program(VAEDecoderProgram(vae), spec) if cpu_ops else None
        programs["vae_decoder"] = save_program(layer, tmp, "vae_decoder", with_ops)
        del vae, layer, with_ops
        gc.collect()
        log(f"VAE decoder exported ({time.time() - t0:.1f} s)")

        # experts, one at a time through one traced U-Net
        from ppdiffusers import UNet2DConditionModel

        t0 = time.time()
        unet = rewrite_for_export(UNet2DConditionModel(**expert_config), num_train_timesteps)
        # The experts' attention and layers: a static graph takes the dynamic graph's pure-Paddle
        # ops, the one traced with the C++ CPU operators (with_ops) calls them.
        apply_speedups(unet)
        spec = [
            InputSpec([None, latent_channels, *latent_hw], "float32", "sample"),
            InputSpec([1], "float32", "timestep"),
            InputSpec([None, max_length, hidden_size], "float32", "encoder_hidden_states"),
        ]
        layer = static_program(ExpertProgram(unet), spec)
        with_ops = static_program(ExpertProgram(unet), spec) if cpu_ops else None
        width_digits = max(2, len(str(num_experts - 1)))
        experts: List[Dict] = []
        for i in range(num_experts):
            state = _read_expert(owner, i)
            missing, unexpected = unet.set_state_dict(state)
            if missing or unexpected or not state:
                raise ExportError(
                    f"{os.path.join(model_dir, 'unet')}: expert {i}'s weights do not fit the U-Net config "
                    f"(missing {list(missing)[:3] or ('all' if not state else [])}, unexpected {list(unexpected)[:3]})"
                )
            del state
            entry = save_program(layer, tmp, f"unet/expert_{i:0{width_digits}d}", with_ops)
            experts.append({**entry, "timesteps": list(router.stage(i))})
            log(f"expert {i + 1}/{num_experts} exported ({time.time() - t0:.1f} s)")
        programs["experts"] = experts
        del unet, layer, with_ops
        gc.collect()
        with_operators = any("model_with_cpu_ops" in p for p in [*experts, programs["vae_decoder"]])
        cpu_ops_entry = {"cpu_ops": export_library(tmp)} if with_operators else {}

        manifest = write_manifest(
            tmp,
            {
                "created_by": f"ernie_vilg2 {__version__}",
                "paddle_version": paddle.__version__,
                "image": {"height": height, "width": width},
                "latent": {"channels": latent_channels, "height": latent_hw[0], "width": latent_hw[1],
                           "scaling_factor": scaling_factor},
                "router": {"num_experts": num_experts, "num_train_timesteps": num_train_timesteps,
                           "boundaries": router.boundaries},
                "samplers": samplers,
                "tokenizer": tok_spec,
                "programs": programs,
                **cpu_ops_entry,
            },
        )
    return manifest


__all__ = ["ExportError", "export_pipeline"]
