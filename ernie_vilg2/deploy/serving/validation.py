"""A ``POST /generate`` body to a checked :class:`GenerationRequest`, with the runners' rules.

The sampling settings go through the checks every runner uses
(:mod:`ernie_vilg2.pipelines.checks`), the prompts through
:func:`ernie_vilg2.text.tokenizer.check_prompts`, the body through the UTF-8 rule of the
command-line tools (:func:`ernie_vilg2.cli_utils.utf8_error`), and the size must be the export's.
Every refusal is a :class:`RequestError` naming the field. Imports neither paddle nor aiohttp.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

from ...cli_utils import utf8_error
from ...errors import ErnieViLG2Error
from ...pipelines.checks import check_sampling_settings, check_seed, expert_guidance_scales
from ...text.tokenizer import check_prompts, lone_surrogate
from ..json_limits import JsonLimitError, check_json_text
from ..schedulers import SAMPLERS, check_samplers

FORMATS = ("png", "json")
# The defaults of deploy/python/infer.py's flags (ernie_vilg2.cli_utils.add_sampling_arguments).
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 2.1
DEFAULT_SAMPLER = "dpm"  # when the export offers it; else the export's default
# Prompts are a sentence or two and the text encoder keeps max_length tokens of them: the bound
# keeps a request's prompts, its tokenizing and its JSON answer small.
MAX_PROMPT_CHARS = 1000
MAX_BODY_DEPTH = 4  # {"prompts": [...]} nests 2 levels
FIELDS = ("prompt", "prompts", "negative_prompt", "seed", "steps", "guidance", "sampler", "num_images_per_prompt",
          "height", "width", "format")
# The runners' checks name their argument; the request names the field.
_ARGUMENT_FIELDS = {"num_inference_steps": "steps", "guidance_scale": "guidance", "seed": "seed",
                    "num_images_per_prompt": "num_images_per_prompt"}


class RequestError(ErnieViLG2Error, ValueError):
    """A request the service refuses: ``status`` (400 for a body that is not a JSON object,
    422 for a bad field), ``field`` (``"body"`` for the body as a whole) and a one-line message
    that starts with the field's name."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True)
