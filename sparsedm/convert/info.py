"""``sparsedm info FILE``: manifest, layer table, MACs dense vs 2:4, size against dense fp16."""

from __future__ import annotations

import math
from typing import Any

import torch

from sparsedm.bench.macs import MacReport, count_macs
from sparsedm.convert import arch as archs
from sparsedm.convert.fileformat import read_header


def sparse_layers_of(manifest: dict) -> list[str]:
    """The layers a converted file stores as 2:4 (they cost half the MACs)."""
    return [n for n, info in manifest["layers"].items() if info["kind"].startswith("sparse24")]


def model_macs(manifest: dict, batch: int = 1, resolution: int | None = None) -> MacReport:
    """MACs of the file's model for ``batch`` images (a forward pass on the meta device)."""
    a = manifest["architecture"]
    resolution = resolution or a["resolution"]
    config = archs.config_at_resolution(a["config"], resolution)
    model = archs.build_model(archs.get_architecture(a["arch"]), config, "meta")
    args, kwargs = archs.example_inputs(model, config, resolution, a["in_channels"], batch=batch, device="meta")
    return count_macs(model, args, sparse_layers_of(manifest), kwargs=kwargs)


def file_report(path: str) -> dict[str, Any]:
    header = read_header(path)
    manifest = header.manifest
    a = manifest["architecture"]
    layers = manifest["layers"]
    dense_fp16 = 0
    for name, spec in header.tensors.items():
        owner = name.rsplit(".", 1)[0]
        if owner in layers and layers[owner]["kind"] != "dense" and not name.endswith(".bias"):
            continue
        dense_fp16 += math.prod(spec.shape) * (2 if spec.dtype.is_floating_point else spec.dtype.itemsize)
    dense_fp16 += sum(2 * math.prod(info["weight_shape"]) for info in layers.values() if info["kind"] != "dense")
    # The same model stored dense in the file's own dtypes: each tensor as it is, each 2:4 / int8
    # weight as a dense weight of its layer's float dtype. An fp32 file compares with this.
    dense_same = 0
    for name, spec in header.tensors.items():
        owner = name.rsplit(".", 1)[0]
        if owner in layers and layers[owner]["kind"] != "dense" and not name.endswith(".bias"):
            continue
        dense_same += math.prod(spec.shape) * spec.dtype.itemsize
    for info in layers.values():
        if info["kind"] != "dense":
            float_dtype = getattr(torch, str(info.get("dtype")), torch.float16)  # manifest dtypes: "float32", ...
            if not isinstance(float_dtype, torch.dtype) or not float_dtype.is_floating_point:
                float_dtype = torch.float16
            dense_same += math.prod(info["weight_shape"]) * float_dtype.itemsize
    report: dict[str, Any] = {
        "file": path,
        "file_bytes": header.file_bytes,
        "header_bytes": header.header_bytes + 8,
        "dense_fp16_bytes": dense_fp16,
        "size_vs_dense_fp16": header.file_bytes / dense_fp16 if dense_fp16 else None,
        "dense_same_dtype_bytes": dense_same,
        "size_vs_dense_same_dtype": header.file_bytes / dense_same if dense_same else None,
        "manifest": manifest,
        "macs": None,
    }
    if a.get("resolution") and a.get("in_channels"):
        try:
            mr = model_macs(manifest)
            per_layer = {r.name: r.dense_macs for r in mr.rows if r.kind != "attention"}
            sparse = sum(r.dense_macs for r in mr.rows if r.dense_macs != r.sparse_macs)
            report["macs"] = {"resolution": a["resolution"], "dense": mr.dense_macs, "sparse24": mr.sparse_macs,
                              "sparse_fraction": sparse / mr.dense_macs if mr.dense_macs else 0.0,
                              "attention": mr.dense_macs - sum(per_layer.values()), "per_layer": per_layer}
        except Exception as e:  # MACs are informative; a model whose forward fails on meta still gets a report
            report["macs_error"] = f"{e.__class__.__name__}: {e}"
    else:
        report["macs_error"] = "the manifest has no resolution/in_channels"
    return report


def format_report(r: dict[str, Any]) -> str:
    m = r["manifest"]
    a = m["architecture"]
    src = m.get("source") or {}
    conv = m.get("conversion") or {}
    lines = [
        f"{r['file']}: sparsedm format {m['format_version']} (written by sparsedm {m.get('sparsedm_version')})",
        f"architecture: {a['arch']}" + (f" (preset {a['preset']})" if a.get("preset") else "") + f"  config: {a['config']}",
        f"source: {src.get('file')} sha256 {str(src.get('sha256'))[:16]}...  reader {src.get('reader')}",
        f"conversion: quant {conv.get('quant')}, dtype {conv.get('dtype') or 'kept'}, prune {conv.get('prune')}",
        f"sampler: {m.get('sampler')}" + ("" if m.get("sampler") is not None else " (none recorded)"),
    ]
    macs = (r.get("macs") or {}).get("per_layer", {})
    w = max([len(n) for n in m["layers"]] + [5])
    lines.append(f"  {'layer':<{w}}  {'kind':<13} {'shape':<20} {'dtype':<9} {'MACs':>12}  note")
    for name, info in m["layers"].items():
        mac = f"{macs[name]:,}" if name in macs else "-"
        lines.append(f"  {name:<{w}}  {info['kind']:<13} {str(info['weight_shape']):<20} {info['dtype']:<9} {mac:>12}  {info.get('note') or ''}")
    if r.get("macs"):
        mc = r["macs"]
        lines.append(f"MACs at {mc['resolution']}px: dense {mc['dense'] / 1e9:.3f} G, 2:4 {mc['sparse24'] / 1e9:.3f} G "
                     f"({100 * mc['sparse_fraction']:.1f}% of MACs in 2:4 layers, {mc['dense'] / max(mc['sparse24'], 1):.2f}x fewer; "
                     f"attention matmuls {mc['attention'] / 1e9:.3f} G, dense)")
    else:
        lines.append(f"MACs: unavailable ({r.get('macs_error')})")
    lines.append(f"size: {r['file_bytes'] / 1e6:.2f} MB; the same model dense in this file's dtypes "
                 f"{r['dense_same_dtype_bytes'] / 1e6:.2f} MB ({r['size_vs_dense_same_dtype']:.3f}x), dense fp16 "
                 f"{r['dense_fp16_bytes'] / 1e6:.2f} MB ({r['size_vs_dense_fp16']:.3f}x); header {r['header_bytes']} bytes")
    return "\n".join(lines)
