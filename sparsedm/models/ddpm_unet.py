"""The DDPM UNet of the progressive-distillation PyTorch port and of SparseDM's DDPM runs.

Written from the structure of Hramchenko/diffusion_distiller ``unet_ddpm.py`` (itself from
rosinality/denoising-diffusion-pytorch): same constructor, same module tree, so its
checkpoints (``{"G": state_dict, ...}``) load with ``strict=True``. Facts relied on:

- ``time``: Sequential(TimeEmbedding(channel) [buffer ``inv_freq``, ``[sin | cos]``],
  Linear(channel, 4*channel), SiLU, Linear(4*channel, 4*channel));
- ``down``: Conv2d(in*fold^2, channel, 3), then per level ``n_res_blocks`` ResBlockWithAttention
  and (except the last level) a Downsample = Sequential(Conv2d 3x3 stride 2);
- ``mid``: two ResBlockWithAttention (the first with attention);
- ``up``: per level (reversed) ``n_res_blocks + 1`` blocks taking ``cat(out, skip)``, then
  (except level 0) Upsample = Sequential(nearest x2, Conv2d 3x3);
- ``out``: GroupNorm, SiLU, Conv2d(channel, 3*fold^2, 3);
- GroupNorm groups = channel // 4; ResBlock: norm1, conv1, ``time`` = Sequential(SiLU,
  Linear(4*channel, out or 2*out with use_affine_time)), norm2 (not affine with
  use_affine_time), conv2, optional 1x1 ``skip``; attention at level i when 2**i is in
  ``attn_strides``: norm, ``qkv`` 1x1 conv, softmax(q k / sqrt(C)) over positions, ``out``
  1x1 conv, residual.

The network takes (x, t) with t the (scaled) timestep; see the preset's sampler for the
time convention.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["UNet"]


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class TimeEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("inv_freq", torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000) / dim)))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.reshape(-1).float()[:, None] * self.inv_freq[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1).reshape(*t.shape, self.dim)


class Upsample(nn.Sequential):
    def __init__(self, channel: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channel, channel, 3, padding=1))


class Downsample(nn.Sequential):
    def __init__(self, channel: int):
        super().__init__(nn.Conv2d(channel, channel, 3, stride=2, padding=1))


class ResBlock(nn.Module):
    def __init__(self, in_channel, out_channel, time_dim, use_affine_time=False, dropout=0.0, group_norm=32):
        super().__init__()
        self.use_affine_time = use_affine_time
        self.norm1 = nn.GroupNorm(group_norm, in_channel)
        self.activation1 = Swish()
        self.conv1 = nn.Conv2d(in_channel, out_channel, 3, padding=1)
        self.time = nn.Sequential(Swish(), nn.Linear(time_dim, out_channel * (2 if use_affine_time else 1)))
        self.norm2 = nn.GroupNorm(group_norm, out_channel, affine=not use_affine_time)
        self.activation2 = Swish()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channel, out_channel, 3, padding=1)
        self.skip = nn.Conv2d(in_channel, out_channel, 1) if in_channel != out_channel else None

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.activation1(self.norm1(x)))
        t = self.time(time).reshape(x.shape[0], -1, 1, 1)
        if self.use_affine_time:
            gamma, beta = t.chunk(2, dim=1)
            out = (1 + gamma) * self.norm2(out) + beta
        else:
            out = self.norm2(out + t)
        out = self.conv2(self.dropout(self.activation2(out)))
        return out + (x if self.skip is None else self.skip(x))


class SelfAttention(nn.Module):
    def __init__(self, in_channel: int, n_head: int = 1, group_norm: int = 32):
        super().__init__()
        self.n_head = n_head
        self.norm = nn.GroupNorm(group_norm, in_channel)
        self.qkv = nn.Conv2d(in_channel, in_channel * 3, 1)
        self.out = nn.Conv2d(in_channel, in_channel, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        head_dim = c // self.n_head
        # qkv channels are ordered (head, [q | k | v], head_dim).
        qkv = self.qkv(self.norm(x)).reshape(b, self.n_head, 3, head_dim, h * w).transpose(-1, -2)
        # The reference scales by 1/sqrt(C) (all channels), not 1/sqrt(head_dim).
        out = F.scaled_dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], scale=1.0 / math.sqrt(c))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return self.out(out) + x


class ResBlockWithAttention(nn.Module):
    def __init__(self, in_channel, out_channel, time_dim, dropout, use_attention=False, attention_head=1,
                 use_affine_time=False, group_norm=32):
        super().__init__()
        self.resblocks = ResBlock(in_channel, out_channel, time_dim, use_affine_time, dropout, group_norm)
        self.attention = SelfAttention(out_channel, attention_head, group_norm) if use_attention else None

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        out = self.resblocks(x, time)
        return out if self.attention is None else self.attention(out)


def spatial_fold(x: torch.Tensor, fold: int) -> torch.Tensor:
    if fold == 1:
        return x
    b, c, h, w = x.shape
    return x.reshape(b, c, h // fold, fold, w // fold, fold).permute(0, 1, 3, 5, 2, 4).reshape(b, -1, h // fold, w // fold)


def spatial_unfold(x: torch.Tensor, fold: int) -> torch.Tensor:
    if fold == 1:
        return x
    b, c, h, w = x.shape
    return x.reshape(b, -1, fold, fold, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, -1, h * fold, w * fold)


class UNet(nn.Module):
    def __init__(
        self,
        in_channel: int,
        channel: int,
        channel_multiplier: Sequence[int],
        n_res_blocks: int,
        attn_strides: Sequence[int],
        attn_heads: int = 1,
        use_affine_time: bool = False,
        dropout: float = 0.0,
        fold: int = 1,
    ):
        super().__init__()
        self.fold = fold
        time_dim = channel * 4
        group_norm = channel // 4
        n_block = len(channel_multiplier)
        self.time = nn.Sequential(TimeEmbedding(channel), nn.Linear(channel, time_dim), Swish(), nn.Linear(time_dim, time_dim))

        def res(cin, cout, attention):
            return ResBlockWithAttention(cin, cout, time_dim, dropout, attention, attn_heads, use_affine_time, group_norm)

        down = [nn.Conv2d(in_channel * fold ** 2, channel, 3, padding=1)]
        feat_channels = [channel]
        cur = channel
        for i in range(n_block):
            for _ in range(n_res_blocks):
                cout = channel * channel_multiplier[i]
                down.append(res(cur, cout, 2 ** i in attn_strides))
                feat_channels.append(cout)
                cur = cout
            if i != n_block - 1:
                down.append(Downsample(cur))
                feat_channels.append(cur)
        self.down = nn.ModuleList(down)
        self.mid = nn.ModuleList([res(cur, cur, True), res(cur, cur, False)])
        up = []
        for i in reversed(range(n_block)):
            for _ in range(n_res_blocks + 1):
                cout = channel * channel_multiplier[i]
                up.append(res(cur + feat_channels.pop(), cout, 2 ** i in attn_strides))
                cur = cout
            if i != 0:
                up.append(Upsample(cur))
        self.up = nn.ModuleList(up)
        self.out = nn.Sequential(nn.GroupNorm(group_norm, cur), Swish(), nn.Conv2d(cur, 3 * fold ** 2, 3, padding=1))

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        time_embed = self.time(time)
        feats = []
        out = spatial_fold(x, self.fold)
        for layer in self.down:
            out = layer(out, time_embed) if isinstance(layer, ResBlockWithAttention) else layer(out)
            feats.append(out)
        for layer in self.mid:
            out = layer(out, time_embed)
        for layer in self.up:
            if isinstance(layer, ResBlockWithAttention):
                out = layer(torch.cat((out, feats.pop()), 1), time_embed)
            else:
                out = layer(out)
        return spatial_unfold(self.out(out), self.fold)
