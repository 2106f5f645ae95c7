"""Whole-model training step of each classifier against the linear one, with its FLOP floor.

One step = ``zero_grad``, forward with labels, backward of the total loss, AdamW step, of the
whole Segmentor (backbone + head + classifier). For each baseline the classifiers (default
linear, ssa, protoseg) share the backbone and head weights and are timed in ONE process,
interleaved: every round runs each once, in an order shuffled per round by a seeded RNG
(:func:`ssaseg.paired_timing.time_paired`); the ratio to linear is the median over rounds of
the per-round ratio, with a 95 % bootstrap interval over rounds (scipy, BCa, seeded). Beside it:

- full FLOPs ratio: torch.utils.flop_counter (2 FLOPs per multiply-add, matmuls included) over
  the forward AND backward of one step at the timed batch (AdamW's element-wise update and the
  loss reductions barely register);
- peak memory ratio: the peak resident set size (``VmHWM`` of /proc/self/status; not
  ``getrusage``'s ``ru_maxrss``, which Linux carries over from the parent across ``exec``) of
  a fresh subprocess per (baseline, classifier) that builds the model and runs 2 steps,
  reported whole and as the increment over the RSS just before the first step (imports, model
  and batch excluded): that increment is what the training step itself holds at its peak.

From the repository root:

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_train_step                    # B0 and SegNeXt-T
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_train_step --models segformer_b0 --rounds 10
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_train_step --profile --models segformer_b0

``--profile`` prints, instead of timing, one profiled step of each classifier (torch.profiler,
after a warm-up step) and the operators where ssa's step differs most from linear's (self CPU
time; call counts). The tables below were measured this way.

Measured 2026-12-03 (CPU, 1 torch thread, fp32, glibc's default allocator, 2 cores shared with
other agents, load average ~10; 1 thread because with 2 threads on an oversubscribed machine
every parallel op waits for a descheduled thread and op counts, not work, set the time):

    | baseline | ssa/linear before | after | FLOPs ratio | peak RSS ratio (step's increment) |
    |---|---|---|---|---|
    | SegFormer-B0 | 2.43 (2.15-2.50) | 1.49 (1.44-1.60) | 1.40 | 1.78 -> 1.33 (1.98 -> 1.42) |
    | SegNeXt-T    | 2.01 (1.93-2.07) | 1.20 (1.17-1.21) | 1.04 | not measured -> 1.17 (1.20) |

(before and after paired in one process through a renamed copy of main's package; the after
ratios and memory from this script; protoseg / linear: 1.72 (1.56-1.89) and 1.11 (1.08-1.13).)

Where ssa's step went BEFORE the optimisation (ssa.py as on main at 4475d4b; SegFormer-B0,
512 x 512, batch 2, 150 classes, 2 threads, fp32, glibc's default allocator; 2026-12-03, 2 cores
shared with other agents; one profiled step each, so single milliseconds are noise), top
operators by the difference of self CPU time, ssa - linear:

    one step: wall 22.01 s (ssa) vs 8.68 s (linear) under the profiler, self CPU total 21.89 s
    vs 8.63 s (difference 13.26 s); the machine was loaded (load average ~5 on 2 cores).

    | operator | ssa self CPU ms | linear self CPU ms | difference ms | calls ssa / linear |
    |---|---|---|---|---|
    | aten::_log_softmax | 2498 | 189 | +2308 | 5 / 1 |
    | aten::_log_softmax_backward_data | 1821 | 224 | +1597 | 5 / 1 |
    | aten::fill_ | 1093 | 275 | +817 | 133 / 72 |
    | aten::upsample_bilinear2d | 1117 | 338 | +780 | 7 / 5 |
    | aten::sqrt | 781 | 14 | +767 | 210 / 193 |
    | aten::upsample_bilinear2d_backward | 1384 | 668 | +716 | 7 / 5 |
    | aten::add | 729 | 186 | +543 | 63 / 25 |
    | aten::convolution_backward | 2144 | 1628 | +515 | 24 / 23 |
    | aten::mul_ | 446 | 17 | +429 | 424 / 386 |
    | aten::bmm | 465 | 52 | +413 | 14 / 2 |
    | aten::mm | 1096 | 708 | +388 | 107 / 80 |
    | aten::index | 318 | 0 | +318 | 7 / 0 |
    | aten::add_ | 468 | 168 | +300 | 457 / 410 |
    | aten::mul | 440 | 191 | +249 | 85 / 33 |
    | aten::addcdiv_ | 249 | 1 | +248 | 210 / 193 |
    | LogSoftmaxBackward0 (autograd node) | 265 | 21 | +244 | 5 / 1 |
    | aten::lerp_ | 244 | 2 | +243 | 210 / 193 |
    | aten::div | 248 | 17 | +231 | 252 / 193 |
    | aten::mkldnn_convolution | 892 | 664 | +228 | 24 / 23 |
    | aten::sum | 501 | 301 | +200 | 75 / 42 |

    Reading: 3 of ssa's 5 log-softmaxes and 3 of its 7 bilinear upsamplings (forward and
    backward) run over (2, 150, 512, 512) maps (student, coarse, teacher; linear has 1 and 1);
    the fills (nll_loss's and Dice's index backward zero-fill full-resolution gradients), the
    adds (ce's and Dice's gradients summed at full resolution), ``index`` (Dice's gather of
    the present (image, class) rows at full resolution) are the same maps again. The AdamW
    ops (sqrt, addcdiv_, lerp_: 17 more parameters, all small) differ by load noise alone.

AFTER the optimisation (ssa.py taking its full-resolution losses from
:mod:`ssaseg.models.upsampled_losses`; same model and batch, 1 thread, 2026-12-03 10:10 UTC,
2 cores shared with other agents, load average ~10: both steps ran ~2x slower than unloaded,
so read the differences, not the totals): one step: wall 17.67 s (ssa) vs 15.00 s (linear),
self CPU total 17.60 s vs 14.74 s (difference 2.86 s; 13.26 s before, at 2 threads).

    | operator | ssa self CPU ms | linear self CPU ms | difference ms | calls ssa / linear |
    |---|---|---|---|---|
    | aten::bmm | 1916 | 151 | +1765 | 14 / 2 |
    | aten::_slow_conv2d_backward | 2398 | 955 | +1443 | 5 / 5 |
    | aten::exp | 1308 | 0 | +1308 | 3 / 0 |
    | aten::_index_put_impl_ | 599 | 0 | +599 | 4 / 0 |
    | aten::index | 517 | 0 | +517 | 7 / 0 |
    | _UpsampledCrossEntropyDiceBackward (autograd node) | 476 | 0 | +476 | 3 / 0 |
    | aten::addcmul_ | 415 | 1 | +413 | 211 / 193 |
    | aten::upsample_bilinear2d | 1508 | 1137 | +371 | 7 / 5 |
    | aten::gather | 331 | 0 | +331 | 9 / 0 |
    | aten::add | 387 | 70 | +316 | 59 / 25 |
    | aten::mul | 297 | 8 | +290 | 87 / 33 |
    | aten::mul_ | 309 | 25 | +284 | 427 / 386 |
    | aten::gelu_backward | 306 | 78 | +227 | 8 / 8 |
    | aten::_softmax_backward_data | 207 | 0 | +207 | 3 / 0 |
    | aten::scatter_add_ | 192 | 0 | +192 | 11 / 0 |
    | aten::neg | 188 | 0 | +188 | 15 / 0 |

    Reading: ``upsample_bilinear2d_backward``, ``_log_softmax`` and ``fill_`` left the list
    (one upsampled map per logits map, channels-last kernels, no zero-filled gradients);
    ``exp`` is the softmax of the three maps' gradients; ``index``/``index_put_`` are
    Dice's rows of the present (image, class) pairs; ``bmm`` is arithmetic (cosine logits, soft
    class centres) that the FLOP count includes; the conv and GELU backward rows are load
    noise (the same modules run in both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from ssaseg.engine.flops import count_params
from ssaseg.models.zoo import MODELS, build_segmentor
from ssaseg.paired_timing import time_paired

IGNORE = 255


def scene_labels(batch: int, size: int, classes: int, per_image: int, seed: int) -> torch.Tensor:
    """(B, size, size) label maps like scene parsing: each image uses ``per_image`` of the K
    classes on a 16 x 16 grid of cells (nearest-upsampled), 5 % of the cells ignored."""
    gen = torch.Generator().manual_seed(seed)
    subset = torch.stack([torch.randperm(classes, generator=gen)[:per_image] for _ in range(batch)])
    cells = subset.gather(1, torch.randint(per_image, (batch, 256), generator=gen))
    cells = cells.view(batch, 16, 16)
    cells[torch.rand(cells.shape, generator=gen) < 0.05] = IGNORE
    return cells.repeat_interleave(size // 16, 1).repeat_interleave(size // 16, 2)


def build_variants(model: str, classifiers: list[str], classes: int, seed: int = 0):
    """One Segmentor per classifier, backbone and head weights copied from the first, each with
    its own AdamW."""
    models = {}
    for name in classifiers:
        torch.manual_seed(seed)
        models[name] = build_segmentor(model, name, classes).train()
    shared = {k: v for k, v in models[classifiers[0]].state_dict().items()
              if not k.startswith("classifier.")}
    for m in models.values():
        m.load_state_dict(shared, strict=False)
    return {name: (m, torch.optim.AdamW(m.parameters(), lr=1e-4)) for name, m in models.items()}


def make_step(model: torch.nn.Module, optimizer, images, labels):
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(images, labels).total_loss.backward()
        optimizer.step()
    return step


def batch(args) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    labels = scene_labels(args.batch, args.size, args.classes, args.classes_per_image, seed=2)
    return images, labels


def step_flops(model: torch.nn.Module, images, labels) -> int:
    """Forward + backward FLOPs of one training step (torch's counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.zero_grad(set_to_none=True)
    counter = FlopCounterMode(display=False)
    with counter:
        model(images, labels).total_loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def memory_probe(args) -> None:
    """Subprocess entry: build one variant, run 2 steps, print RSS figures as JSON (KiB)."""
    torch.set_num_threads(args.threads)
    (model, optimizer), = build_variants(args.models[0], args.classifiers, args.classes).values()
    images, labels = batch(args)
    before = rss_kib()
    step = make_step(model, optimizer, images, labels)
    step()
    step()
    print(json.dumps({"peak_kib": rss_kib("VmHWM"), "before_kib": before}))


def rss_kib(field: str = "VmRSS") -> int:
    """Resident set size now (VmRSS) or its high-water mark (VmHWM) of this process, KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_memory(model: str, classifier: str, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_train_step", "--memory-probe",
           "--models", model, "--classifiers", classifier, "--size", str(args.size),
           "--batch", str(args.batch), "--classes", str(args.classes),
           "--classes-per-image", str(args.classes_per_image), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def profile(args) -> None:
    """One profiled step per classifier; the operators where each differs most from the
    first (linear)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    images, labels = batch(args)
    for model_name in args.models:
        variants = build_variants(model_name, args.classifiers, args.classes)
        tables = {}
        for name, (model, optimizer) in variants.items():
            step = make_step(model, optimizer, images, labels)
            step()  # warm-up
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                step()
                wall = time.perf_counter() - start
            tables[name] = ({e.key: (e.self_cpu_time_total / 1000, e.count)
                             for e in prof.key_averages()}, wall)
        base_name = args.classifiers[0]
        base, base_wall = tables[base_name]
        for name in args.classifiers[1:]:
            ops, wall = tables[name]
            total = sum(v[0] for v in ops.values())
            base_total = sum(v[0] for v in base.values())
            print(f"\n{model_name}: {name} - {base_name}, one step: wall {wall:.2f} s vs "
                  f"{base_wall:.2f} s, self CPU total {total / 1000:.2f} s vs "
                  f"{base_total / 1000:.2f} s (difference {(total - base_total) / 1000:.2f} s)")
            print(f"| operator | {name} self CPU ms | {base_name} self CPU ms | difference ms | "
                  f"calls {name} / {base_name} |\n|---|---|---|---|---|")
            diffs = sorted(set(ops) | set(base),
                           key=lambda k: -(ops.get(k, (0, 0))[0] - base.get(k, (0, 0))[0]))
            for key in diffs[: args.profile_rows]:
                a, b = ops.get(key, (0.0, 0)), base.get(key, (0.0, 0))
                print(f"| {key} | {a[0]:.0f} | {b[0]:.0f} | {a[0] - b[0]:+.0f} | "
                      f"{a[1]} / {b[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["segformer_b0", "segnext_t"],
                        help=f"baselines by name ({', '.join(MODELS)})")
    parser.add_argument("--classifiers", nargs="+", default=["linear", "ssa", "protoseg"],
                        help="the first is the baseline of every ratio")
    parser.add_argument("--size", type=int, default=512, help="input side")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--classes-per-image", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    parser.add_argument("--rounds", type=int, default=12, help="timed rounds at least")
    parser.add_argument("--max-rounds", type=int, default=30)
    parser.add_argument("--max-seconds", type=float, default=240.0,
                        help="per baseline; stops adding rounds after this")
    parser.add_argument("--target-half-width", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0, help="order of each round")
    parser.add_argument("--no-memory", action="store_true", help="skip the RSS subprocesses")
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--profile", action="store_true", help="profile instead of timing")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(args)
    torch.set_num_threads(args.threads)
    if args.profile:
        return profile(args)

    base_name = args.classifiers[0]
    print(f"training step (zero_grad, forward, backward, AdamW step), {args.batch} x "
          f"{args.size} x {args.size}, K = {args.classes}, {args.classes_per_image} classes per "
          f"image, CPU, {torch.get_num_threads()} threads, fp32, torch {torch.__version__}, "
          f"MALLOC_* env: {sorted(k for k in os.environ if k.startswith('MALLOC_')) or 'none'}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    images, labels = batch(args)
    for model_name in args.models:
        variants = build_variants(model_name, args.classifiers, args.classes)
        flops = {} if args.no_flops else {
            name: step_flops(m, images, labels) for name, (m, _) in variants.items()}
        fns = {name: make_step(m, opt, images, labels) for name, (m, opt) in variants.items()}
        timing = time_paired(fns, baseline=base_name, warmup=args.warmup,
                             min_rounds=args.rounds, max_rounds=args.max_rounds,
                             max_seconds=args.max_seconds,
                             target_half_width=args.target_half_width, check_every=4,
                             seed=args.seed,
                             progress=lambda line: print("  " + line, file=sys.stderr))
        params = {name: count_params(m, deployed=False) for name, (m, _) in variants.items()}
        del variants, fns
        memory = {} if args.no_memory else {
            name: peak_memory(model_name, name, args) for name in args.classifiers}
        print(f"\n{model_name}: {timing.rounds} rounds after {timing.warmup} warm-up "
              f"(stopped: {timing.stop_reason}), order shuffled per round (seed {timing.seed}); "
              f"ratio = median of per-round ratios to {base_name}, 95 % bootstrap interval "
              f"(BCa); FLOPs fwd + bwd of one step; peak RSS of a subprocess running 2 steps, "
              f"whole (increment over the RSS before the first step)")
        print("| classifier | step s (median) | ratio to linear (95 % CI) | full GFLOPs, ratio | "
              "peak RSS GiB, ratio | step's RSS increment GiB, ratio | params M |\n"
              "|---|---|---|---|---|---|---|")
        for name in args.classifiers:
            if name == base_name:
                ratio = "1.00"
            else:
                r = timing.ratios[name]
                ratio = f"**{r.ratio:.2f}** ({r.low:.2f}-{r.high:.2f})"
            fl = (f"{flops[name] / 1e9:.1f}, {flops[name] / flops[base_name]:.2f}"
                  if flops else "-")
            if memory:
                peak, base_peak = memory[name]["peak_kib"], memory[base_name]["peak_kib"]
                inc = memory[name]["peak_kib"] - memory[name]["before_kib"]
                base_inc = memory[base_name]["peak_kib"] - memory[base_name]["before_kib"]
                mem = (f"{peak / 2**20:.2f}, {peak / base_peak:.2f} | "
                       f"{inc / 2**20:.2f}, {inc / base_inc:.2f}")
            else:
                mem = "- | -"
            print(f"| {name} | {timing.median_ms[name] / 1000:.2f} | {ratio} | {fl} | {mem} | "
                  f"{params[name] / 1e6:.2f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
