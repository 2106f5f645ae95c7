"""What the SSA classifier costs, three measurements:

(a) training step of the classifier alone (forward + backward of SSAClassifier and all eight
    loss terms, gradient down to the head feature) against a loop-based version of the same
    computation written below the way the reference computes it (Python loops over classes
    and images for the class centres, the distillation and the Dice targets; boundaries on the
    CPU in NumPy/SciPy, image by image). Both share one set of parameters and are checked to
    give the same losses before timing. Ratio of medians.
(b) whole-model inference latency (``Segmentor.predict``, logits upsampled to the input) of a
    baseline with ``ssa`` vs ``linear`` in one process: same backbone and head weights, the two
    models interleaved (order alternating each round), median over the rounds.
(c) parameters and FLOPs added by ``ssa`` to every baseline (K classes, square input), counted
    on the ``meta`` device: torch's full count and the mmcv convention of the papers (which does
    not see the batched matmuls where SSA does most of its work).

From the repository root, with the package installed (``pip install -e .``) or
``PYTHONPATH=.``:

    HF_HUB_OFFLINE=1 python benchmarks/bench_ssa.py                       # all three
    HF_HUB_OFFLINE=1 python benchmarks/bench_ssa.py --only train --train-repeats 3
    HF_HUB_OFFLINE=1 python benchmarks/bench_ssa.py --only infer --threads 2 --infer-rounds 20
    HF_HUB_OFFLINE=1 python benchmarks/bench_ssa.py --only cost --models segformer_b0 segnext_t

Every figure is fp32 on the CPU with a fixed torch thread count, printed with its settings.
With glibc's default allocator every tensor over 32 MB is a fresh ``mmap``, so much of (a) is
first-touch page faults (more of them in the loop-based version); to time the arithmetic alone,
run with an allocator that keeps freed memory:

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_TOP_PAD_=1000000000 \
        HF_HUB_OFFLINE=1 python benchmarks/bench_ssa.py --only train
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ssaseg.engine.flops import count_flops_full, count_flops_mmcv, count_params
from ssaseg.models.classifiers.ssa import SSAClassifier
from ssaseg.models.losses import resize_logits
from ssaseg.models.zoo import MODELS, build_segmentor

IGNORE = 255


# --------------------------------------------------------------------------- inputs


def scene_labels(batch: int, size: int, classes: int, per_image: int, seed: int) -> torch.Tensor:
    """(B, size, size) label maps that look like scenes: each image uses ``per_image`` of the
    K classes on a grid of 16 x 16 irregular cells (nearest-upsampled), 5 % of cells ignored."""
    gen = torch.Generator().manual_seed(seed)
    subset = torch.stack([torch.randperm(classes, generator=gen)[:per_image] for _ in range(batch)])
    picks = torch.randint(per_image, (batch, 256), generator=gen)
    cells = subset.gather(1, picks).view(batch, 16, 16)
    cells[torch.rand(cells.shape, generator=gen) < 0.05] = IGNORE
    return F.interpolate(cells[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()


def interleaved(fns: dict[str, Callable[[], object]], warmup: int, rounds: int) -> dict:
    """Wall and process CPU seconds (user + system, all threads) per call, the functions taking
    turns, their order reversed every other round. CPU time is what a busy shared machine
    disturbs least."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return {"wall": wall, "cpu": cpu}


# ------------------------------------------------------- (a) the loop-based reference


def cpu_boundaries(labels: torch.Tensor, width: int, margin: int) -> torch.Tensor:
    """Image by image on the CPU in NumPy, as the reference does with OpenCV: a one-pixel label
    edge, the frame blanked, a width x width dilation; back to a tensor."""
    edges = []
    for one in labels.cpu().numpy():
        edge = np.zeros(one.shape, dtype=bool)
        edge[:, :-1] |= one[:, 1:] != one[:, :-1]
        edge[:-1, :] |= one[1:, :] != one[:-1, :]
        if margin:
            inner = np.zeros_like(edge)
            inner[margin:-margin, margin:-margin] = edge[margin:-margin, margin:-margin]
            edge = inner
        # origin: for even widths the window covers offsets -width//2 .. width//2 - 1
        origin = 0 if width % 2 else -1
        dilated = ndimage.binary_dilation(edge, np.ones((width, width), bool), origin=origin)
        edges.append(dilated if width > 1 else edge)
    return torch.from_numpy(np.stack(edges)).to(labels.device)


