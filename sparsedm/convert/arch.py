"""Architectures the converter and loader know: a thin adapter over ``sparsedm.models``.

The converter itself is architecture-neutral: it needs, per architecture, a way to build the
model on the meta device (to know every expected key, shape and layer type), the names of the
layers its sparse training made 2:4, optionally a config inferred from the shapes, and how to
recognise its keys. ``sparsedm.models`` provides these for U-ViT and the DDPM UNet;
:func:`register_architecture` adds others (tests use it for stand-in models).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from sparsedm.convert.errors import ConvertError


@dataclass
class Architecture:
    name: str
    build: Callable[[dict, str], nn.Module]  # (config, device) -> model
    sparse_layers: Callable[[nn.Module], list[str]]  # SparseDM's 2:4 layers of a built model
    infer_config: Optional[Callable[[dict], dict]] = None  # state_dict -> config, raises when ambiguous
    looks_like: Callable[[set], bool] = lambda keys: False  # are these state_dict keys of this architecture?
    presets: dict = field(default_factory=dict)


_REGISTRY: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> None:
    _REGISTRY[arch.name] = arch


def unregister_architecture(name: str) -> None:
    _REGISTRY.pop(name, None)


def _models():
    try:
        import sparsedm.models as models
    except ImportError:
        return None
    return models


def _uvit_keys(keys: set) -> bool:
    return "pos_embed" in keys and "patch_embed.proj.weight" in keys and any(k.startswith("in_blocks.") for k in keys)


def _ddpm_keys(keys: set) -> bool:
    # sparsedm.models' DDPM UNet keeps the layout of the PyTorch ports (rosinality /
    # diffusion_distiller): time.1, down.0 (the input conv), mid, up, out
    return "time.1.weight" in keys and "down.0.weight" in keys and any(k.startswith("out.") for k in keys)


_LOOKS_LIKE = {"uvit": _uvit_keys, "ddpm_unet": _ddpm_keys}


def known_architectures() -> list[str]:
    names = set(_REGISTRY)
    models = _models()
    if models is not None:
        names |= {p["arch"] for p in getattr(models, "PRESETS", {}).values()} | set(_LOOKS_LIKE)
    return sorted(names)


def get_architecture(name: str) -> Architecture:
    if name not in _REGISTRY and name.startswith("diffusers_"):
        # Files converted from diffusers UNets name these; they are registered on first use.
        try:
            from sparsedm.convert import diffusers_arch

            diffusers_arch.register()
        except ImportError:
            raise ConvertError(f"architecture {name!r} needs diffusers, which is not installed",
                               "pip install 'sparsedm[diffusers]'") from None
    if name in _REGISTRY:
        return _REGISTRY[name]
    models = _models()
    if models is None or name not in _LOOKS_LIKE:
        known = ", ".join(known_architectures()) or "none (sparsedm.models is not installed)"
        raise ConvertError(f"unknown architecture {name!r} (known: {known})",
                           "pass --preset NAME or --config FILE.json with a known \"arch\"")

    def build(config: dict, device: str = "meta") -> nn.Module:
        return models.build(name, config, device=device)

    return Architecture(
        name=name,
        build=build,
        sparse_layers=lambda model: list(models.sparse_layer_names(name, model)),
        infer_config=lambda sd: models.infer_config(name, sd),
        looks_like=_LOOKS_LIKE[name],
    )


def presets() -> dict[str, dict]:
    """Every preset: ``{"arch", "config", "resolution", "in_channels", "sampler"}`` by name."""
    out = {}
    models = _models()
    if models is not None:
        out.update(getattr(models, "PRESETS", {}))
    for arch in _REGISTRY.values():
        out.update(arch.presets)
    return out


def detect_architecture(keys: set) -> Optional[str]:
    for arch in _REGISTRY.values():
        if arch.looks_like(keys):
            return arch.name
    for name, looks_like in _LOOKS_LIKE.items():
        if looks_like(keys):
            return name
    return None


def build_model(arch: Architecture, config: dict, device: str = "meta") -> nn.Module:
    try:
        return arch.build(config, device)
    except ConvertError:
        raise
    except Exception as e:  # a constructor rejecting the config
        raise ConvertError(f"cannot build architecture {arch.name!r} from config {config} ({e.__class__.__name__}: {e})",
                           "fix --config, or use --preset NAME") from None


def config_at_resolution(config: dict, resolution: int) -> dict:
    """``config`` for inputs of ``resolution`` pixels (latent pixels for latent models).

    A U-ViT's token count, hence its ``pos_embed``, follows ``img_size``, so it is rebuilt at
    the new size (the patch size must divide it); convolutional UNets take any size as they are.
    """
    if resolution < 1:
        raise ValueError(f"resolution {resolution} must be positive")
    if "img_size" in config and "patch_size" in config:
        patch = int(config["patch_size"])
        if resolution % patch:
            raise ValueError(f"resolution {resolution} is not a multiple of the model's patch size {patch}")
        return {**config, "img_size": int(resolution)}
    if "channel_multiplier" in config:  # the DDPM UNet halves the size at every level but the last
        step = 2 ** (len(config["channel_multiplier"]) - 1)
        if resolution % step:
            raise ValueError(f"resolution {resolution} is not a multiple of {step} (the UNet downsamples "
                             f"{len(config['channel_multiplier']) - 1} times)")
    return config


def example_inputs(model: nn.Module, config: dict, resolution: int, in_channels: int, batch: int = 1,
                   device: str = "meta") -> tuple[tuple, dict]:
    """Inputs for one forward pass: ``x [B, C, H, W]``, timesteps ``[B]``, and a label or text
    context where the forward takes one (config ``num_classes`` / ``clip_dim``)."""
    x = torch.zeros(batch, in_channels, resolution, resolution, device=device)
    t = torch.zeros(batch, device=device)
    params = list(inspect.signature(model.forward).parameters)
    kwargs = {}
    if "y" in params and (config.get("num_classes") or 0) > 0:
        kwargs["y"] = torch.zeros(batch, dtype=torch.long, device=device)
    if "context" in params and config.get("clip_dim"):
        kwargs["context"] = torch.zeros(batch, config.get("num_clip_token", 77), config["clip_dim"], device=device)
    return (x, t), kwargs
