"""Benchmark of the cuda backend's GEMMs against cuBLAS, cuSPARSELt and torch._int_mm.

    python bench/bench_cuda_gemm.py [--out bench/results/cuda_gemm.csv] [--ms 1,128,4096] [--split-k 0,1,2,4,8]

Shapes: 4096^3 and the U-ViT-L/2 linears (qkv, proj, fc1, fc2 at D 1024). Timing:
triton.testing.do_bench (median, warm-up first). Rows: op, shape, dtype, backend, ms, TFLOP/s,
speedup_vs_dense (dense = F.linear / cuBLAS in the same run), gpu; "torch_int_mm" is torch's W8A8
as int8_linear does it with a dynamic x_scale (per-token quantization, torch._int_mm, scaling:
the same baseline as `sparsedm bench kernels`). Without a GPU it says so
and exits 0. ``--split-k`` times the cuda kernels once per listed split-K count (0 = the
launcher's automatic rule, backend "cuda"; n > 0 forced, backend "cuda_splitk<n>"), the data
the split rule in docs/KERNELS.md ("Tile configurations and split-K") is to be tuned with.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys

import torch
import torch.nn.functional as F


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="CSV file to write")
    ap.add_argument("--ms", default="1,16,128,1024,4096", help="token counts M for the U-ViT-L/2 shapes")
    ap.add_argument("--split-k", default="0", help="split-K counts of the cuda kernels (0 = automatic), e.g. 0,1,2,4,8")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda_gemm: no CUDA GPU visible; nothing to measure (exit 0)")
        return 0
    from triton.testing import do_bench

    from sparsedm._io import write_atomic
    from sparsedm.formats import compress24, quantize_activation_int8, quantize_weight_int8
    from sparsedm.formats.sparse24 import mask24
    from sparsedm.ops import cuda_backend, registry

    reason = registry.get_backend("cuda").unavailable_reason()
    if reason:
        print(f"bench_cuda_gemm: the cuda backend is unavailable: {reason}")
        return 0
    gpu = torch.cuda.get_device_name()
    split_ks = [int(v) for v in args.split_k.split(",")]
    saved_split_k = cuda_backend.SPLIT_K

    def cuda_name(split_k):
        return "cuda" if split_k == 0 else f"cuda_splitk{split_k}"

    shapes = [(4096, 4096, 4096)]
    for m in (int(v) for v in args.ms.split(",")):
        shapes += [(m, 3072, 1024), (m, 1024, 1024), (m, 4096, 1024), (m, 1024, 4096)]
    rows = []

    def row(op, shape, dtype, backend, ms, dense_ms):
        m, n, k = shape
        tflops = 2 * m * n * k / ms / 1e9
        r = dict(op=op, M=m, N=n, K=k, dtype=str(dtype).replace("torch.", ""), backend=backend, ms=round(ms, 5),
                 tflops=round(tflops, 2), speedup_vs_dense=round(dense_ms / ms, 3), gpu=gpu)
        rows.append(r)
        print(f"{op:22s} {m:5d}x{n:5d}x{k:5d} {r['dtype']:8s} {backend:12s} {ms:9.4f} ms {tflops:8.1f} TFLOP/s {r['speedup_vs_dense']:6.2f}x")

    for m, n, k in shapes:
        for dtype in (torch.float16, torch.bfloat16):
            w = torch.randn(n, k, device="cuda", dtype=dtype)
            w = w * mask24(w)
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            values, meta = compress24(w)
            dense_ms = do_bench(lambda: F.linear(x, w))
            row("linear", (m, n, k), dtype, "dense", dense_ms, dense_ms)
            for split_k in split_ks:
                cuda_backend.SPLIT_K = split_k
                with registry.use_backend("cuda"):
                    ms = do_bench(lambda: torch.ops.sparsedm.sparse24_linear(x, values, meta, None, "none"))
                row("sparse24_linear", (m, n, k), dtype, cuda_name(split_k), ms, dense_ms)
            if hasattr(torch, "_cslt_sparse_mm") and torch.backends.cusparselt.is_available():
                try:
                    wc = torch._cslt_compress(w)
                    ms = do_bench(lambda: torch._cslt_sparse_mm(wc, x.t()))
                    row("sparse24_linear", (m, n, k), dtype, "cusparselt", ms, dense_ms)
                except RuntimeError as exc:
                    print(f"  cusparselt skipped: {exc}")
            if dtype == torch.float16:
                w_q, w_scale = quantize_weight_int8(w.float())
                vq, vs = quantize_weight_int8(values.float())
                for split_k in split_ks:
                    cuda_backend.SPLIT_K = split_k
                    with registry.use_backend("cuda"):
                        ms = do_bench(lambda: torch.ops.sparsedm.int8_linear(x, w_q, w_scale, None, None))
                    row("int8_linear", (m, n, k), dtype, cuda_name(split_k), ms, dense_ms)
                    with registry.use_backend("cuda"):
                        ms = do_bench(lambda: torch.ops.sparsedm.sparse24_int8_linear(x, vq, meta, vs, None, None))
                    row("sparse24_int8_linear", (m, n, k), dtype, cuda_name(split_k), ms, dense_ms)
                if m > 16:  # torch._int_mm needs M > 16
                    wt = w_q.t()

                    def int_mm_w8a8():
                        # what int8_linear does with x_scale=None, in torch ops: per-token
                        # quantization, the cuBLAS int8 GEMM, then the scaling (as bench kernels)
                        xq, sx = quantize_activation_int8(x)
                        return (torch._int_mm(xq, wt).float() * sx[:, None] * w_scale).half()

                    ms = do_bench(int_mm_w8a8)
                    row("int8_linear", (m, n, k), dtype, "torch_int_mm", ms, dense_ms)
    cuda_backend.SPLIT_K = saved_split_k
    if args.out and rows:
        buf = io.StringIO()
        wr = csv.DictWriter(buf, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
        write_atomic(args.out, buf.getvalue())
        print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