def loop_class_centers(values, labels, fallback, ignore):
    """values (b, C, h, w), labels (b, 1, h, w): one masked sum over the batch per class."""
    centers = fallback.clone()
    for cls in labels.unique().tolist():
        if cls == ignore:
            continue
        mask = (labels == cls).float()  # (b, 1, h, w)
        center = (values * mask).sum((0, 2, 3)) / (mask.sum((0, 2, 3)) + 1e-12)  # (C,)
        onehot = torch.zeros(centers.shape[0], 1, device=values.device)
        onehot[cls] = 1
        centers = centers * (1 - onehot) + center[None] * onehot
    return centers


def loop_response_distill(student, teacher, labels, width, margin, smoothing, ignore):
    b, k, h, w = student.shape
    target = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    edges = cpu_boundaries(target, width, margin).float()
    flat = target.reshape(-1, 1)
    is_ignored = (flat == ignore).long()
    onehot = torch.zeros(b * h * w, k).scatter_(1, flat * (1 - is_ignored), 1)
    onehot = onehot.view(b, h, w, k).permute(0, 3, 1, 2)
    q = F.softmax(teacher, 1)
    loss = (-F.log_softmax(student, 1) * (smoothing * q + (1 - smoothing) * onehot)).sum(1)
    entropy = -(q * torch.log(q + 1e-12)).sum(1) * (target != ignore).float()
    parts = []
    for cls in target.unique().tolist():
        if cls == ignore:
            continue
        mask = (target == cls).float()
        on_edge = entropy * mask * edges
        inner = entropy * mask * (1 - edges)
        parts.append(((loss * on_edge).sum() / (on_edge.sum() + 1e-12)
                      + (loss * inner).sum() / (inner.sum() + 1e-12)) / 2)
    return sum(parts) / len(parts) if parts else student.sum() * 0


def loop_dice(logits, labels, ignore, smooth=1.0):
    """Per-image target masks stacked class by class, predictions picked by (image, class)."""
    images, classes, masks = [], [], []
    for i, one in enumerate(labels):
        for cls in one.unique().tolist():
            if cls == ignore:
                continue
            images.append(i)
            classes.append(cls)
            masks.append(one == cls)
    if not masks:
        return logits.sum() * 0
    pred = logits[torch.tensor(images), torch.tensor(classes)].flatten(1).sigmoid()  # (N, HW)
    target = torch.stack(masks).flatten(1).float()
    dice = 1 - (2 * (pred * target).sum(-1) + smooth) / (pred.sum(-1) + target.sum(-1) + smooth)
    return dice.sum() / len(masks)


def l2n(x, dim):
    return x / (x.norm(dim=dim, keepdim=True) + 1e-12)


def loop_cosine(pixels, centers, scale):
    b, c, h, w = pixels.shape
    return (l2n(centers, -1) @ l2n(pixels, 1).view(b, c, h * w)).view(b, -1, h, w) * scale


