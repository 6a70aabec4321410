"""Malformed safetensors headers (unknown or integer dtype, shapes or offsets that do not
fit, overlaps, gaps) are one line naming the file and tensor: from check_safetensors, when
loading a pipeline folder or a training checkpoint, and from tools/generate.py and
tools/train.py --resume (exit 2, no traceback)."""
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ernie_vilg2.utils.integrity import (
    NUMPY_WEIGHT_DTYPES, PADDLE_WEIGHT_DTYPES, DamagedFileError, check_safetensors, describe_files,
)

from helpers.paths import REPO_ROOT as REPO
from helpers.paths import TOOL_ENV
from helpers.training_runs import interrupted_run, run_overrides, train_cli



def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        return header, f.read()


def write_header(path, header, data):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


def first_tensors(header, count=2):
    """The names of the first ``count`` tensors in data order."""
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    return names[:count]


# Each defect: (what it does to the header and data, the tensor it names or None, the reason's words).
def _dtype(value):
    def damage(h, d):
        h[first_tensors(h)[0]]["dtype"] = value
        return d
    return damage


def _shape(value):
    def damage(h, d):
        h[first_tensors(h)[0]]["shape"] = value
        return d
    return damage


def _offsets(fn):
    def damage(h, d):
        entry = h[first_tensors(h)[0]]
        entry["data_offsets"] = fn(*entry["data_offsets"])
        return d
    return damage


def _overlap(h, d):
    a, b = first_tensors(h)
    size = h[b]["data_offsets"][1] - h[b]["data_offsets"][0]
    h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + size]  # b on top of a
    return d


def _gap(h, d):
    for entry in (v for k, v in h.items() if k != "__metadata__"):
        entry["data_offsets"] = [o + 8 for o in entry["data_offsets"]]  # 8 unclaimed bytes at the start
    return bytes(8) + d


def _shape_bytes(h, d):  # the right byte count, a shape of another one
    name = first_tensors(h)[0]
    h[name]["shape"] = [int(np.prod(h[name]["shape"])) + 1]
    return d


def _trailing(h, d):
    return d + bytes(16)


def _metadata(h, d):
    h["__metadata__"] = {"format": 1}
    return d


DEFECTS = {
    "unknown dtype": (_dtype("Q99"), True, "unknown dtype 'Q99'"),
    "shape disagrees with offsets": (_shape_bytes, True, "needs"),
    "negative shape": (_shape([-1, -64]), True, "non-negative integers"),
    "float shape": (_shape([64.0]), True, "non-negative integers"),
    "negative offset": (_offsets(lambda b, e: [b - 4, e]), True, "0 <= begin <= end"),
    "reversed offsets": (_offsets(lambda b, e: [e, b]), True, "0 <= begin <= end"),
    "overlapping tensors": (_overlap, True, "overlaps"),
    "gap between tensors": (_gap, True, "gap of 8 bytes"),
    "bytes after the tensors": (_trailing, False, "bytes after the last tensor"),
    "non-string metadata": (_metadata, False, "__metadata__"),
}


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": np.arange(64, dtype="float32"), "b": np.ones((4, 4), "float32")}, str(path),
              metadata={"format": "pd"})
    return path


def _damage(path, defect):
    header, data = read_header(path)
    damage = DEFECTS[defect][0]
    write_header(path, header, damage(header, data))
    return header


def _one_line(message, path):
    assert message.startswith(str(path)) and "\n" not in message, message
    return message


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_malformed_header_is_one_line_naming_file_and_tensor_and_the_library_agrees(weights, defect):
    load_file(str(weights))  # intact: the library reads it and so does the check
    check_safetensors(str(weights))
    header = _damage(weights, defect)
    _, names_tensor, words = DEFECTS[defect]
    with pytest.raises(DamagedFileError) as err:
        check_safetensors(str(weights))
    message = _one_line(str(err.value), weights)
    assert words in message
    if names_tensor:
        assert any(repr(name) in message for name in first_tensors(header)), message
    with pytest.raises(Exception):  # the check refuses only what the format refuses
        load_file(str(weights))


def test_integer_dtype_is_refused_where_floats_are_expected(weights):
    header, data = read_header(weights)
    header["a"]["dtype"] = "I32"  # same byte count: only the dtype is wrong
    write_header(weights, header, data)
    assert load_file(str(weights))["a"].dtype == np.int32  # well formed: the library would read it
    assert sorted(check_safetensors(str(weights))) == ["a", "b"]
    for dtypes in (NUMPY_WEIGHT_DTYPES, PADDLE_WEIGHT_DTYPES):
        with pytest.raises(DamagedFileError) as err:
            check_safetensors(str(weights), dtypes)
        assert "tensor 'a' has dtype I32 (expected floating-point weights" in _one_line(str(err.value), weights)


