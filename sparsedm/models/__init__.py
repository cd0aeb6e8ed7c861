"""Model definitions with the published checkpoints' state_dict layout, and their presets.

- ``build(arch, config, device="meta")``: the model, on the meta device by default (load
  weights with ``load_state_dict(sd, assign=True)``);
- ``PRESETS``: named configurations (:mod:`sparsedm.models.presets`);
- ``sparse_layer_names(arch, model)``: the layers SparseDM trains 2:4;
- ``infer_config(arch, state_dict, **given)``: constructor kwargs from a checkpoint's shapes.

diffusers UNets are used through diffusers itself (``sparsedm.optimize`` works on them).
"""

from __future__ import annotations

import fnmatch
import logging
import math
from typing import Any, Mapping

import torch
import torch.nn as nn

from sparsedm.models.ddpm_unet import UNet
from sparsedm.models.presets import PRESETS
from sparsedm.models.uvit import UViT

log = logging.getLogger("sparsedm.models")

__all__ = ["ARCHS", "PRESETS", "ConfigInferenceError", "UNet", "UViT", "build", "config_for_checkpoint", "infer_config",
           "sparse_layer_names"]

ARCHS = {"uvit": UViT, "ddpm_unet": UNet}

# SparseDM's 2:4 layers in U-ViT: the attention and MLP linears of every block.
UVIT_SPARSE_PATTERNS = ("*.attn.qkv", "*.attn.proj", "*.mlp.fc1", "*.mlp.fc2")


class ConfigInferenceError(ValueError):
    """A checkpoint's shapes do not determine its configuration."""


def _arch_class(arch: str):
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(sorted(ARCHS))}") from None


def build(arch: str, config: Mapping[str, Any], device: "str | torch.device" = "meta") -> nn.Module:
    """Construct ``arch`` with ``config`` on ``device`` (meta: no memory, load with assign=True)."""
    cls = _arch_class(arch)
    with torch.device(device):
        model = cls(**dict(config))
    return model.eval()


def _linear_or_conv(module: nn.Module) -> bool:
    from sparsedm.nn import Int8Linear, Sparse24Int8Linear, SparseConv2d, SparseLinear

    return isinstance(module, (nn.Linear, nn.Conv2d, SparseLinear, SparseConv2d, Int8Linear, Sparse24Int8Linear))


def sparse_layer_names(arch: str, model: nn.Module) -> list[str]:
    """Names of the layers SparseDM sparsifies (before or after ``optimize``).

    U-ViT: attn.qkv, attn.proj, mlp.fc1, mlp.fc2 of every block (in, mid, out); skip_linear,
    patch_embed, time/label/context embeddings and decoder_pred stay dense. DDPM UNet: every
    conv and linear (layers whose reduction length is not a multiple of 8, like the 3-channel
    input conv, cannot be compressed and stay dense; :func:`sparsedm.optimize` reports them).
    """
    _arch_class(arch)
    names = [name for name, m in model.named_modules() if _linear_or_conv(m)]
    if arch == "uvit":
        return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in UVIT_SPARSE_PATTERNS)]
    return names


def config_for_checkpoint(arch: str, config: Mapping[str, Any], keys) -> dict:
    """``config`` (a preset's) adjusted to what a checkpoint's keys say about it.

    The one variation among published U-ViT-family checkpoints: SparseDM's U-ViTs have a bias
    on ``attn.qkv``, the original U-ViT ones do not (DESIGN.md), with every shape the same. So
    ``qkv_bias`` follows the keys; everything else stays the preset's.
    """
    config = dict(config)
    if _arch_class(arch) is UViT and "qkv_bias" in config:
        config["qkv_bias"] = any(str(k).endswith("attn.qkv.bias") for k in keys)
    return config


