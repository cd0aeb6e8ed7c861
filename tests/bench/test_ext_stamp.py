"""bench/ext_stamp.py: when a built sparsedm._C may be reused (bench/gpu_suite.sh's build step)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def stamp(tmp_path, monkeypatch):
    """The module pointed at a small fake tree: csrc/, kernels/cuda/, setup.py."""
    spec = importlib.util.spec_from_file_location("ext_stamp", os.path.join(ROOT, "bench", "ext_stamp.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "csrc" / "cuda").mkdir(parents=True)
    (tmp_path / "kernels" / "cuda").mkdir(parents=True)
    (tmp_path / "sparsedm").mkdir()
    (tmp_path / "csrc" / "module.cpp").write_text("int a;")
    (tmp_path / "csrc" / "cuda" / "gemm.cu").write_text("int b;")
    (tmp_path / "kernels" / "cuda" / "mma.cuh").write_text("int c;")
    (tmp_path / "setup.py").write_text("# setup")
    monkeypatch.setattr(mod, "ROOT", str(tmp_path))
    monkeypatch.setattr(mod, "STAMP", str(tmp_path / "sparsedm" / "_C.stamp"))
    mod.tree = tmp_path
    return mod


def test_hash_follows_contents_not_times(stamp):
    before = stamp.sources_hash()
    path = stamp.tree / "kernels" / "cuda" / "mma.cuh"
    os.utime(path, (1, 1))  # a copied tree has other times: same hash
    assert stamp.sources_hash() == before
    for rel in ("kernels/cuda/mma.cuh", "csrc/cuda/gemm.cu", "setup.py"):
        p = stamp.tree / rel
        old = p.read_text()
        p.write_text(old + " ")
        assert stamp.sources_hash() != before, rel
        p.write_text(old)
    (stamp.tree / "csrc" / "new.cpp").write_text("")  # a new source file counts too
    assert stamp.sources_hash() != before


def test_check_reasons(stamp, monkeypatch):
    ok = lambda: None  # noqa: E731  (the extension imports with its CUDA ops)
    assert "no readable" in stamp.check(ok)
    stamp.write("9.0")
    doc = json.loads((stamp.tree / "sparsedm" / "_C.stamp").read_text())
    assert doc == {"sources": stamp.sources_hash(), "torch": torch.__version__, "archs": "9.0"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert stamp.check(ok) is None
    assert stamp.check(lambda: "sparsedm._C has no CUDA ops (a CPU-only build)") == "sparsedm._C has no CUDA ops (a CPU-only build)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (8, 6))
    assert stamp.check(ok) == "built for archs 9.0, this GPU is sm 8.6"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))
    assert stamp.check(ok) is None
    for spelling in ("8.0 9.0", "8.0;9.0+PTX", "9.0a", "8.6,9.0"):
        stamp.write(spelling)
        assert stamp.check(ok) is None, spelling
    stamp.write("8.0;8.6+PTX")
    assert stamp.check(ok) == "built for archs 8.0;8.6+PTX, this GPU is sm 9.0"
    stamp.write("9.0")
    (stamp.tree / "csrc" / "module.cpp").write_text("int a2;")
    assert "sources" in stamp.check(ok) and "changed" in stamp.check(ok)
    stamp.write("8.0;9.0")
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert stamp.check(ok) == f"built against torch {doc['torch']}, this is torch 0.0.1"


def test_real_import_check(stamp, monkeypatch):
    """The real import check on this machine's sparsedm._C: a CPU-only build (CI's) is never
    reused; a CUDA build (also one made on a machine without a GPU) passes it."""
    stamp.write("9.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    try:
        import sparsedm._C  # noqa: F401
    except ImportError:
        assert "does not import" in stamp.check()
        return
    if hasattr(torch.ops.sparsedm, "_cuda_sparse24_gemm"):
        assert stamp.check() is None
    else:
        assert stamp.check() == "sparsedm._C has no CUDA ops (a CPU-only build)"
