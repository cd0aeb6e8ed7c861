"""Readers: one per checkpoint source, each normalizing to a :class:`Source`.

A reader loads the file (weights only, memory-mapped), renames keys to the runtime's names
with an explicit table, and says how the sparse layers get their 2:4 masks:

- ``topk-flat``: SparseDM's rule, recomputed from the dense weights (the top-2 |w| of each
  group of 4 of the flattened weight, conv weights in their KRSC view);
- ``given``: masks stored beside the weights (ASP's ``__weight_mma_mask``, compressed-tensors'
  bitmask);
- ``zeros``: the weights are already 2:4 in their zeros; verified;
- ``dense``: the source is dense; 2:4 only with ``--prune`` (the same top-2 rule).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from sparsedm.convert import checkpoint
from sparsedm.convert.arch import _uvit_keys, detect_architecture
from sparsedm.convert.errors import ConvertError

READERS = ("sparsedm", "uvit", "asp", "zeroed", "distiller", "diffusers", "compressed-tensors")


@dataclass
class Source:
    reader: str
    detected: str  # one sentence: which reader and why
    path: str
    state: dict[str, torch.Tensor]  # runtime key names -> tensors (memory-mapped)
    rule: str  # "topk-flat" | "given" | "zeros" | "dense"
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # "<layer>.weight" -> bool mask ("given")
    arch: Optional[str] = None
    config: Optional[dict] = None
    sampler: Optional[dict] = None
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------- key rename tables
# (pattern, replacement) applied in order to every key; gpt-fast style, explicit.
COMMON_RENAMES: list[tuple[str, str]] = [
    (r"^module\.", ""),  # DataParallel / DistributedDataParallel wrappers
    (r"^_orig_mod\.", ""),  # torch.compile wrappers
]
SPARSEDM_RENAMES = COMMON_RENAMES  # SparseDM's SparseLinear/SparseConv keep nn.Linear/Conv2d names
UVIT_RENAMES = COMMON_RENAMES
DISTILLER_RENAMES = COMMON_RENAMES  # the "G" network's own names (the runtime's architecture decides)

# Nested containers that hold the state_dict, looked up in this order.
_STATE_KEYS = ("state_dict", "model", "nnet_ema", "ema", "nnet", "net", "G")


def rename(state: dict[str, Any], table: list[tuple[str, str]]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in table:
            new = re.sub(pattern, repl, new)
        if new in out:
            raise ConvertError(f"keys {key!r} and another both rename to {new!r}", "remove the duplicate from the checkpoint")
        out[new] = value
    return out


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(k, str) for k in obj) and any(
        isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint object (plain state_dict or one level of nesting)."""
    if _is_state_dict(obj):
        state = obj
    else:
        state = None
        if isinstance(obj, dict):
            for key in _STATE_KEYS:
                if _is_state_dict(obj.get(key)):
                    state = obj[key]
                    break
        if state is None:
            what = type(obj).__name__
            if isinstance(obj, dict):
                what = f"a dict with keys {sorted(map(str, obj))[:6]}"
            raise ConvertError(f"{path}: not a model checkpoint: it holds {what}, not a state_dict of tensors",
                               "pass the model's state_dict file (e.g. nnet_ema.pth)")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return state


# ------------------------------------------------------------------------------ readers


def read_sparsedm(path: str, obj: Any = None) -> Source:
    state = rename(unwrap_state_dict(_load(path, obj), path), SPARSEDM_RENAMES)
    return Source("sparsedm", "", path, state, "topk-flat", arch=detect_architecture(set(state)))


def read_uvit(path: str, obj: Any = None) -> Source:
    state = rename(unwrap_state_dict(_load(path, obj), path), UVIT_RENAMES)
    return Source("uvit", "", path, state, "dense", arch=detect_architecture(set(state)))


def read_zeroed(path: str, obj: Any = None) -> Source:
    state = rename(unwrap_state_dict(_load(path, obj), path), COMMON_RENAMES)
    return Source("zeroed", "", path, state, "zeros", arch=detect_architecture(set(state)))


ASP_MASK_SUFFIX = "__weight_mma_mask"


def read_asp(path: str, obj: Any = None) -> Source:
    raw = rename(unwrap_state_dict(_load(path, obj), path), COMMON_RENAMES)
    state, masks = {}, {}
    for key, value in raw.items():
        if key.endswith(ASP_MASK_SUFFIX):
            layer = key[: -len(ASP_MASK_SUFFIX)].rstrip(".")
            masks[f"{layer}.weight"] = value.to(torch.bool)
        else:
            state[key] = value
    if not masks:
        raise ConvertError(f"{path}: no {ASP_MASK_SUFFIX} buffers, so this is not an ASP-pruned checkpoint",
                           "pass --from zeroed (2:4 zeros) or --from sparsedm")
    orphans = [k for k in masks if k not in state]
    if orphans:
        raise ConvertError(f"{path}: ASP mask(s) without a weight: {', '.join(orphans[:5])}", "re-export the checkpoint")
    for k, m in masks.items():
        if tuple(m.shape) != tuple(state[k].shape):
            raise ConvertError(f"{path}: ASP mask of {k} has shape {list(m.shape)}, the weight {list(state[k].shape)}",
                               "re-export the checkpoint")
    return Source("asp", "", path, state, "given", masks=masks, arch=detect_architecture(set(state)))


