"""setup.py's SPARSEDM_CUDA decision: when the CUDA extension is built, and why not."""

import importlib.util
import os
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def setup_module():
    spec = importlib.util.spec_from_file_location("sparsedm_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # guarded: does not call setup()
    return module


def fake_torch(cuda):
    return SimpleNamespace(__version__="9.9.9", version=SimpleNamespace(cuda=cuda))


@pytest.mark.parametrize(
    "mode, torch_cuda, nvcc, expected, reason",
    [
        ("auto", "13.0", (13, 0), True, ""),
        ("auto", "12.8", (13, 0), False, "nvcc 13.0 does not match torch's CUDA 12.8"),
        ("auto", None, (13, 0), False, "CPU build"),
        ("auto", "13.0", None, False, "nvcc was not found"),
        ("0", "13.0", (13, 0), False, "SPARSEDM_CUDA=0"),
        ("1", "13.0", (13, 1), True, ""),
        ("auto", "12.4", (12, 4), False, "older than 12.5"),
        ("auto", "12.8", (12, 8), True, ""),
    ],
)
def test_decide_cuda(setup_module, monkeypatch, mode, torch_cuda, nvcc, expected, reason):
    monkeypatch.setenv("SPARSEDM_CUDA", mode)
    monkeypatch.setattr(setup_module, "nvcc_version", lambda home: nvcc)
    build, why = setup_module.decide_cuda(fake_torch(torch_cuda), "/usr/local/cuda")
    assert build is expected
    assert reason in why


def test_forced_cuda_fails_with_reason(setup_module, monkeypatch):
    monkeypatch.setenv("SPARSEDM_CUDA", "1")
    monkeypatch.setattr(setup_module, "nvcc_version", lambda home: (13, 0))
    with pytest.raises(SystemExit, match="SPARSEDM_CUDA=1 but the CUDA extension cannot be built: torch 9.9.9 is a CPU build"):
        setup_module.decide_cuda(fake_torch(None), None)


def test_bad_mode(setup_module, monkeypatch):
    monkeypatch.setenv("SPARSEDM_CUDA", "maybe")
    with pytest.raises(SystemExit, match="must be 0, 1 or auto"):
        setup_module.decide_cuda(fake_torch("13.0"), None)


def test_real_nvcc_is_parsed_when_present(setup_module):
    cuda_home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    if not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        pytest.skip("no nvcc under CUDA_HOME")
    version = setup_module.nvcc_version(cuda_home)
    assert version is not None and version[0] >= 11
