"""``sparsedm bench model``: whole-model variants against the dense masked model.

Variants of one set of weights (the dense model with SparseDM's layers masked 2:4, so every
variant computes the same function up to its arithmetic):

- ``dense``: the masked model as plain ``nn.Linear`` / ``nn.Conv2d`` (cuBLAS / cuDNN);
- ``sparse``: ``sparsedm.optimize(model)``: the 2:4 layers on sparse kernels;
- ``int8``: every eligible linear as ``Int8Linear`` (W8A8, sparsity unused);
- ``sparse+int8``: ``sparsedm.optimize(model, quant="int8")``.

For each variant: the denoiser-step latency (median, CUDA events, optionally replayed from a
CUDA graph), images/s of a whole sampling run, peak GPU memory, and the largest difference
of its output from the dense model's on the same inputs.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from sparsedm.bench.timing import measure, timer_for

log = logging.getLogger("sparsedm.bench")

VARIANTS = ("dense", "sparse", "int8", "sparse+int8")


@dataclass
class ModelSpec:
    name: str
    arch: str
    config: dict
    resolution: int
    in_channels: int
    sampler: dict
    sparse_layers: list[str]


def masked_dense_model(spec: ModelSpec, device, dtype, seed: int = 0) -> nn.Module:
    """The preset's model with random weights, its 2:4 layers masked by the DESIGN rule (those
    whose weight the format can hold: the DDPM UNet's 3-channel input conv, K = 27, stays dense)."""
    from sparsedm.formats import mask24
    from sparsedm.formats.sparse24 import holds_24
    from sparsedm.models import build

    torch.manual_seed(seed)
    model = build(spec.arch, spec.config, device="cpu")
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in spec.sparse_layers:
            w = modules[name].weight
            if holds_24(w.shape):
                w.mul_(mask24(w))
    return model.to(device=device, dtype=dtype).eval()


def _int8_only(model: nn.Module) -> nn.Module:
    """Every linear with a reduction length the int8 kernels take becomes Int8Linear."""
    from sparsedm.nn import Int8Linear

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.in_features % 8 == 0:
                setattr(parent, child_name, Int8Linear.from_dense(child))
    return model


def converted_layers(model: nn.Module) -> int:
    """How many layers of ``model`` are sparsedm modules (0 for the dense variant)."""
    from sparsedm.nn import Int8Linear, Sparse24Int8Linear, SparseConv2d, SparseLinear

    return sum(isinstance(m, (SparseLinear, SparseConv2d, Int8Linear, Sparse24Int8Linear)) for m in model.modules())


def make_variant(base: nn.Module, variant: str, backend: str = "auto") -> nn.Module:
    from sparsedm.nn import optimize

    model = copy.deepcopy(base)
    if variant == "dense":
        return model
    if variant == "sparse":
        return optimize(model, backend=backend)
    if variant == "int8":
        return _int8_only(model)
    if variant == "sparse+int8":
        return optimize(model, quant="int8", backend=backend)
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def example_batch(spec: ModelSpec, model: nn.Module, batch: int, device, dtype) -> tuple[tuple, dict]:
    from sparsedm.convert import arch as archs

    g = torch.Generator().manual_seed(1234)
    args, kwargs = archs.example_inputs(model, spec.config, spec.resolution, spec.in_channels, batch=batch, device="cpu")
    x = torch.randn(args[0].shape, generator=g).to(device=device, dtype=dtype)
    t = torch.rand(batch, generator=g).to(device)
    kwargs = {k: v.to(device) for k, v in kwargs.items()}
    if "context" in kwargs:
        kwargs["context"] = torch.randn(kwargs["context"].shape, generator=g).to(device=device, dtype=dtype)
    return (x, t), kwargs


def _runner(model: nn.Module, cuda_graph: bool) -> Callable:
    """The model, or its CUDA-graph replay (captured on the first call)."""
    if not cuda_graph:
        return model
    from sparsedm.sampling.graphs import GraphedModel

    return GraphedModel(model)