def read_distiller(path: str, obj: Any = None) -> Source:
    """Progressive distillation: the PyTorch port's ``{"G", "n_timesteps", "time_scale"}``,
    or a v-prediction / logSNR checkpoint carrying its settings (``prediction``, ``schedule``)."""
    obj = _load(path, obj)
    if not isinstance(obj, dict) or "G" not in obj:
        raise ConvertError(f"{path}: not a diffusion_distiller checkpoint (no \"G\" entry)",
                           "pass --from uvit/sparsedm for a plain state_dict")
    state = rename(unwrap_state_dict(obj["G"], path), DISTILLER_RENAMES)
    n = obj.get("n_timesteps")
    scale = obj.get("time_scale", 1)
    if not isinstance(n, int) or n <= 0:
        raise ConvertError(f"{path}: n_timesteps is {n!r}, expected a positive integer", "re-save the checkpoint with it")
    if not isinstance(scale, (int, float)):
        raise ConvertError(f"{path}: time_scale is {scale!r}, expected a number", "re-save the checkpoint with it")
    logsnr = str(obj.get("time_input", "")) == "logsnr" or "logsnr" in str(obj.get("schedule", ""))
    sampler = {
        "kind": "ddim",
        "steps": n,
        "prediction": str(obj.get("prediction", "v")),
        "schedule": {"name": "cosine", "s": 0.008, "n_timesteps": n, "clip_beta_max": 0.999}
        if not logsnr else {"name": "cosine_logsnr", "logsnr_min": -20.0, "logsnr_max": 20.0},
        # The port calls the network with the integer step index times time_scale.
        "time_input": {"kind": "logsnr"} if logsnr else {"kind": "step_index", "scale": float(scale)},
        "clip_x0": [-1.0, 1.0],
        "eta": 0.0,
        "source": "diffusion_distiller",
    }
    return Source("distiller", "", path, state, "dense", sampler=sampler, arch=detect_architecture(set(state)))


def read_diffusers(path: str, obj: Any = None) -> Source:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise ConvertError("reading a diffusers UNet needs the diffusers package",
                           "pip install 'sparsedm[diffusers]'") from None
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ConvertError(f"{path}: a diffusers UNet is a folder with config.json and diffusion_pytorch_model.safetensors "
                           f"(or .bin), and {os.path.join(folder or '.', 'config.json')} does not exist",
                           "pass the UNet folder (or the weights file inside it), or drop --from diffusers")
    config = checkpoint.load_json(os.path.join(folder, "config.json"))
    weights = path
    if os.path.isdir(path):
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, name)):
                weights = os.path.join(path, name)
                break
        else:
            raise ConvertError(f"{path}: no diffusion_pytorch_model.safetensors in the folder", "pass the UNet folder")
    state, _ = checkpoint.load_any(weights)
    state = unwrap_state_dict(state, weights)
    cls = config.get("_class_name", "UNet2DModel")
    arch = {"UNet2DModel": "diffusers_unet2d", "UNet2DConditionModel": "diffusers_unet2d_condition"}.get(cls)
    if arch is None:
        raise ConvertError(f"{path}: diffusers class {cls} is not supported", "convert a UNet2DModel or UNet2DConditionModel")
    from sparsedm.convert import diffusers_arch

    diffusers_arch.register()
    return Source("diffusers", "", weights, state, "dense", arch=arch,
                  config={k: v for k, v in config.items() if not k.startswith("_")})


CT_SUFFIXES = (".compressed", ".bitmask", ".shape")


