"""The timing harness behind every sparsedm benchmark.

Method (docs/BENCHMARKS.md): random inputs, several copies rotated so that one call never
finds the previous call's operands in L2, a warm-up, then ``reps`` individually timed calls;
the median is reported. On CUDA each call is timed with CUDA events, the call queued behind a
short GPU busy-wait so that the span is GPU time, not Python dispatch (LEAD_CYCLES); on CPU
with ``time.perf_counter``. The timer is injectable so the harness itself is tested with a fake
clock.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import torch

log = logging.getLogger("sparsedm.bench")

__all__ = ["Timer", "CpuTimer", "CudaEventTimer", "Measurement", "measure", "rotation_copies", "timer_for"]

# Rotate inputs until the working set exceeds this many bytes: twice the largest L2 of the
# GPUs we target (H100: 50 MB), so no call is served from the previous call's cache lines.
ROTATION_BYTES = 128 * 2**20
MAX_COPIES = 32


class Timer(Protocol):
    def start(self) -> None: ...

    def stop(self) -> float:
        """Milliseconds since ``start``."""


class CpuTimer:
    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        return (time.perf_counter() - self._t0) * 1e3


# GPU busy-wait queued before each timed call's start event, in clock cycles (about 100 us at
# 2 GHz). Without it the stream is idle when the start event is recorded, so the measured span
# also holds the host's Python dispatch of the call (tens of microseconds, as long as a small-M
# GEMM itself); with it the call is already queued when the GPU reaches the start event, and the
# span is the GPU's work alone, what a CUDA-graph replay of a model pays.
LEAD_CYCLES = 200_000


class CudaEventTimer:
    """Times the work queued on the current stream between start and stop.

    ``lead_cycles`` > 0 queues that much GPU busy-wait before the start event (see
    LEAD_CYCLES): GPU time only. 0 times from an idle stream: host dispatch included.
    """

    def __init__(self, lead_cycles: int = LEAD_CYCLES):
        self.lead_cycles = int(lead_cycles)
        # timed calls whose busy-wait ended before the host had queued the call (the start event
        # had already fired when the call returned): host dispatch leaked into those times
        self.lead_too_short = 0

    def start(self) -> None:
        self._begin = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        if self.lead_cycles > 0:
            torch.cuda._sleep(self.lead_cycles)
        self._begin.record()

    def stop(self) -> float:
        if self.lead_cycles > 0 and self._begin.query():
            self.lead_too_short += 1
        self._end.record()
        self._end.synchronize()
        return self._begin.elapsed_time(self._end)


def timer_for(device: torch.device | str, lead_cycles: int = LEAD_CYCLES) -> Timer:
    """CUDA events (GPU time, after ``lead_cycles`` of queued busy-wait) on CUDA, else the host clock."""
    return CudaEventTimer(lead_cycles) if torch.device(device).type == "cuda" else CpuTimer()


@dataclass
class Measurement:
    median_ms: float
    min_ms: float
    mean_ms: float
    reps: int
    warmup: int
    copies: int
    samples: list[float]


def rotation_copies(bytes_per_call: int, budget: int = ROTATION_BYTES, max_copies: int = MAX_COPIES) -> int:
    """How many input copies to rotate through so their total exceeds ``budget`` bytes."""
    if bytes_per_call <= 0:
        return 1
    return max(1, min(max_copies, math.ceil(budget / bytes_per_call)))


def measure(
    fn: Callable[[int], Any],
    *,
    copies: int = 1,
    warmup: int = 5,
    reps: int = 20,
    timer: Optional[Timer] = None,
    sync: Optional[Callable[[], None]] = None,
) -> Measurement:
    """Time ``fn(i)``, where ``i`` selects which of ``copies`` input sets to use.

    ``warmup`` untimed calls first (compilation, autotuning, caches; at least one per copy),
    then ``reps`` timed calls, each on the next input copy. Returns the median and the raw
    samples.
    """
    if reps < 1 or warmup < 0 or copies < 1:
        raise ValueError(f"need reps >= 1, warmup >= 0 and copies >= 1, got {reps}, {warmup}, {copies}")
    timer = timer or CpuTimer()
    # Every input copy is used once before timing: per-tensor caches (re-laid-out weights,
    # cuSPARSELt plans) are then built for all of them, not inside timed calls.
    warmup = max(warmup, copies)
    for i in range(warmup):
        fn(i % copies)
    if sync is not None:
        sync()
    samples = []
    short_before = getattr(timer, "lead_too_short", 0)
    for i in range(reps):
        timer.start()
        fn((warmup + i) % copies)
        samples.append(timer.stop())
    short = getattr(timer, "lead_too_short", 0) - short_before
    if short > reps // 4:
        log.warning("timing: in %d of %d calls the GPU busy-wait (%d cycles) ended before the call was queued, so "
                    "host dispatch is in those times; raise sparsedm.bench.timing.LEAD_CYCLES", short, reps,
                    getattr(timer, "lead_cycles", 0))
    return Measurement(
        median_ms=statistics.median(samples),
        min_ms=min(samples),
        mean_ms=statistics.fmean(samples),
        reps=reps,
        warmup=warmup,
        copies=copies,
        samples=samples,
    )
