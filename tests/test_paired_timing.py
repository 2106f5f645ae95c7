"""Paired timing on fake timers: a known ratio is covered, rounds are shuffled under the seed,
the adaptive stop obeys its caps. No real time is measured."""

from __future__ import annotations

import numpy as np
import pytest

from ssaseg.paired_timing import ratio_interval, time_paired


class FakeClock:
    """A clock that only moves when a fake workload runs; each workload costs its base time
    times a shared per-round drift times its own noise."""

    def __init__(self, seed: int = 0) -> None:
        self.now = 0.0
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float, noise: float):
        def run() -> None:
            self.now += seconds * float(np.exp(self.rng.normal(0.0, noise)))
        return run


def _fns(clock: FakeClock, noise: float = 0.02) -> dict:
    return {"linear": clock.work(0.100, noise), "ssa": clock.work(0.103, noise),
            "protoseg": clock.work(0.120, noise)}


def test_interval_covers_known_ratio_and_reaches_target():
    """Over 20 independent fake runs the 95 % intervals cover the true ratios (1.03, 1.20) in
    at least 16 (a broken interval, e.g. one around the wrong statistic, covers almost never);
    each run stops on the target."""
    covered = {"ssa": 0, "protoseg": 0}
    for seed in range(20):
        clock = FakeClock(seed)
        timing = time_paired(_fns(clock), "linear", warmup=2, min_rounds=30, max_rounds=2000,
                             target_half_width=0.01, seed=seed, clock=clock, n_resamples=499)
        assert timing.target_reached and timing.stop_reason == "target"
        assert all(len(t) == timing.rounds for t in timing.times_ms.values())
        for name, true in (("ssa", 1.03), ("protoseg", 1.20)):
            r = timing.ratios[name]
            assert r.half_width <= 0.01
            covered[name] += r.low <= true <= r.high
        assert timing.median_ms["protoseg"] == pytest.approx(120.0, rel=0.02)
    assert min(covered.values()) >= 16, covered


def test_order_shuffled_and_deterministic_under_seed():
    def orders(seed):
        clock = FakeClock(0)
        return time_paired(_fns(clock), "linear", warmup=0, min_rounds=30, max_rounds=30,
                           seed=seed, clock=clock).orders
    a, b, c = orders(5), orders(5), orders(6)
    assert a == b
    assert a != c
    assert all(sorted(o) == ["linear", "protoseg", "ssa"] for o in a)
    # every candidate takes every position: the order is not fixed
    for pos in range(3):
        assert {o[pos] for o in a} == {"linear", "ssa", "protoseg"}


def test_noisy_timers_stop_at_max_rounds_and_say_so():
    clock = FakeClock(2)
    timing = time_paired(_fns(clock, noise=0.5), "linear", warmup=0, min_rounds=10,
                         max_rounds=40, target_half_width=0.001, clock=clock)
    assert not timing.target_reached
    assert timing.stop_reason == "max_rounds" and timing.rounds == 40


def test_time_cap_stops_early():
    clock = FakeClock(2)
    timing = time_paired(_fns(clock, noise=0.5), "linear", warmup=0, min_rounds=10,
                         max_rounds=10_000, max_seconds=3.0, target_half_width=0.001,
                         clock=clock)
    assert timing.stop_reason == "max_seconds" and not timing.target_reached
    assert timing.rounds < 20


def test_ratio_interval_constant_ratio_and_bad_input():
    r = ratio_interval([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert (r.ratio, r.low, r.high) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        ratio_interval([1.0], [1.0])
    with pytest.raises(ValueError):
        time_paired({"ssa": lambda: None}, "linear")
