import math

import numpy as np
import pytest
import torch

from sparsedm.sampling import CosineLogSNR, Discrete, StepNoise, VPLinear, make_betas
from sparsedm.sampling.noise import _mix32, _mix32_int


def test_vp_linear_matches_uvit_sde():
    s = VPLinear(0.1, 20.0)
    t = np.linspace(1e-3, 1, 17)
    integral = 0.1 * t + 19.9 * t**2 / 2                       # U-ViT sde.py squared_diffusion_integral(0, t)
    alpha, sigma = s.alpha_sigma(t)
    np.testing.assert_allclose(alpha**2, np.exp(-integral), rtol=1e-12)   # cum_alpha
    np.testing.assert_allclose(sigma**2, -np.expm1(-integral), rtol=1e-12)  # cum_beta
    np.testing.assert_allclose(s.inverse_lambda(s.lambda_(t)), t, rtol=1e-9)


def test_cosine_logsnr_endpoints_and_inverse():
    s = CosineLogSNR(-20, 20)
    assert s.logsnr(0.0) == pytest.approx(20.0) and s.logsnr(1.0) == pytest.approx(-20.0)
    t = np.linspace(0, 1, 9)
    np.testing.assert_allclose(s.inverse_lambda(s.lambda_(t)), t, atol=1e-9)
    a, sig = s.alpha_sigma(t)
    np.testing.assert_allclose(a**2 + sig**2, 1.0, rtol=1e-12)


def test_cosine_betas_match_diffusion_distiller():
    n, cs = 1024, 8e-3
    steps = torch.arange(n + 1, dtype=torch.float64) / n + cs
    f = torch.cos(steps / (1 + cs) * math.pi / 2).pow(2)
    f = f / f[0]
    ref = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    np.testing.assert_allclose(make_betas("cosine", n), ref.numpy(), rtol=1e-12)


def test_discrete_continuous_interpolation_hits_grid_points():
    d = Discrete(make_betas("scaled_linear", 1000))
    t = (np.arange(1000) + 1) / 1000
    np.testing.assert_allclose(d.alpha_sigma(t)[0], np.sqrt(d.alphas_cumprod), rtol=1e-10)
    np.testing.assert_allclose(d.inverse_lambda(d.lambda_(t[5:-5])), t[5:-5], rtol=1e-8)


def test_hash_matches_python_reference():
    for v in (0, 1, 12345, 2**31, 2**32 - 1):
        assert int(_mix32(torch.tensor(v))) == _mix32_int(v)


def test_step_noise_is_standard_normal_and_per_sample():
    noise = StepNoise(range(100, 132), (3, 16, 16), "cpu")
    a, b = noise(0), noise(1)
    for x in (a, b):
        assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02
    assert abs((a * b).mean().item()) < 0.02                       # steps independent
    corr = torch.corrcoef(a.flatten(1))                             # samples independent (768 elements each)
    off = corr[~torch.eye(32, dtype=torch.bool)]
    assert off.abs().max() < 5 / math.sqrt(768) and abs(off.mean().item()) < 0.01
    # the same seed gives the same noise whatever batch it sits in
    other = StepNoise([105, 999], (3, 16, 16), "cpu")
    assert torch.equal(other(1)[0], b[5])
    q = torch.tensor([0.01, 0.5, 0.99])
    emp = torch.quantile(a.flatten(), q)
    ref = torch.distributions.Normal(0, 1).icdf(q)
    assert (emp - ref).abs().max() < 0.05


@pytest.mark.parametrize("name", ["uvit-h2-imagenet256", "uvit-h4-imagenet512", "uvit-s2-mscoco"])
def test_discrete_latent_presets_feed_the_network_its_training_time(name):
    """U-ViT's discrete latent models were trained on n in 1..1000 at alphas_cumprod[n - 1] of
    the Stable Diffusion betas, and sampled by DPM-Solver at network time t * 1000 for t in
    [1/1000, 1]: each network call's time must sit where that schedule has the grid point's noise."""
    from sparsedm.models import PRESETS
    from sparsedm.sampling import from_config

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0).numpy()
    grid = from_config(PRESETS[name]["sampler"]).grid()
    calls = [p for p in grid if p.net_time is not None]
    assert len(calls) == 50
    assert calls[0].net_time == pytest.approx(1000.0) and grid[-1].t == pytest.approx(1e-3)
    for p in calls + [grid[-1]]:
        n = p.t * 1000  # the training index this time stands for (1..1000), fractional between steps
        if p.net_time is not None:
            assert p.net_time == pytest.approx(n)
        lo, hi = int(math.floor(n)), int(math.ceil(n))
        log_a2 = np.interp(n, [lo, hi], np.log(alphas_cumprod[[lo - 1, hi - 1]])) if hi > lo else np.log(alphas_cumprod[lo - 1])
        assert p.alpha**2 == pytest.approx(math.exp(log_a2), rel=1e-6), (name, p)


@pytest.mark.parametrize("name", ["uvit-s2-cifar10", "uvit-m4-imagenet64", "uvit-l2-imagenet256"])
def test_continuous_presets_feed_t_times_999(name):
    from sparsedm.models import PRESETS
    from sparsedm.sampling import from_config

    calls = [p for p in from_config(PRESETS[name]["sampler"], steps=10).grid() if p.net_time is not None]
    assert calls[0].net_time == pytest.approx(999.0)
    assert all(p.net_time == pytest.approx(999.0 * p.t) for p in calls)
