"""The ProtoSeg classifier's share of a SegFormer-B0 training step, against the linear classifier.

One training step = zero_grad, forward, backward, optimizer step (AdamW) of the whole Segmentor.
The classifier alone = its forward and backward (loss terms summed, gradient down to the head
feature) on the head's feature map for the same batch. The two alternate, so that both see the
same machine load; the share is the median of their per-repeat ratios. Inside the classifier, the
clustering (Sinkhorn over all classes at once) and the momentum update are timed on their own.
Every figure is a median over the repeats, after warm-up, in fp32 on the given device.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_protoseg                 # 8 x 512 x 512, K = 150
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_protoseg --batch 2 --repeats 3 --threads 1
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_protoseg --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from ssaseg.models.zoo import build_segmentor


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def blocky_labels(batch: int, size: int, classes: int, block: int, seed: int) -> torch.Tensor:
    """Random classes on a grid of block x block squares, a few squares ignored (255)."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, classes, (batch, size // block, size // block), generator=gen)
    cells[torch.rand(cells.shape, generator=gen) < 0.05] = 255
    return cells.repeat_interleave(block, 1).repeat_interleave(block, 2)


def bench(name: str, args, device: torch.device) -> dict[str, object]:
    """Alternates a training step and a classifier step, so that both see the same load."""
    torch.manual_seed(0)
    model = build_segmentor(args.model, name, args.classes).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = blocky_labels(args.batch, args.size, args.classes, args.block, seed=1).to(device)
    with torch.no_grad():
        feature = model.head(model.backbone(images)).feature
    feature.requires_grad_(True)
    clf = model.classifier

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(images, labels).total_loss.backward()
        optimizer.step()

    def classifier_step() -> None:
        feature.grad = None
        clf.zero_grad(set_to_none=True)
        sum(clf(feature, labels).losses.values()).backward()

    parts: dict[str, list[float]] = {}
    for part in ("cluster", "update_prototypes"):
        if hasattr(clf, part):
            setattr(clf, part, _stopwatch(getattr(clf, part), parts.setdefault(part, []), device))
    times: dict[str, list[float]] = {"step": [], "classifier": []}
    for i in range(args.warmup + args.repeats):
        t_step, t_clf = seconds(step, device), seconds(classifier_step, device)
        if i >= args.warmup:
            times["step"].append(t_step)
            times["classifier"].append(t_clf)
        print(f"  {name} {i}: step {t_step:.3f} s, classifier {t_clf:.3f} s", file=sys.stderr,
              flush=True)
    median = statistics.median
    result: dict[str, object] = {
        "feature": tuple(feature.shape),
        "step_s": median(times["step"]),
        "classifier_s": median(times["classifier"]),
        "share": median(c / s for c, s in zip(times["classifier"], times["step"])),
    }
    for part, calls in parts.items():
        # two calls per repeat (one in the step, one in the classifier step): keep the latter
        result[f"{part}_s"] = median(calls[-args.repeats * 2 + 1 :: 2])
    return result


def _stopwatch(fn: Callable, sink: list[float], device: torch.device) -> Callable:
    def wrapped(*a, **kw):
        sync(device)
        start = time.perf_counter()
        out = fn(*a, **kw)
        sync(device)
        sink.append(time.perf_counter() - start)
        return out

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="segformer_b0")
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512, help="square input side, pixels")
    parser.add_argument("--block", type=int, default=32, help="side of a label square, pixels")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classifiers", nargs="+", default=["linear", "protoseg"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"{args.model}, K = {args.classes}, batch {args.batch} x {args.size} x {args.size}, fp32, "
        f"{where}, torch {torch.__version__}, AdamW; "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )
    results = {name: bench(name, args, device) for name in args.classifiers}
    header = (
        "| classifier | feature (B, C, h, w) | train step s | classifier fwd+bwd s | share |"
    )
    print(header)
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['feature']} | {r['step_s']:.3f} | {r['classifier_s']:.3f} | "
            f"{100 * r['share']:.1f} % |"
        )
    for name, r in results.items():
        for part in ("cluster", "update_prototypes"):
            if f"{part}_s" in r:
                print(
                    f"{name}: {part} {1000 * r[f'{part}_s']:.1f} ms "
                    f"({100 * r[f'{part}_s'] / r['classifier_s']:.1f} % of the classifier, "
                    f"{100 * r[f'{part}_s'] / r['step_s']:.2f} % of the step)"
                )


if __name__ == "__main__":
    main()
