"""Our DDIM and DPM-Solver(++) against diffusers' schedulers on the same discrete schedules.

diffusers keeps sigmas in float32, so the comparisons allow ~1e-4 relative. The denoiser is the
exact Gaussian one (a smooth, nontrivial function of z and t), fed integer timesteps.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from sparsedm.sampling import StepNoise, from_config  # noqa: E402
from sparsedm.sampling.testing import gaussian_for  # noqa: E402

PRED = {"eps": "epsilon", "x": "sample", "v": "v_prediction"}
SCHED = {"scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
         "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)}


def _run_diffusers(scheduler, model, z, step_kwargs=None):
    for k, t in enumerate(scheduler.timesteps):
        out = model(z, torch.full((z.shape[0],), float(t)))
        kw = step_kwargs(k) if step_kwargs else {}
        z = scheduler.step(out, t, z, **kw).prev_sample
    return z


def _check(ours, theirs):
    err = (ours.double() - theirs.double()).abs()
    scale = theirs.double().abs().max().item()
    assert err.max().item() <= 2e-4 * max(scale, 1.0), f"max err {err.max().item():.3e}, mean {err.mean().item():.3e}"


@pytest.mark.parametrize("prediction", ["eps", "x", "v"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps,spacing", [(10, "leading"), (25, "trailing"), (7, "leading")])
def test_ddim_matches_diffusers(prediction, eta, steps, spacing):
    cfg = {"kind": "ddim", "eta": eta, "steps": steps, "prediction": prediction, "spacing": spacing,
           "schedule": {"name": "scaled_linear"}}
    model = gaussian_for(cfg, mu=0.3, std=0.6)
    ours_sampler = from_config(cfg)
    sch = diffusers.DDIMScheduler(num_train_timesteps=1000, **SCHED["scaled_linear"], clip_sample=False,
                                  set_alpha_to_one=True, steps_offset=0, prediction_type=PRED[prediction],
                                  timestep_spacing=spacing)
    sch.set_timesteps(steps)
    assert [int(t) for t in sch.timesteps] == [int(p.t) for p in ours_sampler.grid()[:-1]]
    x_T = torch.randn(3, 2, 4, 4)
    seeds = [11, 12, 13]
    noise = StepNoise(seeds, x_T.shape[1:], "cpu")
    ours = ours_sampler.sample(model, x_T, noise=noise)
    theirs = _run_diffusers(sch, model, x_T, (lambda k: {"eta": eta, "variance_noise": noise(k)}) if eta else
                            (lambda k: {"eta": 0.0}))
    _check(ours, theirs)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [8, 20])
def test_dpm_solver_pp_matches_diffusers(order, solver_type, prediction, steps):
    cfg = {"kind": "dpm_solver++", "order": order, "solver_type": solver_type, "steps": steps, "prediction": prediction,
           "schedule": {"name": "scaled_linear"}, "spacing": "linspace", "final": "clean", "lower_order_final": "diffusers"}
    model = gaussian_for(cfg, mu=-0.2, std=0.5)
    sch = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, **SCHED["scaled_linear"], solver_order=order,
                                                prediction_type=PRED[prediction], algorithm_type="dpmsolver++",
                                                solver_type=solver_type, lower_order_final=True, final_sigmas_type="zero",
                                                timestep_spacing="linspace")
    sch.set_timesteps(steps)
    x_T = torch.randn(2, 3, 4, 4)
    _check(from_config(cfg).sample(model, x_T), _run_diffusers(sch, model, x_T))


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [6, 18])
def test_dpm_solver_matches_diffusers(order, steps):
    # DPM-Solver (noise prediction) ends at index 0's sigma ("sigma_min" in diffusers)
    cfg = {"kind": "dpm_solver", "order": order, "steps": steps, "prediction": "eps",
           "schedule": {"name": "linear", "beta_start": 1e-4, "beta_end": 0.02}, "spacing": "linspace", "final": "alpha_0",
           "lower_order_final": "diffusers"}
    model = gaussian_for(cfg, mu=0.4, std=0.4)
    sch = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, **SCHED["linear"], solver_order=order,
                                                prediction_type="epsilon", algorithm_type="dpmsolver",
                                                lower_order_final=True, final_sigmas_type="sigma_min",
                                                timestep_spacing="linspace")
    sch.set_timesteps(steps)
    x_T = torch.randn(2, 1, 4, 4)
    _check(from_config(cfg).sample(model, x_T), _run_diffusers(sch, model, x_T))


def test_scaled_linear_and_cosine_betas_match_diffusers():
    from sparsedm.sampling import make_betas

    sch = diffusers.DDIMScheduler(num_train_timesteps=1000, **SCHED["scaled_linear"])
    torch.testing.assert_close(torch.from_numpy(make_betas("scaled_linear", 1000)).float(), sch.betas, rtol=1e-6, atol=0)