def _indices(state_dict: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    found = set()
    for key in state_dict:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _infer_uvit(sd: Mapping[str, torch.Tensor]) -> tuple[dict, set[str]]:
    """Config fields fixed by shapes, and the names of fields the shapes cannot fix."""
    pos = sd["pos_embed"].shape
    proj = sd["patch_embed.proj.weight"].shape  # [D, C, p, p]
    d, in_chans, p = int(proj[0]), int(proj[1]), int(proj[2])
    depth = 2 * len(_indices(sd, "in_blocks."))
    cfg: dict[str, Any] = {
        "patch_size": p, "in_chans": in_chans, "embed_dim": d, "depth": depth,
        "mlp_ratio": sd["mid_block.mlp.fc1.weight"].shape[0] / d,
        "qkv_bias": "mid_block.attn.qkv.bias" in sd, "qk_scale": None,
        "mlp_time_embed": "time_embed.0.weight" in sd, "use_checkpoint": False,
        "conv": "final_layer.weight" in sd, "skip": "out_blocks.0.skip_linear.weight" in sd or depth == 0,
    }
    if float(cfg["mlp_ratio"]).is_integer():
        cfg["mlp_ratio"] = int(cfg["mlp_ratio"])
    unknown = {"num_heads"}
    tokens = int(pos[1])
    if "context_embed.weight" in sd:
        cfg["clip_dim"] = int(sd["context_embed.weight"].shape[1])
        unknown |= {"img_size", "num_clip_token"}  # tokens = 1 + num_clip_token + L: one equation, two unknowns
    else:
        cfg["num_classes"] = int(sd["label_emb.weight"].shape[0]) if "label_emb.weight" in sd else -1
        patches = tokens - (2 if cfg["num_classes"] > 0 else 1)
        side = math.isqrt(patches)
        if side * side != patches:
            raise ConfigInferenceError(f"pos_embed has {tokens} tokens: {patches} patches is not a square grid")
        cfg["img_size"] = side * p
    return cfg, unknown


def _infer_ddpm_unet(sd: Mapping[str, torch.Tensor]) -> tuple[dict, set[str]]:
    first = sd["down.0.weight"].shape  # [channel, in*fold^2, 3, 3]
    channel = int(first[0])
    fold = math.isqrt(int(sd["out.2.weight"].shape[0]) // 3)
    multipliers, attn_strides, n_res = [], set(), None
    level, count = 0, 0
    for i in _indices(sd, "down.")[1:]:
        if f"down.{i}.0.weight" in sd:  # a Downsample ends the level
            n_res = count if n_res is None else n_res
            level, count = level + 1, 0
            continue
        cout = int(sd[f"down.{i}.resblocks.conv1.weight"].shape[0])
        if count == 0:
            multipliers.append(cout // channel)
        count += 1
        if f"down.{i}.attention.qkv.weight" in sd:
            attn_strides.add(2 ** level)
    n_res = count if n_res is None else n_res
    time_out = int(sd["mid.0.resblocks.time.1.weight"].shape[0])
    mid_channels = int(sd["mid.0.resblocks.conv1.weight"].shape[0])
    cfg = {
        "in_channel": int(first[1]) // fold ** 2, "channel": channel, "channel_multiplier": multipliers,
        "n_res_blocks": n_res, "attn_strides": sorted(attn_strides), "use_affine_time": time_out == 2 * mid_channels,
        "dropout": 0.0,  # training only; no shape depends on it
        "fold": fold,
    }
    return cfg, {"attn_heads"}


def infer_config(arch: str, state_dict: Mapping[str, torch.Tensor], **given: Any) -> dict:
    """Constructor kwargs of ``arch`` from ``state_dict``'s keys and shapes.

    Values no shape determines (U-ViT ``num_heads``; DDPM UNet ``attn_heads``; for the text
    U-ViT the split of tokens between ``num_clip_token`` and the image) come from ``given``,
    else from the one preset of that arch whose shapes agree; otherwise
    :class:`ConfigInferenceError` names what to pass. ``given`` also overrides inferred values.
    """
    _arch_class(arch)
    infer = {"uvit": _infer_uvit, "ddpm_unet": _infer_ddpm_unet}[arch]
    try:
        cfg, unknown = infer(state_dict)
    except KeyError as exc:
        raise ConfigInferenceError(f"this state_dict does not look like a {arch} checkpoint: key {exc} is missing") from None
    cfg.update(given)
    missing = sorted(unknown - set(given))
    if missing:
        matches = [
            name for name, p in PRESETS.items()
            # qkv_bias: SparseDM's U-ViTs add it to the published configs (config_for_checkpoint)
            if p["arch"] == arch and all(_same(p["config"].get(k), v) for k, v in cfg.items()
                                         if k not in ("dropout", "use_checkpoint", "qkv_bias"))
        ]
        fills = {m: dict(zip(missing, (PRESETS[m]["config"].get(k) for k in missing))) for m in matches}
        matches = [m for m in matches if not _shape_problems(arch, {**cfg, **fills[m]}, state_dict)]
        values = {tuple(fills[m].values()) for m in matches}
        if len(values) == 1:
            cfg.update(dict(zip(missing, values.pop())))
            log.info("infer_config: %s taken from preset %s (no shape determines them)", ", ".join(missing), matches[0])
        else:
            raise ConfigInferenceError(
                f"{', '.join(missing)} cannot be inferred from the {arch} weights (no tensor shape depends on "
                f"{'it' if len(missing) == 1 else 'them'}) and no preset matches these shapes"
                f"{' unambiguously: ' + ', '.join(matches) if matches else ''}; pass "
                f"{', '.join(f'{k}=...' for k in missing)} to infer_config, or use a preset"
            )
    _check_shapes(arch, cfg, state_dict)
    return cfg


def _check_shapes(arch: str, cfg: dict, state_dict: Mapping[str, torch.Tensor]) -> None:
    problems = _shape_problems(arch, cfg, state_dict)
    if problems:
        raise ConfigInferenceError(
            f"the inferred {arch} config {cfg} does not reproduce the checkpoint ({len(problems)} differences, "
            f"first: {'; '.join(problems[:5])})"
        )


def _shape_problems(arch: str, cfg: dict, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Build on the meta device and compare every key and shape with the checkpoint."""
    try:
        expected = {k: tuple(v.shape) for k, v in build(arch, cfg).state_dict().items()}
    except Exception as exc:  # e.g. a config the constructor rejects
        return [f"the config cannot be built: {type(exc).__name__}: {exc}"]
    actual = {k: tuple(v.shape) for k, v in state_dict.items()}
    problems = [f"{k}: missing" for k in expected if k not in actual]
    problems += [f"{k}: unexpected" for k in actual if k not in expected]
    problems += [f"{k}: {list(actual[k])} in the file, {list(v)} for the config" for k, v in expected.items()
                 if k in actual and actual[k] != v]
    return problems


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return a is not None and b is not None and list(a) == list(b)
    return a == b
