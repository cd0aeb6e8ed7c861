"""U-ViT (Bao et al., "All are Worth Words"), written from the published model's structure.

Constructor arguments, forward signatures and state_dict keys/shapes follow the reference
code (baofff/U-ViT, libs/uvit.py and libs/uvit_t2i.py), so ``load_state_dict(nnet_ema.pth,
strict=True)`` works for every published checkpoint. Facts this file relies on (from that code):

- tokens: ``[label?, time, patches]`` for class models (the label token is prepended before
  the time token), ``[time, context x num_clip_token, patches]`` for the text model;
  ``extras`` = 1 + (num_classes > 0) or 1 + num_clip_token; ``pos_embed`` [1, extras + L, D]
  with L = (img_size / patch_size)^2;
- time: sinusoidal embedding of the (continuous) timestep, [cos | sin] halves, max period
  10000, then ``time_embed`` (Identity unless mlp_time_embed: Linear(D,4D), SiLU, Linear(4D,D));
- blocks: depth // 2 ``in_blocks``, one ``mid_block``, depth // 2 ``out_blocks``; each block is
  ``x = skip_linear(cat(x, skip))`` (out_blocks, skip=True), ``x += attn(norm1(x))``,
  ``x += mlp(norm2(x))`` with LayerNorm, qkv without bias by default, GELU (erf) MLP;
  out_blocks take the in_blocks' outputs last-in first-out;
- head: ``norm``, ``decoder_pred`` Linear(D, p*p*C), drop the extras, unpatchify
  ``B (h w) (p1 p2 C) -> B C (h p1) (w p2)``, ``final_layer`` Conv2d(C, C, 3, padding=1) when
  conv=True (Identity otherwise).

Attention runs through ``F.scaled_dot_product_attention`` in the input dtype.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

__all__ = ["UViT", "timestep_embedding", "unpatchify"]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[N]`` (possibly fractional) timesteps -> ``[N, dim]`` float32 ``[cos | sin]`` embedding."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def unpatchify(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``[B, h*w, p*p*C]`` tokens (p1, p2, C order) -> ``[B, C, h*p, w*p]`` image."""
    b, length, dim = x.shape
    p = int(round(math.sqrt(dim // channels)))
    h = int(round(math.sqrt(length)))
    if h * h != length or p * p * channels != dim:
        raise ValueError(f"cannot unpatchify tokens of shape {tuple(x.shape)} into a square {channels}-channel image")
    x = x.reshape(b, h, h, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, h * p, h * p)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, qk_scale: Optional[float] = None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        # qkv features are ordered (3, heads, head_dim), as in the reference 'B L (K H D)'.
        qkv = self.qkv(x).reshape(b, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, qk_scale, norm_layer, skip=False, use_checkpoint=False):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, skip, use_reentrant=False)
        return self._forward(x, skip)

    def _forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class UViT(nn.Module):
    """U-ViT; the text-conditional variant (uvit_t2i) when ``clip_dim`` is given.

    ``forward(x, timesteps, y=None)`` for class/unconditional models; for the text model the
    third argument is the context ``[B, num_clip_token, clip_dim]`` (``forward(x, timesteps,
    context)``, as in uvit_t2i.py; ``context=`` works too).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: Optional[float] = None,
        norm_layer=nn.LayerNorm,
        mlp_time_embed: bool = False,
        num_classes: int = -1,
        use_checkpoint: bool = False,
        conv: bool = True,
        skip: bool = True,
        clip_dim: Optional[int] = None,
        num_clip_token: int = 77,
    ):
        super().__init__()
        self.num_features = self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.is_text = clip_dim is not None
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.time_embed = (
            nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.SiLU(), nn.Linear(4 * embed_dim, embed_dim))
            if mlp_time_embed else nn.Identity()
        )
        if self.is_text:
            self.context_embed = nn.Linear(clip_dim, embed_dim)
            self.extras = 1 + num_clip_token
        elif num_classes > 0:
            self.label_emb = nn.Embedding(num_classes, embed_dim)
            self.extras = 2
        else:
            self.extras = 1
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + num_patches, embed_dim))

        def block(skip_connection=False):
            return Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, norm_layer, skip_connection, use_checkpoint)

        self.in_blocks = nn.ModuleList([block() for _ in range(depth // 2)])
        self.mid_block = block()
        self.out_blocks = nn.ModuleList([block(skip) for _ in range(depth // 2)])
        self.norm = norm_layer(embed_dim)
        self.patch_dim = patch_size ** 2 * in_chans
        self.decoder_pred = nn.Linear(embed_dim, self.patch_dim, bias=True)
        self.final_layer = nn.Conv2d(in_chans, in_chans, 3, padding=1) if conv else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # Same distributions as the reference (trunc normal 0.02 for pos_embed and linears);
        # only matters for tests on random models, checkpoints overwrite everything.
        if self.pos_embed.device.type == "meta":
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: Optional[torch.Tensor] = None,
                context: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.patch_embed(x)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        time_token = self.time_embed(timestep_embedding(timesteps, self.embed_dim).to(x.dtype)).unsqueeze(1)
        if self.is_text:
            context = y if context is None else context
            if context is None:
                raise ValueError("this U-ViT is text-conditional: call it as model(x, timesteps, context)")
            x = torch.cat((time_token, self.context_embed(context), x), dim=1)
        else:
            x = torch.cat((time_token, x), dim=1)
            if y is not None:
                x = torch.cat((self.label_emb(y).unsqueeze(1), x), dim=1)
        x = x + self.pos_embed.to(x.dtype)

        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())

        x = self.decoder_pred(self.norm(x))
        x = unpatchify(x[:, self.extras:, :], self.in_chans)
        return self.final_layer(x)
