"""Latent models: decode sampled latents to images with a KL autoencoder, and text contexts.

The latent U-ViTs (ImageNet 256/512, MS-COCO) sample in the latent space of Stable Diffusion's
KL-f8 autoencoder; an image is ``decoder(z / scale)`` with ``scale`` the latent scale the model
was trained with (0.18215; 0.23010 for U-ViT's MS-COCO model: the preset's
``autoencoder_scale``). sparsedm does not ship the autoencoder: ``load_autoencoder`` reads one
through diffusers' ``AutoencoderKL`` (diffusers is the optional extra ``sparsedm[diffusers]``),
from

- a diffusers folder (``config.json`` + weights), e.g. a local copy of ``sd-vae-ft-ema``;
- one file (.safetensors / .pth / .ckpt) holding the autoencoder's state_dict, in diffusers'
  key names or in the original latent-diffusion ones (U-ViT's ``autoencoder_kl.pth``; a whole
  Stable Diffusion checkpoint works too: its ``first_stage_model.`` keys are used). The
  architecture is read off the tensor shapes, so any KL autoencoder of that family loads.

Text-conditional models (``uvit-s2-mscoco``) take CLIP text embeddings ``[77, 768]`` per
sample; ``load_contexts`` reads them from .npy/.npz files (U-ViT precomputes them the same way:
its ``empty_context.npy`` is the unconditional context of classifier-free guidance).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

DEFAULT_SCALE = 0.18215  # Stable Diffusion's KL-f8 latents


class LatentError(ValueError):
    """A user-facing error about the autoencoder or the text contexts: args = (problem, what to do)."""

    def __str__(self) -> str:
        return "; ".join(str(a) for a in self.args)


def _need_diffusers():
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise LatentError("decoding latents needs diffusers' AutoencoderKL, and diffusers is not installed",
                          'pip install "sparsedm[diffusers]" (or pip install diffusers)') from None
    return AutoencoderKL


def _read_state_dict(path: str) -> dict:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch / safetensors: "invalid header", "PytorchStreamReader failed", ...
        first = str(e).splitlines()[0] if str(e) else ""
        raise LatentError(f"--autoencoder {path} cannot be read ({type(e).__name__}: {first})",
                          "pass a diffusers AutoencoderKL folder or its state_dict (.safetensors/.pth/.ckpt)") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):  # latent-diffusion .ckpt
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LatentError(f"--autoencoder {path} holds no state_dict of tensors", "pass the autoencoder's state_dict")
    return sd


def _strip_prefix(sd: dict) -> dict:
    """The autoencoder's own keys: drop a whole-model prefix (``first_stage_model.``, ``vae.``)."""
    for prefix in ("first_stage_model.", "vae."):
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _is_ldm_layout(sd: dict) -> bool:
    return any(k.startswith(("decoder.up.", "encoder.down.")) or k.startswith("decoder.mid.block_") for k in sd)


def _config_from_shapes(sd: dict, ldm: bool) -> dict:
    """AutoencoderKL constructor arguments read off the state_dict's tensor shapes."""
    down = "encoder.down.{}.block.{}.conv1.weight" if ldm else "encoder.down_blocks.{}.resnets.{}.conv1.weight"
    channels, i = [], 0
    while down.format(i, 0) in sd:
        channels.append(int(sd[down.format(i, 0)].shape[0]))
        i += 1
    if not channels or "decoder.conv_in.weight" not in sd or "encoder.conv_in.weight" not in sd:
        raise LatentError("the --autoencoder state_dict is not a KL autoencoder's (no encoder/decoder blocks found)",
                          "pass the autoencoder of the model (e.g. U-ViT's autoencoder_kl.pth or a diffusers AutoencoderKL)")
    layers = 0
    while down.format(0, layers) in sd:
        layers += 1
    conv_in = sd["encoder.conv_in.weight"]
    norm = sd.get("encoder.conv_norm_out.weight", sd.get("encoder.norm_out.weight"))
    latent = int(sd["decoder.conv_in.weight"].shape[1])
    cfg = {
        "in_channels": int(conv_in.shape[1]), "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
        "block_out_channels": channels, "layers_per_block": layers, "latent_channels": latent,
        "down_block_types": ["DownEncoderBlock2D"] * len(channels), "up_block_types": ["UpDecoderBlock2D"] * len(channels),
    }
    # GroupNorm groups are not in the weights; 32 is what every KL autoencoder of this family uses,
    # unless the channel count forbids it (tiny test models).
    groups = 32
    while groups > 1 and any(c % groups for c in channels + [int(norm.shape[0]) if norm is not None else channels[-1]]):
        groups //= 2
    cfg["norm_num_groups"] = groups
    return cfg


