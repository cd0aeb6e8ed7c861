"""Tiny stand-ins with the exact key formats of the real checkpoints (U-ViT / SparseDM U-ViT,
and a DDPM-style UNet with a 3-channel input conv), registered as converter architectures.

They keep the tests independent of the full models in sparsedm.models; the forward passes
are simplified, but every key, shape and layer type a reader and the loader touch is real.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparsedm.convert.arch import Architecture, register_architecture


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, l, c = x.shape
        q, k, v = self.qkv(x).reshape(b, l, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, l, c)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, skip=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MiniUViT(nn.Module):
    """U-ViT's structure and key names (baofff/U-ViT libs/uvit.py), small."""

    def __init__(self, img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=3, num_heads=2, mlp_ratio=4.0,
                 qkv_bias=False, conv=True):
        super().__init__()
        self.patch_size, self.in_chans, self.embed_dim = patch_size, in_chans, embed_dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        num_patches = (img_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + num_patches, embed_dim) * 0.02)
        self.in_blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth // 2)])
        self.mid_block = Block(embed_dim, num_heads, mlp_ratio, qkv_bias)
        self.out_blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias, skip=True) for _ in range(depth // 2)])
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_pred = nn.Linear(embed_dim, patch_size ** 2 * in_chans)
        self.final_layer = nn.Conv2d(in_chans, in_chans, 3, padding=1) if conv else nn.Identity()

    def forward(self, x, timesteps):
        b, c, h, w = x.shape
        p = self.patch_size
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = timestep_embedding(timesteps, self.embed_dim).unsqueeze(1)
        x = torch.cat([t, x], dim=1) + self.pos_embed
        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())
        x = self.decoder_pred(self.norm(x))[:, 1:]
        x = x.reshape(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        return self.final_layer(x)


def uvit_sparse_layers(model):
    names = []
    for name, _ in model.named_modules():
        if name.endswith(("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")):
            names.append(name)
    return names


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


def register():
    register_architecture(Architecture(
        name="toy_uvit", build=_build(MiniUViT), sparse_layers=uvit_sparse_layers, infer_config=uvit_infer_config,
        looks_like=lambda keys: "pos_embed" in keys and "patch_embed.proj.weight" in keys,
        presets={"toy-uvit": {"arch": "toy_uvit", "config": UVIT_CONFIG, "resolution": 8, "in_channels": 3,
                              "sampler": {"kind": "euler_maruyama", "steps": 1000, "schedule": {"name": "vpsde", "beta_min": 0.1, "beta_max": 20.0},
                                          "prediction": "eps", "time_input": {"kind": "continuous", "scale": 999}}},
                 "toy-uvit-nobias": {"arch": "toy_uvit", "config": {**UVIT_CONFIG, "qkv_bias": False}, "resolution": 8, "in_channels": 3, "sampler": None}}))
    register_architecture(Architecture(
        name="toy_unet", build=_build(MiniUNet), sparse_layers=unet_sparse_layers,
        looks_like=lambda keys: "conv_in.weight" in keys and "temb.dense.0.weight" in keys,
        presets={"toy-unet": {"arch": "toy_unet", "config": UNET_CONFIG, "resolution": 8, "in_channels": 3, "sampler": None}}))
