"""The speed targets of the project, checked against benchmark results files.

Each target names the rows it is computed from (op, table, shape filter, backend) and how:
the speedup over dense of those rows, or the time ratio against a baseline row of the same
shape (``baseline``). Over several shapes the worst one counts. A target with no matching rows
is "missing" (the run did not measure it), never passed. ``sparsedm bench targets DIR`` prints
the table; bench/gpu_suite.sh runs it after the benchmarks.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

__all__ = ["Target", "TARGETS", "evaluate", "markdown", "load_rows"]


@dataclass(frozen=True)
class Target:
    issue: str
    what: str
    threshold: float
    op: str = ""                   # kernel rows: op family; "" for model rows
    tables: tuple = ()
    backend: str = ""
    shape: Callable[[dict], bool] = lambda s: True
    baseline: Optional[str] = None  # compare times with this backend's row of the same shape
    model: str = ""                 # model rows: model name, variant, batch
    variant: str = ""
    batch: int = 0
    note: str = ""


def _square(n):
    return lambda s: s.get("M") == n and s.get("N") == n and s.get("K") == n


def _conv3x3(s):
    """The UNets' 3x3 stride-1 convs that 2:4 is for: not the 3/4-channel input conv (K = 27 / 36,
    the format cannot hold it) nor the 3/4-channel output conv (too few output channels for a
    sparse GEMM tile), which the automatic choice leaves to dense."""
    return (s.get("R") == 3 and s.get("S") == 3 and s.get("stride") == 1
            and (s.get("C", 0) * 9) % 8 == 0 and s.get("K", 0) % 16 == 0)


def _uvit_or_4096(s):
    """Every uvit-l2 row, and the 4096^3 row of the square table."""
    return not (s["M"] == s["N"] == s["K"]) or s["M"] == 4096


UVIT_L2_LARGE_M = 258 * 32  # batch 32 and up of the uvit-l2 table

TARGETS = [
    Target("#3", "triton int8_linear at 4096^3 over fp16 cuBLAS", 1.6, "int8", ("square",), "triton", _square(4096)),
    Target("#3", "triton int8_linear at 4096^3 vs torch._int_mm + scaling (time ratio)", 1.0, "int8", ("square",),
           "triton", _square(4096), baseline="torch-int_mm"),
    Target("#3", "triton sparse24_linear, U-ViT-L/2 fc1/fc2 at M <= 16, over dense", 1.3, "linear", ("small-m",), "triton",
           lambda s: s["M"] <= 16),
    Target("#3", "triton sparse24_linear, U-ViT-L/2 at batch >= 32, over dense", 0.9, "linear", ("uvit-l2",), "triton",
           lambda s: s["M"] >= UVIT_L2_LARGE_M),
    Target("#3", "triton sparse24_conv2d, DDPM UNet 3x3 convs, over cuDNN", 0.8, "conv", ("ddpm-unet",), "triton", _conv3x3),
    Target("#4", "cuda sparse24 fp16 GEMM vs torch cuSPARSELt, U-ViT-L/2 and 4096^3 (time ratio)", 1.0, "linear",
           ("uvit-l2", "square"), "cuda", _uvit_or_4096, baseline="torch-cusparselt"),
    Target("#4", "cuda sparse24 fp16 GEMM over dense cuBLAS, U-ViT-L/2 and 4096^3", 1.6, "linear", ("uvit-l2", "square"), "cuda",
           _uvit_or_4096, note="the target is for Ampere; on Hopper report the sparse-peak fraction"),
    Target("#4", "cuda int8 GEMM vs torch._int_mm + scaling, square shapes (time ratio)", 1.0, "int8", ("square",), "cuda",
           baseline="torch-int_mm"),
    Target("#4", "cuda sparse int8 GEMM at 4096^3 over fp16 cuBLAS", 2.5, "sparse-int8", ("square",), "cuda", _square(4096)),
    Target("#8", "cuda sparse24_conv2d, DDPM UNet 3x3 convs (batch 64, 128), over cuDNN", 1.4, "conv", ("ddpm-unet",), "cuda",
           _conv3x3),
    Target("#8", "cuda sparse24_conv2d, SD1.5 UNet 3x3 convs (batch 8), over cuDNN", 1.4, "conv", ("sd15-unet",), "cuda",
           _conv3x3),
    Target("#5/#9", "U-ViT-S/2 CIFAR10 batch 128 denoiser step, 2:4, over dense", 1.3, model="uvit-s2-cifar10",
           variant="sparse", batch=128),
    Target("#5/#9", "U-ViT-S/2 CIFAR10 batch 128 denoiser step, 2:4 + int8, over dense", 1.6, model="uvit-s2-cifar10",
           variant="sparse+int8", batch=128),
    Target("#5", "DDPM CIFAR10 UNet denoiser step, 2:4 (sparse convs), over dense", 1.25, model="ddpm-unet-cifar10",
           variant="sparse"),
]


def load_rows(paths: Iterable[str]) -> list[dict]:
    """Rows of every results JSON among ``paths`` (files, or directories searched for *.json),
    each tagged with its file (``_file``) and the run's ``cuda_graph`` setting where it has one."""
    files = []
    for p in paths:
        files += sorted(glob.glob(os.path.join(p, "*.json"))) if os.path.isdir(p) else [p]
    rows = []
    for f in files:
        with open(f) as fh:
            try:
                doc = json.load(fh)
            except json.JSONDecodeError:
                continue
        if not isinstance(doc, dict) or "rows" not in doc or "gpu" not in doc:
            continue  # not a results file (e.g. a junit or other JSON)
        if not isinstance(doc["rows"], list):
            raise ResultsError(f"{f}: 'rows' is not a list; regenerate the file with sparsedm bench")
        for i, r in enumerate(doc["rows"]):
            _check_row(f, i, r)
            rows.append({**r, "_file": os.path.basename(f), "_gpu": doc.get("gpu")})
    return rows