def bench_variants(
    spec: ModelSpec,
    *,
    variants=VARIANTS,
    batch: int = 8,
    steps: int = 10,
    device="cuda",
    dtype=torch.float16,
    cuda_graph: bool = False,
    compile: bool = False,
    channels_last: bool = False,
    progress: Optional[Callable[[str], None]] = None,
    backend: str = "auto",
    warmup: int = 3,
    reps: int = 20,
    timer=None,
    base: Optional[nn.Module] = None,
) -> list[dict]:
    """One row per variant (DESIGN.md model-row schema); dense first, as the baseline.

    ``base``: the dense masked model to start from (default: the spec's model with random
    weights, its 2:4 layers masked)."""
    from sparsedm.sampling import from_config
    from sparsedm.sampling.run import generate

    device = torch.device(device)
    base = masked_dense_model(spec, device, dtype) if base is None else base.to(device=device, dtype=dtype).eval()
    args, kwargs = example_batch(spec, base, batch, device, dtype)
    if channels_last:  # conv models: cuDNN's fast layout for the dense baseline, the CUDA conv's native one
        base = base.to(memory_format=torch.channels_last)
        args = (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    with torch.no_grad():
        reference = base(*args, **kwargs).float()
    from sparsedm.sampling.run import label_classes, label_rows

    sampler_cfg = {**spec.sampler, "steps": steps}
    num_classes = max(int(spec.config.get("num_classes") or 0), 0)
    rows = label_rows(base)
    if sampler_cfg.get("cfg_scale") and num_classes and sampler_cfg.get("null_class") is None:
        sampler_cfg["null_class"] = (rows or num_classes + 1) - 1  # a guided model: the last label row is the null class
    sampler = from_config(sampler_cfg)
    num_classes = label_classes(num_classes, sampler_cfg.get("null_class"), rows)
    contexts = uncond = None
    if spec.config.get("clip_dim"):  # text models: random prompt embeddings (the values do not change the timing)
        g = torch.Generator().manual_seed(0)
        tokens, dim = int(spec.config.get("num_clip_token", 77)), int(spec.config["clip_dim"])
        contexts, uncond = torch.randn(4, tokens, dim, generator=g), torch.randn(tokens, dim, generator=g)
    # A denoiser step in eager mode pays its host dispatch (that is its real latency); under
    # --cuda-graph the replay has none. So no lead here, unlike the kernel benchmarks.
    timer = timer or timer_for(device, lead_cycles=0)
    order = ["dense"] + [v for v in variants if v != "dense"]
    rows, dense_ms, dense_ips = [], None, None
    for variant in order:
        try:
            if progress is not None:
                progress(f"bench model {spec.name}: {variant} (batch {batch}, {steps} sampling steps)")
            model = make_variant(base, variant, backend)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
        except Exception as exc:  # a variant this model or machine cannot build: say so, go on
            log.warning("bench model %s: variant %s unavailable: %s", spec.name, variant, exc)
            continue
        if compile:
            model = torch.compile(model)
        with torch.no_grad():
            out = model(*args, **kwargs).float()
            diff = float((out - reference).abs().max())
            runner = _runner(model, cuda_graph)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            m = measure(lambda i: runner(*args, **kwargs), warmup=warmup, reps=reps, timer=timer,
                        sync=torch.cuda.synchronize if device.type == "cuda" else None)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            t0 = time.perf_counter()
            generate(runner, sampler, (spec.in_channels, spec.resolution, spec.resolution), batch, seed=0,
                     device=device, batch_size=batch, num_classes=num_classes, dtype=dtype, output="float",
                     contexts=contexts, uncond_context=uncond)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            run_s = time.perf_counter() - t0
        ips = batch / run_s
        if variant == "dense":
            dense_ms, dense_ips = m.median_ms, ips
        rows.append({
            "kind": "model",
            "model": spec.name,
            "variant": variant,
            "batch": batch,
            "steps": steps,
            "step_ms": round(m.median_ms, 4),
            "images_per_s": round(ips, 3),
            "speedup_vs_dense": round(dense_ms / m.median_ms, 4) if dense_ms else None,
            "run_speedup_vs_dense": round(ips / dense_ips, 4) if dense_ips else None,
            "cuda_graph": cuda_graph,
            "compile": compile,
            "channels_last": channels_last,
            "peak_mem_mb": round(peak, 1) if peak is not None else None,
            "max_abs_diff": diff,
            "converted_layers": converted_layers(model),
        })
    return rows


def from_file(path: str) -> tuple[ModelSpec, nn.Module]:
    """The spec and the dense model (the file's weights, 2:4 layers decompressed) of a
    converted file."""
    import os

    import sparsedm
    from sparsedm.demo import densify

    loaded = sparsedm.load(path)
    a = loaded.manifest["architecture"]
    sparse = [n for n, info in loaded.manifest["layers"].items() if info["kind"] != "dense"]
    spec = ModelSpec(os.path.splitext(os.path.basename(path))[0], a["arch"], a["config"], a["resolution"],
                     a["in_channels"], dict(loaded.sampler or {"kind": "ddim", "steps": 50}), sparse)
    return spec, densify(loaded.model)


def spec_from_preset(name: str, overrides: Optional[dict] = None) -> ModelSpec:
    from sparsedm.models import PRESETS, build, sparse_layer_names

    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    p = PRESETS[name]
    config = {**p["config"], **(overrides or {})}
    meta_model = build(p["arch"], config, device="meta")
    return ModelSpec(name, p["arch"], config, p["resolution"], p["in_channels"], dict(p["sampler"]),
                     sparse_layer_names(p["arch"], meta_model))
