"""Results files: JSON (the shared schema), CSV, markdown, PNG plots; all written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import Iterable, Optional

from sparsedm._io import write_atomic

__all__ = ["write_atomic", "results_stem", "write_results", "markdown_table", "terminal_table", "load_results"]

COLUMNS = ("op", "table", "layer", "shape", "dtype", "backend", "ms", "tflops", "speedup_vs_dense", "peak_fraction")
MODEL_COLUMNS = ("model", "variant", "batch", "steps", "step_ms", "images_per_s", "speedup_vs_dense",
                 "run_speedup_vs_dense", "cuda_graph", "peak_mem_mb", "max_abs_diff")


def results_stem(header: dict, kind: str) -> str:
    """``<gpu>-<date>-<commit>-<kind>`` with a file-system-safe GPU name."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", header.get("gpu") or "unknown").strip("-").lower()
    date = (header.get("date") or "")[:10]
    commit = header.get("commit") or "nocommit"
    return f"{gpu}-{date}-{commit}-{kind}"


def _shape_text(shape: dict) -> str:
    if "M" in shape:
        return f"{shape['M']}x{shape['N']}x{shape['K']}"
    return f"n{shape['N']} c{shape['C']} {shape['H']}x{shape['W']} k{shape['K']} {shape['R']}x{shape['S']} s{shape['stride']} p{shape['padding']}"


def _cell(row: dict, col: str) -> str:
    v = row.get(col)
    if col == "shape":
        return _shape_text(v)
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _columns(rows: list[dict]) -> tuple[str, ...]:
    return MODEL_COLUMNS if rows and rows[0].get("kind") == "model" else COLUMNS


def markdown_table(rows: list[dict]) -> str:
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r, c) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def terminal_table(rows: list[dict]) -> str:
    cols = _columns(rows)
    cells = [list(cols)] + [[_cell(r, c) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in cells)


def _csv_text(rows: list[dict]) -> str:
    cols = _columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols)
    for r in rows:
        writer.writerow([_shape_text(r[c]) if c == "shape" else r.get(c) for c in cols])
    return buf.getvalue()


def _plot(rows: list[dict], header: dict, path: str) -> Optional[str]:
    """Speedup over dense per shape, one bar group per backend. Returns the path, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    kernel_rows = [r for r in rows if r.get("kind") == "kernel" and r.get("speedup_vs_dense") is not None]
    if not kernel_rows:
        return _plot_models(rows, header, path, plt)
    labels = list(dict.fromkeys(f"{r['op']} {_shape_text(r['shape'])}" for r in kernel_rows))
    backends = list(dict.fromkeys(r["backend"] for r in kernel_rows))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.45 * len(labels)), 9))
    width = 0.8 / len(backends)
    for j, b in enumerate(backends):
        by_label = {f"{r['op']} {_shape_text(r['shape'])}": r for r in kernel_rows if r["backend"] == b}
        xs = [i + j * width for i, lab in enumerate(labels) if lab in by_label]
        ax1.bar(xs, [by_label[lab]["speedup_vs_dense"] for lab in labels if lab in by_label], width, label=b)
        ax2.bar(xs, [by_label[lab]["tflops"] for lab in labels if lab in by_label], width, label=b)
    ax1.axhline(1.0, color="black", linewidth=0.8)
    ax1.set_ylabel("speedup over dense")
    ax2.set_ylabel("TFLOP/s (dense-equivalent)")
    # The GPU's tensor-core peaks (docs/BENCHMARKS.md, PEAKS): dense dashed, 2:4 sparse dotted.
    from sparsedm.bench.environment import gpu_peak

    precisions = sorted({"int8" if r["op"] in ("int8", "sparse-int8") else r.get("dtype", "fp16") for r in kernel_rows})
    for k, precision in enumerate(precisions):
        peak = gpu_peak(header.get("gpu"), precision)
        if peak:
            color = f"C{k + len(backends)}"
            ax2.axhline(peak, color=color, linestyle="--", linewidth=0.8, label=f"{precision} dense peak {peak:g}")
            ax2.axhline(2 * peak, color=color, linestyle=":", linewidth=0.8, label=f"{precision} 2:4 peak {2 * peak:g}")
    for ax in (ax1, ax2):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
        ax.set_xticklabels(labels, rotation=75, fontsize=6)
        ax.legend(fontsize=7)
    ax1.set_title(f"sparsedm on {header.get('gpu')} (torch {header.get('torch')}, commit {header.get('commit')})")
    return _save_png(fig, plt, path)


def _save_png(fig, plt, path: str) -> str:
    """Lay out, render and write ``fig`` atomically; returns the path."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return path


def _plot_models(rows: list[dict], header: dict, path: str, plt) -> Optional[str]:
    """Model rows: the denoiser step's and the whole run's speedup over dense, per variant."""
    model_rows = [r for r in rows if r.get("kind") == "model" and r.get("speedup_vs_dense") is not None]
    if not model_rows:
        return None
    labels = [f"{r['model']} {r['variant']}" for r in model_rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4.5))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [r["speedup_vs_dense"] for r in model_rows], 0.4, label="denoiser step")
    ax.bar([x + 0.2 for x in xs], [r.get("run_speedup_vs_dense") or 0 for r in model_rows], 0.4, label="whole sampling run")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("speedup over dense")
    ax.legend(fontsize=7)
    r0 = model_rows[0]
    loop = "CUDA graph" if r0.get("cuda_graph") else "eager"
    ax.set_title(f"{r0['model']}, batch {r0.get('batch')}, {loop}, on {header.get('gpu')} (commit {header.get('commit')})", fontsize=8)
    return _save_png(fig, plt, path)


def write_results(rows: list[dict], header: dict, out_dir: str, kind: str) -> dict[str, str]:
    """Write ``<stem>.json/.csv/.md/.png`` into ``out_dir``; returns the paths written."""
    stem = os.path.join(out_dir, results_stem(header, kind))
    doc = {**header, "rows": rows}
    paths = {"json": stem + ".json", "csv": stem + ".csv", "md": stem + ".md"}
    write_atomic(paths["json"], json.dumps(doc, indent=1) + "\n")
    write_atomic(paths["csv"], _csv_text(rows))
    title = f"# sparsedm {kind} benchmark\n\n" + "\n".join(f"- {k}: {v}" for k, v in header.items()) + "\n\n"
    write_atomic(paths["md"], title + markdown_table(rows))
    png = _plot(rows, header, stem + ".png")
    if png:
        paths["png"] = png
    return paths


def load_results(path: str) -> dict:
    with open(path) as f:
        doc = json.load(f)
    missing = [k for k in ("gpu", "capability", "torch", "triton", "cuda", "commit", "date", "rows") if k not in doc]
    if missing:
        raise ValueError(f"{path}: not a sparsedm results file (missing {', '.join(missing)})")
    return doc


def iter_rows(paths: Iterable[str]):
    for p in paths:
        yield from load_results(p)["rows"]
