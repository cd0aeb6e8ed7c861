"""``sparsedm.load``: a converted file -> a ready model (meta build, module swap, assign=True).

The model is built on the meta device from the manifest's architecture and config; every
non-dense layer is swapped for its runtime module; the file's tensors are assigned
(``load_state_dict(assign=True)``, so no weight is ever materialised twice); the model goes to
the device in eval mode.

Runtime modules: the ones of ``sparsedm.nn`` when that package provides them, otherwise the
small modules below, which call the ``sparsedm::`` ops directly with the canonical tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from sparsedm import ops
from sparsedm.convert import arch as archs
from sparsedm.convert.errors import FileFormatError
from sparsedm.convert.fileformat import count_nonfinite, read_header, read_tensors


class _CompressedLayer(nn.Module):
    """A Linear/Conv2d whose weight is held in the file's canonical tensors (docs/FORMAT.md)."""

    def __init__(self, kind: str, dense: nn.Module, specs: dict[str, Any], backend: Optional[str]):
        super().__init__()
        self.kind = kind
        self.backend = None if backend in (None, "auto") else backend
        self.is_conv = isinstance(dense, nn.Conv2d)
        self.weight_shape = list(dense.weight.shape)
        if self.is_conv:
            self.stride, self.padding, self.dilation = list(dense.stride), list(dense.padding), list(dense.dilation)
            if isinstance(dense.padding, str) or dense.groups != 1:
                raise FileFormatError(f"conv layer with padding={dense.padding!r}, groups={dense.groups} cannot be 2:4",
                                      "re-convert; such layers stay dense")
        for name, spec in specs.items():
            self.register_buffer(name, torch.empty(spec.shape, dtype=spec.dtype, device="meta"))
        if "bias" not in specs:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "sparse24":
            if self.is_conv:
                return ops.sparse24_conv2d(x, self.values, self.meta, self.bias, self.weight_shape, self.stride,
                                           self.padding, self.dilation, backend=self.backend)
            return ops.sparse24_linear(x, self.values, self.meta, self.bias, backend=self.backend)
        if self.kind == "sparse24_int8":
            return ops.sparse24_int8_linear(x, self.values, self.meta, self.weight_scale, self.bias, backend=self.backend)
        return ops.int8_linear(x, self.weight_q, self.weight_scale, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, weight_shape={self.weight_shape}"


@dataclass
class LoadedModel:
    """What :func:`load` returns.

    ``sampler`` is the manifest's sampler settings as a plain dict (steps, schedule,
    prediction, time input, clipping; schema in docs/SAMPLING.md); :meth:`make_sampler` turns
    it into a configured :class:`sparsedm.sampling.Sampler`.
    """

    model: nn.Module
    sampler: Optional[dict]
    manifest: dict
    path: str

    def make_sampler(self, **overrides):
        """The sampler the file records (``overrides``, e.g. ``steps=``, win)."""
        from sparsedm.sampling import from_config

        if self.sampler is None:
            raise FileFormatError(f"{self.path}: the file records no sampler settings",
                                  "pass a sampler config to sparsedm.sampling.from_config yourself")
        return from_config(self.sampler, **overrides)


# file tensor suffix -> sparsedm.nn buffer name, per layer kind
RUNTIME_NAMES = {
    "sparse24": {"values": "values", "meta": "meta", "bias": "bias"},
    "sparse24_int8": {"values": "values_q", "meta": "meta", "weight_scale": "w_scale", "bias": "bias"},
    "int8": {"weight_q": "w_q", "weight_scale": "w_scale", "bias": "bias"},
}


def _runtime_module(kind: str, dense: nn.Module, specs: dict[str, Any], backend: str) -> tuple[nn.Module, dict[str, str]]:
    """The sparsedm.nn module for a layer (built on meta) and the file-suffix -> buffer-name map;
    the local op-calling module when sparsedm.nn is not available."""
    try:
        from sparsedm.nn import Int8Linear, Sparse24Int8Linear, SparseConv2d, SparseLinear
    except ImportError:
        return _CompressedLayer(kind, dense, specs, backend), {k: k for k in specs}
    bias = "bias" in specs
    float_dtype = specs["values"].dtype if kind == "sparse24" else (specs["bias"].dtype if bias else torch.float32)
    common = dict(backend=backend, device="meta", dtype=float_dtype)
    if kind == "sparse24" and isinstance(dense, nn.Conv2d):
        module = SparseConv2d(dense.in_channels, dense.out_channels, dense.kernel_size, dense.stride, dense.padding,
                              dense.dilation, bias, **common)
    elif kind == "sparse24":
        module = SparseLinear(dense.in_features, dense.out_features, bias, **common)
    elif kind == "sparse24_int8":
        module = Sparse24Int8Linear(dense.in_features, dense.out_features, bias, **common)
    else:
        module = Int8Linear(dense.in_features, dense.out_features, bias, **common)
    return module, RUNTIME_NAMES[kind]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


_DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
                "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def _check_load_arguments(device, dtype, backend) -> Optional[torch.dtype]:
    """Readable errors for ``load``'s arguments before any work; returns the dtype (names like
    "fp16" accepted)."""
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPE_NAMES:
            raise ValueError(f"dtype={dtype!r}: use torch.float16, torch.bfloat16, torch.float32 (or 'fp16', 'bf16', 'fp32')")
        dtype = _DTYPE_NAMES[dtype.lower()]
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dtype={dtype!r}: the model's floating tensors take a floating dtype (float16, bfloat16, float32); "
                         "int8 comes from converting with --quant int8")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a device ({exc}); use 'cpu', 'cuda' or 'cuda:1'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here; use device='cpu'")
    if backend not in (None, "auto"):
        from sparsedm.ops import registry

        registry.get_backend(str(backend).strip().lower())  # unknown names fail now, not at the first forward
    return dtype


