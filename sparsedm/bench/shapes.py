"""Benchmark shape tables, taken from the models sparsedm serves.

Linear rows are GEMMs ``(M, N, K)``: M tokens, N out features, K in features. Conv rows are
``(N, C, H, W, K, R, S, stride, padding)``: batch, in channels, input size, out channels,
kernel size. Sources: U-ViT configs (DESIGN.md "Facts about the checkpoints"), the DDPM
CIFAR10 UNet (channels 128 x (1, 2, 2, 2) at 32..4 px) and the SD1.5 UNet (320/640/1280
channels at a 64x64 latent).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LinearShape", "ConvShape", "TABLES", "table", "LINEAR_TABLES", "CONV_TABLES"]


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


def _ddpm_unet(batches=(64, 128)) -> list[ConvShape]:
    rows = []
    for b in batches:
        for ch, hw in ((128, 32), (256, 16), (256, 8), (256, 4)):
            rows.append(ConvShape(b, ch, hw, hw, ch, 3, 3, 1, 1, f"res{hw}.conv3x3"))
        rows.append(ConvShape(b, 128, 32, 32, 256, 3, 3, 1, 1, "down32->16.conv3x3 in"))
        rows.append(ConvShape(b, 256, 16, 16, 256, 1, 1, 1, 0, "skip.conv1x1"))
    return rows


def _sd15_unet(batches=(8,)) -> list[ConvShape]:
    rows = []
    for b in batches:
        for ch, hw in ((320, 64), (640, 32), (1280, 16), (1280, 8)):
            rows.append(ConvShape(b, ch, hw, hw, ch, 3, 3, 1, 1, f"res{hw}.conv3x3"))
        rows.append(ConvShape(b, 640, 32, 32, 640, 1, 1, 1, 0, "proj.conv1x1"))
    return rows


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
CONV_TABLES = {"ddpm-unet": _ddpm_unet(), "sd15-unet": _sd15_unet()}
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
