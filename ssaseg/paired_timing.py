"""Paired timing: several candidates timed in one process, interleaved, and their ratio to a
baseline with a bootstrap interval.

Why paired: timing each candidate in its own job lets the machine's drift between jobs (other
processes, frequency, cache) exceed the effect being measured. Here every *round* times each
candidate once, in an order shuffled per round by a seeded RNG, so slow drift hits all of them
alike; the statistic is the median over rounds of the per-round ratio ``t_candidate /
t_baseline``, and its 95 % interval is a bootstrap over rounds (``scipy.stats.bootstrap``,
BCa, seeded).

Adaptive length: rounds are added in chunks until every ratio's interval lies within
``+-target_half_width`` (relative) of the ratio, or ``max_rounds`` / ``max_seconds`` is reached;
:attr:`PairedTiming.target_reached` says which.

Usage (``fns`` do the work, including any CUDA synchronisation they need)::

    timing = time_paired({"linear": step_linear, "ssa": step_ssa}, baseline="linear",
                         warmup=3, min_rounds=20, max_rounds=500, max_seconds=600, seed=0)
    timing.ratios["ssa"].ratio, timing.ratios["ssa"].low, timing.ratios["ssa"].high
    timing.median_ms["ssa"]; timing.to_dict()   # JSON-ready, conditions included
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class RatioInterval:
    """Median over rounds of ``t_candidate / t_baseline`` and its bootstrap interval."""

    ratio: float
    low: float
    high: float
    confidence: float

    @property
    def half_width(self) -> float:
        """Largest distance from the ratio to an interval end, relative to the ratio."""
        return max(self.ratio - self.low, self.high - self.ratio) / self.ratio

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "low": self.low, "high": self.high,
                "confidence": self.confidence, "half_width": self.half_width}


@dataclass
class PairedTiming:
    """Everything :func:`time_paired` measured."""

    baseline: str
    times_ms: dict[str, list[float]]          # candidate -> one time per round (ms)
    orders: list[list[str]]                   # the order each round ran in
    ratios: dict[str, RatioInterval]          # every candidate but the baseline
    target_half_width: float
    target_reached: bool
    stop_reason: str                          # "target", "max_rounds" or "max_seconds"
    warmup: int
    seed: int
    seconds: float                            # wall time of the timed rounds
    median_ms: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.median_ms = {name: float(np.median(t)) for name, t in self.times_ms.items()}

    @property
    def rounds(self) -> int:
        return len(self.orders)

    def to_dict(self) -> dict:
        return {
            "baseline": self.baseline,
            "median_ms": self.median_ms,
            "ratios": {name: r.to_dict() for name, r in self.ratios.items()},
            "rounds": self.rounds, "warmup": self.warmup, "seed": self.seed,
            "target_half_width": self.target_half_width,
            "target_reached": self.target_reached, "stop_reason": self.stop_reason,
            "seconds": self.seconds,
            "times_ms": self.times_ms,
        }


def ratio_interval(candidate_ms, baseline_ms, confidence: float = 0.95, n_resamples: int = 2000,
                   seed: int = 0, method: str = "BCa") -> RatioInterval:
    """Median of the paired ratios ``candidate_ms[i] / baseline_ms[i]`` with a bootstrap
    interval over rounds (rounds resampled as pairs). Falls back to the percentile method where
    BCa is undefined (e.g. all ratios equal)."""
    candidate = np.asarray(candidate_ms, dtype=float)
    base = np.asarray(baseline_ms, dtype=float)
    if candidate.shape != base.shape or candidate.ndim != 1 or len(candidate) < 2:
        raise ValueError("ratio_interval needs two 1-D sequences of equal length >= 2, "
                         f"got {candidate.shape} and {base.shape}")
    ratios = candidate / base                                   # (rounds,)
    ratio = float(np.median(ratios))
    if np.all(ratios == ratios[0]):
        return RatioInterval(ratio, ratio, ratio, confidence)
    low = high = float("nan")
    for how in (method, "percentile"):
        res = stats.bootstrap((ratios,), np.median, confidence_level=confidence,
                              n_resamples=n_resamples, method=how,
                              rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            break
    return RatioInterval(ratio, min(low, ratio), max(high, ratio), confidence)


def time_paired(fns: Mapping[str, Callable[[], object]], baseline: str, *, warmup: int = 3,
                min_rounds: int = 20, max_rounds: int = 1000, max_seconds: float = float("inf"),
                target_half_width: float = 0.02, check_every: int = 10, seed: int = 0,
                confidence: float = 0.95, n_resamples: int = 2000,
                clock: Callable[[], float] = time.perf_counter,
                progress: Callable[[str], None] | None = None) -> PairedTiming:
    """Time every callable in ``fns`` once per round, the order of each round shuffled by
    ``random.Random(seed)``, after ``warmup`` untimed rounds (same shuffling).

    Stops after at least ``min_rounds`` timed rounds when each ratio to ``baseline`` has a
    ``confidence`` interval within ``+-target_half_width`` of it (checked every ``check_every``
    rounds), or at ``max_rounds``, or once ``max_seconds`` of timed rounds have passed.
    ``clock`` returns seconds (injectable for tests).
    """
    if baseline not in fns:
        raise ValueError(f"baseline {baseline!r} is not one of the candidates {sorted(fns)}")
    if len(fns) < 2:
        raise ValueError("time_paired needs the baseline and at least one other candidate")
    if min_rounds < 2 or max_rounds < min_rounds:
        raise ValueError(f"need 2 <= min_rounds <= max_rounds, got {min_rounds}, {max_rounds}")
    names = list(fns)
    rng = random.Random(seed)
    for _ in range(warmup):
        for name in rng.sample(names, len(names)):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    orders: list[list[str]] = []
    started = clock()
    ratios: dict[str, RatioInterval] = {}
    stop_reason = "max_rounds"
    reached = False
    while len(orders) < max_rounds:
        order = rng.sample(names, len(names))
        for name in order:
            t0 = clock()
            fns[name]()
            times[name].append((clock() - t0) * 1000.0)
        orders.append(order)
        n = len(orders)
        due = n >= min_rounds and (n - min_rounds) % check_every == 0
        out_of_time = n >= 2 and clock() - started >= max_seconds
        if due or out_of_time or n == max_rounds:
            ratios = _ratios(times, baseline, confidence, n_resamples, seed)
            reached = n >= min_rounds and all(
                r.half_width <= target_half_width for r in ratios.values())
            if progress is not None:
                progress(f"{n} rounds: " + ", ".join(
                    f"{k} {r.ratio:.4f} [{r.low:.4f}, {r.high:.4f}]" for k, r in ratios.items()))
            if reached:
                stop_reason = "target"
                break
            if out_of_time:
                stop_reason = "max_seconds"
                break
    return PairedTiming(baseline=baseline, times_ms=times, orders=orders, ratios=ratios,
                        target_half_width=target_half_width, target_reached=reached,
                        stop_reason=stop_reason, warmup=warmup, seed=seed,
                        seconds=clock() - started)


def _ratios(times: Mapping[str, list[float]], baseline: str, confidence: float,
            n_resamples: int, seed: int) -> dict[str, RatioInterval]:
    return {name: ratio_interval(t, times[baseline], confidence, n_resamples, seed)
            for name, t in times.items() if name != baseline}
