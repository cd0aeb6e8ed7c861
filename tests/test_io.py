"""Atomic writes: nothing under the final name until complete, normal permissions after."""

import os

import pytest

from sparsedm._io import atomic_open, write_atomic


def test_write_atomic_publishes_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "out.json"
    old = os.umask(0o022)
    try:
        write_atomic(str(target), "hello")
    finally:
        os.umask(old)
    assert target.read_text() == "hello"
    assert (target.stat().st_mode & 0o777) == 0o644
    assert os.listdir(target.parent) == ["out.json"]


def test_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(str(target)) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_open(str(tmp_path / "nope" / "x")):
            pass
