"""bench/mma_probe.cu, the one-warp hardware check of every tensor-core instruction the CUDA
kernels use against the PTX-table emulator.

On the CPU: the probe compiles for sm_80 and sm_90, and its own logic is checked by building it
with SPARSEDM_PROBE_FAKE_HW, where the "hardware" is the emulator reading the B registers in a
chosen order: a faithful instruction passes, an unfaithful one fails and the probe names the
register order that would agree. On a GPU (marker gpu) it runs for real and must pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")
NVCC = os.environ.get("NVCC") or shutil.which("nvcc") or os.path.join(CUDA_HOME, "bin", "nvcc")
SOURCE = os.path.join(ROOT, "bench", "mma_probe.cu")

pytestmark = pytest.mark.skipif(not os.path.exists(NVCC), reason="nvcc not found (set CUDA_HOME)")


def _nvcc(out, *flags):
    cmd = [NVCC, "-std=c++17", "-O2", "-I", f"{ROOT}/kernels/cuda", "-I", f"{ROOT}/tests/cpp", *flags, SOURCE, "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def fake_probe(tmp_path_factory):
    return _nvcc(tmp_path_factory.mktemp("probe") / "mma_probe_fake", "-arch=sm_80", "-DSPARSEDM_PROBE_FAKE_HW")


@pytest.mark.parametrize("arch", ["80", "90"])
def test_probe_compiles(tmp_path, arch):
    _nvcc(tmp_path / "mma_probe.o", f"-arch=sm_{arch}", "-c")


def _run(probe, tmp_path, **env):
    out = tmp_path / "probe.json"
    proc = subprocess.run([str(probe), str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_faithful_instructions_pass(fake_probe, tmp_path):
    proc, doc = _run(fake_probe, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every instruction agrees with the emulator" in proc.stdout
    names = [f["name"] for f in doc["families"]]
    assert names == ["mma.sp m16n8k32 f16", "mma.sp m16n8k32 bf16", "mma.sp m16n8k64 s8", "mma m16n8k32 s8"]
    for fam in doc["families"]:
        assert fam["agree"] and len(fam["trials"]) == 8
        for t in fam["trials"]:
            assert len(t["a"]) == len(t["b"]) == len(t["hw"]) == 128 and len(t["e"]) == 32
            assert t["hw"] == t["emu"] and any(t["hw"])  # non-trivial results
        # fresh random operands per trial
        assert len({tuple(t["a"]) for t in fam["trials"]}) == 8
    assert doc["ldmatrix_x4"]["agree"]


@pytest.mark.parametrize("family, order, shown", [(0, "0213", "0213"), (1, "1032", "1032"), (2, "3012", "3012"),
                                                   (3, "10", "10")])
def test_unfaithful_b_order_is_found(fake_probe, tmp_path, family, order, shown):
    """A "hardware" that reads B register j as register order[j]: that family fails, the others
    pass, and the probe names exactly that order (two digits for the dense s8 shape's 2 registers)."""
    proc, doc = _run(fake_probe, tmp_path, SPARSEDM_PROBE_FAKE_FAMILY=str(family), SPARSEDM_PROBE_FAKE_ORDER=order)
    assert proc.returncode == 1, proc.stdout
    assert [f["agree"] for f in doc["families"]] == [i != family for i in range(4)]
    assert doc["families"][family]["agreeing_b_orders"] == shown
    assert f"B register orders that agree: {shown}" in proc.stdout


@pytest.mark.parametrize("family, order", [(3, "2301"), (0, "0012"), (0, "01234"), (2, "0129")])
def test_fake_order_must_be_a_permutation(fake_probe, tmp_path, family, order):
    proc, _ = _run(fake_probe, tmp_path, SPARSEDM_PROBE_FAKE_FAMILY=str(family), SPARSEDM_PROBE_FAKE_ORDER=order)
    assert proc.returncode == 2 and "give a permutation of 0.." in proc.stderr, proc.stdout + proc.stderr


@pytest.mark.gpu
def test_probe_on_the_gpu(tmp_path):
    major, minor = torch.cuda.get_device_capability(0)
    probe = _nvcc(tmp_path / "mma_probe", f"-arch=sm_{major}{minor}")
    proc, doc = _run(probe, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(f["agree"] for f in doc["families"]) and doc["ldmatrix_x4"]["agree"]
