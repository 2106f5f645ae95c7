"""Paired inference latency of one baseline with each of its classifiers, and the FLOP floor.

Timing every run in its own job lets the machine's drift between jobs exceed the effect being
measured (``reports/synthetic_seeds``: SegFormer-B0 + ssa 448.6 ms, + linear 519.9 ms, though
ssa does strictly more work). Here the baseline is built once per classifier, all of them in one
process, and :func:`ssaseg.paired_timing.time_paired` times one batch-1 forward pass of each per
round, interleaved, the order of every round shuffled by a seeded RNG, after warm-up, adding
rounds until the 95 % bootstrap interval of every ratio to ``linear`` is within
``+-target_half_width`` (or a rounds/time cap ends it; the result says which).

The FLOP floor of a classifier is its full-count FLOPs ratio to linear
(:func:`ssaseg.engine.flops.count_flops_full`, torch.utils.flop_counter, attention matmuls
included). If time were proportional to FLOPs the latency ratio would equal it; a latency
ratio whose whole interval lies above the floor is overhead beyond arithmetic (memory traffic,
small kernels, launches) that an implementation could remove.

    python -m ssaseg profile-latency --params params/default.yaml --dataset synthetic \
        --model segformer_b0 --seed 0          # trained weights of seed 0's runs
    python -m ssaseg profile-latency ... --untrained   # the architecture as deployed, eval mode
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ssaseg.engine.device import autocast
from ssaseg.engine.flops import count_flops_full
from ssaseg.paired_timing import PairedTiming, time_paired

BASELINE = "linear"
RESULT_FILE = "paired_latency.json"
TABLE_FILE = "paired_latency.csv"

_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_pass(model: nn.Module, images: torch.Tensor, precision: str) -> Callable[[], None]:
    """A zero-argument callable running one inference pass of ``model`` on ``images``,
    synchronised on CUDA so that its wall time is the pass's."""
    device = images.device
    dtype = _DTYPES[precision]

    @torch.no_grad()
    def run() -> None:
        _sync(device)
        with autocast(device, dtype):
            model(images)
        _sync(device)

    return run


def floor_verdict(low: float, high: float, floor: float) -> str:
    """``above`` when the whole interval lies above the FLOP floor, ``below`` when below it,
    else ``at``."""
    if low > floor:
        return "above"
    if high < floor:
        return "below"
    return "at"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"


def measure_paired_latency(models: Mapping[str, nn.Module], input_size: tuple[int, int],
                           device: torch.device, *, threads: int = 1, precision: str = "fp32",
                           warmup: int = 5, min_rounds: int = 20, max_rounds: int = 2000,
                           max_seconds: float = 1800.0, target_half_width: float = 0.02,
                           check_every: int = 10, seed: int = 0, n_resamples: int = 2000,
                           progress: Callable[[str], None] | None = None,
                           timer: Callable[..., PairedTiming] = time_paired) -> dict:
    """Latency of each model (classifier name -> model, :data:`BASELINE` among them), paired,
    with the ratio to the baseline, its interval and the FLOP floor, and every condition.

    ``timer`` is :func:`ssaseg.paired_timing.time_paired` (tests pass one on a fake clock)."""
    if BASELINE not in models:
        raise ValueError(f"paired latency needs the {BASELINE!r} classifier as the baseline; "
                         f"got {sorted(models)}")
    if device.type == "cpu":
        torch.set_num_threads(threads)
    models = {name: m.to(device).eval() for name, m in models.items()}
    images = torch.randn(1, 3, *input_size, generator=torch.Generator().manual_seed(seed))
    images = images.to(device)                                      # (1, 3, H, W)
    flops = {name: count_flops_full(m, images) for name, m in models.items()}
    fns = {name: forward_pass(m, images, precision) for name, m in models.items()}
    load_before = os.getloadavg()[0]
    timing = timer(fns, BASELINE, warmup=warmup, min_rounds=min_rounds, max_rounds=max_rounds,
                   max_seconds=max_seconds, target_half_width=target_half_width,
                   check_every=check_every, seed=seed, n_resamples=n_resamples,
                   progress=progress)
    classifiers = {}
    for name in models:
        entry = {"median_ms": timing.median_ms[name], "flops_full": flops[name],
                 "flops_ratio": flops[name] / flops[BASELINE]}
        if name == BASELINE:
            entry.update(ratio=1.0, low=1.0, high=1.0, floor_verdict="at")
        else:
            r = timing.ratios[name]
            entry.update(ratio=r.ratio, low=r.low, high=r.high,
                         floor_verdict=floor_verdict(r.low, r.high, entry["flops_ratio"]))
        classifiers[name] = entry
    return {
        "baseline": BASELINE,
        "classifiers": classifiers,
        "rounds": timing.rounds,
        "target_half_width": target_half_width,
        "target_reached": timing.target_reached,
        "stop_reason": timing.stop_reason,
        "seconds": timing.seconds,
        "times_ms": timing.times_ms,
        "conditions": {
            "batch_size": 1, "input_size": list(input_size), "precision": precision,
            "device": device_name(device), "threads": torch.get_num_threads(),
            "warmup_rounds": warmup, "rounds": timing.rounds, "seed": seed,
            "confidence": 0.95, "statistic": "median of per-round ratios, BCa bootstrap",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__,
            # 1-minute load average before and after: other processes on the machine
            "load_average": [load_before, os.getloadavg()[0]], "cpu_count": os.cpu_count(),
        },
    }


def result_table(result: dict, dataset: str, model: str) -> str:
    """The CSV of one baseline's result: a row per classifier."""
    cols = ["dataset", "model", "classifier", "median_ms", "ratio", "low", "high",
            "flops_full", "flops_ratio", "floor_verdict"]
    lines = [",".join(cols + ["rounds", "target_reached"])]
    for name, e in result["classifiers"].items():
        values = [dataset, model, name, f"{e['median_ms']:.4f}", f"{e['ratio']:.5f}",
                  f"{e['low']:.5f}", f"{e['high']:.5f}", str(e["flops_full"]),
                  f"{e['flops_ratio']:.5f}", e["floor_verdict"]]
        lines.append(",".join(values + [str(result["rounds"]), str(result["target_reached"])]))
    return "\n".join(lines) + "\n"