def load(path: str, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None, backend: str = "auto",
         fuse_activations: bool = True) -> LoadedModel:
    """Load a file written by ``sparsedm convert``.

    ``dtype=None`` keeps the file's dtypes; otherwise floating tensors (not int8 scales) are
    cast. ``backend`` is passed to the ``sparsedm::`` ops ("auto" lets the registry choose).
    ``fuse_activations``: an activation module that only follows a 2:4 layer moves into that
    layer's epilogue, as ``sparsedm.optimize`` does (sparsedm.nn.fuse_activations_in).
    """
    dtype = _check_load_arguments(device, dtype, backend)
    header = read_header(path)
    manifest = header.manifest
    arch_info = manifest["architecture"]
    architecture = archs.get_architecture(arch_info["arch"])
    model = archs.build_model(architecture, arch_info["config"], "meta")
    layers = manifest["layers"]
    renames: dict[str, str] = {}
    extra_state: dict[str, torch.Tensor] = {}
    for name, info in layers.items():
        try:
            dense = model.get_submodule(name)
        except AttributeError:
            raise FileFormatError(f"{path}: manifest layer {name!r} does not exist in {arch_info['arch']}",
                                  "re-convert the checkpoint") from None
        if not isinstance(dense, (nn.Linear, nn.Conv2d)) or list(dense.weight.shape) != info["weight_shape"]:
            raise FileFormatError(f"{path}: manifest layer {name!r} is {info['weight_shape']} but the architecture's is "
                                  f"{type(dense).__name__} {list(getattr(dense, 'weight', torch.empty(0)).shape)}",
                                  "re-convert the checkpoint")
        if info["kind"] != "dense":
            specs = {k[len(name) + 1:]: s for k, s in header.tensors.items() if k.startswith(name + ".") and "." not in k[len(name) + 1:]}
            module, names = _runtime_module(info["kind"], dense, specs, backend)
            _set_submodule(model, name, module)
            renames.update({f"{name}.{k}": f"{name}.{v}" for k, v in names.items()})
            if "weight_shape" in module.state_dict():
                extra_state[f"{name}.weight_shape"] = torch.tensor(info["weight_shape"], dtype=torch.int64)
    state = read_tensors(header, device="cpu")
    for key, t in state.items():  # the converter refuses NaN/Inf, so one here is a damaged file
        bad = count_nonfinite(t)
        if bad:
            raise FileFormatError(f"{path}: tensor {key} holds {bad} NaN/Inf value(s); "
                                  f"the converter never writes them, so the file is damaged",
                                  "re-convert the checkpoint (or copy the file again)")
    state = {renames.get(k, k): v for k, v in state.items()}
    state.update(extra_state)
    if dtype is not None:
        # int8 scales stay float32 (the int8 contract); everything else floating takes dtype.
        scales = (".weight_scale", ".w_scale", ".x_scale")
        state = {k: (v.to(dtype) if v.is_floating_point() and not k.endswith(scales) else v) for k, v in state.items()}
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise FileFormatError(f"{path}: the tensors disagree with the manifest's architecture (missing "
                              f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})", "re-convert the checkpoint")
    leftover = [n for n, b in list(model.named_parameters()) + list(model.named_buffers()) if b.is_meta]
    for name in leftover:  # non-persistent buffers (e.g. precomputed frequencies) are rebuilt on the device
        raise FileFormatError(f"{path}: {name} was not in the file", "re-convert the checkpoint")
    model = model.to(device).eval()
    if fuse_activations:
        from sparsedm.nn import fuse_activations_in

        fuse_activations_in(model)
    return LoadedModel(model, manifest.get("sampler"), manifest, str(path))
