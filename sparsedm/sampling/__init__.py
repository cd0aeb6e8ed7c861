"""Samplers for the models sparsedm runs (docs/SAMPLING.md).

``from_config(cfg)`` builds a sampler from the plain dict a converted file's manifest carries;
``Sampler.sample(model, x_T, ...)`` runs it. ``sparsedm sample`` (sampling/cli.py) wraps the
whole thing: loading, per-sample seeds, batching, CUDA graphs, torchrun sharding, PNG and .npz.
"""

from sparsedm.sampling.denoiser import Denoiser, to_x0_eps
from sparsedm.sampling.noise import StepNoise, initial_noise
from sparsedm.sampling.samplers import (DDIM, KINDS, DPMSolverMultistep, EulerMaruyama, Sampler, default_time_input,
                                        from_config)
from sparsedm.sampling.schedules import (CosineLogSNR, Discrete, Schedule, ScheduleError, TimePoint, VPLinear, make_betas,
                                         make_grid, schedule_from_config)

__all__ = [
    "CosineLogSNR", "DDIM", "DPMSolverMultistep", "Denoiser", "Discrete", "EulerMaruyama", "KINDS", "Sampler", "Schedule",
    "ScheduleError", "StepNoise", "TimePoint", "VPLinear", "default_time_input", "from_config", "initial_noise",
    "make_betas", "make_grid", "schedule_from_config", "to_x0_eps",
]
