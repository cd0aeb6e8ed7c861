"""Samplers against closed forms, with the exact denoiser of Gaussian data N(mu, std^2).

For Gaussian data the probability-flow ODE is affine: ``(z_e - a_e mu) / m_e = (z_T - a_T mu) / m_T``
with ``m = sqrt(a^2 std^2 + s^2)``, so deterministic samplers are checked sample by sample, and
stochastic ones (started from the exact marginal) by the mean and std they reach.
"""

import math

import pytest
import torch

from sparsedm.sampling import DDIM, CosineLogSNR, from_config, to_x0_eps
from sparsedm.sampling.testing import GaussianDenoiser, gaussian_for


def _start(den, grid, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = grid[0]
    m = math.sqrt(p.alpha**2 * den.std**2 + p.sigma**2)
    return den.mu * p.alpha + m * torch.randn(shape, generator=g)


DETERMINISTIC = [
    # U-ViT pixel: continuous VPSDE, network time t * 999
    ({"kind": "dpm_solver++", "order": 3, "steps": 50, "spacing": "logsnr_uniform", "schedule": {"name": "vp_linear"}}, 2e-3),
    ({"kind": "dpm_solver", "order": 3, "steps": 50, "spacing": "time_quadratic", "schedule": {"name": "vp_linear"}}, 2e-3),
    ({"kind": "dpm_solver", "order": 2, "steps": 50, "spacing": "logsnr_uniform", "schedule": {"name": "vp_linear"}}, 5e-3),
    ({"kind": "euler_ode", "steps": 1000, "schedule": {"name": "vp_linear"}}, 5e-3),
    # latent U-ViT: SD betas in continuous time (official DPM-Solver interpolation), network time t * 1000
    ({"kind": "dpm_solver++", "order": 3, "steps": 50, "prediction": "eps", "schedule": {"name": "scaled_linear"},
      "time_input": {"kind": "continuous", "scale": 1000}, "spacing": "logsnr_uniform"}, 2e-3),
    # SD betas, discrete indices (diffusers' convention), every index
    ({"kind": "ddim", "steps": 1000, "prediction": "eps", "schedule": {"name": "scaled_linear"}}, 2e-2),
    # progressive distillation, Google: cosine logSNR, network sees logSNR, v-prediction
    ({"kind": "ddim", "steps": 1000, "prediction": "v", "schedule": {"name": "cosine_logsnr"}}, 5e-3),
    # progressive distillation, PyTorch port: cosine betas over 1024 steps, network sees index * time_scale
    ({"kind": "ddim", "steps": 1024, "prediction": "v", "schedule": {"name": "cosine", "n_timesteps": 1024},
      "time_input": {"kind": "step_index", "scale": 1}}, 5e-3),
    ({"kind": "ddim", "steps": 512, "prediction": "x", "schedule": {"name": "cosine", "n_timesteps": 512},
      "time_input": {"kind": "step_index", "scale": 2}}, 5e-3),
]


@pytest.mark.parametrize("cfg,tol", DETERMINISTIC, ids=lambda v: v["kind"] + "-" + v["schedule"]["name"] if isinstance(v, dict) else "")
def test_deterministic_samplers_follow_the_exact_ode(cfg, tol):
    sampler = from_config(cfg)
    grid = sampler.grid()
    den = gaussian_for(cfg, mu=0.5, std=0.3)
    z_T = _start(den, grid, (4, 1, 8, 8))
    out = sampler.sample(den, z_T).double()
    ref = den.exact_ode_map(z_T, grid[0].alpha, grid[0].sigma, grid[-1].alpha, grid[-1].sigma)
    err = (out - ref).abs()
    assert err.max().item() < tol, f"max err {err.max().item():.2e}, mean {err.mean().item():.2e}"


def test_dpm_solver_higher_orders_are_more_accurate():
    errs = {}
    for order in (1, 2, 3):
        cfg = {"kind": "dpm_solver++", "order": order, "steps": 25, "spacing": "logsnr_uniform", "schedule": {"name": "vp_linear"}}
        sampler, den = from_config(cfg), gaussian_for(cfg)
        grid = sampler.grid()
        z_T = _start(den, grid, (2, 1, 8, 8))
        ref = den.exact_ode_map(z_T, grid[0].alpha, grid[0].sigma, grid[-1].alpha, grid[-1].sigma)
        errs[order] = (sampler.sample(den, z_T).double() - ref).abs().max().item()
    assert errs[3] < errs[2] < errs[1], errs


STOCHASTIC = [
    {"kind": "euler_maruyama", "steps": 1000, "schedule": {"name": "vp_linear"}},                 # U-ViT CIFAR10/CelebA
    {"kind": "ddpm", "steps": 1000, "schedule": {"name": "linear"}},
    {"kind": "ddim", "eta": 1.0, "steps": 256, "prediction": "v", "schedule": {"name": "cosine_logsnr"}},
]


@pytest.mark.parametrize("cfg", STOCHASTIC, ids=lambda c: c["kind"])
def test_stochastic_samplers_reach_the_data_distribution(cfg):
    sampler = from_config(cfg)
    grid = sampler.grid()
    den = gaussian_for(cfg, mu=0.5, std=0.3)
    n = 32
    z_T = _start(den, grid, (n, 1, 16, 16))
    out = sampler.sample(den, z_T, seeds=range(n)).double()
    a, s = grid[-1].alpha, grid[-1].sigma
    want_mean, want_std = a * den.mu, math.sqrt(a * a * den.std**2 + s * s)
    # 8192 samples: the standard error of the mean is 0.3 / 90 = 0.0033
    assert abs(out.mean().item() - want_mean) < 0.015, (out.mean().item(), want_mean)
    assert abs(out.std().item() - want_std) < 0.015, (out.std().item(), want_std)


@pytest.mark.parametrize("prediction", ["eps", "x", "v"])
def test_ddim_one_step_formulas(prediction):
    """DESIGN.md: x_hat = a z - s v, eps_hat = s z + a v, z_s = a_s x_hat + s_s eps_hat (eta = 0)."""
    torch.manual_seed(0)
    cfg = {"kind": "ddim", "steps": 4, "prediction": prediction, "schedule": {"name": "cosine_logsnr"}}
    sampler = from_config(cfg)
    grid = sampler.grid()
    p, q = grid[0], grid[1]
    out_net = torch.randn(2, 3, 4, 4)
    z = torch.randn(2, 3, 4, 4)

    def net(z_in, t):
        assert torch.allclose(t, torch.full_like(t, float(CosineLogSNR().logsnr(p.t))))  # conditioned on logSNR
        return out_net

    sampler.steps = 1  # one step: from t = 1 to the clean point
    one = DDIM(sampler.schedule, 2, prediction=prediction, time_input=sampler.time_input)
    g = one.grid()
    assert g[0].t == 1.0 and g[1].t == 0.5
    z_s = one._run(*_one_step_args(one, net, z))
    a, s, a_s, s_s = g[0].alpha, g[0].sigma, g[1].alpha, g[1].sigma
    if prediction == "v":
        x_hat, eps_hat = a * z - s * out_net, s * z + a * out_net
    elif prediction == "eps":
        x_hat, eps_hat = (z - s * out_net) / a, out_net
    else:
        x_hat, eps_hat = out_net, (z - a * out_net) / s
    torch.testing.assert_close(z_s, a_s * x_hat + s_s * eps_hat, rtol=1e-4, atol=1e-4)
    assert q.t < p.t


def _one_step_args(sampler, net, z):
    """Run only the first step of a 2-step DDIM: returns _run's arguments with a 1-step grid."""
    from sparsedm.sampling import Denoiser

    grid = sampler.grid()[:2]
    net_t = torch.tensor([grid[0].net_time], dtype=torch.float32)
    return Denoiser(net, sampler.prediction), z, grid, net_t, None, None


def test_v_prediction_ddim_step_from_z_t():
    """A v-prediction DDIM step with the exact v lands on the exact ODE point for a point mass
    data distribution (std -> 0: x_hat is exact, so one DDIM step is exact)."""
    cfg = {"kind": "ddim", "steps": 8, "prediction": "v", "schedule": {"name": "cosine_logsnr"}}
    sampler = from_config(cfg)
    den = GaussianDenoiser(sampler.schedule, sampler.time_input, "v", mu=0.7, std=1e-6)
    grid = sampler.grid()
    z = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    t = torch.full((2,), grid[0].net_time, dtype=torch.float64)
    v = den(z, t)
    a, s = grid[0].alpha, grid[0].sigma
    x_hat, eps_hat = to_x0_eps(v, z, a, s, "v")
    torch.testing.assert_close(x_hat, torch.full_like(z, 0.7), rtol=0, atol=1e-5)
    torch.testing.assert_close(eps_hat, (z - a * 0.7) / s)
    out = sampler.sample(den, z.float()).double()
    torch.testing.assert_close(out, torch.full_like(out, 0.7), rtol=0, atol=5e-4)


def test_dpm_solver_order1_is_ddim():
    base = {"steps": 12, "schedule": {"name": "vp_linear"}, "final": "t_end", "t_end": 1e-3}
    den = gaussian_for(base)
    z = torch.randn(2, 1, 4, 4)
    a = from_config({**base, "kind": "ddim"}).sample(den, z)
    b = from_config({**base, "kind": "dpm_solver++", "order": 1}).sample(den, z)
    c = from_config({**base, "kind": "dpm_solver", "order": 1}).sample(den, z)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


def test_classifier_free_guidance_uvit_form():
    calls = []

    def net(z, t, y):
        calls.append(z.shape[0])
        return torch.where((y == 10).view(-1, 1, 1, 1), torch.zeros_like(z), torch.ones_like(z))  # cond 1, uncond 0

    cfg = {"kind": "ddim", "steps": 1, "schedule": {"name": "vp_linear"}, "cfg_scale": 0.4, "null_class": 10}
    sampler = from_config(cfg)
    from sparsedm.sampling import Denoiser
    from sparsedm.sampling.denoiser import null_condition

    y = torch.tensor([1, 2])
    den = Denoiser(net, "eps", 0.4, cond={"y": y}, uncond=null_condition({"y": y}, 10))
    out = den.raw(torch.zeros(2, 1, 2, 2), torch.zeros(2))
    torch.testing.assert_close(out, torch.full_like(out, 1.4))  # cond + 0.4 (cond - uncond)
    assert calls == [4]  # cond and uncond in one batch
    sampler.sample(net, torch.zeros(2, 1, 2, 2), cond={"y": y})


def test_clipping_recomputes_eps():
    def net(z, t):
        return torch.full_like(z, 5.0)  # x prediction far outside [-1, 1]

    cfg = {"kind": "ddim", "steps": 2, "prediction": "x", "clip_x0": [-1, 1], "schedule": {"name": "cosine_logsnr"}}
    out = from_config(cfg).sample(net, torch.zeros(1, 1, 2, 2))
    torch.testing.assert_close(out, torch.ones_like(out))


@pytest.mark.parametrize("bad,msg", [
    ({"kind": "nope"}, "unknown sampler kind"),
    ({"kind": "ddim", "schedule": {"name": "cosine_logsnr"}, "order": 2}, "does not take"),
    ({"kind": "ddim", "schedule": {"name": "zigzag"}}, "unknown schedule"),
    ({"kind": "ddim", "schedule": {"name": "cosine_logsnr"}, "steps": 0}, "positive integer"),
    ({"kind": "euler_maruyama", "schedule": {"name": "cosine_logsnr"}}, "vp_linear"),
    ({"kind": "ddim", "schedule": {"name": "vp_linear"}, "time_input": {"kind": "step_index"}}, "discrete schedule"),
    ({"kind": "dpm_solver++", "schedule": {"name": "vp_linear"}, "order": 4}, "orders 1, 2, 3"),
    ({"kind": "ddim", "schedule": {"name": "vp_linear"}, "prediction": "score"}, "prediction type"),
])
def test_config_errors_say_what_is_wrong(bad, msg):
    with pytest.raises(ValueError, match=msg):
        from_config(bad).grid()


def test_converter_manifest_dicts_are_accepted():
    # what sparsedm/convert/readers.py writes for diffusion_distiller checkpoints
    distiller = {"kind": "ddim", "steps": 8, "prediction": "v",
                 "schedule": {"name": "cosine", "s": 0.008, "n_timesteps": 8, "clip_beta_max": 0.999},
                 "time_input": {"kind": "step_index", "scale": 128.0}, "clip_x0": [-1.0, 1.0], "eta": 0.0,
                 "source": "diffusion_distiller"}
    grid = from_config(distiller).grid()
    assert [p.net_time for p in grid[:-1]] == [128.0 * i for i in range(7, -1, -1)]
    assert grid[-1].sigma == 0.0
    google = {"kind": "ddim", "steps": 4, "prediction": "v", "schedule": {"name": "cosine_logsnr", "logsnr_min": -20.0,
              "logsnr_max": 20.0}, "time_input": {"kind": "logsnr"}, "clip_x0": [-1.0, 1.0], "eta": 0.0}
    grid = from_config(google).grid()
    assert grid[0].net_time == pytest.approx(-20.0) and [p.t for p in grid] == [1.0, 0.75, 0.5, 0.25, 0.0]
