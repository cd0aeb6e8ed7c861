"""Every flag combination the Triton launchers produce compiles for sm_90 (the lent H100/H200).

The AOT tests beside this one compile each kernel family's main variant for three archs and
record registers; the launchers also pass the epilogue (bias, four activations), the output
dtype, the int8 scale modes (dynamic, given static, given per-token), split-K partial sums,
and for the conv the input layout and 64-bit offsets, each a constexpr and so a separate
compile on the GPU. A combination that Triton fails to lower would otherwise first show on
borrowed GPU time. By default a subset in which every value of every flag appears at least
once; ``SPARSEDM_AOT_SWEEP=1`` compiles the full list (the subset and, per family, the
combinations of its flags that matter together: 180 kernels, minutes).

    python tests/triton/test_aot_flags.py [--all]     prints one JSON line per kernel
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest

CC = 90
FLOATS = ("fp16", "bf16", "fp32")
# (x, w, sparse, int8, quantize_x, per_token, bias, activation, partial, y, config list)
LINEAR_SUBSET = [
    ("fp16", "fp16", True, False, False, False, True, 1, False, "fp16", "small"),
    ("bf16", "bf16", True, False, False, False, False, 0, False, "bf16", "large"),
    ("fp32", "fp32", True, False, False, False, True, 2, False, "fp32", "small"),
    ("fp16", "fp16", True, False, False, False, True, 0, True, "fp32", "split"),
    ("i8", "i8", False, True, False, True, True, 3, False, "fp32", "large"),     # dynamic: codes in
    ("i8", "i8", True, True, False, True, False, 0, False, "bf16", "small"),
    ("fp16", "i8", False, True, True, False, True, 1, False, "fp16", "small"),   # given static x_scale
    ("bf16", "i8", True, True, True, True, False, 0, False, "bf16", "large"),    # given per-token x_scale
    ("fp32", "i8", True, True, True, True, True, 0, True, "i32", "split"),
    ("i8", "i8", True, True, False, True, True, 0, True, "i32", "split"),
]
# (int8, per_token, bias, activation, y)
REDUCE_SUBSET = [(True, True, True, 2, "bf16"), (False, False, False, 0, "fp32"), (True, False, True, 3, "fp16")]
# (x, BLOCK_K, single pass)
QUANT_SUBSET = [("fp16", 4096, True), ("bf16", 1024, False), ("fp32", 64, True)]
# (dtype, bias, activation, 64-bit offsets, channels_last, index into the list of
# conv2d.config_list(dtype, layout): 0 the first, -1 the last)
CONV_SUBSET = [("bf16", True, 2, False, False, 0), ("fp16", False, 0, True, True, -1), ("fp32", True, 1, False, True, 0),
               ("fp16", True, 3, False, True, 3)]


def _all_jobs():
    linear = []
    for x in FLOATS:  # the float 2:4 path
        for bias, act in [(True, a) for a in range(4)] + [(False, 0)]:
            for lst in ("small", "large"):
                linear.append((x, x, True, False, False, False, bias, act, False, x, lst))
        linear.append((x, x, True, False, False, False, True, 0, True, "fp32", "split"))
    for sparse in (False, True):
        for y in FLOATS:
            for bias, act in [(True, a) for a in range(4)] + [(False, 0)]:  # dynamic scales
                linear.append(("i8", "i8", sparse, True, False, True, bias, act, False, y, "small" if act % 2 else "large"))
            for per_token in (False, True):  # given scales, quantized in the GEMM's prologue
                linear.append((y, "i8", sparse, True, True, per_token, True, 1, False, y, "small"))
                linear.append((y, "i8", sparse, True, True, per_token, False, 0, False, y, "large"))
                linear.append((y, "i8", sparse, True, True, per_token, True, 0, True, "i32", "split"))
        linear.append(("i8", "i8", sparse, True, False, True, True, 0, True, "i32", "split"))
    reduce = [(int8, pt, bias, act, y) for int8 in (False, True) for y in FLOATS for pt in ((False, True) if int8 else (False,))
              for bias, act in ((True, 3), (False, 0), (True, 2))]
    quant = [(x, bk, single) for x in FLOATS for bk, single in ((64, True), (4096, True), (4096, False), (1024, False))]
    conv = [(t, bias, act, False, cl, 0) for t in FLOATS for bias, act in ((True, 0), (True, 1), (True, 2), (True, 3), (False, 0))
            for cl in (True, False)]
    conv += [(t, True, 3, True, cl, i) for t in FLOATS for cl, i in ((True, 0), (False, -1))]
    jobs = [("linear", j) for j in linear] + [("reduce", j) for j in reduce] + [("quant", j) for j in quant] + [("conv", j) for j in conv]
    return jobs + [j for j in _subset_jobs() if j not in jobs]  # the full list holds the subset


def _subset_jobs():
    return ([("linear", j) for j in LINEAR_SUBSET] + [("reduce", j) for j in REDUCE_SUBSET]
            + [("quant", j) for j in QUANT_SUBSET] + [("conv", j) for j in CONV_SUBSET])


def _linear(job):
    from sparsedm.kernels import aot, linear

    x, w, sparse, int8, quantize_x, per_token, bias, act, partial, y, which = job
    if x == "fp32" and not int8:  # float32 sparse24_linear: its own tile lists
        lists = {"small": linear._FP32_SMALL_M_CONFIGS, "large": linear._FP32_LARGE_M_CONFIGS, "split": linear._FP32_SPLIT_K_CONFIGS}
    else:
        lists = {"small": linear._SMALL_M_CONFIGS, "large": linear._LARGE_M_CONFIGS, "split": linear._SPLIT_K_CONFIGS}
    cfg = lists[which][0]
    sig, cx, div = linear.aot_flags_spec(cfg, x=x, w=w, sparse=sparse, int8=int8, quantize_x=quantize_x,
                                         per_token=per_token, bias=bias, activation=act, partial=partial, y=y)
    return aot.compile_for(linear._linear_kernel, sig, cx, CC, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                           divisible_by_16=div)


def _reduce(job):
    from sparsedm.kernels import aot, linear

    int8, per_token, bias, act, y = job
    sig, cx, div = linear.aot_reduce_spec(int8, per_token=per_token, bias=bias, activation=act, y=y)
    return aot.compile_for(linear._split_k_reduce_kernel, sig, cx, CC, num_warps=linear._REDUCE_WARPS, divisible_by_16=div)


def _quant(job):
    from sparsedm.kernels import aot, linear

    x_ty, block_k, single = job
    sig = {"x_ptr": f"*{x_ty}", "q_ptr": "*i8", "scale_ptr": "*fp32", "K": "i32", "stride_xm": "i32", "stride_xk": "i32"}
    cx = dict(BLOCK_K=block_k, SINGLE_PASS=single)
    sig.update({n: "constexpr" for n in cx})
    return aot.compile_for(linear._quantize_rows_kernel, sig, cx, CC, num_warps=4 if block_k <= 2048 else 8)


def _conv(job):
    from sparsedm.kernels import aot, conv2d

    t, bias, act, index64, channels_last, i = job
    cfg = conv2d.config_list(fp32=t == "fp32", channels_last=channels_last)[i]
    sig, cx, div = conv2d.aot_spec(t, cfg.kwargs, channels_last=channels_last, bias=bias, activation=act, index64=index64)
    return aot.compile_for(conv2d._sparse24_conv2d_kernel, sig, cx, CC, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                           divisible_by_16=div)


def _compile(item):
    kind, job = item
    try:
        c = {"linear": _linear, "reduce": _reduce, "quant": _quant, "conv": _conv}[kind](job)
    except Exception as e:  # reported per kernel, so one failure does not hide the others
        return {"kind": kind, "job": list(job), "error": f"{type(e).__name__}: {e}"[-800:]}
    return {"kind": kind, "job": list(job), "mma": c.mma, "spill_bytes": c.spill_bytes, "registers": c.registers}


def _expected_mma(kind, job):
    """The tensor-core operand type the PTX must hold, or None where none belongs (fp32 runs
    IEEE FMA by design; the reduction and quantization passes are elementwise)."""
    if kind in ("reduce", "quant"):
        return None
    if kind == "conv":
        return {"fp16": "f16", "bf16": "bf16", "fp32": None}[job[0]]
    x_ty, _, _, int8 = job[:4]
    if int8:
        return "s8"
    return {"fp16": "f16", "bf16": "bf16", "fp32": None}[x_ty]


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = [sys.executable, os.path.abspath(__file__)] + (["--all"] if os.environ.get("SPARSEDM_AOT_SWEEP") == "1" else [])
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=root, timeout=3000)
    assert proc.returncode == 0, f"the compile run failed:\n{proc.stderr[-4000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_subset_covers_every_flag_value():
    """Each position of each job tuple takes every value the full list does, and the full list
    holds the subset."""
    full, subset = _all_jobs(), _subset_jobs()
    for kind in ("linear", "reduce", "quant", "conv"):
        f = [j for k, j in full if k == kind]
        s = [j for k, j in subset if k == kind]
        for pos in range(len(f[0])):
            missing = {j[pos] for j in f} - {j[pos] for j in s}
            assert not missing, f"{kind}: position {pos} never takes {missing} in the default subset"
    assert all(j in full for j in subset)


def test_every_flag_combination_compiles(compiled):
    from tests.helpers import spills_known

    expected = _all_jobs() if os.environ.get("SPARSEDM_AOT_SWEEP") == "1" else _subset_jobs()
    assert len(compiled) == len(expected)
    problems = []
    for r in compiled:
        what = f"{r['kind']} {tuple(r['job'])}"
        if "error" in r:
            problems.append(f"{what}: {r['error']}")
            continue
        want = _expected_mma(r["kind"], r["job"])
        got = r["mma"]
        if want is None and got:
            problems.append(f"{what}: unexpected tensor-core instructions {got}")
        if want is not None and not any(f".{want}" in m for m in got):
            problems.append(f"{what}: no {want} tensor-core instruction (found {got})")
        if spills_known(r) and r["spill_bytes"]:
            problems.append(f"{what}: {r['spill_bytes']} bytes of register spills")
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    jobs = _all_jobs() if "--all" in sys.argv else _subset_jobs()
    with ProcessPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        for row in pool.map(_compile, jobs):
            print(json.dumps(row), flush=True)
