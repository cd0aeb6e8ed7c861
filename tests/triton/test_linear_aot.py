"""Ahead-of-time compilation of the Triton linear kernels for sm_80, sm_86 and sm_90.

No GPU needed: each op configuration is compiled with ``triton.compile`` for a ``GPUTarget``
and the PTX must use tensor cores: int8 ``mma.sync`` with s8 operands, f16/bf16 ``mma.sync``
for the float paths, and on sm_90 either ``mma.sync`` or ``wgmma``. ptxas must not spill.
The split-K GEMM variants are checked the same way, and the split-K reduction kernel must
compile without spills.

The compiles run in one child process without ``TRITON_INTERPRET`` (the interpreter replaces
``@triton.jit`` helpers by Python functions, which the real compiler cannot call).

Run as a script to print the registers / shared-memory table of docs/KERNELS.md:
``python tests/triton/test_linear_aot.py`` (add ``--json`` for the raw rows).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

CCS = (80, 86, 90)
# The tensor-core instruction each variant must use (a prefix of the PTX spelling).
EXPECTED_MMA = {
    "int8": (".s32.s8.s8.s32", ".s32.s8.s8"),
    "sparse_fp16": (".f32.f16.f16.f32", ".f32.f16.f16"),
    "sparse_bf16": (".f32.bf16.bf16.f32", ".f32.bf16.bf16"),
    "sparse_int8": (".s32.s8.s8.s32", ".s32.s8.s8"),
    "sparse_int8_static_xscale": (".s32.s8.s8.s32", ".s32.s8.s8"),
    "int8_splitk": (".s32.s8.s8.s32", ".s32.s8.s8"),
    "sparse_fp16_splitk": (".f32.f16.f16.f32", ".f32.f16.f16"),
    "sparse_int8_splitk": (".s32.s8.s8.s32", ".s32.s8.s8"),
}
# float32 variants: IEEE dots, FMA by design (no tensor cores), on their own tile lists.
FP32_VARIANTS = ("sparse_fp32", "sparse_fp32_splitk")


def _compile(variant: str, config, cc: int):
    """Compile one (variant, config) for ``sm_{cc}`` with the hints a real launch carries."""
    from sparsedm.kernels import aot, linear

    signature, constexprs, divisible = linear.aot_spec(variant, config)
    return aot.compile_for(linear._linear_kernel, signature, constexprs, cc, num_warps=config.num_warps,
                           num_stages=config.num_stages, divisible_by_16=divisible)


_FDIV = re.compile(r"\bdiv\.(?:rn|full|approx)[\w.]*\.f32\b")


def _rounding_facts(ptx: str) -> dict:
    """What the bit-exact quantization needs from the PTX: IEEE division, the RNE constant."""
    return {"fdiv": sorted(set(_FDIV.findall(ptx))), "rne_magic": "0f4B400000" in ptx}


def _quantizer_rows() -> list[dict]:
    from sparsedm.kernels import aot, linear

    signature = {"x_ptr": "*fp16", "q_ptr": "*i8", "scale_ptr": "*fp32", "K": "i32", "stride_xm": "i32",
                 "stride_xk": "constexpr", "BLOCK_K": "constexpr", "SINGLE_PASS": "constexpr"}
    rows = []
    for single_pass in (True, False):
        constexprs = {"stride_xk": 1, "BLOCK_K": 1024, "SINGLE_PASS": single_pass}
        for cc in CCS:
            compiled = aot.compile_for(linear._quantize_rows_kernel, signature, constexprs, cc, num_warps=4,
                                       divisible_by_16=("x_ptr", "q_ptr", "scale_ptr", "K", "stride_xm"))
            rows.append({"single_pass": single_pass, "cc": cc, "registers": compiled.registers,
                         "spill_bytes": compiled.spill_bytes, **_rounding_facts(compiled.ptx)})
    return rows


def _reduce_rows() -> list[dict]:
    """The split-K reduction kernel (float and int32 partial sums) on each cc."""
    from sparsedm.kernels import aot, linear

    rows = []
    for int8 in (False, True):
        signature, constexprs, divisible = linear.aot_reduce_spec(int8)
        for cc in CCS:
            compiled = aot.compile_for(linear._split_k_reduce_kernel, signature, constexprs, cc, num_warps=linear._REDUCE_WARPS,
                                       num_stages=1, divisible_by_16=divisible)
            rows.append({"int8": int8, "cc": cc, "registers": compiled.registers, "spill_bytes": compiled.spill_bytes,
                         "shared_bytes": compiled.shared_bytes, "mma": compiled.mma})
    return rows


def _rows(all_configs: bool) -> list[dict]:
    from sparsedm.kernels import linear

    def lists(fp32):
        small, large = linear.configs_for(1, fp32=fp32), linear.configs_for(linear.SMALL_M + 1, fp32=fp32)
        split = linear.configs_for(1, split_k=2, fp32=fp32)
        if not all_configs and not fp32:  # the test: the first (most likely) config of each bucket
            small, large, split = small[:1], large[:1], split[:1]
        # float32: every config in the test too (a few small compiles): each must fit sm_86 unspilled
        tagged = lambda name, cs: [(name, c, i == 0) for i, c in enumerate(cs)]  # noqa: E731
        return tagged("small", small) + tagged("large", large), tagged("split-K", split)

    rows = []
    for variant, spec in linear.AOT_VARIANTS.items():
        write_partial = spec[-1]
        configs, split_configs = lists(variant in FP32_VARIANTS)
        for bucket, config, first in (split_configs if write_partial else configs):
            for cc in CCS:
                compiled = _compile(variant, config, cc)
                kw = config.kwargs
                rows.append({
                    "variant": variant, "bucket": bucket, "first": first, "cc": cc,
                    "tile": f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}",
                    "warps": config.num_warps, "stages": config.num_stages,
                    "mma": compiled.mma, "registers": compiled.registers,
                    "spill_bytes": compiled.spill_bytes, "shared_bytes": compiled.shared_bytes,
                    "cp_async": "cp.async" in compiled.ptx,
                    **_rounding_facts(compiled.ptx),
                })
    return rows


def _markdown(rows: list[dict]) -> str:
    """One line per (variant, config): registers and shared bytes on each cc, the mma used."""
    def short(mma):
        return ", ".join(m.replace("mma.sync.aligned.", "mma.").replace("wgmma.mma_async.sync.aligned.", "wgmma.") for m in mma)

    lines = [
        "| variant | M bucket | tile MxNxK | warps/stages | registers sm_80/86/90 | shared bytes sm_80/86/90 | spills | PTX sm_80 / sm_90 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["variant"], r["bucket"], r["tile"], r["warps"], r["stages"]), {})[r["cc"]] = r
    for (variant, bucket, tile, warps, stages), by_cc in groups.items():
        regs = "/".join(str(by_cc[cc]["registers"]) for cc in CCS)
        shared = "/".join(str(by_cc[cc]["shared_bytes"]) for cc in CCS)
        spills = "none" if all(by_cc[cc]["spill_bytes"] == 0 for cc in CCS) else "YES"
        lines.append(f"| {variant} | {bucket} | {tile} | {warps}/{stages} | {regs} | {shared} | {spills} | "
                     f"`{short(by_cc[80]['mma'])}` / `{short(by_cc[90]['mma'])}` |")
    return "\n".join(lines)


def _reduce_markdown(rows: list[dict]) -> str:
    from sparsedm.kernels import linear

    lines = [
        "| split-K reduction | tile MxN | warps | registers sm_80/86/90 | shared bytes sm_80/86/90 | spills |",
        "|---|---|---|---|---|---|",
    ]
    for int8 in (False, True):
        by_cc = {r["cc"]: r for r in rows if r["int8"] == int8}
        regs = "/".join(str(by_cc[cc]["registers"]) for cc in CCS)
        shared = "/".join(str(by_cc[cc]["shared_bytes"]) for cc in CCS)
        spills = "none" if all(by_cc[cc]["spill_bytes"] == 0 for cc in CCS) else "YES"
        lines.append(f"| {'int32' if int8 else 'float32'} partials, fp16 out | 16x128 | {linear._REDUCE_WARPS} | {regs} | {shared} | {spills} |")
    return "\n".join(lines)


def _spills_known(row) -> bool:
    from tests.helpers import spills_known  # here, not at the top: this file also runs as a script

    return spills_known(row)


@pytest.fixture(scope="module")
def compiled_rows():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton >= 3.9 warns when unset; 1 is the old default
    proc = subprocess.run([sys.executable, __file__, "--json", "--test-set"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"AOT compile worker failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gemm_rows(compiled_rows):
    return compiled_rows["gemm"]


@pytest.mark.parametrize("variant", FP32_VARIANTS)
def test_fp32_tiles_fit_every_arch_without_spills(gemm_rows, variant):
    """Every float32 candidate: no spills on any arch, shared memory within sm_86's opt-in
    limit, and no tensor-core instruction (IEEE float32 is an FMA loop)."""
    from sparsedm.kernels import linear
    from tests.helpers import check_fp32_aot_row

    rows = [r for r in gemm_rows if r["variant"] == variant]
    # the lists themselves: under the interpreter (this process) configs_for gives its one config
    lists = [linear._FP32_SPLIT_K_CONFIGS] if variant.endswith("splitk") else [linear._FP32_SMALL_M_CONFIGS, linear._FP32_LARGE_M_CONFIGS]
    assert len(rows) == len(CCS) * sum(len(x) for x in lists), rows
    for r in rows:
        check_fp32_aot_row(r, f"{variant} ({r['bucket']} list) tile {r['tile']} w{r['warps']}s{r['stages']} on sm_{r['cc']}")


def test_first_config_of_every_list_fits_sm86(gemm_rows):
    """The candidate an autotuner falls back to (and the only one under SPARSEDM_TRITON_AUTOTUNE=0)
    launches on sm_86/89: the first config of each list within its 99 KiB (an autotuner whose every
    candidate exceeds it, or that runs its first alone, fails to launch there)."""
    from sparsedm.kernels import linear
    from tests.helpers import SM86_SMEM_OPTIN

    rows = [r for r in gemm_rows if r["cc"] == 86 and r["first"]]
    assert {r["variant"] for r in rows} == set(linear.AOT_VARIANTS), rows
    for r in rows:
        assert r["shared_bytes"] <= SM86_SMEM_OPTIN, f"{r['variant']} {r['bucket']} {r['tile']}: {r['shared_bytes']} > {SM86_SMEM_OPTIN}"


@pytest.mark.parametrize("cc", CCS)
@pytest.mark.parametrize("variant", list(EXPECTED_MMA))
def test_tensor_cores_and_no_spills(gemm_rows, variant, cc):
    rows = [r for r in gemm_rows if r["variant"] == variant and r["cc"] == cc]
    assert rows, f"no compiled configuration for {variant} on sm_{cc}"
    dense_mma, wgmma = EXPECTED_MMA[variant]
    for r in rows:
        where = f"{variant} ({r['bucket']} list) tile {r['tile']} on sm_{cc}"
        mma_sync = [m for m in r["mma"] if m.startswith("mma.sync") and m.endswith(dense_mma)]
        hopper = [m for m in r["mma"] if m.startswith("wgmma") and m.endswith(wgmma)]
        assert mma_sync or (cc == 90 and hopper), f"{where}: no tensor-core instruction of the right type in {r['mma']}"
        assert not any(m.startswith("mma.sp") for m in r["mma"]), f"{where}: unexpected sparse mma {r['mma']}"
        if _spills_known(r):
            assert r["spill_bytes"] == 0, f"{where}: ptxas spilled {r['spill_bytes']} bytes to local memory"
        # The pipelined (cp.async) loads are what num_stages buys; a missing hint loses them.
        assert r["cp_async"], f"{where}: the loads are not asynchronous copies (cp.async)"
        if variant.endswith("xscale"):  # x quantized in the GEMM prologue
            assert r["fdiv"] == ["div.rn.f32"] and r["rne_magic"], f"{where}: quantization not bit-exact: {r}"


def test_split_k_reduction_compiles_without_spills(compiled_rows):
    rows = compiled_rows["reduce"]
    assert {(r["int8"], r["cc"]) for r in rows} == {(i, cc) for i in (False, True) for cc in CCS}
    for r in rows:
        where = f"_split_k_reduce_kernel int8={r['int8']} on sm_{r['cc']}"
        assert not r["mma"], f"{where}: an elementwise pass should not contain {r['mma']}"
        if _spills_known(r):
            assert r["spill_bytes"] == 0, f"{where}: ptxas spilled {r['spill_bytes']} bytes"


def test_quantizer_rounds_like_torch(compiled_rows):
    """Correctly rounded divisions and the round-half-even constant survive compilation."""
    for r in compiled_rows["quantize"]:
        where = f"_quantize_rows_kernel single_pass={r['single_pass']} on sm_{r['cc']}"
        assert r["fdiv"] == ["div.rn.f32"], f"{where}: divisions {r['fdiv']} (approximate division breaks bit-exactness)"
        assert r["rne_magic"], f"{where}: the 1.5 * 2**23 rounding constant was folded away"
        if _spills_known(r):
            assert r["spill_bytes"] == 0, f"{where}: ptxas spilled {r['spill_bytes']} bytes"


if __name__ == "__main__":
    test_set = "--test-set" in sys.argv
    result = {"gemm": _rows(all_configs=not test_set), "quantize": _quantizer_rows(), "reduce": _reduce_rows()}
    if "--json" in sys.argv:
        print(json.dumps(result))
    else:
        print(_markdown(result["gemm"]))
        print()
        print(_reduce_markdown(result["reduce"]))
