"""The timing harness, driven by a fake clock."""

import pytest

from sparsedm.bench.timing import measure, rotation_copies


class FakeTimer:
    """Returns scripted durations, one per start/stop pair."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.starts = 0

    def start(self):
        self.starts += 1

    def stop(self):
        return self.durations.pop(0)


def test_median_of_timed_calls_after_warmup():
    calls = []
    timer = FakeTimer([5.0, 1.0, 3.0, 100.0, 2.0])
    m = measure(calls.append, copies=3, warmup=4, reps=5, timer=timer)
    assert m.median_ms == 3.0 and m.min_ms == 1.0 and m.samples == [5.0, 1.0, 3.0, 100.0, 2.0]
    assert timer.starts == 5  # warm-up calls are not timed
    # 4 warm-up + 5 timed calls, rotating over the 3 input copies without restarting.
    assert calls == [0, 1, 2, 0, 1, 2, 0, 1, 2]


def test_every_copy_is_warmed_before_timing():
    calls = []
    measure(calls.append, copies=4, warmup=1, reps=2, timer=FakeTimer([1.0, 1.0]))
    assert calls[:4] == [0, 1, 2, 3]  # warm-up visits each copy once, even with warmup=1
    assert len(calls) == 6


def test_sync_runs_between_warmup_and_timing():
    events = []
    measure(lambda i: events.append("call"), warmup=2, reps=1, timer=FakeTimer([1.0]), sync=lambda: events.append("sync"))
    assert events == ["call", "call", "sync", "call"]


def test_rotation_copies_exceed_l2_budget():
    assert rotation_copies(1 << 20, budget=8 << 20) == 8
    assert rotation_copies(3 << 20, budget=8 << 20) == 3  # 9 MiB > 8 MiB
    assert rotation_copies(1 << 30, budget=8 << 20) == 1
    assert rotation_copies(1, budget=8 << 20, max_copies=16) == 16


def test_bad_arguments():
    with pytest.raises(ValueError, match="reps >= 1"):
        measure(lambda i: None, reps=0)


def test_a_lead_shorter_than_the_dispatch_is_reported(caplog):
    """A timer that saw its start event fire before the call was queued (the CUDA timer's
    lead_too_short count) makes measure() say so: those times include host dispatch."""
    import logging

    from sparsedm.bench.timing import measure

    class LeadTooShort:
        lead_cycles, lead_too_short = 1000, 0

        def start(self):
            pass

        def stop(self):
            self.lead_too_short += 1
            return 1.0

    with caplog.at_level(logging.WARNING, logger="sparsedm.bench"):
        measure(lambda i: None, reps=8, warmup=1, timer=LeadTooShort())
    assert "in 8 of 8 calls the GPU busy-wait (1000 cycles) ended before the call was queued" in caplog.text
