"""CUDA-graph capture of the network call for static shapes.

A diffusion step at small batch is launch-bound (hundreds of small kernels for a U-ViT-S/2
forward), so replaying the forward as one graph removes the CPU launch cost. Only the network
is captured: the solver's update is a handful of elementwise ops on host-computed scalars and
runs eagerly. Inputs are copied into static buffers before each replay and the output is
cloned after it (a multistep solver keeps earlier outputs, which the next replay would
overwrite).
"""

from __future__ import annotations

from typing import Callable

import torch


class _Captured:
    def __init__(self, graph, z, t, kwargs, out):
        self.graph, self.z, self.t, self.kwargs, self.out = graph, z, t, kwargs, out


class GraphedModel:
    """``GraphedModel(model)(z, t, **kwargs)`` == ``model(z, t, **kwargs)``, replayed from a CUDA
    graph captured on the first call for each (shape, dtype) signature."""

    def __init__(self, model: Callable, warmup: int = 2):
        if not torch.cuda.is_available():
            raise RuntimeError("cuda_graph=True needs a CUDA GPU; run without --cuda-graph on this machine")
        self.model = model
        self.warmup = warmup
        self.graphs: dict = {}
        self.pool = torch.cuda.graph_pool_handle()

    @staticmethod
    def _signature(z, t, kwargs):
        return (tuple(z.shape), z.dtype, z.device, tuple(t.shape), t.dtype,
                tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(kwargs.items())))

    def _capture(self, z, t, kwargs) -> _Captured:
        if z.device.type != "cuda":
            raise RuntimeError(f"cuda_graph=True needs inputs on a CUDA device, got {z.device}")
        sz, st = z.clone(), t.clone()
        skw = {k: v.clone() for k, v in kwargs.items()}
        side = torch.cuda.Stream(device=z.device)
        side.wait_stream(torch.cuda.current_stream(z.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # lazy init, cuBLAS handles, autotuning happen here
                self.model(sz, st, **skw)
        torch.cuda.current_stream(z.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.model(sz, st, **skw)
        return _Captured(graph, sz, st, skw, out)

    def __call__(self, z: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        key = self._signature(z, t, kwargs)
        cap = self.graphs.get(key)
        if cap is None:
            cap = self.graphs[key] = self._capture(z, t, kwargs)
        cap.z.copy_(z)
        cap.t.copy_(t)
        for k, v in kwargs.items():
            cap.kwargs[k].copy_(v)
        cap.graph.replay()
        return cap.out.clone()
