"""GPU: CUDA-graph sampling equals eager sampling; the sampling loop issues no host syncs."""

import pytest
import torch

from sparsedm.sampling import StepNoise, from_config
from sparsedm.sampling.graphs import GraphedModel
from sparsedm.sampling.testing import TinyConvNet

pytestmark = pytest.mark.gpu

CONFIGS = [
    {"kind": "dpm_solver++", "order": 3, "steps": 12, "schedule": {"name": "vp_linear"}},
    {"kind": "euler_maruyama", "steps": 20, "schedule": {"name": "vp_linear"}},
    {"kind": "ddim", "eta": 1.0, "steps": 8, "prediction": "v", "schedule": {"name": "cosine", "n_timesteps": 1024},
     "time_input": {"kind": "step_index", "scale": 1}},
    {"kind": "ddim", "steps": 8, "prediction": "v", "schedule": {"name": "cosine_logsnr"}, "cfg_scale": 0.4, "null_class": 10},
]


def _net():
    return TinyConvNet(3, 32, num_classes=10).cuda().eval()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c["kind"])
def test_cuda_graph_equals_eager(cfg):
    net = _net()
    sampler = from_config(cfg)
    x_T = torch.randn(4, 3, 16, 16, device="cuda")
    cond = {"y": torch.arange(4, device="cuda")}
    noise = StepNoise([1, 2, 3, 4], (3, 16, 16), "cuda")
    eager = sampler.sample(net, x_T, cond=cond, noise=noise)
    graphed = GraphedModel(net)
    out = sampler.sample(graphed, x_T, cond=cond, noise=noise)
    out2 = sampler.sample(graphed, x_T, cond=cond, noise=noise)  # replays
    assert len(graphed.graphs) == 1
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c["kind"])
@pytest.mark.parametrize("graph", [False, True])
def test_no_host_sync_inside_the_loop(cfg, graph):
    net = _net()
    model = GraphedModel(net) if graph else net
    sampler = from_config(cfg)
    x_T = torch.randn(4, 3, 16, 16, device="cuda")
    cond = {"y": torch.arange(4, device="cuda")}
    noise = StepNoise([1, 2, 3, 4], (3, 16, 16), "cuda")
    sampler.sample(model, x_T, cond=cond, noise=noise)  # warm-up: capture, cuDNN/cuBLAS init
    torch.cuda.synchronize()
    # the net-time tensor sample() builds from host floats is a host-to-device copy, which
    # sync-debug mode does not flag; any device-to-host read in the loop raises
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sampler.sample(model, x_T, cond=cond, noise=noise)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all()


def test_cli_cuda_graph_fp16(tmp_path):
    from sparsedm.sampling.cli import main

    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    base = ["--factory=sparsedm.sampling.testing:tiny_factory", "-n", "6", "--batch-size", "4", "--no-progress",
            "--device", "cuda", "--dtype", "fp16"]
    assert main(base + ["--npz", str(a)]) == 0
    assert main(base + ["--npz", str(b), "--cuda-graph"]) == 0
    import numpy as np

    diff = np.abs(np.load(a)["arr_0"].astype(int) - np.load(b)["arr_0"].astype(int))
    assert diff.max() <= 1


def _optimized_uvit(quant=None):
    """A tiny class-conditional U-ViT on the sparse (and int8) modules, fp16."""
    import sparsedm
    from sparsedm.models import PRESETS, build, sparse_layer_names

    torch.manual_seed(0)
    config = dict(PRESETS["uvit-s2-cifar10"]["config"], img_size=16, embed_dim=128, depth=4, num_heads=4, num_classes=11)
    model = build("uvit", config, device="cpu").cuda().half().eval()
    sparsedm.optimize(model, prune=True, include=sparse_layer_names("uvit", model), quant=quant)
    assert sparsedm.last_report().changed
    return model


@pytest.mark.parametrize("quant", [None, "int8"])
@pytest.mark.parametrize("graph", [False, True])
def test_optimized_model_loop_has_no_host_sync_and_graph_equals_eager(graph, quant):
    """The sparsedm ops inside a sampling loop (backend choice made at warm-up): no device-to-host
    read per step, and the CUDA-graph replay gives the eager result."""
    model = _optimized_uvit(quant)
    cfg = {"kind": "dpm_solver++", "order": 2, "steps": 6, "schedule": {"name": "vp_linear"}, "cfg_scale": 0.4, "null_class": 10}
    sampler = from_config(cfg)
    x_T = torch.randn(4, 3, 16, 16, device="cuda")
    cond = {"y": torch.arange(4, device="cuda")}
    noise = StepNoise([1, 2, 3, 4], (3, 16, 16), "cuda")
    runner = GraphedModel(model) if graph else model
    run = dict(cond=cond, noise=noise, dtype=torch.float16)
    eager = sampler.sample(model, x_T, **run)  # warm-up: autotune, layouts; the graph is captured next
    sampler.sample(runner, x_T, **run)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sampler.sample(runner, x_T, **run)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, eager, rtol=2e-3, atol=2e-3)