def loop_ssa_losses(clf: SSAClassifier, feature, labels) -> dict[str, torch.Tensor]:
    """The reference's training computation, with the parameters of ``clf``."""
    b, c, h, w = feature.shape
    weight = clf.coarse.conv.weight.squeeze()  # (K, C)
    basis = clf.position_basis
    coarse = clf.coarse(feature).logits
    position = clf.position_conv(feature)
    pixels = feature + position
    attn = coarse.view(b, -1, h * w)
    pos_in = torch.matmul(attn.softmax(-1), position.view(b, c, -1).permute(0, 2, 1))
    pos = clf.pos_mlp(torch.cat([basis.unsqueeze(0).repeat(b, 1, 1), pos_in], -1))
    soft = attn.softmax(1)
    sem_in = (soft @ feature.view(b, c, -1).permute(0, 2, 1)) / (soft.sum(-1, keepdim=True) + 1e-12)
    sem = clf.sem_mlp(torch.cat([sem_in, weight.unsqueeze(0).repeat(b, 1, 1)], -1))
    logits = loop_cosine(pixels, clf.center_proj(sem + pos), clf.temperature)

    small = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest").long()
    gt_sem_in = loop_class_centers(feature, small, weight.detach(), IGNORE)
    gt_sem = clf.teacher_sem_mlp(torch.cat([gt_sem_in, weight], -1)).unsqueeze(0).repeat(b, 1, 1)
    gt_pos_in = torch.stack([
        loop_class_centers(position[i : i + 1], small[i : i + 1], basis.detach(), IGNORE)
        for i in range(b)
    ])
    gt_pos = clf.teacher_pos_mlp(torch.cat([gt_pos_in, basis.unsqueeze(0).repeat(b, 1, 1)], -1))
    teacher = loop_cosine(pixels, clf.teacher_center_proj(gt_sem + gt_pos), clf.temperature)

    size = labels.shape[-2:]
    up, up_t, up_c = (resize_logits(x, size) for x in (logits, teacher, coarse))

    def relation(protos):
        protos = l2n(protos, -1)
        rel = F.softmax(torch.matmul(protos, protos.permute(0, 2, 1).detach()) * 15, -1)
        return rel * (1 - torch.eye(rel.shape[-1]).unsqueeze(0).repeat(b, 1, 1))

    wts = clf.weights
    return {
        "ce": wts["ce"] * F.cross_entropy(up, labels, ignore_index=IGNORE),
        "coarse_ce": wts["coarse_ce"] * F.cross_entropy(up_c, labels, ignore_index=IGNORE),
        "teacher_ce": wts["teacher_ce"] * F.cross_entropy(up_t, labels, ignore_index=IGNORE),
        "response_distill": wts["response_distill"] * loop_response_distill(
            logits, teacher.detach(), labels, clf.boundary_width, clf.boundary_margin,
            clf.distill_smoothing, IGNORE),
        "dice": wts["dice"] * loop_dice(up, labels, IGNORE),
        "teacher_dice": wts["teacher_dice"] * loop_dice(up_t, labels, IGNORE),
        "semantic_distill": wts["semantic_distill"] * F.relu(
            relation(sem) - relation(gt_sem.detach())).sum(-1).mean(),
        "spatial_distill": wts["spatial_distill"] * (
            -F.log_softmax(pos, -1) * F.softmax(gt_pos.detach(), -1)).sum(-1).mean(),
    }


def bench_train(args) -> dict[str, float]:
    torch.manual_seed(0)
    clf = SSAClassifier(args.channels, args.classes).train()
    feature = torch.randn(args.batch, args.channels, args.size, args.size, requires_grad=True)
    labels = scene_labels(args.batch, args.size * args.label_stride, args.classes,
                          args.classes_per_image, seed=1)

    def step(fn):
        def run():
            feature.grad = None
            clf.zero_grad(set_to_none=True)
            sum(fn(clf, feature, labels).values()).backward()
        return run

    # same computation: identical losses from both (same dropout draw)
    torch.manual_seed(2)
    ours = {k: v.item() for k, v in clf(feature, labels).losses.items()}
    torch.manual_seed(2)
    loops = {k: v.item() for k, v in loop_ssa_losses(clf, feature, labels).items()}
    for name, value in ours.items():
        if not np.isclose(value, loops[name], rtol=1e-3, atol=1e-5):
            raise AssertionError(f"{name}: vectorised {value} vs loop-based {loops[name]}")

    linear = clf.coarse

    def linear_step():
        feature.grad = None
        linear.zero_grad(set_to_none=True)
        out = linear(feature, labels)
        sum(out.losses.values()).backward()

    fns = {"vectorised": step(lambda m, f, y: m(f, y).losses), "loop": step(loop_ssa_losses),
           "linear": linear_step}
    times = interleaved(fns, args.warmup, args.train_repeats)
    present = sum(len(set(y.unique().tolist()) - {IGNORE}) for y in labels) / args.batch
    return {
        **{f"{name}_{kind}": statistics.median(values[name])
           for kind, values in times.items() for name in fns},
        "classes_per_image": present,
        "classes_in_batch": len(set(labels.unique().tolist()) - {IGNORE}),
    }


