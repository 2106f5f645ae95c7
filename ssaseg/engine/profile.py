"""Model cost: parameters, FLOPs, latency and peak memory, with the conditions stated.

Latency: batch 1 at ``input_size``, ``warmup`` untimed passes, then the median of ``repeats``
timed passes; CUDA-synchronised on a GPU, a fixed thread count on the CPU. Every figure is
written together with batch size, resolution, precision, device/threads, warm-up and repeats.
"""

from __future__ import annotations

import resource
import statistics
import time

import torch
from torch import nn

from ssaseg.engine.device import autocast
from ssaseg.engine.flops import count_flops_full, count_flops_mmcv, count_params


def params_by_part(model: nn.Module) -> dict[str, int]:
    """Trainable parameters of backbone, head and classifier, all of them (``params_total``)
    and those an inference pass uses (``params_deployed``: SSA's teacher left out), the way the
    published tables count them."""
    parts = {f"params_{name}": count_params(getattr(model, name), deployed=False)
             for name in ("backbone", "head", "classifier")}
    parts["params_total"] = count_params(model, deployed=False)
    parts["params_deployed"] = count_params(model, deployed=True)
    return parts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_latency(model: nn.Module, images: torch.Tensor, warmup: int, repeats: int,
                    precision: str = "fp32") -> list[float]:
    """Per-pass wall times in milliseconds (``repeats`` of them, after ``warmup`` passes)."""
    device = images.device
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    model.eval()
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        with autocast(device, dtype):
            model(images)
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    return times


def peak_memory_mb(model: nn.Module, images: torch.Tensor) -> tuple[float, str]:
    """Peak memory of one inference pass: CUDA allocator peak, or the process's peak RSS."""
    device = images.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            model(images)
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    with torch.no_grad():
        model(images)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS (CPU)"


def profile_model(model: nn.Module, input_size: tuple[int, int], device: torch.device,
                  warmup: int, repeats: int, threads: int, precision: str = "fp32",
                  mmcv_counting: dict | None = None) -> dict:
    """Every cost figure of ``model`` with the conditions it was measured under.

    ``mmcv_counting``: how the reference looks to mmcv's counter, the keyword arguments of
    :func:`ssaseg.engine.flops.count_flops_mmcv`
    (:attr:`ssaseg.models.zoo.ModelSpec.mmcv_counting`).
    """
    if device.type == "cpu":
        torch.set_num_threads(threads)
    model = model.to(device).eval()
    images = torch.randn(1, 3, *input_size, device=device)
    result: dict = dict(params_by_part(model))
    result["flops_full"] = count_flops_full(model, images)
    result["flops_mmcv"] = count_flops_mmcv(model, images, **(mmcv_counting or {}))
    times = measure_latency(model, images, warmup, repeats, precision)
    result.update(
        latency_ms_median=statistics.median(times),
        latency_ms_min=min(times),
        latency_ms_max=max(times),
    )
    result["peak_memory_mb"], result["peak_memory_kind"] = peak_memory_mb(model, images)
    result["conditions"] = {
        "batch_size": 1, "input_size": list(input_size), "precision": precision,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu, {torch.get_num_threads()} threads"),
        "warmup": warmup, "repeats": repeats, "torch": torch.__version__,
    }
    return result
