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
    monkeypatch.setattr(setup_module, "cuda_include_problem", lambda home: None)
    build, why = setup_module.decide_cuda(fake_torch(torch_cuda), "/usr/local/cuda")
    assert build is expected
    assert reason in why


def test_forced_cuda_fails_with_reason(setup_module, monkeypatch):
    monkeypatch.setenv("SPARSEDM_CUDA", "1")
    monkeypatch.setattr(setup_module, "nvcc_version", lambda home: (13, 0))
    with pytest.raises(SystemExit, match="SPARSEDM_CUDA=1 but the CUDA extension cannot be built: torch 9.9.9 is a CPU build"):
        setup_module.decide_cuda(fake_torch(None), None)


@pytest.mark.parametrize("mode", ["auto", "1"])
def test_cuda_home_without_runtime_headers(setup_module, monkeypatch, tmp_path, mode):
    """A CUDA_HOME whose include/ lacks cuda_runtime_api.h (torch guessed /usr/local from a
    wrapper script) is named before any compile: CPU-only under auto, an error under 1."""
    monkeypatch.setenv("SPARSEDM_CUDA", mode)
    monkeypatch.setattr(setup_module, "nvcc_version", lambda home: (13, 0))
    (tmp_path / "include").mkdir()
    if mode == "1":
        with pytest.raises(SystemExit, match=f"CUDA_HOME={tmp_path} has no include/cuda_runtime_api.h: set CUDA_HOME"):
            setup_module.decide_cuda(fake_torch("13.0"), str(tmp_path))
    else:
        build, why = setup_module.decide_cuda(fake_torch("13.0"), str(tmp_path))
        assert build is False and "has no include/cuda_runtime_api.h" in why
    (tmp_path / "include" / "cuda_runtime_api.h").write_text("// header")
    assert setup_module.decide_cuda(fake_torch("13.0"), str(tmp_path)) == (True, "")


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


def test_build_ext_0_compiles_nothing(setup_module, monkeypatch, capsys):
    """SPARSEDM_BUILD_EXT=0: no extension module at all (an editable install keeps the .so in
    the tree, e.g. one bench/prebuild_extension.sh made), and it says which file that is."""
    monkeypatch.setenv("SPARSEDM_BUILD_EXT", "0")
    assert setup_module.extensions() == ([], {})
    assert "SPARSEDM_BUILD_EXT=0: installing the Python package only" in capsys.readouterr().err