# ------------------------------------------------------------ (b) inference latency


def bench_infer(args) -> dict[str, float]:
    torch.manual_seed(0)
    models = {
        "linear": build_segmentor(args.model, "linear", args.classes).eval(),
        "ssa": build_segmentor(args.model, "ssa", args.classes).eval(),
    }
    shared = {k: v for k, v in models["linear"].state_dict().items()
              if not k.startswith("classifier.")}
    models["ssa"].load_state_dict(shared, strict=False)
    images = torch.randn(1, 3, args.infer_size, args.infer_size)
    with torch.inference_mode():
        times = interleaved({name: (lambda m=m: m.predict(images)) for name, m in models.items()},
                            args.warmup + 1, args.infer_rounds)
        feature = models["ssa"].head(models["ssa"].backbone(images)).feature
        clf_times = interleaved(
            {name: (lambda m=m: m.classifier(feature)) for name, m in models.items()},
            args.warmup + 1, args.infer_rounds,
        )
    out: dict = {"feature": tuple(feature.shape)}
    for name in models:
        out[f"{name}_s"] = statistics.median(times["wall"][name])
        out[f"{name}_min_s"] = min(times["wall"][name])
        out[f"{name}_cpu_s"] = statistics.median(times["cpu"][name])
        out[f"{name}_classifier_s"] = statistics.median(clf_times["wall"][name])
        out[f"{name}_classifier_cpu_s"] = statistics.median(clf_times["cpu"][name])
    return out


# --------------------------------------------------------------- (c) params, FLOPs