class Autoencoder:
    """``decode(z) -> images in [-1, 1]`` for latents z of a latent diffusion model."""

    def __init__(self, vae: torch.nn.Module, scale: float, source: str):
        self.vae, self.scale, self.source = vae, float(scale), source

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        out = self.vae.decode(z.to(device=p.device, dtype=p.dtype) / self.scale)
        return (out.sample if hasattr(out, "sample") else out[0]).float()

    def __repr__(self) -> str:
        return f"Autoencoder({self.source}, scale {self.scale})"


def load_autoencoder(path: str, *, device="cpu", dtype=torch.float32, scale: Optional[float] = None) -> Autoencoder:
    """A KL autoencoder from a diffusers folder or a state_dict file (module docstring)."""
    AutoencoderKL = _need_diffusers()
    if not os.path.exists(path):
        raise LatentError(f"--autoencoder {path}: no such file or folder",
                          "pass a diffusers AutoencoderKL folder or the autoencoder's state_dict file")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise LatentError(f"--autoencoder {path} is a folder without config.json", "pass a diffusers AutoencoderKL folder")
        try:
            vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise LatentError(f"--autoencoder {path} cannot be loaded by diffusers ({type(e).__name__}: {first})",
                              "check that the folder holds an AutoencoderKL (config.json + weights)") from None
        default_scale = getattr(vae.config, "scaling_factor", None)
    else:
        sd = _strip_prefix(_read_state_dict(path))
        sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}  # latent-diffusion training losses
        ldm = _is_ldm_layout(sd)
        cfg = _config_from_shapes(sd, ldm)
        if ldm:
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            sd = convert_ldm_vae_checkpoint(sd, cfg)
        vae = AutoencoderKL(**cfg)
        missing, unexpected = vae.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise LatentError(f"--autoencoder {path} does not fit a KL autoencoder: missing {sorted(missing)[:4]}, "
                              f"unexpected {sorted(unexpected)[:4]}", "pass the autoencoder the model was trained with")
        default_scale = None
    scale = float(scale if scale is not None else (default_scale or DEFAULT_SCALE))
    if not scale > 0:
        raise LatentError(f"latent scale {scale} must be positive", "pass --latent-scale (0.18215 for Stable Diffusion's)")
    return Autoencoder(vae.to(device=device, dtype=dtype).eval(), scale, os.path.basename(os.path.normpath(path)))


# --------------------------------------------------------------------------------------------
# text contexts


def _read_array(path: str, what: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise LatentError(f"{what} {path}: no such file", "pass a .npy (or .npz) of CLIP text embeddings")
    try:
        arr = np.load(path, allow_pickle=False)
        if isinstance(arr, np.lib.npyio.NpzFile):
            names = list(arr.files)
            if len(names) != 1:
                raise LatentError(f"{what} {path} holds {len(names)} arrays ({', '.join(names[:5])})",
                                  "save one array per file (np.save)")
            arr = arr[names[0]]
    except LatentError:
        raise
    except Exception as e:
        raise LatentError(f"{what} {path} cannot be read as a numpy array ({type(e).__name__}: {e})",
                          "save the embeddings with np.save") from None
    if not np.issubdtype(arr.dtype, np.floating):
        raise LatentError(f"{what} {path} holds {arr.dtype}, not floating point embeddings",
                          "save the CLIP text encoder's float output")
    return arr


def load_contexts(path: str, tokens: int, dim: int, what: str = "--context") -> torch.Tensor:
    """Float32 [P, tokens, dim] prompt embeddings from a .npy of [tokens, dim] or [P, tokens, dim]."""
    arr = _read_array(path, what)
    given = tuple(arr.shape)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or tuple(arr.shape[1:]) != (tokens, dim):
        raise LatentError(f"{what} {path} has shape {given}, the model takes [{tokens}, {dim}] per prompt "
                          f"(or [P, {tokens}, {dim}] for P prompts)", "encode the prompts with the model's text encoder")
    if not np.isfinite(arr).all():
        raise LatentError(f"{what} {path} contains NaN or infinite values", "re-encode the prompts")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

