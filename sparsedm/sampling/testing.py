"""Stand-in denoisers for tests and for trying ``sparsedm sample`` without a checkpoint.

- ``GaussianDenoiser``: the exact denoiser of data x ~ N(mu, std^2) (every element independent),
  for any schedule, time-input convention and prediction type. Under z = a x + s eps,
  ``E[x | z] = mu + a std^2 (z - a mu) / (a^2 std^2 + s^2)``, so samplers can be checked against
  closed forms.
- ``TinyConvNet``: a few random conv layers with a time embedding and optional class labels;
  ``tiny_factory`` returns it in the form ``sparsedm sample --factory`` expects.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsedm.sampling.schedules import CosineLogSNR, Discrete, Schedule, VPLinear, schedule_from_config


class GaussianDenoiser(nn.Module):
    """model(z, t) for Gaussian data; t is the network time in the given convention."""

    def __init__(self, schedule: Schedule, time_input: dict, prediction: str = "eps", mu: float = 0.5, std: float = 0.3):
        super().__init__()
        self.schedule, self.time_input, self.prediction = schedule, dict(time_input), prediction
        self.mu, self.std = float(mu), float(std)
        if isinstance(schedule, Discrete):
            self.register_buffer("alphas_cumprod", torch.tensor(schedule.alphas_cumprod, dtype=torch.float64))

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kind, scale = self.time_input["kind"], float(self.time_input.get("scale", 1.0))
        t = t.double()
        if kind == "logsnr":
            return torch.sigmoid(t).sqrt(), torch.sigmoid(-t).sqrt()
        if kind in ("step_index", "index"):
            ab = self.alphas_cumprod[torch.round(t / scale).long()]
            return ab.sqrt(), (1 - ab).sqrt()
        tc = t / scale
        if isinstance(self.schedule, VPLinear):
            s = self.schedule
            la = -0.25 * tc**2 * (s.beta_max - s.beta_min) - 0.5 * tc * s.beta_min
        elif isinstance(self.schedule, CosineLogSNR):
            ls = torch.from_numpy(self.schedule.logsnr(tc.cpu().numpy())).to(t.device)
            return torch.sigmoid(ls).sqrt(), torch.sigmoid(-ls).sqrt()
        else:  # discrete schedule in continuous time: the host interpolation (tests only)
            la = torch.from_numpy(self.schedule.log_alpha(tc.cpu().numpy())).to(t.device)
        return la.exp(), (-torch.expm1(2 * la)).sqrt()

    def forward(self, z: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        a, s = self.alpha_sigma(t)
        shape = (-1,) + (1,) * (z.dim() - 1)
        a, s = a.view(shape), s.view(shape)
        zd = z.double()
        x = self.mu + a * self.std**2 * (zd - a * self.mu) / (a**2 * self.std**2 + s**2)
        eps = (zd - a * x) / s
        out = {"eps": eps, "x": x, "v": a * eps - s * x}[self.prediction]
        return out.to(z.dtype)

    def exact_ode_map(self, z_T: torch.Tensor, a_T: float, s_T: float, a_e: float, s_e: float) -> torch.Tensor:
        """Where the probability-flow ODE takes z_T at (a_T, s_T) to (a_e, s_e):
        ``(z_e - a_e mu) / m_e = (z_T - a_T mu) / m_T`` with ``m = sqrt(a^2 std^2 + s^2)``."""
        m_T = math.sqrt(a_T**2 * self.std**2 + s_T**2)
        m_e = math.sqrt(a_e**2 * self.std**2 + s_e**2)
        return a_e * self.mu + (m_e / m_T) * (z_T.double() - a_T * self.mu)


class TinyConvNet(nn.Module):
    """A small random conv denoiser ``(z [B, C, H, W], t [B], y [B]?) -> [B, C, H, W]``."""

    def __init__(self, channels: int = 3, width: int = 16, num_classes: int = 0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.time = nn.Linear(2, width)
        self.label = nn.Embedding(num_classes + 1, width) if num_classes else None  # +1: the null class
        self.conv_mid = nn.Conv2d(width, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(max(p[0].numel(), 1))))

    def forward(self, z, t, y=None):
        t = t.to(z.dtype)
        emb = self.time(torch.stack([torch.sin(t / 100), torch.cos(t / 100)], dim=1))
        if self.label is not None and y is not None:
            emb = emb + self.label(y)
        h = torch.nn.functional.silu(self.conv_in(z) + emb[:, :, None, None])
        h = torch.nn.functional.silu(self.conv_mid(h))
        return 0.5 * z + 0.1 * self.conv_out(h)


def tiny_factory(device="cpu", dtype=torch.float32, resolution: int = 8, num_classes: int = 0, **_) -> dict:
    """What ``sparsedm sample --factory sparsedm.sampling.testing:tiny_factory`` loads."""
    model = TinyConvNet(3, 16, num_classes).to(device=device, dtype=dtype).eval()
    sampler = {"kind": "dpm_solver++", "steps": 10, "order": 2, "prediction": "eps",
               "schedule": {"name": "vp_linear", "beta_min": 0.1, "beta_max": 20.0},
               "time_input": {"kind": "continuous", "scale": 999}}
    return {"model": model, "sampler": sampler, "shape": (3, resolution, resolution), "num_classes": num_classes}


def tiny_factory_em(device="cpu", dtype=torch.float32, **kw) -> dict:
    """Like tiny_factory with the stochastic Euler-Maruyama sampler (exercises per-step noise)."""
    out = tiny_factory(device, dtype, **kw)
    out["sampler"] = {"kind": "euler_maruyama", "steps": 20, "prediction": "eps",
                      "schedule": {"name": "vp_linear"}, "time_input": {"kind": "continuous", "scale": 999}}
    return out


def gaussian_for(cfg: dict, mu: float = 0.5, std: float = 0.3) -> GaussianDenoiser:
    """The exact Gaussian denoiser in the conventions of a sampler config dict."""
    from sparsedm.sampling.samplers import default_time_input

    schedule = schedule_from_config(cfg["schedule"]) if "schedule" in cfg else VPLinear()
    return GaussianDenoiser(schedule, cfg.get("time_input") or default_time_input(schedule), cfg.get("prediction", "eps"),
                            mu, std)




def tiny_latent_factory(device="cpu", dtype=torch.float32, resolution: int = 4, **_) -> dict:
    """A 4-channel latent stand-in (decode its samples with ``--autoencoder``)."""
    model = TinyConvNet(4, 16).to(device=device, dtype=dtype).eval()
    sampler = {"kind": "dpm_solver++", "steps": 6, "order": 2, "prediction": "eps",
               "schedule": {"name": "scaled_linear"}, "time_input": {"kind": "step_index", "scale": 1.0},
               "autoencoder_scale": 0.5}
    return {"model": model, "sampler": sampler, "shape": (4, resolution, resolution), "num_classes": 0}


def tiny_text_factory(device="cpu", dtype=torch.float32, **_) -> dict:
    """A tiny text-conditional U-ViT (context [5, 16]) in latent space, guided with cfg_scale 1."""
    from sparsedm.models.uvit import UViT

    torch.manual_seed(0)
    model = UViT(img_size=4, patch_size=2, in_chans=4, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2, qkv_bias=False,
                 clip_dim=16, num_clip_token=5).to(device=device, dtype=dtype).eval()
    sampler = {"kind": "dpm_solver++", "steps": 5, "order": 2, "prediction": "eps", "cfg_scale": 1.0,
               "schedule": {"name": "scaled_linear"}, "time_input": {"kind": "step_index", "scale": 1.0}}
    return {"model": model, "sampler": sampler, "shape": (4, 4, 4), "num_classes": 0, "context_shape": (5, 16)}
