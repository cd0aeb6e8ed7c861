"""Shared fixtures of the CUDA tests."""

import ctypes
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def emu(tmp_path_factory):
    """tests/cpp/emulator_capi.cpp built with the host compiler: the kernels' lane maps and data
    paths over the PTX-table mma emulator, callable through ctypes."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    lib = tmp_path_factory.mktemp("emu") / "libsparsedm_emu.so"
    subprocess.run(
        [cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-I", f"{ROOT}/kernels/cuda", "-I", f"{ROOT}/tests/cpp",
         f"{ROOT}/tests/cpp/emulator_capi.cpp", "-o", str(lib)],
        check=True,
    )
    return ctypes.CDLL(str(lib))
