"""What an exported program says about its own sizes, read from its PIR file (``NAME.json``).

A manifest is only a description of the programs beside it, and a wrong or hostile one must
not make a runner allocate what its numbers say (``tokenizer.max_length: 1000000000`` would
ask for gigabytes). So every size in the manifest is compared with the program that fixes it,
before anything is allocated: the inputs' shapes (``data`` ops: ``input_ids`` [-1, L],
``sample`` [-1, C, h, w], ...), the output's shape (the ``fetch`` op: the VAE decoder's
[-1, 3, H, W]) and the rows of the tables read by ``gather`` (the experts' timestep table of
:mod:`.rewrites`, T rows). Paddle Inference's Python API has no call for these shapes, and the
C++ runner reads the same fields from the same file (deploy/cpp/src/program_info.cc).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..errors import ErnieViLG2Error
from .json_limits import JsonLimitError, check_json_text

# The largest program file read: a program's JSON grows with the number of ops, not with the
# weights (those are in NAME.pdiparams); a 2.2B-parameter U-Net's program is a few MB.
MAX_PROGRAM_BYTES = 64 * 1024 * 1024


class ProgramInfoError(ErnieViLG2Error, ValueError):
    """A program file cannot be read or does not have the expected form; one line naming it."""


@dataclass
class ProgramInfo:
    """The shapes of the inputs by name (-1 for a dynamic dimension), of output 0 and of the
    parameters that ``gather`` ops read (lookup tables), in op order; the bytes of all the
    parameters' values (what ``NAME.pdiparams`` holds besides its per-tensor headers)."""

    path: str
    inputs: Dict[str, List[int]] = field(default_factory=dict)
    output: Optional[List[int]] = None
    tables: List[List[int]] = field(default_factory=list)
    parameter_bytes: int = 0


def _op_kind(op: Dict[str, Any]) -> str:
    # "1.data" (the pd_op dialect's index in the file) or "pd_op.data": the part after the dot.
    return str(op.get("#", "")).rpartition(".")[2]


# Bytes per element of the dtypes in a type record ("0.t_f32" -> f32).
_DTYPE_BYTES = {"f64": 8, "i64": 8, "f32": 4, "i32": 4, "f16": 2, "bf16": 2, "i16": 2, "i8": 1, "ui8": 1, "bool": 1}


def _dtype_bytes(value: Any) -> int:
    try:
        return _DTYPE_BYTES.get(str(value["TT"]["D"][0]["#"]).rpartition(".t_")[2], 4)
    except (KeyError, IndexError, TypeError):
        return 4


def _shape(value: Any) -> Optional[List[int]]:
    """The shape in a value's type record ``{"TT": {"D": [{"#": "0.t_f32"}, [dims], ...]}}``."""
    try:
        shape = value["TT"]["D"][1]
    except (KeyError, IndexError, TypeError):
        return None
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        return None
    return shape


def _attribute(op: Dict[str, Any], name: str):
    for entry in op.get("A") or []:
        if isinstance(entry, dict) and entry.get("N") == name:
            return (entry.get("AT") or {}).get("D")
    return None


def _outputs(op: Dict[str, Any]) -> List[Any]:
    out = op.get("O")
    return out if isinstance(out, list) else [out] if isinstance(out, dict) else []


def read_program_info(path: str) -> ProgramInfo:
    """Read ``path`` (a PIR program, ``paddle.jit.save``'s ``NAME.json``); raises
    :class:`ProgramInfoError` with one line naming the file."""
    size = os.path.getsize(path)
    if size > MAX_PROGRAM_BYTES:
        raise ProgramInfoError(f"{path}: {size} bytes, more than any exported program "
                               f"({MAX_PROGRAM_BYTES // 2**20} MiB)")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        check_json_text(text)
        program = json.loads(text)
        ops = program["program"]["regions"][0]["blocks"][0]["ops"]
    except (UnicodeDecodeError, json.JSONDecodeError, JsonLimitError, KeyError, IndexError, TypeError) as exc:
        raise ProgramInfoError(f"{path}: not a PIR program file ({type(exc).__name__})") from None
    info = ProgramInfo(path)
    value_shapes: Dict[int, List[int]] = {}
    gathered: List[int] = []
    for op in ops if isinstance(ops, list) else []:
        if not isinstance(op, dict):
            continue
        kind, outputs = _op_kind(op), _outputs(op)
        shape = _shape(outputs[0]) if outputs else None
        if kind == "p" and shape is not None:  # a parameter
            value_shapes[outputs[0].get("%")] = shape
            info.parameter_bytes += _dtype_bytes(outputs[0]) * math.prod(max(d, 0) for d in shape)
        elif kind == "data" and shape is not None:
            name = _attribute(op, "name")
            if isinstance(name, str):
                info.inputs[name] = shape
        elif kind == "fetch" and shape is not None and info.output is None:
            info.output = shape
        elif kind == "gather":
            inputs = op.get("I") or []
            if inputs and isinstance(inputs[0], dict):
                gathered.append(inputs[0].get("%"))
    info.tables = [value_shapes[v] for v in gathered if v in value_shapes]
    if not info.inputs:
        raise ProgramInfoError(f"{path}: not a PIR program file (no inputs found)")
    return info
