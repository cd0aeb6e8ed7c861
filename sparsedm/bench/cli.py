"""``sparsedm bench ...`` subcommands."""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from sparsedm.bench import kernels as kernel_bench
from sparsedm.bench.environment import header
from sparsedm.bench.report import terminal_table, write_results
from sparsedm.bench.shapes import CONV_TABLES, CPU_TABLES, LINEAR_TABLES, table

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _progress(iterable, total, desc):
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)
    except ImportError:
        return iterable


def _kernels(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible; use --device cpu", file=sys.stderr)
        return 2
    ops = kernel_bench.OPS if args.op == "all" else (args.op,)
    if args.shapes:
        names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    elif device.type == "cuda":
        names = [*LINEAR_TABLES, *CONV_TABLES]
    else:
        names = list(CPU_TABLES)
    try:
        tables = {n: table(n) for n in names}
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    if device.type == "cpu":
        print("note: CPU run: these are CPU numbers of the CPU paths (reference backend), "
              "not GPU kernel timings", file=sys.stderr)
    backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
    hdr = header(device)
    jobs = []
    for op in ops:
        is_conv = op == "conv"
        for tname, shapes in tables.items():
            conv_table = tname in CONV_TABLES or tname == "cpu-conv"
            if is_conv == conv_table:
                jobs += [(op, tname, s) for s in shapes]
    if not jobs:
        print(f"error: no shapes for op {args.op!r} in tables {', '.join(names)} "
              f"(linear ops use {', '.join(LINEAR_TABLES)}; conv uses {', '.join(CONV_TABLES)})", file=sys.stderr)
        return 2
    rows = []
    for op, tname, shape in _progress(jobs, len(jobs), "bench kernels"):
        rows += kernel_bench.bench_shape(op, shape, tname, dtype, device, backends=backends,
                                         warmup=args.warmup, reps=args.reps, gpu_name=hdr["gpu"])
    print(terminal_table(rows))
    paths = write_results(rows, hdr, args.out, "kernels")
    print("\nwrote " + ", ".join(paths.values()))
    return 0


def register(subparsers) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="micro-benchmark the kernels against dense baselines",
        description="Benchmarks with the method of docs/BENCHMARKS.md (warm-up, inputs rotated beyond L2, "
        "median of individually timed calls), writing CSV, JSON, markdown and PNG results.",
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    k = sub.add_parser(
        "kernels",
        help="time every backend of each op on shape tables, against dense",
        description="Time dense cuBLAS/cuDNN, torch's 2:4 and int8 paths and every sparsedm backend on the "
        "shape tables; each candidate's output is checked against the reference before it is timed.",
    )
    k.add_argument("--op", choices=[*kernel_bench.OPS, "all"], default="all", help="which op family (default: all)")
    k.add_argument("--shapes", help="comma-separated shape tables: " + ", ".join([*LINEAR_TABLES, *CONV_TABLES, *CPU_TABLES])
                   + " (default: all GPU tables on CUDA, the tiny cpu-* tables on CPU)")
    k.add_argument("--dtype", choices=list(DTYPES), help="activation/weight dtype (default fp16 on CUDA, fp32 on CPU)")
    k.add_argument("--backends", help="comma-separated sparsedm backends to include (default: every one that can run)")
    k.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    k.add_argument("--warmup", type=int, default=10, help="untimed calls before timing (default 10)")
    k.add_argument("--reps", type=int, default=50, help="timed calls; the median is reported (default 50)")
    k.add_argument("--out", default="bench/out", help="directory for the results files (default bench/out)")
    k.set_defaults(func=_kernels)
    logging.getLogger("sparsedm.bench").setLevel(logging.INFO)
