"""Images out: [-1, 1] floats to uint8, a PNG grid (a small zlib PNG writer, no PIL needed) and
the .npz FID tools read (uint8 NHWC under ``arr_0``, as guided-diffusion's evaluator and
torch-fidelity expect). Every write is atomic: a temporary file in the target directory,
then os.replace, so an interrupted run never leaves a truncated file under the final name."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import torch

from sparsedm._io import atomic_open


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] in [-1, 1] -> [B, H, W, C] uint8, rounding like torchvision.save_image
    (U-ViT's unpreprocess then save): ``clamp((x + 1) / 2 * 255 + 0.5, 0, 255)`` truncated."""
    y = ((x.float() + 1.0) * 127.5 + 0.5).clamp_(0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1).contiguous()


def make_grid(images: np.ndarray, nrow: int = 0, pad: int = 2) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image (black padding)."""
    n, h, w, c = images.shape
    cols = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / cols))
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        out[y0:y0 + h, x0:x0 + w] = images[i]
    return out


def png_bytes(image: np.ndarray) -> bytes:
    """Encode uint8 [H, W] (gray), [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA) as PNG."""
    if image.dtype != np.uint8:
        raise TypeError(f"PNG needs uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    h, w, c = image.shape
    color_type = {1: 0, 3: 2, 4: 6}.get(c)
    if color_type is None:
        raise ValueError(f"PNG needs 1, 3 or 4 channels, got {c} (latent models: decode to RGB first)")
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), image.reshape(h, w * c)], axis=1)  # filter 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b"")


def write_png(path: str, image: np.ndarray) -> None:
    data = png_bytes(np.ascontiguousarray(image))
    with atomic_open(path) as f:
        f.write(data)