class GenerationRequest:
    """One checked request: its images are ``prompts`` x ``num_images_per_prompt``, prompt-major."""

    prompts: Tuple[str, ...]
    negative_prompt: Optional[str]
    seed: int
    steps: int
    guidance: Union[float, Tuple[float, ...]]  # one scale, or one per expert as asked
    scales: Tuple[float, ...]  # the scale of each expert
    sampler: str
    num_images_per_prompt: int
    format: Optional[str]  # "png", "json" or None: the Accept header decides

    @property
    def num_images(self) -> int:
        return len(self.prompts) * self.num_images_per_prompt

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys can share one pipeline call (guidance 3 and [3, 3] do)."""
        return self.steps, self.scales, self.sampler, self.negative_prompt or ""

    def prompt_of_image(self, index: int) -> str:
        return self.prompts[index // self.num_images_per_prompt]

    def settings(self) -> Dict[str, object]:
        """What the images were made with (deploy/python/infer.py's flags of the same names)."""
        guidance = list(self.guidance) if isinstance(self.guidance, tuple) else self.guidance
        return {"prompts": list(self.prompts), "negative_prompt": self.negative_prompt, "seed": self.seed,
                "steps": self.steps, "guidance": guidance, "sampler": self.sampler,
                "num_images_per_prompt": self.num_images_per_prompt}


@dataclass(frozen=True)
class RequestRules:
    """What requests are checked against: a scheduler of each sampler the export offers (for its
    step limit; read only here, never stepped), the sampler of a request without one, the
    export's image size, the images a request may ask for and the export's number of experts
    (a per-expert ``guidance`` has one scale each)."""

    schedulers: Mapping[str, object]
    default_sampler: str
    image_size: Tuple[int, int]
    max_images: int
    num_experts: int = 1

    @classmethod
    def from_export(cls, samplers: Mapping, image_size, max_images: int, num_experts: int = 1) -> "RequestRules":
        """``samplers``: the manifest's ``samplers`` section (``InferencePipeline.samplers``)."""
        schedulers = check_samplers(samplers)
        default = DEFAULT_SAMPLER if DEFAULT_SAMPLER in schedulers else samplers["default"]
        return cls(schedulers, default, tuple(image_size), max_images, num_experts)


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body; anything else is a :class:`RequestError` (400)."""
    problem = utf8_error(raw)
    if problem:
        raise RequestError("body", f"body: {problem}", 400)
    text = raw.decode("utf-8")
    try:
        check_json_text(text, MAX_BODY_DEPTH)
        body = json.loads(text)
    except JsonLimitError as exc:
        raise RequestError("body", f"body: {exc}", 400) from None
    except ValueError as exc:  # JSONDecodeError, or an integer of more digits than Python converts
        raise RequestError("body", f"body: not valid JSON ({exc})", 400) from None
    if not isinstance(body, dict):
        raise RequestError("body", f"body: expected a JSON object, got {_json_type(body)}", 400)
    return body


def check_request(body: Mapping, rules: RequestRules, new_seed: Callable[[], int]) -> GenerationRequest:
    """``body`` (a parsed JSON object) to a :class:`GenerationRequest`; ``new_seed()`` gives the
    seed of a request without one."""
    unknown = [name for name in body if name not in FIELDS]
    if unknown:
        raise RequestError(unknown[0], f"{unknown[0]}: unknown field (fields: {', '.join(FIELDS)})")
    prompts = _prompts(body)
    negative = body.get("negative_prompt")
    if negative is not None:
        _check_text("negative_prompt", negative)
    steps = _integer(body, "steps", DEFAULT_STEPS)
    per_prompt = _integer(body, "num_images_per_prompt", 1)
    seed = body.get("seed")
    if seed is None:
        seed = new_seed()
    guidance = body.get("guidance", DEFAULT_GUIDANCE)
    sampler = body.get("sampler", rules.default_sampler)
    if sampler not in SAMPLERS:
        raise RequestError("sampler", f"sampler must be one of {', '.join(SAMPLERS)}, got {_short(sampler)}")
    if sampler not in rules.schedulers:
        raise RequestError("sampler", f"sampler: {sampler} is not offered by this export (manifest field "
                                      f"'samplers' offers: {', '.join(rules.schedulers)})")
    try:
        check_seed(seed)
        scales = tuple(expert_guidance_scales(guidance, rules.num_experts))
        check_sampling_settings(rules.schedulers[sampler], steps, guidance, per_prompt, seed, "pil", rules.num_experts)
    except ValueError as exc:
        name = re.match(r"\w+", str(exc)).group()
        field = _ARGUMENT_FIELDS.get(name, name)
        raise RequestError(field, field + str(exc)[len(name):]) from None
    for index, name in enumerate(("height", "width")):
        value = _integer(body, name, None)
        built = rules.image_size[index]
        if value is not None and value != built:
            raise RequestError(name, f"{name} must be {built}: the export was built for "
                                     f"{rules.image_size[0]}x{rules.image_size[1]}, got {value}")
    count = len(prompts) * per_prompt
    if count > rules.max_images:
        field = "num_images_per_prompt" if per_prompt > 1 else _prompt_field(body)
        raise RequestError(field, f"{field}: at most {rules.max_images} images per request (prompts x "
                                  f"num_images_per_prompt), got {count}")
    fmt = body.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise RequestError("format", f"format must be one of {', '.join(FORMATS)}, got {_short(fmt)}")
    guidance = scales if isinstance(guidance, list) else scales[0]
    return GenerationRequest(tuple(prompts), negative, int(seed), steps, guidance, scales, sampler, per_prompt, fmt)


def _prompts(body: Mapping) -> list:
    if "prompt" in body and "prompts" in body:
        raise RequestError("prompts", "prompts: give either prompt (one text) or prompts (a list), not both")
    field = _prompt_field(body)
    value = body.get(field)
    if field == "prompt" and not isinstance(value, str):
        raise RequestError(field, f"prompt: expected a string, got {_json_type(value)}")
    if field == "prompts" and not isinstance(value, list):
        raise RequestError(field, f"prompts: expected a list of strings, got {_json_type(value)}")
    try:
        prompts = check_prompts(value, field=field)
    except (TypeError, ValueError) as exc:
        raise RequestError(field, str(exc)) from None
    for i, text in enumerate(prompts):
        _check_length(field if field == "prompt" else f"{field}[{i}]", text)
    return prompts


def _prompt_field(body: Mapping) -> str:
    return "prompts" if "prompts" in body else "prompt"


def _check_text(field: str, value) -> None:
    """The negative prompt: what :func:`check_prompts` checks of a prompt, except that it may be empty."""
    if not isinstance(value, str):
        raise RequestError(field, f"{field}: expected a string, got {_json_type(value)}")
    where = lone_surrogate(value)
    if where:
        raise RequestError(field, f"{field}: not valid Unicode text ({where})")
    _check_length(field, value)


def _check_length(field: str, value: str) -> None:
    if len(value) > MAX_PROMPT_CHARS:
        raise RequestError(field.split("[")[0], f"{field}: at most {MAX_PROMPT_CHARS} characters, got {len(value)}")


def _integer(body: Mapping, field: str, default):
    value = body.get(field, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise RequestError(field, f"{field} must be an integer, got {_short(value)}")
    return value


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(value) -> str:
    """``repr`` of a field's value, cut: messages stay one short line."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
