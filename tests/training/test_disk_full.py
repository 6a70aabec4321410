"""A full disk (ENOSPC) while writing is one line naming the path, the space the write
needed and the space free, with exit 2 from the tools; the partial write is removed and
the previous checkpoint stays intact. The writers are patched to fail as a full disk makes
them fail; one test uses a real 20 MB tmpfs where mounting one is permitted."""
import errno
import os
import re
import shutil
import signal
import subprocess
import uuid

import numpy as np
import pytest
from PIL import Image
from safetensors import SafetensorError

from ernie_vilg2.utils.io import DiskFullError, atomic_directory, atomic_write_text, disk_full_as_error, is_disk_full

from helpers.deploy_exports import load_tool
from helpers.paths import TINY_YAML
from helpers.training_runs import run_config, run_overrides

# What each writer raises when the disk is full.
FULL_DISK_ERRORS = {
    "OSError": lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    "quota": lambda: OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)),
    "safetensors": lambda: SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    "numpy tofile": lambda: OSError("Not enough free space to write 1024 bytes"),
}


def full_disk(kind="OSError", after=0, original=None):
    """A stand-in writer that calls ``original`` ``after`` times, then writes a few bytes to
    the path it was given (where it can) and fails as on a full disk."""
    calls = []

    def write(*args, **kwargs):
        calls.append(args)
        if len(calls) <= after:
            return original(*args, **kwargs)
        target = next((a for a in args if isinstance(a, (str, os.PathLike))), None)
        if target is not None and os.path.isdir(os.path.dirname(os.fspath(target))):
            with open(target, "wb") as f:
                f.write(b"partial")
        raise FULL_DISK_ERRORS[kind]()

    return write


def assert_one_line(message, path, needed=True):
    assert "\n" not in message and str(path) in message, message
    assert "not enough space on the device" in message and "free there" in message, message
    if needed:
        assert "needs about" in message or "needs more than" in message, message


def test_disk_full_is_recognised_only_for_full_disks():
    for make in FULL_DISK_ERRORS.values():
        assert is_disk_full(make())
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = FULL_DISK_ERRORS["OSError"]()
    assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)"))
    assert not is_disk_full(ValueError("bad value"))


@pytest.mark.parametrize("kind", sorted(FULL_DISK_ERRORS))
def test_checkpoint_on_a_full_disk_keeps_the_previous_one(tmp_path, monkeypatch, kind):
    import paddle

    from ernie_vilg2.training import checkpoint

    folder = tmp_path / "ckpt"
    state = {"w": paddle.ones([64, 64])}
    first = checkpoint.save_checkpoint(str(folder), 2, state, {"m": paddle.zeros([64, 64])})
    # The model's file is written, the optimizer's fails.
    monkeypatch.setattr(checkpoint, "save_file", full_disk(kind, after=1, original=checkpoint.save_file))
    with pytest.raises(DiskFullError) as err:
        checkpoint.save_checkpoint(str(folder), 4, state, {"m": paddle.zeros([64, 64])})
    assert_one_line(str(err.value), folder / "step-000004")
    assert err.value.needed == 2 * 64 * 64 * 4  # the tensors' bytes
    assert sorted(os.listdir(folder)) == ["latest", "step-000002"]  # no partial folder left
    assert checkpoint.latest_checkpoint(str(folder)) == first
    checkpoint.verify_checkpoint(first)
    assert checkpoint.find_resume_checkpoint(str(folder)) == (first, [])


def test_atomic_writes_remove_the_partial_file(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("old")
    monkeypatch.setattr("pathlib.Path.write_text", full_disk())
    with pytest.raises(DiskFullError) as err:
        atomic_write_text(tmp_path / "a.txt", "new")
    assert_one_line(str(err.value), tmp_path / "a.txt")
    assert "needs more than 7 bytes" in str(err.value)  # what it wrote before the disk was full
    assert os.listdir(tmp_path) == ["a.txt"] and (tmp_path / "a.txt").read_bytes() == b"old"
    with pytest.raises(DiskFullError) as err:
        with disk_full_as_error(tmp_path / "outputs"):  # names its folder, keeps the inner estimate
            atomic_write_text(tmp_path / "a.txt", "new")
    assert str(err.value).startswith(f"{tmp_path / 'outputs'}: ") and "needs more than 7 bytes" in str(err.value)
    with pytest.raises(DiskFullError) as err:
        with atomic_directory(tmp_path / "folder", needed=5 << 20) as tmp:
            raise FULL_DISK_ERRORS["OSError"]()
    assert "needs about 5.0 MiB" in str(err.value)
    assert os.listdir(tmp_path) == ["a.txt"]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 20 MB tmpfs mounted at tmp_path/tiny (skips where mounting is not permitted)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", f"ernie-test-{uuid.uuid4().hex[:8]}",
                           str(mount_point)], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30)


def test_checkpoint_on_a_real_full_tmpfs(tiny_tmpfs):
    import paddle

    from ernie_vilg2.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    folder = tiny_tmpfs / "ckpt"
    small = save_checkpoint(str(folder), 2, {"w": paddle.ones([256, 256])}, {"m": paddle.zeros([256, 256])})
    big = paddle.ones([3 << 20])  # 12 MiB: model and optimizer state together do not fit
    with pytest.raises(DiskFullError) as err:
        save_checkpoint(str(folder), 4, {"w": big}, {"m": big})
    assert_one_line(str(err.value), folder / "step-000004")
    assert "needs about 24.0 MiB" in str(err.value)
    assert latest_checkpoint(str(folder)) == small and sorted(os.listdir(folder)) == ["latest", "step-000002"]
    assert float(load_checkpoint(small)["model"]["w"].sum()) == 256 * 256