def read_compressed_tensors(path: str, obj: Any = None) -> Source:
    """compressed-tensors' legacy ``sparse-24-bitmask``: per weight ``<layer>.compressed``
    ``[rows, cols/2]`` (the kept values, row-major), ``<layer>.bitmask`` uint8
    ``[rows, ceil(cols/8)]`` (numpy.packbits along the last axis, little bit order) and
    ``<layer>.shape`` (the dense shape, as ``[2]`` or ``[2, 1]`` ints)."""
    import numpy as np

    tensors, _ = checkpoint.load_safetensors(path) if obj is None else obj
    prefixes = {k[: -len(".bitmask")] for k in tensors if k.endswith(".bitmask")}
    state = {k: v for k, v in tensors.items() if not any(k.endswith(s) and k[: -len(s)] in prefixes for s in CT_SUFFIXES)}
    masks = {}
    for p in sorted(prefixes):
        for s in CT_SUFFIXES:
            if p + s not in tensors:
                raise ConvertError(f"{path}: {p}{s} is missing (sparse-24-bitmask stores compressed, bitmask, shape)",
                                   "re-export the checkpoint")
        shape = [int(v) for v in tensors[p + ".shape"].reshape(-1).tolist()]
        values, bits = tensors[p + ".compressed"], tensors[p + ".bitmask"]
        if len(shape) != 2 or shape[1] % 4 != 0 or tuple(values.shape) != (shape[0], shape[1] // 2) \
                or tuple(bits.shape) != (shape[0], (shape[1] + 7) // 8):
            raise ConvertError(f"{path}: {p}: compressed {list(values.shape)} / bitmask {list(bits.shape)} do not fit "
                               f"shape {shape}", "re-export the checkpoint")
        mask = np.unpackbits(bits.contiguous().view(torch.uint8).numpy(), axis=-1, count=shape[1], bitorder="little")
        mask = torch.from_numpy(mask.astype(bool))
        if int(mask.sum()) != values.numel():
            raise ConvertError(f"{path}: {p}: bitmask marks {int(mask.sum())} values, compressed holds {values.numel()}",
                               "re-export the checkpoint")
        dense = torch.zeros(shape, dtype=values.dtype)
        dense[mask] = values.reshape(-1)
        state[p + ".weight"] = dense
        masks[p + ".weight"] = mask
    return Source("compressed-tensors", "", path, state, "given", masks=masks, arch=detect_architecture(set(state)))


_READ: dict[str, Callable[..., Source]] = {
    "sparsedm": read_sparsedm,
    "uvit": read_uvit,
    "dense": read_uvit,
    "asp": read_asp,
    "zeroed": read_zeroed,
    "distiller": read_distiller,
    "diffusers": read_diffusers,
    "compressed-tensors": read_compressed_tensors,
}


def _load(path: str, obj: Any) -> Any:
    if obj is not None:
        return obj
    data, _ = checkpoint.load_any(path)
    return data


def read(path: str, source_format: Optional[str] = None) -> Source:
    """Read ``path`` with the reader ``source_format``, or detect it and say what was detected."""
    if source_format is not None:
        if source_format not in _READ:
            raise ConvertError(f"unknown --from {source_format!r}", f"choose one of {', '.join(READERS)}")
        src = _READ[source_format](path)
        src.detected = f"read as {source_format} (--from)"
        return src
    reader, why, obj = detect(path)
    src = _READ[reader](path, obj)
    src.detected = f"detected {reader}: {why}"
    return src


def detect(path: str) -> tuple[str, str, Any]:
    """``(reader, reason, loaded object)`` from the content of ``path``."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return "diffusers", "a folder with config.json (a diffusers UNet)", None
        raise ConvertError(f"{path}: a folder without config.json", "pass a checkpoint file or a diffusers UNet folder")
    if not os.path.exists(path):
        raise ConvertError(f"{path}: no such file", "check the path")
    data, metadata = checkpoint.load_any(path)
    if metadata or (isinstance(data, dict) and data and path.endswith(".safetensors")):
        from sparsedm.convert.fileformat import MANIFEST_KEY

        if MANIFEST_KEY in metadata:
            raise ConvertError(f"{path}: already a sparsedm file", "load it with sparsedm.load, or inspect it with sparsedm info")
        if any(k.endswith(".bitmask") for k in data):
            return "compressed-tensors", "safetensors with <layer>.compressed/.bitmask/.shape (sparse-24-bitmask)", (data, metadata)
        if os.path.isfile(os.path.join(os.path.dirname(path), "config.json")):
            return "diffusers", "safetensors beside a config.json (a diffusers UNet)", None
    if isinstance(data, dict) and "G" in data and "n_timesteps" in data:
        return "distiller", "a dict with G, n_timesteps, time_scale (diffusion_distiller)", data
    state = unwrap_state_dict(data, path)
    if any(k.endswith(ASP_MASK_SUFFIX) for k in state):
        return "asp", f"{ASP_MASK_SUFFIX} buffers beside the weights (NVIDIA ASP)", data
    keys = set(rename(state, COMMON_RENAMES))
    arch = detect_architecture(keys)
    if arch == "uvit" or _uvit_keys(keys):
        if any(k.endswith("attn.qkv.bias") for k in keys):
            return "sparsedm", ("U-ViT keys with attn.qkv.bias (SparseDM's sparse qkv has a bias, published U-ViT's has "
                                "none); its 2:4 masks are recomputed (pass --from uvit for a dense model)"), data
        return "uvit", "U-ViT keys without attn.qkv.bias (a published dense U-ViT; pass --prune for 2:4)", data
    raise ConvertError(f"{path}: cannot tell which kind of checkpoint this is (architecture: {arch or 'unknown'})",
                       f"pass --from {{{','.join(READERS)}}}")
