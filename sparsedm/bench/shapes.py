"""Benchmark shape tables, taken from the models sparsedm serves.

Linear rows are GEMMs ``(M, N, K)``: M tokens, N out features, K in features. Conv rows are
``(N, C, H, W, K, R, S, stride, padding)``: batch, in channels, input size, out channels,
kernel size. Sources: U-ViT configs (DESIGN.md "Facts about the checkpoints"), and every conv
of the DDPM CIFAR10 UNet (channels 128 x (1, 2, 2, 2) at 32..4 px) and of the SD1.5 UNet
(320/640/1280 channels at a 64x64 latent), traced from the models.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LinearShape", "ConvShape", "TABLES", "table", "LINEAR_TABLES", "CONV_TABLES", "trace_convs"]


@dataclass(frozen=True)
class LinearShape:
    M: int
    N: int
    K: int
    layer: str = ""

    def as_dict(self) -> dict:
        return {"M": self.M, "N": self.N, "K": self.K}

    @property
    def macs(self) -> int:
        return self.M * self.N * self.K


@dataclass(frozen=True)
class ConvShape:
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: int = 1
    padding: int = 1
    layer: str = ""

    def as_dict(self) -> dict:
        return {"N": self.N, "C": self.C, "H": self.H, "W": self.W, "K": self.K, "R": self.R, "S": self.S,
                "stride": self.stride, "padding": self.padding}

    @property
    def out_hw(self) -> tuple[int, int]:
        p, s = self.padding, self.stride
        return (self.H + 2 * p - self.R) // s + 1, (self.W + 2 * p - self.S) // s + 1

    @property
    def macs(self) -> int:
        oh, ow = self.out_hw
        return self.N * oh * ow * self.K * self.C * self.R * self.S


def _uvit(name: str, dim: int, tokens: int, batches=(1, 8, 32, 128, 256)) -> list[LinearShape]:
    """The four block linears of a U-ViT (mlp_ratio 4) at several batch sizes."""
    rows = []
    for b in batches:
        m = b * tokens
        rows += [
            LinearShape(m, 3 * dim, dim, f"{name}.attn.qkv"),
            LinearShape(m, dim, dim, f"{name}.attn.proj"),
            LinearShape(m, 4 * dim, dim, f"{name}.mlp.fc1"),
            LinearShape(m, dim, 4 * dim, f"{name}.mlp.fc2"),
        ]
    return rows


# Every distinct Conv2d call of one forward pass, in call order:
# (C, H, W, K, R, S, stride, padding, calls per forward, first layer). The DDPM CIFAR10 UNet is
# the preset ddpm-unet-cifar10 (sparsedm.models) at 32 px; SD1.5's is diffusers'
# UNet2DConditionModel with SD1.5's configuration at a 64x64 latent. tests/bench/test_shapes.py
# traces both models and requires these lists to match. The input convs (C = 3 or 4) cannot be
# 2:4 (K = 27 / 36) and the output convs have 3 / 4 output channels: they are timed so that the
# tables show what the automatic backend choice does with them (dense).
_DDPM_CONVS = [
    (3, 32, 32, 128, 3, 3, 1, 1, 1, 'down.0'),
    (128, 32, 32, 128, 3, 3, 1, 1, 7, 'down.1.resblocks.conv1'),
    (128, 32, 32, 128, 3, 3, 2, 1, 1, 'down.3.0'),
    (128, 16, 16, 256, 3, 3, 1, 1, 1, 'down.4.resblocks.conv1'),
    (256, 16, 16, 256, 3, 3, 1, 1, 7, 'down.4.resblocks.conv2'),
    (128, 16, 16, 256, 1, 1, 1, 0, 1, 'down.4.resblocks.skip'),
    (256, 16, 16, 768, 1, 1, 1, 0, 5, 'down.4.attention.qkv'),
    (256, 16, 16, 256, 1, 1, 1, 0, 5, 'down.4.attention.out'),
    (256, 16, 16, 256, 3, 3, 2, 1, 1, 'down.6.0'),
    (256, 8, 8, 256, 3, 3, 1, 1, 8, 'down.7.resblocks.conv1'),
    (256, 8, 8, 256, 3, 3, 2, 1, 1, 'down.9.0'),
    (256, 4, 4, 256, 3, 3, 1, 1, 11, 'down.10.resblocks.conv1'),
    (256, 4, 4, 768, 1, 1, 1, 0, 1, 'mid.0.attention.qkv'),
    (256, 4, 4, 256, 1, 1, 1, 0, 1, 'mid.0.attention.out'),
    (512, 4, 4, 256, 3, 3, 1, 1, 3, 'up.0.resblocks.conv1'),
    (512, 4, 4, 256, 1, 1, 1, 0, 3, 'up.0.resblocks.skip'),
    (512, 8, 8, 256, 3, 3, 1, 1, 3, 'up.4.resblocks.conv1'),
    (512, 8, 8, 256, 1, 1, 1, 0, 3, 'up.4.resblocks.skip'),
    (512, 16, 16, 256, 3, 3, 1, 1, 2, 'up.8.resblocks.conv1'),
    (512, 16, 16, 256, 1, 1, 1, 0, 2, 'up.8.resblocks.skip'),
    (384, 16, 16, 256, 3, 3, 1, 1, 1, 'up.10.resblocks.conv1'),
    (384, 16, 16, 256, 1, 1, 1, 0, 1, 'up.10.resblocks.skip'),
    (256, 32, 32, 256, 3, 3, 1, 1, 1, 'up.11.1'),
    (384, 32, 32, 128, 3, 3, 1, 1, 1, 'up.12.resblocks.conv1'),
    (384, 32, 32, 128, 1, 1, 1, 0, 1, 'up.12.resblocks.skip'),
    (256, 32, 32, 128, 3, 3, 1, 1, 2, 'up.13.resblocks.conv1'),
    (256, 32, 32, 128, 1, 1, 1, 0, 2, 'up.13.resblocks.skip'),
    (128, 32, 32, 3, 3, 3, 1, 1, 1, 'out.2'),
]
_SD15_CONVS = [
    (4, 64, 64, 320, 3, 3, 1, 1, 1, 'conv_in'),
    (320, 64, 64, 320, 3, 3, 1, 1, 7, 'down_blocks.0.resnets.0.conv1'),
    (320, 64, 64, 320, 1, 1, 1, 0, 10, 'down_blocks.0.attentions.0.proj_in'),
    (320, 64, 64, 320, 3, 3, 2, 1, 1, 'down_blocks.0.downsamplers.0.conv'),
    (320, 32, 32, 640, 3, 3, 1, 1, 1, 'down_blocks.1.resnets.0.conv1'),
    (640, 32, 32, 640, 3, 3, 1, 1, 6, 'down_blocks.1.resnets.0.conv2'),
    (320, 32, 32, 640, 1, 1, 1, 0, 1, 'down_blocks.1.resnets.0.conv_shortcut'),
    (640, 32, 32, 640, 1, 1, 1, 0, 10, 'down_blocks.1.attentions.0.proj_in'),
    (640, 32, 32, 640, 3, 3, 2, 1, 1, 'down_blocks.1.downsamplers.0.conv'),
    (640, 16, 16, 1280, 3, 3, 1, 1, 1, 'down_blocks.2.resnets.0.conv1'),
    (1280, 16, 16, 1280, 3, 3, 1, 1, 7, 'down_blocks.2.resnets.0.conv2'),
    (640, 16, 16, 1280, 1, 1, 1, 0, 1, 'down_blocks.2.resnets.0.conv_shortcut'),
    (1280, 16, 16, 1280, 1, 1, 1, 0, 10, 'down_blocks.2.attentions.0.proj_in'),
    (1280, 16, 16, 1280, 3, 3, 2, 1, 1, 'down_blocks.2.downsamplers.0.conv'),
    (1280, 8, 8, 1280, 3, 3, 1, 1, 11, 'down_blocks.3.resnets.0.conv1'),
    (1280, 8, 8, 1280, 1, 1, 1, 0, 2, 'mid_block.attentions.0.proj_in'),
    (2560, 8, 8, 1280, 3, 3, 1, 1, 3, 'up_blocks.0.resnets.0.conv1'),
    (2560, 8, 8, 1280, 1, 1, 1, 0, 3, 'up_blocks.0.resnets.0.conv_shortcut'),
    (2560, 16, 16, 1280, 3, 3, 1, 1, 2, 'up_blocks.1.resnets.0.conv1'),
    (2560, 16, 16, 1280, 1, 1, 1, 0, 2, 'up_blocks.1.resnets.0.conv_shortcut'),
    (1920, 16, 16, 1280, 3, 3, 1, 1, 1, 'up_blocks.1.resnets.2.conv1'),
    (1920, 16, 16, 1280, 1, 1, 1, 0, 1, 'up_blocks.1.resnets.2.conv_shortcut'),
    (1280, 32, 32, 1280, 3, 3, 1, 1, 1, 'up_blocks.1.upsamplers.0.conv'),
    (1920, 32, 32, 640, 3, 3, 1, 1, 1, 'up_blocks.2.resnets.0.conv1'),
    (1920, 32, 32, 640, 1, 1, 1, 0, 1, 'up_blocks.2.resnets.0.conv_shortcut'),
    (1280, 32, 32, 640, 3, 3, 1, 1, 1, 'up_blocks.2.resnets.1.conv1'),
    (1280, 32, 32, 640, 1, 1, 1, 0, 1, 'up_blocks.2.resnets.1.conv_shortcut'),
    (960, 32, 32, 640, 3, 3, 1, 1, 1, 'up_blocks.2.resnets.2.conv1'),
    (960, 32, 32, 640, 1, 1, 1, 0, 1, 'up_blocks.2.resnets.2.conv_shortcut'),
    (640, 64, 64, 640, 3, 3, 1, 1, 1, 'up_blocks.2.upsamplers.0.conv'),
    (960, 64, 64, 320, 3, 3, 1, 1, 1, 'up_blocks.3.resnets.0.conv1'),
    (960, 64, 64, 320, 1, 1, 1, 0, 1, 'up_blocks.3.resnets.0.conv_shortcut'),
    (640, 64, 64, 320, 3, 3, 1, 1, 2, 'up_blocks.3.resnets.1.conv1'),
    (640, 64, 64, 320, 1, 1, 1, 0, 2, 'up_blocks.3.resnets.1.conv_shortcut'),
    (320, 64, 64, 4, 3, 3, 1, 1, 1, 'conv_out'),
]


def trace_convs(model, *args, **kwargs) -> list[tuple]:
    """Run ``model(*args, **kwargs)`` once (the meta device is enough) and return every distinct
    groups=1 Conv2d call as ``(C, H, W, K, R, S, stride, padding, calls, first layer)``, the
    rows of the tables above. Square kernels, strides and paddings only (as in these UNets)."""
    import torch
    import torch.nn as nn

    seen: dict[tuple, list[str]] = {}
    hooks = []

    def record(name):
        def hook(module, inputs, output):
            _, c, h, w = inputs[0].shape
            pad = module.padding if isinstance(module.padding, tuple) else (module.padding,) * 2
            key = (c, h, w, module.out_channels, *module.kernel_size, module.stride[0], pad[0])
            seen.setdefault(key, []).append(name)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return [(*key, len(names), names[0]) for key, names in seen.items()]


def _model_convs(rows, batches) -> list[ConvShape]:
    return [ConvShape(b, c, h, w, k, r, s, stride, pad, layer if n == 1 else f"{layer} (x{n})")
            for b in batches for c, h, w, k, r, s, stride, pad, n, layer in rows]


LINEAR_TABLES = {
    # U-ViT-S/2 CIFAR10: D 512, 16x16 patches + 1 time token = 257 tokens.
    "uvit-s2": _uvit("uvit-s2", 512, 257),
    # U-ViT-L/2 ImageNet256: D 1024, 32x32 latent / 2 = 256 patches + time + label = 258 tokens.
    "uvit-l2": _uvit("uvit-l2", 1024, 258),
    # U-ViT-H/2 ImageNet256: D 1152.
    "uvit-h2": _uvit("uvit-h2", 1152, 258),
    "square": [LinearShape(s, s, s, "square") for s in (1024, 2048, 4096, 8192)],
    "small-m": [LinearShape(m, n, k, "small-m") for m in (1, 2, 4, 8, 16, 32, 64) for n, k in ((4096, 1024), (1024, 4096))],
}
CONV_TABLES = {"ddpm-unet": _model_convs(_DDPM_CONVS, (64, 128)), "sd15-unet": _model_convs(_SD15_CONVS, (8,))}
TABLES = {**LINEAR_TABLES, **CONV_TABLES}

# Tiny stand-ins used on CPU, where the real shapes would take minutes per row.
CPU_TABLES = {
    "cpu-linear": [LinearShape(m, 256, 256, "cpu") for m in (1, 16, 128)],
    "cpu-conv": [ConvShape(2, 16, 8, 8, 16, 3, 3, 1, 1, "cpu")],
}


def table(name: str):
    if name in TABLES:
        return TABLES[name]
    if name in CPU_TABLES:
        return CPU_TABLES[name]
    raise KeyError(f"unknown shape table {name!r}; choose from {', '.join([*TABLES, *CPU_TABLES])}")