# ------------------------------------------------------------------------------------------- tools
def _last_error(capsys):
    """The one ``error: ...`` line of stderr (after a progress bar's text, if one was open)."""
    err = capsys.readouterr().err
    errors = re.findall(r"error: [^\r\n]*", err)
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.slow
def test_generate_cli_on_a_full_disk(tiny_pipeline_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Image.Image, "save", full_disk())
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        load_tool("tools/generate.py").main(["--model", tiny_pipeline_dir, "--prompt", "猫", "--steps", "1",
                                             "--out", str(out / "g.png")])
    assert exit_.value.code == 2
    last = _last_error(capsys)
    assert last.startswith(f"error: --out: {out}"), last
    assert_one_line(last, out)
    assert os.listdir(out) == []  # the partial image was removed


def test_infer_save_noise_on_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "save", full_disk("numpy tofile"))
    with pytest.raises(DiskFullError) as err:
        load_tool("deploy/python/infer.py").save_npy(np.zeros(256, np.float32), str(tmp_path / "noise.npy"))
    assert "needs about 1.0 KiB" in str(err.value) and os.listdir(tmp_path) == []


@pytest.mark.slow
def test_evaluate_cli_on_a_full_disk(tiny_pipeline_dir, tmp_path, monkeypatch, capsys):
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(refs / f"{i}.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("猫\n狗\n", encoding="utf-8")
    monkeypatch.setattr(Image.Image, "save", full_disk())
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_:
        load_tool("tools/evaluate.py").main(["--model", tiny_pipeline_dir, "--fid-ref", str(refs), "--prompts",
                                             str(prompts), "--out", str(out), "--steps", "1"])
    assert exit_.value.code == 2
    last = _last_error(capsys)
    assert last.startswith(f"error: {out / 'images'}: ") and "needs about 6.0 KiB" in last, last  # 2 x 32x32 RGB
    assert_one_line(last, out)


def test_export_cli_on_a_full_disk(tiny_pipeline_dir, tmp_path, monkeypatch, capsys):
    import paddle

    tool = load_tool("tools/export_model.py")
    out = tmp_path / "export"
    monkeypatch.setattr(paddle.jit, "save", full_disk())
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--model", tiny_pipeline_dir, "--out", str(out)])
    assert exit_.value.code == 2
    last = _last_error(capsys)
    assert last.startswith(f"error: {out}"), last
    assert_one_line(last, out)
    assert os.listdir(tmp_path) == []  # no partial export folder
    # Paddle's program writer leaves a short file on a full disk without an error: a program
    # file shorter than its weights is refused...
    monkeypatch.undo()
    real_save = paddle.jit.save

    def short_save(layer, path, *args, **kwargs):
        real_save(layer, path, *args, **kwargs)
        with open(path + ".pdiparams", "r+b") as f:
            f.truncate(100)

    monkeypatch.setattr(paddle.jit, "save", short_save)
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--model", tiny_pipeline_dir, "--out", str(out)])
    assert exit_.value.code == 2
    last = _last_error(capsys)
    assert last.startswith(f"error: {out}: not enough space on the device"), last
    assert os.listdir(tmp_path) == []
    # ... and too little free space for the model's weights is refused before any work.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 20, 10 << 20, 1024))
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--model", tiny_pipeline_dir, "--out", str(out)])
    assert exit_.value.code == 2
    last = _last_error(capsys)
    assert last.startswith(f"error: {out}") and "1.0 KiB free there" in last, last
    assert_one_line(last, out)


@pytest.mark.slow
def test_train_cli_on_a_full_disk_keeps_the_checkpoint_and_resumes(tmp_path, monkeypatch, capsys):

    from ernie_vilg2.training import checkpoint, runner
    from ernie_vilg2.training.checkpoint import latest_checkpoint, verify_checkpoint

    base = tmp_path / "run" / "checkpoints" / "base"
    original = checkpoint.save_file

    def fail_at_step_4(tensors, path, *args, **kwargs):
        if f"{os.sep}.step-000004." in path and f"{os.sep}base{os.sep}" in path:
            raise FULL_DISK_ERRORS["safetensors"]()
        return original(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", fail_at_step_4)
    args = ["--config", TINY_YAML]
    for o in run_overrides(tmp_path):
        args += ["-o", o]
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert load_tool("tools/train.py").main(args) == 2
    finally:
        signal.signal(signal.SIGTERM, handler)
    last = _last_error(capsys)
    assert last.startswith(f"error: {base / 'step-000004'}: not enough space on the device"), last
    assert_one_line(last, base)
    assert latest_checkpoint(str(base)) == str(base / "step-000002")
    verify_checkpoint(str(base / "step-000002"))
    monkeypatch.setattr(checkpoint, "save_file", original)
    assert runner.run_training(run_config(tmp_path), resume=True)  # continues from step 2
    assert (tmp_path / "run" / "base" / "model_index.json").is_file()
