"""Per-sample seeded noise: the same seeds give the same images whatever the batch size, the
number of GPUs or the device.

Sample number ``i`` of a run with seed ``S`` owns the seed ``S + i``:

- its starting noise is ``torch.randn(shape, generator=torch.Generator().manual_seed(S + i))``,
  drawn on the CPU (the CPU generator gives the same numbers everywhere) and then moved;
- the noise a stochastic sampler adds at step k (Euler-Maruyama, DDIM eta > 0) is a
  counter-based hash of (S + i, k, element index), turned into normals by Box-Muller. It is
  computed on the sampling device with integer tensor ops, so it needs no generator state,
  never syncs with the host and can run inside or beside a CUDA graph.

The hash is Chris Wellons' "lowbias32" 32-bit integer mixer, evaluated in int64 tensors with
the products masked to 32 bits (int64 multiplication wraps, and the low 32 bits of a wrapped
product are the low 32 bits of the true product).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    """lowbias32 on a Python int (host side: no device tensor, no sync)."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def initial_noise(seeds: Sequence[int], shape: Sequence[int], device, dtype=torch.float32) -> torch.Tensor:
    """[len(seeds), *shape] standard normals, sample j from ``Generator().manual_seed(seeds[j])``."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype)


class StepNoise:
    """Standard normal noise for step k of samples with the given seeds, shape [B, *shape]."""

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], device):
        self.shape = (len(seeds), *shape)
        n = math.prod(shape)
        seeds = torch.tensor([int(s) for s in seeds], dtype=torch.int64)
        # per-sample key from both halves of the 64-bit seed
        key = _mix32(_mix32(seeds & _M32) ^ ((seeds >> 32) & _M32))
        self.key = key.view(-1, 1).to(device)
        idx = torch.arange(n, dtype=torch.int64, device=device).view(1, -1)
        self.counter_u = _mix32(2 * idx)        # for the radius
        self.counter_v = _mix32(2 * idx + 1)    # for the angle

    def set_seeds(self, seeds: Sequence[int]) -> None:
        seeds = torch.tensor([int(s) for s in seeds], dtype=torch.int64)
        key = _mix32(_mix32(seeds & _M32) ^ ((seeds >> 32) & _M32))
        self.key.copy_(key.view(-1, 1))

    def __call__(self, step: int, dtype=torch.float32) -> torch.Tensor:
        k = _mix32(self.key ^ _mix32_int(step))
        hu = _mix32(self.counter_u ^ k)
        hv = _mix32(_mix32(self.counter_v ^ k) ^ 0x5BD1E995)
        # 24-bit uniforms in (0, 1): (h >> 8 + 0.5) / 2^24
        u = ((hu >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
        v = ((hv >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
        out = torch.sqrt(-2.0 * torch.log(u)) * torch.cos((2.0 * math.pi) * v)
        return out.view(self.shape).to(dtype)
