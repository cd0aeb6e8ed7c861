"""Benchmark the Triton implicit-GEMM 2:4 conv against cuDNN dense conv (GPU only).

Shapes: the 3x3 convs of the DDPM CIFAR10 UNet (ch 128, mult 1-2-2-2, 32x32) at batch 64 and
128, and of the SD1.5 UNet at a 64x64 latent, batch 8. Baseline: F.conv2d on the dense
(decompressed) weight, channels_last, fp16 (cuDNN). Ours: sparsedm.ops.sparse24_conv2d with
backend="triton" on the same channels_last input. Timing: triton.testing.do_bench median
(it warms up, and flushes L2 before every run, so no input rotation is needed). TFLOP/s count
the dense-equivalent 2*N*OH*OW*Cout*Cin*kh*kw for both rows, so speedups are comparable.

    python bench/bench_triton_conv2d.py [--dtype fp16|bf16] [--out bench/results/triton_conv2d.csv]

Writes the CSV given by --out and a JSON beside it in the shared results schema
(docs/BENCHMARKS.md, DESIGN.md "Benchmark method").
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

# (table, N, C, H, W, K=Cout, R, S, stride, padding); a representative subset of each model's
# 3x3 convs (resblock convs at every resolution, skip-concat inputs, stride-2 downsamples).
DDPM = [(32, 128, 128, 1), (32, 256, 128, 1), (32, 128, 128, 2), (16, 128, 256, 1), (16, 256, 256, 1),
        (16, 512, 256, 1), (8, 256, 256, 1), (8, 512, 256, 1), (4, 256, 256, 1)]  # (H, C, K, stride)
SD15 = [(64, 320, 320, 1), (64, 640, 320, 1), (64, 320, 320, 2), (32, 320, 640, 1), (32, 640, 640, 1),
        (16, 640, 1280, 1), (16, 1280, 1280, 1), (8, 1280, 1280, 1), (8, 2560, 1280, 1)]


def shapes():
    for batch in (64, 128):
        for h, c, k, s in DDPM:
            yield ("ddpm_cifar10_unet", batch, c, h, h, k, 3, 3, s, 1)
    for h, c, k, s in SD15:
        yield ("sd15_unet_64x64", 8, c, h, h, k, 3, 3, s, 1)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    parser.add_argument("--out", default="bench/results/triton_conv2d.csv")
    parser.add_argument("--rep", type=int, default=100, help="do_bench measurement time per row, ms")
    args = parser.parse_args()

    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        print("bench_triton_conv2d: needs a CUDA GPU (and TRITON_INTERPRET unset); nothing to measure here.")
        return 0

    import triton
    from triton.testing import do_bench

    from sparsedm import ops
    from sparsedm.formats import compress24, mask24

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    gpu = torch.cuda.get_device_name()
    cap = "%d.%d" % torch.cuda.get_device_capability()
    torch.manual_seed(0)

    rows = []
    header = f"{'table':<18} {'shape (N,C,H,W,K,RxS,s)':<30} {'dtype':<5} {'backend':<8} {'ms':>8} {'TFLOP/s':>8} {'speedup':>8} {'max|diff|':>10}"
    print(f"{gpu} (sm_{cap.replace('.', '')}), torch {torch.__version__}, triton {triton.__version__}")
    print(header)
    for table, n, c, h, w, k, r, s, stride, pad in shapes():
        x = torch.randn(n, c, h, w, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(k, c, r, s, device="cuda", dtype=torch.float32)
        weight = (weight * mask24(weight)).to(dtype)
        values, meta = compress24(weight)
        dense_w = weight.contiguous(memory_format=torch.channels_last)
        bias = torch.randn(k, device="cuda", dtype=dtype)
        oh = (h + 2 * pad - r) // stride + 1
        ow = (w + 2 * pad - s) // stride + 1
        flops = 2.0 * n * oh * ow * k * c * r * s

        def dense():
            return F.conv2d(x, dense_w, bias, stride, pad)

        def ours():
            return ops.sparse24_conv2d(x, values, meta, bias, [k, c, r, s], [stride] * 2, [pad] * 2, [1, 1], backend="triton")

        diff = float((ours().float() - dense().float()).abs().max())  # also triggers autotuning
        ms_dense = do_bench(dense, warmup=25, rep=args.rep, return_mode="median")
        ms_ours = do_bench(ours, warmup=25, rep=args.rep, return_mode="median")
        shape = {"N": n, "C": c, "H": h, "W": w, "K": k, "R": r, "S": s, "stride": stride, "padding": pad}
        for backend, ms in (("dense", ms_dense), ("triton", ms_ours)):
            tflops = flops / ms * 1e-9
            row = {
                "kind": "kernel", "op": "sparse24_conv2d", "shape": shape, "table": table, "dtype": args.dtype,
                "backend": backend, "ms": ms, "tflops": tflops, "speedup_vs_dense": ms_dense / ms,
                "peak_fraction": None, "gpu": gpu, "max_abs_diff": diff if backend == "triton" else 0.0,
            }
            rows.append(row)
            shape_s = f"{n},{c},{h},{w},{k},{r}x{s},{stride}"
            print(f"{table:<18} {shape_s:<30} {args.dtype:<5} {backend:<8} {ms:8.4f} {tflops:8.1f} {ms_dense / ms:8.2f} {row['max_abs_diff']:10.3g}")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", newline="") as f:
        fields = ["op", "table", "shape", "dtype", "backend", "ms", "tflops", "speedup_vs_dense", "max_abs_diff", "gpu"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "shape": "x".join(str(v) for v in row["shape"].values())})
    meta_json = {
        "gpu": gpu, "capability": cap, "torch": torch.__version__, "triton": triton.__version__,
        "cuda": torch.version.cuda, "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "rows": rows,
    }
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(meta_json, f, indent=1)
    print(f"wrote {args.out} and {os.path.splitext(args.out)[0]}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
