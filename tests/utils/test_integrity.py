"""File integrity helpers: damaged safetensors files and size/checksum records."""
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from ernie_vilg2.utils.integrity import DamagedFileError, check_safetensors, describe_files, verify_files


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": np.arange(100, dtype="float32"), "b": np.ones((3, 4), "float32")}, str(path))
    return path


def test_intact_file_lists_its_tensors(weights):
    assert sorted(check_safetensors(str(weights))) == ["a", "b"]


@pytest.mark.parametrize("cut", [0, 5, 20, -1, -48])
def test_truncated_file_is_named_in_one_line(weights, cut):
    data = weights.read_bytes()
    weights.write_bytes(data[:cut])
    with pytest.raises(DamagedFileError) as err:
        check_safetensors(str(weights))
    message = str(err.value)
    assert message.startswith(str(weights)) and "\n" not in message
    assert "truncated" in message or "not a safetensors file" in message


def test_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"x" * 16)
    with pytest.raises(DamagedFileError, match="not valid JSON"):
        check_safetensors(str(garbage))
    with pytest.raises(DamagedFileError, match="file not found"):
        check_safetensors(str(tmp_path / "none.safetensors"))


def test_records_catch_truncation_and_bit_flips(weights):
    folder, name = os.path.split(str(weights))
    records = describe_files(folder, [name])
    verify_files(folder, records)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    verify_files(folder, records, checksum=False)  # same size: only the checksum sees it
    with pytest.raises(DamagedFileError, match="SHA-256"):
        verify_files(folder, records)
    weights.write_bytes(bytes(data[:-4]))
    with pytest.raises(DamagedFileError, match=r"expected \d+ bytes, found \d+"):
        verify_files(folder, records, checksum=False)
