"""``sparsedm demo``: the shipped sparse, distilled model, sampled by the sparse and the dense path.

The model in ``sparsedm/data/demo`` was trained by ``examples/train_demo.py`` on the 8x8
handwritten digits that ship with scikit-learn: dense pre-training, SR-STE 2:4 fine-tuning,
then progressive distillation to 4 steps (its manifest records how). The demo loads it with
the sparse runtime, samples a grid with its few-step sampler, samples the same noise through
the dense path (the same weights decompressed into plain ``nn.Linear``), and writes both grids
beside the dense teacher's grid, with a short markdown report.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from importlib import resources

import torch
from torch import nn

N_IMAGES = 64
SEED = 1  # the noise the shipped teacher grid was made with
UPSCALE = 4  # 8x8 digits are hard to see at 1:1


def demo_dir() -> str:
    return str(resources.files("sparsedm") / "data" / "demo")


def densify(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every sparsedm module replaced by the plain layer(s) it computes."""
    from sparsedm.nn import Int8Linear, Sparse24Int8Linear, SparseConv2d, SparseLinear

    dense = copy.deepcopy(model)
    for parent in list(dense.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (SparseLinear, Int8Linear, Sparse24Int8Linear)):
                weight = child.dense_weight()
                layer = nn.Linear(weight.shape[1], weight.shape[0], bias=child.bias is not None,
                                  device=weight.device, dtype=weight.dtype)
            elif isinstance(child, SparseConv2d):
                weight = child.dense_weight()
                layer = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), child.stride, child.padding,
                                  child.dilation, bias=child.bias is not None, device=weight.device, dtype=weight.dtype)
            else:
                continue
            with torch.no_grad():
                layer.weight.copy_(weight)
                if child.bias is not None:
                    layer.bias.copy_(child.bias)
            act = getattr(child, "activation", "none")
            if act != "none":  # an activation fused into the epilogue (optimize / load) runs after the layer
                layer = nn.Sequential(layer, {"gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"),
                                              "silu": nn.SiLU()}[act])
            setattr(parent, name, layer)
    return dense


def _grid(path: str, images: torch.Tensor) -> None:
    from sparsedm.sampling.images import make_grid, to_uint8, write_png

    u8 = to_uint8(images).numpy().repeat(UPSCALE, axis=1).repeat(UPSCALE, axis=2)
    write_png(path, make_grid(u8, nrow=8))


def _sample(model: nn.Module, sampler, shape, device) -> tuple[torch.Tensor, float]:
    """N_IMAGES images from fixed noise; returns them (float, NCHW) and seconds per image."""
    z = torch.randn(N_IMAGES, *shape, generator=torch.Generator().manual_seed(SEED)).to(device)
    seeds = [SEED + i for i in range(N_IMAGES)]  # only used if the sampler is stochastic
    with torch.no_grad():
        sampler.sample(model, z, seeds=seeds)  # warm-up: first-call allocations, kernel selection
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        images = sampler.sample(model, z, seeds=seeds)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return images.float().cpu(), (time.perf_counter() - t0) / N_IMAGES