def bench_cost(args) -> list[dict]:
    rows = []
    for name in args.models:
        spec = MODELS[name]
        counts = {}
        for clf in ("linear", "ssa"):
            with torch.device("meta"):
                model = build_segmentor(name, clf, args.classes)
            images = torch.empty(1, 3, args.infer_size, args.infer_size, device="meta")
            counts[clf] = dict(
                params=count_params(model, deployed=False), inference_params=count_params(model),
                full=count_flops_full(model, images),
                mmcv=count_flops_mmcv(model, images, **spec.mmcv_counting),
            )
        rows.append({"model": name, **{f"{c}_{k}": v for c, d in counts.items()
                                       for k, v in d.items()}})
    return rows


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["train", "infer", "cost"], nargs="+",
                        default=["train", "infer", "cost"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed)")
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--channels", type=int, default=256, help="(a) feature channels C")
    parser.add_argument("--size", type=int, default=128, help="(a) feature map side h = w")
    parser.add_argument("--batch", type=int, default=8, help="(a) batch size")
    parser.add_argument("--label-stride", type=int, default=1,
                        help="(a) label side = size x this (4 = a 512 input's labels)")
    parser.add_argument("--classes-per-image", type=int, default=15, help="(a) labels")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--train-repeats", type=int, default=3, help="(a) rounds")
    parser.add_argument("--model", default="segformer_b0", help="(b) baseline")
    parser.add_argument("--infer-size", type=int, default=512, help="(b, c) input side")
    parser.add_argument("--infer-rounds", type=int, default=15)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="(c) baselines")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    where = f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32"

    if "train" in args.only:
        r = bench_train(args)
        label_side = args.size * args.label_stride
        print(f"\n(a) classifier training step (fwd + bwd, 8 loss terms), {where}; "
              f"K = {args.classes}, C = {args.channels}, feature {args.batch} x {args.size} x "
              f"{args.size}, labels {label_side} x {label_side} with "
              f"{r['classes_per_image']:.1f} classes per image, {r['classes_in_batch']} in the "
              f"batch; interleaved, median of {args.train_repeats} rounds after "
              f"{args.warmup} warm-up; wall s and process CPU s (user + system, both threads)")
        print("| implementation | wall s | CPU s | wall vs ours | CPU vs ours |\n"
              "|---|---|---|---|---|")
        rows = (("SSA, loop-based (reference style)", "loop"),
                ("SSA, vectorised (ours)", "vectorised"), ("linear classifier (context)", "linear"))
        for title, name in rows:
            print(f"| {title} | {r[f'{name}_wall']:.2f} | {r[f'{name}_cpu']:.2f} | "
                  f"{r[f'{name}_wall'] / r['vectorised_wall']:.2f}x | "
                  f"{r[f'{name}_cpu'] / r['vectorised_cpu']:.2f}x |")

    if "infer" in args.only:
        r = bench_infer(args)
        print(f"\n(b) inference latency, {args.model}, K = {args.classes}, batch 1 x "
              f"{args.infer_size} x {args.infer_size}, logits upsampled to the input, {where}; "
              f"models interleaved, median of {args.infer_rounds} rounds after "
              f"{args.warmup + 1} warm-up")
        print("| classifier | whole model wall ms, median (min) | whole model CPU ms | "
              f"classifier alone wall / CPU ms (feature {r['feature']}) |\n|---|---|---|---|")
        for name in ("linear", "ssa"):
            print(f"| {name} | {1000 * r[f'{name}_s']:.1f} ({1000 * r[f'{name}_min_s']:.1f}) | "
                  f"{1000 * r[f'{name}_cpu_s']:.1f} | {1000 * r[f'{name}_classifier_s']:.1f} / "
                  f"{1000 * r[f'{name}_classifier_cpu_s']:.1f} |")
        print(f"ssa / linear, whole model: wall median {r['ssa_s'] / r['linear_s']:.3f} "
              f"({100 * (r['ssa_s'] / r['linear_s'] - 1):+.1f} %), wall min "
              f"{r['ssa_min_s'] / r['linear_min_s']:.3f}, CPU median "
              f"{r['ssa_cpu_s'] / r['linear_cpu_s']:.3f}")

    if "cost" in args.only:
        rows = bench_cost(args)
        print(f"\n(c) added by ssa, K = {args.classes}, input {args.infer_size} x "
              f"{args.infer_size}, per image; params: all trainable (incl. the training-only "
              "teacher) / used at inference; FLOPs: full = torch (2 per multiply-add, matmuls "
              "included), mmcv = papers' convention (multiply-adds of hooked modules)")
        print("| baseline | params (M) | +params all / inference (M) | full GFLOPs | +full | "
              "mmcv GFLOPs | +mmcv |\n|---|---|---|---|---|---|---|")
        for r in rows:
            dp = r["ssa_params"] - r["linear_params"]
            dpi = r["ssa_inference_params"] - r["linear_params"]
            df = r["ssa_full"] - r["linear_full"]
            dm = r["ssa_mmcv"] - r["linear_mmcv"]
            print(f"| {r['model']} | {r['linear_params'] / 1e6:.2f} | {dp / 1e6:.3f} / "
                  f"{dpi / 1e6:.3f} | {r['linear_full'] / 1e9:.2f} | {df / 1e9:.2f} "
                  f"({100 * df / r['linear_full']:.1f} %) | {r['linear_mmcv'] / 1e9:.2f} | "
                  f"{dm / 1e9:.3f} ({100 * dm / r['linear_mmcv']:.1f} %) |")


if __name__ == "__main__":
    main()
