"""Named configurations of the published models.

Each preset: ``{"arch", "config" (constructor kwargs), "resolution" (spatial size the network
sees: the latent size for latent models), "in_channels", "sampler" (defaults from DESIGN.md and
the sources below; a converted file's own sampler settings take precedence)}``.

Sources:
- U-ViT: baofff/U-ViT ``configs/*.py`` (``config.nnet`` and ``config.sample``); pixel models
  are sampled by eval.py (continuous VPSDE, beta 0.1..20, network sees t*999); L latent models
  by eval_ldm.py (continuous VPSDE + DPM-Solver); H latent models and MS-COCO by
  eval_*_discrete.py (Stable Diffusion betas, DPM-Solver++ (predict_x0), network sees the
  discrete index); autoencoder scale 0.18215, 0.23010 for MS-COCO (its config).
- DDPM UNet: ``ddpm-unet-cifar10`` is the DDPM CIFAR10 network (Ho et al. 2020: 128 channels,
  multipliers 1,2,2,2, 2 res blocks, attention at 16x16, dropout 0.1) written in the
  distiller UNet's arguments (attention at 16x16 of 32x32 = stride 2);
  ``ddpm-unet-sparsedm-cifar10`` is the configuration SparseDM's DDPM training builds
  (wangkafeng/SparseDM utils.initialize_train_state_ddpm, = diffusion_distiller celeba_u.py
  make_model) at 32x32; ``ddpm-unet-celeba256`` is the distiller's CelebA-HQ 256 model.
"""

from __future__ import annotations

_VPSDE = {"schedule": "vpsde_linear", "beta_min": 0.1, "beta_max": 20.0, "time_input": "t*999", "prediction": "eps"}
# U-ViT's discrete latent models (train_ldm_discrete / train_t2i_discrete) train on n in 1..1000
# at alphas_cumprod[n - 1] and sample with DPM-Solver in continuous time, network time t * 1000
# for t in [1/1000, 1] (eval_ldm_discrete: model_fn(x, t) calls the network at t * N).
_SD_DISCRETE = {
    "schedule": "sd_scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
    "time_input": "t*1000", "prediction": "eps",
}


def _uvit(img_size, patch_size, embed_dim, depth, num_heads, *, in_chans=3, num_classes=-1, conv=True, **extra):
    config = dict(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
        num_heads=num_heads, mlp_ratio=4, qkv_bias=False, qk_scale=None, mlp_time_embed=False,
        num_classes=num_classes, use_checkpoint=False, conv=conv, skip=True,
    )
    if "clip_dim" in extra:
        config.pop("num_classes")
    config.update(extra)
    return config


def _latent(kind, steps, cfg_scale, image_resolution, autoencoder_scale=0.18215, base=None):
    return {"kind": kind, "steps": steps, **(base or _VPSDE), "cfg_scale": cfg_scale,
            "autoencoder": "stable-diffusion KL-f8", "autoencoder_scale": autoencoder_scale,
            "image_resolution": image_resolution}


PRESETS: dict[str, dict] = {
    "uvit-s2-cifar10": {
        "arch": "uvit", "config": _uvit(32, 2, 512, 12, 8), "resolution": 32, "in_channels": 3,
        "sampler": {"kind": "vpsde_euler", "steps": 1000, **_VPSDE},
    },
    "uvit-s4-celeba64": {
        "arch": "uvit", "config": _uvit(64, 4, 512, 12, 8), "resolution": 64, "in_channels": 3,
        "sampler": {"kind": "vpsde_euler", "steps": 1000, **_VPSDE},
    },
    "uvit-m4-imagenet64": {
        "arch": "uvit", "config": _uvit(64, 4, 768, 16, 12, num_classes=1000), "resolution": 64, "in_channels": 3,
        "sampler": {"kind": "dpm_solver", "steps": 50, **_VPSDE},
    },
    "uvit-l4-imagenet64": {
        "arch": "uvit", "config": _uvit(64, 4, 1024, 20, 16, num_classes=1000), "resolution": 64, "in_channels": 3,
        "sampler": {"kind": "dpm_solver", "steps": 50, **_VPSDE},
    },
    # ImageNet latent models: class 1000 of 1001 is the null class of classifier-free guidance.
    "uvit-l2-imagenet256": {
        "arch": "uvit", "config": _uvit(32, 2, 1024, 20, 16, in_chans=4, num_classes=1001), "resolution": 32,
        "in_channels": 4, "sampler": _latent("dpm_solver", 50, 0.4, 256),
    },
    "uvit-h2-imagenet256": {
        "arch": "uvit", "config": _uvit(32, 2, 1152, 28, 16, in_chans=4, num_classes=1001, conv=False), "resolution": 32,
        "in_channels": 4, "sampler": _latent("dpm_solver++", 50, 0.4, 256, base=_SD_DISCRETE),
    },
    "uvit-l4-imagenet512": {
        "arch": "uvit", "config": _uvit(64, 4, 1024, 20, 16, in_chans=4, num_classes=1001), "resolution": 64,
        "in_channels": 4, "sampler": _latent("dpm_solver", 50, 0.7, 512),
    },
    "uvit-h4-imagenet512": {
        "arch": "uvit", "config": _uvit(64, 4, 1152, 28, 16, in_chans=4, num_classes=1001, conv=False), "resolution": 64,
        "in_channels": 4, "sampler": _latent("dpm_solver++", 50, 0.7, 512, base=_SD_DISCRETE),
    },
    "uvit-s2-mscoco": {
        "arch": "uvit", "config": _uvit(32, 2, 512, 12, 8, in_chans=4, clip_dim=768, num_clip_token=77), "resolution": 32,
        "in_channels": 4, "sampler": _latent("dpm_solver++", 50, 1.0, 256, autoencoder_scale=0.23010, base=_SD_DISCRETE),
    },
    "ddpm-unet-cifar10": {
        "arch": "ddpm_unet",
        "config": dict(in_channel=3, channel=128, channel_multiplier=[1, 2, 2, 2], n_res_blocks=2, attn_strides=[2],
                       attn_heads=1, use_affine_time=False, dropout=0.1, fold=1),
        "resolution": 32, "in_channels": 3,
        "sampler": {"kind": "ddim", "steps": 1024, "schedule": "cosine", "cosine_s": 0.008, "prediction": "v",
                    "time_input": "index*time_scale", "clip_x": True},
    },
    "ddpm-unet-sparsedm-cifar10": {
        "arch": "ddpm_unet",
        "config": dict(in_channel=3, channel=112, channel_multiplier=[1, 2, 2, 4, 4], n_res_blocks=2, attn_strides=[8, 16],
                       attn_heads=4, use_affine_time=True, dropout=0.0, fold=1),
        "resolution": 32, "in_channels": 3,
        "sampler": {"kind": "vpsde_euler", "steps": 1000, **_VPSDE},
    },
    "ddpm-unet-celeba256": {
        "arch": "ddpm_unet",
        "config": dict(in_channel=3, channel=112, channel_multiplier=[1, 2, 2, 4, 4], n_res_blocks=2, attn_strides=[8, 16],
                       attn_heads=4, use_affine_time=True, dropout=0.0, fold=1),
        "resolution": 256, "in_channels": 3,
        "sampler": {"kind": "ddim", "steps": 1024, "schedule": "cosine", "cosine_s": 0.008, "prediction": "v",
                    "time_input": "index*time_scale", "clip_x": True},
    },
}