def run_demo(device: str = "auto", out: str = "sparsedm-demo", backend: str = "auto") -> dict:
    """Sample the shipped model both ways and write grids + ``report.md`` into ``out``."""
    import sparsedm
    from sparsedm.convert.info import file_report

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA GPU is visible; use --device cpu or auto")
    path = os.path.join(demo_dir(), "demo.safetensors")
    loaded = sparsedm.load(path, device=device, backend=backend)
    sampler = loaded.make_sampler()
    arch = loaded.manifest["architecture"]
    shape = (arch["in_channels"], arch["resolution"], arch["resolution"])
    sparse_model = loaded.model
    dense_model = densify(sparse_model)

    sparse_images, sparse_s = _sample(sparse_model, sampler, shape, device)
    dense_images, dense_s = _sample(dense_model, sampler, shape, device)
    os.makedirs(out, exist_ok=True)  # after sampling: a run that fails (e.g. a backend that cannot run) leaves nothing
    _grid(os.path.join(out, "sparse_grid.png"), sparse_images)
    _grid(os.path.join(out, "dense_grid.png"), dense_images)
    shutil.copyfile(os.path.join(demo_dir(), "teacher_grid.png"), os.path.join(out, "teacher_grid.png"))

    info = file_report(path)
    macs = info["macs"]
    provenance = loaded.sampler.get("_provenance", {})
    result = {
        "device": str(device),
        "images": N_IMAGES,
        "steps": loaded.sampler["steps"],
        "sparse_layers": sum(1 for v in loaded.manifest["layers"].values() if v["kind"].startswith("sparse24")),
        "dense_macs": macs["dense"],
        "sparse_macs": macs["sparse24"],
        "file_bytes": info["file_bytes"],
        "dense_fp16_bytes": info["dense_fp16_bytes"],
        "sparse_s_per_image": sparse_s,
        "dense_s_per_image": dense_s,
        "max_abs_diff": float((sparse_images - dense_images).abs().max()),
        "backends": sorted({k[1] for k, n in sparsedm.ops.dispatch_counts.items() if n and k[0] == "sparse24_linear"}),
    }
    report = f"""# sparsedm demo

The shipped model: a U-ViT (8x8 digits, width {arch['config'].get('embed_dim')}, depth {arch['config'].get('depth')})
made by `{provenance.get('script', 'examples/train_demo.py')}` (seed {provenance.get('seed')}): dense pre-training,
SR-STE 2:4 fine-tuning ({result['sparse_layers']} layers at 2:4), progressive distillation to {result['steps']} steps.

| | sparse runtime | dense path (same weights) |
|---|---|---|
| grid | sparse_grid.png | dense_grid.png |
| time per image on {device} | {1e3 * sparse_s:.2f} ms | {1e3 * dense_s:.2f} ms |

- MACs per image: dense {macs['dense'] / 1e6:.2f} M, with 2:4 {macs['sparse24'] / 1e6:.2f} M
  ({macs['dense'] / max(macs['sparse24'], 1):.2f}x fewer).
- File: {info['file_bytes'] / 1e6:.3f} MB; the same model stored dense in the file's dtypes would be
  {info['dense_same_dtype_bytes'] / 1e6:.3f} MB, dense fp16 {info['dense_fp16_bytes'] / 1e6:.3f} MB.
- Largest difference between the two paths' images for the same noise: {result['max_abs_diff']:.2e}
  (images in [-1, 1]).
- Sparse kernels used: {', '.join(result['backends']) or 'none recorded'}. On a CPU the sparse runtime runs the
  reference path (decompress, then a dense matmul), so it is not faster there: the speedup
  needs a GPU backend (`sparsedm info --backends`).
- teacher_grid.png: the dense teacher with 32 DDIM steps, from training (same noise).
"""
    from sparsedm._io import write_atomic

    write_atomic(os.path.join(out, "report.md"), report)
    write_atomic(os.path.join(out, "report.json"), json.dumps(result, indent=1) + "\n")
    return result


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="sample the shipped sparse, distilled demo model with the sparse and the dense path",
        description="Load the demo model that ships with sparsedm (a 2:4, 4-step distilled U-ViT trained on "
        "8x8 digits by examples/train_demo.py), sample a grid with the sparse runtime and, from the same "
        "weights, with the dense path, and write both grids, the dense teacher's grid and a short report "
        "(MACs, file size, time per image, max difference) into --out.",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--out", default="sparsedm-demo", help="output directory (default ./sparsedm-demo)")
    p.add_argument("--backend", default="auto", help="sparsedm backend for the sparse layers (default auto)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import sys

    try:
        result = run_demo(args.device, args.out, args.backend)
    except OSError as exc:
        print(f"error: cannot write to --out {args.out}: {exc.strerror or exc}; choose another directory", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # incl. BackendUnavailableError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with open(os.path.join(args.out, "report.md")) as f:
        print(f.read())
    print(f"wrote {args.out}/sparse_grid.png, dense_grid.png, teacher_grid.png, report.md, report.json")
    return 0 if result["max_abs_diff"] < 1e-2 else 1
