"""Tiny architectures registered as converter architectures for the tests: the real U-ViT of
sparsedm.models at a tiny size, and a small DDPM-style UNet in another key format (ermongroup
naming, a 3-channel input conv and a 12-channel path whose K is not a multiple of 8), which
also exercises registering an architecture sparsedm does not ship.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparsedm.convert.arch import Architecture, register_architecture
from sparsedm.models import build, sparse_layer_names


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def uvit_sparse_layers(model):
    """SparseDM's 2:4 layers of a U-ViT (the real definition in sparsedm.models)."""
    return sparse_layer_names("uvit", model)


def uvit_infer_config(sd):
    d = sd["pos_embed"].shape[-1]
    in_chans, _, p, _ = sd["patch_embed.proj.weight"].shape[1], 0, sd["patch_embed.proj.weight"].shape[2], 0
    depth = 1 + 2 * len({k.split(".")[1] for k in sd if k.startswith("in_blocks.")})
    n = sd["pos_embed"].shape[1] - 1
    raise ValueError(f"num_heads cannot be inferred from shapes (embed_dim {d}, depth {depth}, patches {n}, in_chans "
                     f"{in_chans}, patch {p})")


class ResBlock(nn.Module):
    def __init__(self, cin, cout, temb):
        super().__init__()
        self.norm1 = nn.GroupNorm(4, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(4, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x))) + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if self.nin_shortcut is not None else x) + h


class MiniUNet(nn.Module):
    """DDPM-UNet-like keys (ermongroup/ddim naming): conv_in with 3 input channels (K=27: the
    groups cross rows), a 12-channel path (K % 8 == 4) and aligned convs/linears."""

    def __init__(self, in_channels=3, ch=16, mid=12):
        super().__init__()
        self.ch = ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, 4 * ch), nn.Linear(4 * ch, 4 * ch)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.block1 = ResBlock(ch, mid, 4 * ch)
        self.block2 = ResBlock(mid, ch, 4 * ch)
        self.norm_out = nn.GroupNorm(4, ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)

    def forward(self, x, t):
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](timestep_embedding(t, self.ch))))
        h = self.conv_in(x)
        h = self.block2(self.block1(h, temb), temb)
        return self.conv_out(F.silu(self.norm_out(h)))


def unet_sparse_layers(model):
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _build(cls):
    def build(config, device="meta"):
        with torch.device(device):
            return cls(**config)
    return build


UVIT_CONFIG = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=3, num_heads=2, mlp_ratio=4.0, qkv_bias=True, conv=True)
UNET_CONFIG = dict(in_channels=3, ch=16, mid=12)


def build_uvit(config, device="meta"):
    """The real U-ViT (sparsedm.models) at a tiny size."""
    return build("uvit", config, device=device)


def register():
    register_architecture(Architecture(
        name="toy_uvit", build=build_uvit, sparse_layers=uvit_sparse_layers, infer_config=uvit_infer_config,
        looks_like=lambda keys: "pos_embed" in keys and "patch_embed.proj.weight" in keys,
        presets={"toy-uvit": {"arch": "toy_uvit", "config": UVIT_CONFIG, "resolution": 8, "in_channels": 3,
                              "sampler": {"kind": "euler_maruyama", "steps": 1000, "schedule": {"name": "vpsde", "beta_min": 0.1, "beta_max": 20.0},
                                          "prediction": "eps", "time_input": {"kind": "continuous", "scale": 999}}},
                 "toy-uvit-nobias": {"arch": "toy_uvit", "config": {**UVIT_CONFIG, "qkv_bias": False}, "resolution": 8, "in_channels": 3, "sampler": None}}))
    register_architecture(Architecture(
        name="toy_unet", build=_build(MiniUNet), sparse_layers=unet_sparse_layers,
        looks_like=lambda keys: "conv_in.weight" in keys and "temb.dense.0.weight" in keys,
        presets={"toy-unet": {"arch": "toy_unet", "config": UNET_CONFIG, "resolution": 8, "in_channels": 3, "sampler": None}}))