def test_empty_tensors_and_sub_byte_dtypes(tmp_path):
    path = tmp_path / "edge.safetensors"
    save_file({"a": np.zeros((0, 3), "float32"), "b": np.ones(3, "int8"), "z": np.zeros(0, "float16")}, str(path))
    assert sorted(check_safetensors(str(path))) == ["a", "b", "z"]
    write_header(path, {"a": {"dtype": "F4", "shape": [32], "data_offsets": [0, 16]}}, bytes(16))
    check_safetensors(str(path))  # 4-bit elements: 32 of them in 16 bytes
    write_header(path, {"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, bytes(2))
    with pytest.raises(DamagedFileError, match="needs 1.5 bytes"):
        check_safetensors(str(path))


# ------------------------------------------------------------------------------ pipeline folders
UNET_WEIGHTS = os.path.join("unet", "diffusion_paddle_model.safetensors")


@pytest.fixture
def model_copy(tiny_pipeline_dir, tmp_path):
    return shutil.copytree(tiny_pipeline_dir, tmp_path / "model")


def _make_integer(path):
    header, data = read_header(path)
    name = first_tensors(header)[0]
    header[name]["dtype"] = "I32"
    write_header(path, header, data)
    return name


@pytest.mark.parametrize("defect", ["integer dtype", "unknown dtype", "overlapping tensors", "gap between tensors"])
def test_load_pipeline_names_the_malformed_weights(model_copy, defect):
    from ernie_vilg2.pipelines import load_pipeline

    path = model_copy / UNET_WEIGHTS
    if defect == "integer dtype":
        name = _make_integer(path)
    else:
        name = None
        _damage(path, defect)
    with pytest.raises(DamagedFileError) as err:
        load_pipeline(str(model_copy))
    message = _one_line(str(err.value), path)
    assert name is None or f"tensor {name!r} has dtype I32" in message


@pytest.mark.slow
@pytest.mark.parametrize("defect", ["integer dtype", "unknown dtype"])
def test_generate_cli_one_line_and_exit_2_for_a_malformed_header(model_copy, tmp_path, defect):
    path = model_copy / "text_encoder" / "model.safetensors"
    _make_integer(path) if defect == "integer dtype" else _damage(path, defect)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "generate.py"), "--model", str(model_copy), "--prompt", "猫",
         "--steps", "1", "--out", str(tmp_path / "g.png")],
        capture_output=True, text=True, env=TOOL_ENV, timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --model: ") and str(path) in last, last
    assert not (tmp_path / "g.png").exists()


# ------------------------------------------------------------------------------ training checkpoints
def _rerecord(checkpoint):
    """Rewrite state.json's size and SHA-256 records for the files as they are now (a writer
    that recorded what it wrote, malformed or not)."""
    state_path = os.path.join(checkpoint, "state.json")
    with open(state_path, encoding="utf-8") as f:
        state = json.load(f)
    state["files"] = describe_files(checkpoint, list(state["files"]))
    with open(state_path, "w", encoding="utf-8") as f:
        json.dump(state, f)


@pytest.mark.parametrize("file, defect", [("model.safetensors", "integer dtype"),
                                          ("optimizer.safetensors", "unknown dtype"),
                                          ("ema.safetensors", "overlapping tensors")])
def test_checkpoint_with_recorded_checksums_still_gets_the_structure_check(tmp_path, file, defect):
    import paddle

    from ernie_vilg2.training.checkpoint import find_resume_checkpoint, load_checkpoint, save_checkpoint

    state = {"w": paddle.ones([8, 8]), "v": paddle.zeros([4])}
    ckpt = save_checkpoint(str(tmp_path), 1, state, {"m": paddle.zeros([8, 8]), "n": paddle.zeros([4])},
                           ema_state=state)
    path = os.path.join(ckpt, file)
    _make_integer(path) if defect == "integer dtype" else _damage(path, defect)
    _rerecord(ckpt)
    for load in (lambda: find_resume_checkpoint(str(tmp_path)), lambda: load_checkpoint(ckpt, checksum=False)):
        with pytest.raises(DamagedFileError) as err:
            load()
        message = str(err.value)
        assert os.path.join("step-000001", file) in message and "\n" not in message, message
        assert message.startswith(str(tmp_path)), message


@pytest.mark.slow
def test_train_resume_one_line_and_exit_2_for_a_malformed_checkpoint(tmp_path, monkeypatch):

    interrupted_run(tmp_path, monkeypatch)
    ckpt = tmp_path / "run" / "checkpoints" / "base" / "step-000002"
    assert sorted(p.name for p in ckpt.parent.iterdir() if p.name.startswith("step-")) == ["step-000002"]
    path = ckpt / "model.safetensors"
    name = _make_integer(path)
    _rerecord(str(ckpt))
    proc = subprocess.run(train_cli(run_overrides(tmp_path), "--resume"), capture_output=True, text=True, env=TOOL_ENV,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(ckpt.parent) in last, last
    assert f"step-000002/model.safetensors: tensor {name!r} has dtype I32" in last, last