class ResultsError(ValueError):
    """A results file that has the shape of one but holds values the targets cannot read."""


def _check_row(path: str, index: int, row) -> None:
    if not isinstance(row, dict):
        raise ResultsError(f"{path}: row {index} is not an object; regenerate the file with sparsedm bench")
    for field in ("ms", "speedup_vs_dense"):
        value = row.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ResultsError(f"{path}: row {index} has {field}={value!r}, not a number; regenerate the file with sparsedm bench")


def _kernel_values(t: Target, rows: list[dict]) -> list[tuple[float, str]]:
    mine = [r for r in rows if r.get("kind") == "kernel" and r.get("op") == t.op and r.get("table") in t.tables
            and r.get("backend") == t.backend and t.shape(r.get("shape") or {})]
    out = []
    for r in mine:
        shape = json.dumps(r["shape"], sort_keys=True)
        if t.baseline is None:
            value = r.get("speedup_vs_dense")
        else:
            base = [b for b in rows if b.get("kind") == "kernel" and b.get("op") == t.op and b.get("table") == r.get("table")
                    and b.get("backend") == t.baseline and json.dumps(b.get("shape"), sort_keys=True) == shape
                    and b.get("_file") == r.get("_file")]
            value = base[0]["ms"] / r["ms"] if base and r.get("ms") else None
        if value is not None:
            out.append((float(value), f"{r.get('layer') or r.get('table')} {shape} ({r['_file']})"))
    return out


def _model_values(t: Target, rows: list[dict]) -> list[tuple[float, str]]:
    out = []
    for r in rows:
        if r.get("model") == t.model and r.get("variant") == t.variant and (not t.batch or r.get("batch") == t.batch):
            if r.get("speedup_vs_dense") is not None:
                graph = "CUDA graph" if r.get("cuda_graph") else "eager"
                out.append((float(r["speedup_vs_dense"]), f"batch {r.get('batch')}, {graph} ({r['_file']})"))
    return out


def evaluate(rows: list[dict]) -> list[dict]:
    """One result per target: status pass / fail / missing, the worst value and where it is from."""
    results = []
    for t in TARGETS:
        values = _model_values(t, rows) if t.model else _kernel_values(t, rows)
        if not values:
            results.append({"issue": t.issue, "target": t.what, "threshold": t.threshold, "status": "missing",
                            "worst": None, "best": None, "rows": 0, "where": "", "note": t.note})
            continue
        worst, where = min(values)
        results.append({"issue": t.issue, "target": t.what, "threshold": t.threshold,
                        "status": "pass" if worst >= t.threshold else "fail", "worst": worst,
                        "best": max(v for v, _ in values), "rows": len(values), "where": where, "note": t.note})
    return results


def markdown(results: list[dict]) -> str:
    lines = ["| issue | target | needs | worst | best | rows | status | worst at |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        fmt = (lambda v: "-" if v is None else f"{v:.2f}x")
        status = r["status"] + (f" ({r['note']})" if r["note"] and r["status"] != "missing" else "")
        lines.append(f"| {r['issue']} | {r['target']} | >= {r['threshold']:.2f}x | {fmt(r['worst'])} | {fmt(r['best'])} | "
                     f"{r['rows']} | {status} | {r['where']} |")
    return "\n".join(lines) + "\n"
