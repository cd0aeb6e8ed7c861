"""A whole sampling run: per-sample seeds, batching, sharding over torchrun ranks, gathering.

Sample i of a run with seed S draws its starting noise and then (class-conditional models) its
label from ``torch.Generator().manual_seed(S + i)``, and its per-step noise from the
counter-based hash keyed by S + i (noise.py). Ranks take contiguous blocks of indices; every
batch is padded to the same size with indices past the end (computed, then dropped), so all
shapes are static (one CUDA graph) and every rank runs the same number of batches, which keeps
the per-batch all_gather in step. Rank 0 receives every batch and assembles the result.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from sparsedm.sampling.images import to_uint8
from sparsedm.sampling.noise import StepNoise
from sparsedm.sampling.samplers import Sampler


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> DistInfo:
    """Join the torchrun group when WORLD_SIZE > 1: nccl for CUDA devices, gloo for CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local)


def per_sample_inputs(indices: Sequence[int], seed: int, shape: Sequence[int], num_classes: int = 0,
                      class_label: Optional[int] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Starting noise [B, *shape] float32 (CPU) and labels [B] int64 (or None) of these samples."""
    noise, labels = [], []
    for i in indices:
        g = torch.Generator().manual_seed(int(seed) + int(i))
        noise.append(torch.randn(tuple(shape), generator=g))
        if num_classes:
            labels.append(int(class_label) if class_label is not None else int(torch.randint(num_classes, (1,), generator=g)))
    return torch.stack(noise), (torch.tensor(labels, dtype=torch.int64) if num_classes else None)


def shard(n: int, world: int, rank: int, batch_size: int) -> tuple[list[list[int]], int]:
    """This rank's batches of global indices (padded past n) and the common batch size."""
    per_rank = math.ceil(n / world)
    bs = max(1, min(batch_size, per_rank))
    n_batches = math.ceil(per_rank / bs)
    start = rank * per_rank
    return [list(range(start + b * bs, start + (b + 1) * bs)) for b in range(n_batches)], bs


def generate(model: Callable, sampler: Sampler, shape: Sequence[int], n: int, seed: int, *, device="cpu",
             batch_size: int = 64, num_classes: int = 0, class_label: Optional[int] = None,
             dtype: Optional[torch.dtype] = None, channels_last: bool = False, dist_info: Optional[DistInfo] = None,
             progress: Optional[Callable[[int], None]] = None, output: str = "uint8",
             contexts: Optional[torch.Tensor] = None, uncond_context: Optional[torch.Tensor] = None,
             decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
             ) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Sample n images; returns (images, labels) on rank 0 and (None, None) on other ranks.

    images: uint8 [n, H, W, C] (``output="uint8"``) or float32 [n, C, H, W] (``"float"``).
    contexts: text models, [P, tokens, dim] prompt embeddings; sample i is conditioned on
    prompt i % P (the network's ``context`` argument). uncond_context: [tokens, dim], the
    unconditional branch of classifier-free guidance.
    decode: applied to each batch of final latents (latent models: the autoencoder's decoder,
    latent.Autoencoder.decode), so only images, never all latents, are kept.
    """
    d = dist_info or DistInfo()
    device = torch.device(device)
    batches, bs = shard(n, d.world, d.rank, batch_size)
    gather_device = device if (d.active and dist.get_backend() == "nccl") else torch.device("cpu")
    result = None  # allocated on rank 0 from the first batch (decoded images have their own size)
    labels_out = np.zeros((n,), dtype=np.int64) if (d.rank == 0 and num_classes) else None
    noise = StepNoise(batches[0], shape, device) if sampler.stochastic else None
    ctx_dtype = dtype if dtype is not None and dtype.is_floating_point else torch.float32
    for idx in batches:
        x_T, labels = per_sample_inputs(idx, seed, shape, num_classes, class_label)
        cond = {"y": labels.to(device)} if labels is not None else {}
        uncond = None
        if contexts is not None:
            pick = torch.tensor(idx, dtype=torch.int64) % contexts.shape[0]
            cond["context"] = contexts[pick].to(device=device, dtype=ctx_dtype)
            if uncond_context is not None:
                uncond = {"context": uncond_context.to(device=device, dtype=ctx_dtype).expand(len(idx), -1, -1)}
        if noise is not None:
            noise.set_seeds([seed + i for i in idx])
        z = sampler.sample(model, x_T.to(device), cond=cond, uncond=uncond, noise=noise, dtype=dtype,
                           channels_last=channels_last, progress=progress)
        if decode is not None:
            z = decode(z)
        img = to_uint8(z) if output == "uint8" else z.float().contiguous()
        if d.rank == 0 and result is None:
            result = np.zeros((n, *img.shape[1:]), dtype=np.uint8 if output == "uint8" else np.float32)
        idx_t = torch.tensor(idx, dtype=torch.int64)
        lab_t = labels if labels is not None else torch.zeros(len(idx), dtype=torch.int64)
        if d.active:
            parts = [torch.empty_like(img.to(gather_device)) for _ in range(d.world)]
            dist.all_gather(parts, img.to(gather_device))
            idx_parts = [torch.empty_like(idx_t.to(gather_device)) for _ in range(d.world)]
            dist.all_gather(idx_parts, idx_t.to(gather_device))
            lab_parts = [torch.empty_like(lab_t.to(gather_device)) for _ in range(d.world)]
            dist.all_gather(lab_parts, lab_t.to(gather_device))
        else:
            parts, idx_parts, lab_parts = [img], [idx_t], [lab_t]
        if d.rank == 0:
            for im, ix, lb in zip(parts, idx_parts, lab_parts):
                ix = ix.cpu().numpy()
                keep = ix < n
                result[ix[keep]] = im.cpu().numpy()[keep]
                if labels_out is not None:
                    labels_out[ix[keep]] = lb.cpu().numpy()[keep]
    return result, labels_out


def label_rows(model) -> Optional[int]:
    """Rows of the model's class-label embedding (``label_emb`` in U-ViT, ``label`` ...), or None."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in ("label_emb", "label", "class_embedding"):
            return int(module.num_embeddings)
    return None


def label_classes(num_classes: int, null_class, rows: Optional[int] = None) -> int:
    """How many real classes labels are drawn from: the label rows below the null class when it
    is the table's last row (a guided model), so that no sample is conditioned on "no class";
    else ``num_classes``."""
    rows = rows or num_classes
    if rows and null_class is not None and int(null_class) == rows - 1:
        return min(int(null_class), num_classes or int(null_class))
    return num_classes
