"""Ahead-of-time compilation of the conv and compress kernels for sm_80, sm_86 and sm_90.

No GPU needed: ``sparsedm.kernels.aot.compile_for`` runs ``triton.compile`` for a
``GPUTarget``. The compile runs in a subprocess without TRITON_INTERPRET, because under the
interpreter every ``@triton.jit`` helper (ours and triton.language's own, e.g. ``tl.cdiv``) is
an interpreted function that the compiler cannot lower.

    python tests/triton/test_conv_compress_aot.py --markdown [--all-configs]

prints the table of docs/KERNELS.md ("AOT report").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CCS = (80, 86, 90)
_TRITON_TYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def _conv_job(dtype: str, cfg: dict, cc: int, channels_last: bool = True) -> dict:
    """One conv configuration, specialized like the JIT does (conv2d.aot_spec: silu, bias)."""
    from sparsedm.kernels import conv2d

    sig, constexprs, divisible = conv2d.aot_spec(_TRITON_TYPE[dtype], cfg, channels_last=channels_last)
    return _compile(conv2d._sparse24_conv2d_kernel, sig, constexprs, cc, cfg["num_warps"], cfg["num_stages"], divisible)


def _compress_job(kernel_name: str, dtype: str, cc: int) -> dict:
    from sparsedm.kernels import compress

    t = _TRITON_TYPE[dtype]
    if kernel_name == "compress24":
        kernel = compress._compress24_kernel
        sig = {"w_ptr": f"*{t}", "values_ptr": f"*{t}", "meta_ptr": "*u8", "flag_ptr": "*i32"}
        ints = ["N", "PAIRS", "stride_wr", "stride_wk"]
    else:
        kernel = compress._decompress24_kernel
        sig = {"values_ptr": f"*{t}", "meta_ptr": "*u8", "w_ptr": f"*{t}", "flag_ptr": "*i32"}
        ints = ["N", "PAIRS", "stride_vr", "stride_vk", "stride_mr", "stride_mk"]
    sig.update({a: "i32" for a in ints})
    constexprs = {"BLOCK_R": 32, "BLOCK_P": 32}
    sig.update({k: "constexpr" for k in constexprs})
    return _compile(kernel, sig, constexprs, cc, 4, 1, [n for n in sig if n.endswith("_ptr") or n == "PAIRS"])


def _compile(kernel, sig, constexprs, cc, num_warps, num_stages, divisible) -> dict:
    """``compile_for`` with the ``tt.divisibility`` hints of a real launch: with them the
    compiler vectorizes the channels_last input loads and pipelines them with cp.async, so
    registers and shared memory below are those of the realistic UNet shapes."""
    from sparsedm.kernels import aot

    c = aot.compile_for(kernel, sig, constexprs, cc, num_warps=num_warps, num_stages=num_stages, divisible_by_16=divisible)
    return {"cc": cc, "mma": c.mma, "registers": c.registers, "spill_bytes": c.spill_bytes,
            "shared_bytes": c.shared_bytes, "cp_async": "cp.async" in c.ptx}


def _jobs(all_configs: bool) -> list[dict]:
    from sparsedm.kernels import conv2d

    def cfgs(configs, largest):
        if not all_configs:  # the test: the largest tile, the one most likely to run out of registers
            configs = [c for c in configs if c.kwargs == largest] or configs[:1]
        return [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in configs]

    def every(configs):
        return [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in configs]

    tile = lambda bm, bn, bk: {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}  # noqa: E731
    jobs = []
    for cc in CCS:
        # channels_last: every config in float16 (each must compile without spills), the largest in
        # bfloat16 (it compiles to the same registers)
        for dtype, configs in (("float16", every(conv2d.config_list())), ("bfloat16", cfgs(conv2d.config_list(), tile(128, 128, 32)))):
            for cfg in configs:
                jobs.append({"kernel": "sparse24_conv2d", "dtype": dtype, "cfg": cfg, "cc": cc, "layout": "nhwc"})
        # NCHW input (stride_xc != 1: the channel gather is strided, nothing vectorizes): its own
        # list, every config (they are small), in float16 (bfloat16 compiles to the same registers)
        for c in conv2d._NCHW_CONFIGS:
            cfg = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
            jobs.append({"kernel": "sparse24_conv2d", "dtype": "float16", "cfg": cfg, "cc": cc, "layout": "nchw"})
        # float32 (IEEE dots, no tensor cores), both layouts: the first and the largest config
        for cfg in cfgs(conv2d.config_list(fp32=True), tile(64, 128, 16)):
            for layout in ("nhwc", "nchw"):
                jobs.append({"kernel": "sparse24_conv2d", "dtype": "float32", "cfg": cfg, "cc": cc, "layout": layout})
        for name in ("compress24", "decompress24"):
            jobs.append({"kernel": name, "dtype": "float16", "cfg": {"BLOCK_R": 32, "BLOCK_P": 32, "num_warps": 4}, "cc": cc})
    return jobs


def _run_jobs(all_configs: bool) -> list[dict]:
    out = []
    for job in _jobs(all_configs):
        if job["kernel"] == "sparse24_conv2d":
            res = _conv_job(job["dtype"], job["cfg"], job["cc"], channels_last=job["layout"] == "nhwc")
        else:
            res = _compress_job(job["kernel"], job["dtype"], job["cc"])
        out.append({**job, **res})
    return out


def _markdown(rows: list[dict]) -> str:
    lines = [
        "| kernel | dtype | config (BM x BN x BK, warps, stages) | sm | tensor-core instruction | registers | spill bytes | shared bytes | cp.async |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["cfg"]
        if r["kernel"] == "sparse24_conv2d":
            cfg = f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']}, {c['num_warps']}, {c['num_stages']}" + (
                ", NCHW input" if r.get("layout") == "nchw" else "")
        else:
            cfg = f"{c['BLOCK_R']} rows x {c['BLOCK_P']} pairs, {c['num_warps']}, 1"
        mma = ", ".join(f"`{m}`" for m in r["mma"]) or "none (elementwise)"
        lines.append(
            f"| {r['kernel']} | {r['dtype']} | {cfg} | {r['cc']} | {mma} | {r['registers']} | {r['spill_bytes']} | {r['shared_bytes']} | {'yes' if r['cp_async'] else 'no'} |"
        )
    return "\n".join(lines)


def _spills_known(row) -> bool:
    from tests.helpers import spills_known  # here, not at the top: this file also runs as a script

    return spills_known(row)


@pytest.fixture(scope="module")
def aot_rows():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--json"], capture_output=True, text=True, env=env, cwd=root, timeout=600
    )
    assert proc.returncode == 0, f"AOT compile failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cc", CCS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_conv_uses_tensor_cores(aot_rows, cc, dtype):
    rows = [r for r in aot_rows if r["kernel"] == "sparse24_conv2d" and r["cc"] == cc and r["dtype"] == dtype]
    assert rows
    t = {"float16": "f16", "bfloat16": "bf16"}[dtype]
    for r in rows:
        hits = [m for m in r["mma"] if (m.startswith("mma.sync") or (cc == 90 and m.startswith("wgmma"))) and f".{t}" in m]
        assert hits, f"sm_{cc} {dtype}: no {t} tensor-core mma in the PTX (found {r['mma']})"
        if _spills_known(r):
            assert r["spill_bytes"] == 0, f"sm_{cc} {dtype} {r['layout']} {r['cfg']}: {r['spill_bytes']} bytes of register spills"
    if dtype == "float16":
        assert {r["layout"] for r in rows} == {"nhwc", "nchw"}


@pytest.mark.parametrize("cc", CCS)
def test_conv_fp32_fits_without_spills(aot_rows, cc):
    """float32 (IEEE dots): no tensor cores by design, no spills in either layout, and shared
    memory within sm_86's limit."""
    from tests.helpers import check_fp32_aot_row

    rows = [r for r in aot_rows if r["kernel"] == "sparse24_conv2d" and r["cc"] == cc and r["dtype"] == "float32"]
    assert {r["layout"] for r in rows} == {"nhwc", "nchw"}
    for r in rows:
        check_fp32_aot_row(r, f"sm_{cc} float32 {r['layout']} {r['cfg']}")


@pytest.mark.parametrize("cc", CCS)
@pytest.mark.parametrize("kernel", ["compress24", "decompress24"])
def test_compress_kernels_compile(aot_rows, cc, kernel):
    rows = [r for r in aot_rows if r["kernel"] == kernel and r["cc"] == cc]
    assert rows and all(r["spill_bytes"] == 0 for r in rows if _spills_known(r)), rows


if __name__ == "__main__":
    all_configs = "--all-configs" in sys.argv
    rows = _run_jobs(all_configs)
    if "--markdown" in sys.argv:
        print(_markdown(rows))
    else:
        print(json.dumps(rows))
