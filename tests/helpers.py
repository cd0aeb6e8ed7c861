"""Shared test helpers: random 2:4 weights and error reports."""

from __future__ import annotations

import torch

from sparsedm.formats import compress24, mask24

# (dtype, rtol) for comparing against a float64 oracle: about what torch itself achieves
# when it computes in that precision with fp32 accumulation.
TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=generator(seed), dtype=torch.float32).to(dtype)


def sparse_weight(shape, dtype=torch.float32, seed=0):
    """A random 2:4 weight (masked by the DESIGN rule) and its canonical (values, meta)."""
    w = randn(*shape, seed=seed)
    w = (w * mask24(w)).to(dtype)
    values, meta = compress24(w)
    return w, values, meta


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "") -> None:
    """Relative error ||a - e||_max / ||e||_max <= rtol, printing max and mean error on failure."""
    actual64, expected64 = actual.double(), expected.double()
    assert not torch.isnan(actual64).any(), f"{what}: NaN in output"
    err = (actual64 - expected64).abs()
    scale = expected64.abs().max().clamp_min(1e-12)
    rel = float(err.max() / scale)
    assert rel <= rtol, (
        f"{what}: relative error {rel:.3e} > {rtol:.1e} (max abs err {float(err.max()):.3e}, "
        f"mean abs err {float(err.mean()):.3e}, max |expected| {float(scale):.3e})"
    )


def need_backend(name: str) -> None:
    """Skip when backend ``name`` cannot run here; fail instead under
    ``SPARSEDM_REQUIRE_BACKENDS=1`` (bench/gpu_suite.sh), where a skip would hide a broken build."""
    import os

    import pytest

    from sparsedm.ops import registry

    reason = registry.get_backend(name).unavailable_reason()
    if reason:
        if os.environ.get("SPARSEDM_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"{name} backend unavailable under SPARSEDM_REQUIRE_BACKENDS=1: {reason}")
        pytest.skip(f"{name} backend unavailable: {reason}")


def spills_known(row: dict) -> bool:
    """Whether an AOT row's spill count (``spill_bytes``) was read. It may only be missing when
    cuobjdump or ptxas (shipped in the triton wheel) is: a report that they gave but that was
    not understood fails instead of silently skipping the spill check."""
    from sparsedm.kernels import aot

    if row["spill_bytes"] is None:
        assert aot._cuda_tool("cuobjdump") is None or aot._ptxas(row.get("cc", 90)) is None, (
            "cuobjdump and ptxas are there but their reports were not understood")
        return False
    return True


# The largest dynamic shared memory one block may opt into on sm_86/sm_89 (A40, RTX 30xx/40xx,
# L40): 99 KiB, the smallest of the archs served. A Triton config past it cannot launch there.
SM86_SMEM_OPTIN = 101376


def check_fp32_aot_row(row: dict, where: str) -> None:
    """An AOT row of a float32 (IEEE dot) kernel: no tensor-core instruction by design, no
    spills, shared memory within sm_86's opt-in limit."""
    assert not row["mma"], f"{where}: IEEE float32 should not use tensor cores: {row['mma']}"
    if spills_known(row):
        assert row["spill_bytes"] == 0, f"{where}: ptxas spilled {row['spill_bytes']} bytes"
    assert row["shared_bytes"] <= SM86_SMEM_OPTIN, f"{where}: {row['shared_bytes']} bytes of shared memory exceed sm_86's {SM86_SMEM_OPTIN}"
