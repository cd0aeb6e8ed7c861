"""Benchmark the Triton linear kernels against dense cuBLAS and torch's int8 GEMM.

    python bench/bench_triton_linear.py [--out bench/results] [--tables square,uvit_l2,small_m] [--quick]

Rows: op, shape, dtype, backend, ms, TFLOP/s (dense-equivalent 2*M*N*K), speedup_vs_dense.
Baselines measured in the same run: ``F.linear`` fp16 (backend ``dense``) and
``torch._int_mm`` with per-token quantization and scaling in torch (backend ``torch_int8``).
Where the split-K rule splits a shape (small M), each Triton kernel is also called directly
(no op dispatch, so both rows carry the same host overhead) with the rule's split (backend
``triton_splitk``) and with ``split_k=1`` (backend ``triton_nosplit``): one run says whether
split-K pays.
Timing: ``triton.testing.do_bench`` (median; it warms up first and clears L2 before every
repetition), random data. GPU only: on a machine without CUDA it says so and exits 0.
Results: CSV + JSON (schema of docs/BENCHMARKS.md) under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

# (K, N) of U-ViT-L/2's 2:4 linears: qkv, proj, fc1, fc2 (D=1024, mlp 4096).
UVIT_L2 = {"qkv": (1024, 3072), "proj": (1024, 1024), "fc1": (1024, 4096), "fc2": (4096, 1024)}
UVIT_M = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SMALL_M = (1, 2, 4, 8, 16, 32, 64)


def _shapes(tables, quick):
    rows = []
    if "square" in tables:
        rows.append(("square", 4096, 4096, 4096))
    if "uvit_l2" in tables:
        for m in (UVIT_M[::4] if quick else UVIT_M):
            for name, (k, n) in UVIT_L2.items():
                rows.append((f"uvit_l2.{name}", m, n, k))
    if "small_m" in tables:
        for m in (SMALL_M[::3] if quick else SMALL_M):
            rows.append(("small_m", m, 4096, 4096))
    return rows


def _operands(m, n, k, gen):
    from sparsedm.formats import compress24, mask24, quantize_weight_int8

    x = torch.randn(m, k, generator=gen, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, generator=gen, device="cuda") / k**0.5
    w24 = w * mask24(w)
    values, meta = compress24(w24.half())
    w_q, w_scale = quantize_weight_int8(w)
    w24_q, w24_scale = quantize_weight_int8(w24)
    values_q, meta_q = compress24(w24_q)
    bias = torch.randn(n, generator=gen, device="cuda", dtype=torch.float16)
    return dict(x=x, w=w.half(), values=values, meta=meta, w_q=w_q, w_scale=w_scale,
                values_q=values_q, meta_q=meta_q, w24_scale=w24_scale, bias=bias)


def _torch_int8(x, w_q_t, w_scale, bias):
    """The int8 baseline: per-token quantization in torch, torch._int_mm, scaling in torch."""
    s_x = x.abs().amax(dim=-1, keepdim=True).float() / 127
    x_q = torch.round(x.float() / s_x.clamp_min(1e-30)).clamp_(-127, 127).to(torch.int8)
    return (torch._int_mm(x_q, w_q_t).float() * s_x * w_scale + bias).half()


def _candidates(o, m, n, k):
    """(op, backend, fn) for every kernel measured on this shape."""
    import sparsedm.ops as ops

    x, bias = o["x"], o["bias"]
    cands = [("linear", "dense", lambda: F.linear(x, o["w"], bias))]
    # torch._int_mm (CUDA) wants M > 16 and K, N multiples of 8.
    if m > 16 and k % 8 == 0 and n % 8 == 0:
        w_q_t = o["w_q"].t()  # [K, N] column-major: cuBLASLt's preferred int8 "TN" layout
        cands.append(("int8_linear", "torch_int8", lambda: _torch_int8(x, w_q_t, o["w_scale"], bias)))
    cands += [
        ("sparse24_linear", "triton", lambda: ops.sparse24_linear(x, o["values"], o["meta"], bias, "none", backend="triton")),
        ("int8_linear", "triton", lambda: ops.int8_linear(x, o["w_q"], o["w_scale"], bias, None, backend="triton")),
        ("sparse24_int8_linear", "triton", lambda: ops.sparse24_int8_linear(
            x, o["values_q"], o["meta_q"], o["w24_scale"], bias, None, backend="triton")),
    ]
    from sparsedm.kernels import linear

    if linear.split_k_for(m, n, k, torch.cuda.get_device_properties(x.device).multi_processor_count) > 1:
        # The rule's split against none, both called directly (docs/KERNELS.md, "Split-K").
        for backend, split in (("triton_splitk", None), ("triton_nosplit", 1)):
            cands += [
                ("sparse24_linear", backend, lambda s=split: linear.sparse24_linear(
                    x, o["values"], o["meta"], bias, "none", split_k=s)),
                ("int8_linear", backend, lambda s=split: linear.int8_linear(
                    x, o["w_q"], o["w_scale"], bias, None, split_k=s)),
                ("sparse24_int8_linear", backend, lambda s=split: linear.sparse24_int8_linear(
                    x, o["values_q"], o["meta_q"], o["w24_scale"], bias, None, split_k=s)),
            ]
    return cands


def _env_info():
    import triton

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        commit = None
    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "capability": f"{major}.{minor}", "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results", help="directory for the CSV and JSON results")
    parser.add_argument("--tables", default="square,uvit_l2,small_m")
    parser.add_argument("--quick", action="store_true", help="a subset of the M values")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_triton_linear: no CUDA GPU visible; the Triton kernels are benchmarked on a GPU only. Nothing to do.")
        return 0

    import triton.testing

    info = _env_info()
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    header = f"{'op':<22} {'table':<16} {'M':>5} {'N':>5} {'K':>5} {'backend':<14} {'ms':>9} {'TFLOP/s':>8} {'vs dense':>8}"
    print(f"# {info['gpu']} (sm_{info['capability']}), torch {info['torch']}, triton {info['triton']}")
    print(header)
    for table, m, n, k in _shapes(args.tables.split(","), args.quick):
        o = _operands(m, n, k, gen)
        dense_ms = None
        for op, backend, fn in _candidates(o, m, n, k):
            try:
                ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
            except Exception as exc:  # one failing candidate must not lose the whole run
                print(f"{op:<22} {table:<16} {m:>5} {n:>5} {k:>5} {backend:<14} failed: {type(exc).__name__}: {exc}")
                continue
            if backend == "dense":
                dense_ms = ms
            tflops = 2 * m * n * k / ms * 1e-9
            speedup = dense_ms / ms if dense_ms else None
            rows.append({"kind": "kernel", "op": op, "shape": {"M": m, "N": n, "K": k}, "table": table,
                         "dtype": "float16", "backend": backend, "ms": ms, "tflops": tflops,
                         "speedup_vs_dense": speedup, "peak_fraction": None, "gpu": info["gpu"]})
            print(f"{op:<22} {table:<16} {m:>5} {n:>5} {k:>5} {backend:<14} {ms:>9.4f} {tflops:>8.2f} "
                  f"{(f'{speedup:.2f}x' if speedup else '-'):>8}")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"triton_linear_{info['gpu'].replace(' ', '_')}")
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["op", "table", "M", "N", "K", "dtype", "backend", "ms", "tflops", "speedup_vs_dense", "gpu"])
        for r in rows:
            s = r["shape"]
            writer.writerow([r["op"], r["table"], s["M"], s["N"], s["K"], r["dtype"], r["backend"],
                             f"{r['ms']:.5f}", f"{r['tflops']:.3f}",
                             "" if r["speedup_vs_dense"] is None else f"{r['speedup_vs_dense']:.3f}", r["gpu"]])
    with open(stem + ".json", "w") as f:
        json.dump({**info, "rows": rows}, f, indent=1)
    print(f"wrote {stem}.csv and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
