"""The JIT development path of the CUDA ops (sparsedm._jit, SPARSEDM_JIT=1), without a GPU:
the build itself is replaced by a stand-in; what is checked is when it runs and what the
``cuda`` backend's probe says around it."""

import pytest
import torch
import torch.utils.cpp_extension

from sparsedm import _jit
from sparsedm.ops import backends


def test_no_build_when_the_ops_exist(monkeypatch):
    monkeypatch.setattr(_jit, "cuda_ops_registered", lambda: True)

    def must_not_build(*args, **kwargs):
        raise AssertionError("built although the ops were registered")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", must_not_build)
    assert _jit.load_cuda_ops() is None


def test_cpu_torch_is_refused_before_building(monkeypatch):
    monkeypatch.setattr(_jit, "cuda_ops_registered", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(RuntimeError, match="CPU build"):
        _jit.load_cuda_ops()


def test_probe_builds_once_with_sparsedm_jit(monkeypatch):
    """SPARSEDM_JIT=1 on a GPU machine whose sparsedm._C has no CUDA: the probe builds the ops
    and reports the backend available; once registered, no second build."""
    loaded = []
    monkeypatch.setattr(_jit, "cuda_ops_registered", lambda: bool(loaded))
    monkeypatch.setattr(_jit, "load_cuda_ops", lambda verbose=False: loaded.append(1))
    monkeypatch.setattr(backends, "_cuda_device_reason", lambda: None)
    monkeypatch.setenv("SPARSEDM_JIT", "1")
    assert backends._probe_cuda() is None and loaded == [1]
    assert backends._probe_cuda() is None and loaded == [1]


def test_probe_reports_a_failed_jit_build(monkeypatch):
    monkeypatch.setattr(_jit, "cuda_ops_registered", lambda: False)
    monkeypatch.setattr(backends, "_cuda_device_reason", lambda: None)

    def broken(verbose=False):
        raise RuntimeError("Error building extension 'sparsedm_cuda_jit'\nnvcc fatal ...")

    monkeypatch.setattr(_jit, "load_cuda_ops", broken)
    monkeypatch.setenv("SPARSEDM_JIT", "1")
    reason = backends._probe_cuda()
    assert reason == ("SPARSEDM_JIT=1 but the JIT build of the CUDA ops failed: RuntimeError: Error building "
                      "extension 'sparsedm_cuda_jit'")


def test_probe_without_cuda_ops_names_the_jit_switch(monkeypatch):
    monkeypatch.setattr(_jit, "cuda_ops_registered", lambda: False)
    monkeypatch.delenv("SPARSEDM_JIT", raising=False)
    reason = backends._probe_cuda()
    assert reason is not None and "SPARSEDM_JIT=1" in reason


def test_probe_with_sparsedm_jit_needs_a_gpu_first(monkeypatch):
    monkeypatch.setattr(_jit, "cuda_ops_registered", lambda: False)
    monkeypatch.setattr(backends, "_cuda_device_reason", lambda: "no CUDA device is visible")
    monkeypatch.setattr(_jit, "load_cuda_ops", lambda verbose=False: pytest.fail("built without a GPU"))
    monkeypatch.setenv("SPARSEDM_JIT", "1")
    assert backends._probe_cuda() == "no CUDA device is visible"
