"""The first run on a GPU, with no editing: what the CPU tests cannot prove (issue #15).

    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py OUT_DIR            # on a CUDA machine
    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py OUT_DIR --tiny     # CPU mode (CI), < 2 min

Writes ``OUT_DIR/gpu_check.json`` (every figure, with its conditions) and ``OUT_DIR/gpu_check.md``
(the same as tables), printing progress as it goes. On one CUDA device, about 5 minutes in all
(every item has a time budget; an item that runs out says so):

1. Training step (forward + backward + AdamW step), 512x512, batch 8, 150 classes, for linear,
   ssa and protoseg on SegFormer-B0, SegNeXt-T and SeaFormer-L, in fp32, bf16 autocast and fp16
   autocast with a GradScaler: median ms and ratio to linear (paired, interleaved, seeded;
   :mod:`ssaseg.paired_timing`) with its 95 % interval. Paper: 1.1x for ssa (V100).
2. Inference latency, batch 1, 512x512, CUDA-synchronised, paired the same way: ratio to linear
   (paper: +0.5-2 %) and FPS.
3. Peak CUDA memory of one training step (fp32, batch 8) and of one inference pass (batch 1)
   per classifier (the SSA authors' answer: 4,479 vs 4,511 MB on SeaFormer-L).
4. 50 fp16 training steps (GradScaler) of ssa and protoseg on SegFormer-B0: every loss term and
   every unscaled gradient finite (steps the scaler skipped are counted, not hidden).
5. ``torch.compile`` of each model's inference pass: works or not (the error's first line),
   and the speed-up over eager (paired); every model with ssa first, then the other
   classifiers while the item's budget lasts.
6. With two or more GPUs: one 2-process DDP step (NCCL) per classifier on 2 images, one image
   per rank (ProtoSeg's prototype all-reduce included), against the 1-process step on the
   same 2 images: largest parameter difference after the step.
7. The default params file end to end through Snakemake on the GPU (train, evaluate, profile,
   paired latency, report; SegFormer-B0 only, 20 iterations): the CUDA path of every step.

Without CUDA it says so, and runs items 1-3 on the CPU with tiny settings (64x64, batch 2, one
model, fp32 and bf16) in under 2 minutes, so that CI exercises the script
(tests/test_gpu_check.py). Settings can be overridden (``--help``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from ssaseg import atomic_io  # noqa: E402
from ssaseg.engine.device import autocast  # noqa: E402
from ssaseg.models.zoo import build_segmentor  # noqa: E402
from ssaseg.paired_timing import time_paired  # noqa: E402

CLASSIFIERS = ("linear", "ssa", "protoseg")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
IGNORE = 255


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def scene_batch(batch: int, size: int, classes: int, device: torch.device, seed: int = 0,
                ignore_frac: float = 0.05):
    """(B, 3, size, size) images and (B, size, size) labels: class cells of 1/16 of the side,
    each image holding 8 of the classes, ``ignore_frac`` of the cells ignored."""
    g = torch.Generator().manual_seed(seed)
    cells = max(size // 16, 2)
    subset = torch.stack([torch.randperm(classes, generator=g)[:min(8, classes)]
                          for _ in range(batch)])                          # (B, 8)
    pick = torch.randint(0, subset.shape[1], (batch, cells, cells), generator=g)
    coarse = torch.gather(subset, 1, pick.flatten(1)).view(batch, 1, cells, cells)
    coarse[torch.rand(coarse.shape, generator=g) < ignore_frac] = IGNORE
    labels = torch.nn.functional.interpolate(coarse.float(), size=(size, size), mode="nearest")
    images = torch.randn(batch, 3, size, size, generator=g)
    return images.to(device), labels[:, 0].long().to(device)


def build(model: str, classifier: str, classes: int, device: torch.device, **params):
    torch.manual_seed(0)
    return build_segmentor(model, classifier, classes, IGNORE, params).to(device)


def train_step(model, optimizer, scaler, images, labels, dtype, device):
    """One training step as a zero-argument callable (CUDA-synchronised)."""

    def step() -> None:
        with autocast(device, dtype):
            out = model(images, labels)
        loss = sum(v.float() for v in out.losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sync(device)

    return step


def infer_pass(model, images, device):
    @torch.no_grad()
    def run() -> None:
        model(images)
        sync(device)

    return run


def _ratios(timing) -> dict:
    return {name: {"median_ms": timing.median_ms[name],
                   **({"ratio": 1.0, "low": 1.0, "high": 1.0} if name == timing.baseline
                      else {k: v for k, v in timing.ratios[name].to_dict().items()
                            if k in ("ratio", "low", "high")})}
            for name in timing.median_ms}


def _budget(args, share: float) -> float:
    return args.budget_s * share


# --------------------------------------------------------------------------- items


def item_train_steps(args, device, results) -> None:
    """1. Training step per (model, precision), the classifiers paired."""
    out = results.setdefault("train_step", [])
    per_group = _budget(args, 0.22) / max(1, len(args.models) * len(args.precisions))
    images, labels = scene_batch(args.batch, args.size, args.classes, device)
    for model_name in args.models:
        models = {c: build(model_name, c, args.classes, device).train() for c in CLASSIFIERS}
        for precision in args.precisions:
            dtype = DTYPES[precision]
            if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
                out.append({"model": model_name, "precision": precision,
                            "status": "skipped: bf16 not supported on this GPU"})
                continue
            try:
                fns = {}
                for c, m in models.items():
                    opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
                    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
                    fns[c] = train_step(m, opt, scaler, images, labels, dtype, device)
                timing = time_paired(fns, "linear", warmup=args.warmup,
                                     min_rounds=args.min_rounds, max_rounds=args.max_rounds,
                                     max_seconds=per_group, seed=0, n_resamples=999)
                row = {"model": model_name, "precision": precision, "status": "ok",
                       "rounds": timing.rounds, "target_reached": timing.target_reached,
                       "classifiers": _ratios(timing)}
            except Exception as exc:  # one failing precision must not hide the others
                row = {"model": model_name, "precision": precision,
                       "status": f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            out.append(row)
            log(f"1. train step {model_name} {precision}: " + (", ".join(
                f"{c} {v['median_ms']:.1f} ms x{v['ratio']:.3f}"
                for c, v in row["classifiers"].items()) if "classifiers" in row else row["status"]))
        del models
        if device.type == "cuda":
            torch.cuda.empty_cache()


def item_inference(args, device, results) -> None:
    """2. Paired inference latency, batch 1; FPS."""
    out = results.setdefault("inference", [])
    images, _ = scene_batch(1, args.size, args.classes, device)
    for model_name in args.models:
        models = {c: build(model_name, c, args.classes, device).eval() for c in CLASSIFIERS}
        timing = time_paired({c: infer_pass(m, images, device) for c, m in models.items()},
                             "linear", warmup=args.warmup, min_rounds=args.min_rounds,
                             max_rounds=args.max_rounds * 4,
                             max_seconds=_budget(args, 0.08) / len(args.models), seed=0,
                             n_resamples=999)
        row = {"model": model_name, "rounds": timing.rounds,
               "target_reached": timing.target_reached, "classifiers": _ratios(timing)}
        for v in row["classifiers"].values():
            v["fps"] = 1000.0 / v["median_ms"]
        out.append(row)
        log(f"2. inference {model_name}: " + ", ".join(
            f"{c} {v['median_ms']:.2f} ms x{v['ratio']:.4f} [{v['low']:.4f}, {v['high']:.4f}]"
            for c, v in row["classifiers"].items()))


def item_memory(args, device, results) -> None:
    """3. Peak memory of one training step and one inference pass per classifier."""
    out = results.setdefault("memory", [])
    images, labels = scene_batch(args.batch, args.size, args.classes, device)
    for model_name in args.models:
        for c in CLASSIFIERS:
            model = build(model_name, c, args.classes, device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
            scaler = torch.amp.GradScaler(device.type, enabled=False)
            step = train_step(model.train(), opt, scaler, images, labels, None, device)
            if device.type == "cuda":
                step()  # optimizer state allocated, then measured
                torch.cuda.reset_peak_memory_stats(device)
                step()
                train_mb = torch.cuda.max_memory_allocated(device) / 2**20
                model.eval()
                torch.cuda.reset_peak_memory_stats(device)
                infer_pass(model, images[:1], device)()
                infer_mb = torch.cuda.max_memory_allocated(device) / 2**20
                kind = "torch.cuda.max_memory_allocated"
            else:
                step()
                model.eval()
                infer_pass(model, images[:1], device)()
                train_mb = infer_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                kind = "process peak RSS so far (CPU; cumulative, not per classifier)"
            out.append({"model": model_name, "classifier": c, "train_mb": train_mb,
                        "inference_mb": infer_mb, "kind": kind})
            log(f"3. memory {model_name}/{c}: train {train_mb:.0f} MB, inference "
                f"{infer_mb:.0f} MB ({kind})")
            del model, opt
            if device.type == "cuda":
                torch.cuda.empty_cache()


def item_fp16_stability(args, device, results) -> None:
    """4. fp16 steps of ssa and protoseg: losses and unscaled gradients finite.

    A GradScaler starts at scale 65536 and halves it, skipping that step, whenever the scaled
    gradients overflow: inf gradients on a few skipped steps are the scaler working, not an
    instability. Passes when every loss term is finite at every step, at most
    max(5, steps / 10) steps were skipped, and the scale did not collapse (>= 1); every skipped
    step is listed with the first parameters whose gradient overflowed."""
    out = results.setdefault("fp16_stability", [])
    images, labels = scene_batch(args.batch, args.size, args.classes, device, seed=1)
    model_name = args.models[0]
    for c in ("ssa", "protoseg"):
        model = build(model_name, c, args.classes, device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=6e-5)
        scaler = torch.amp.GradScaler(device.type)
        bad_losses, skipped = [], []
        for i in range(args.fp16_steps):
            with autocast(device, torch.float16):
                outputs = model(images, labels)
            terms = {k: v.float() for k, v in outputs.losses.items()}
            bad_losses += [f"step {i}: {k}={v.item()}" for k, v in terms.items()
                           if not torch.isfinite(v)]
            opt.zero_grad(set_to_none=True)
            scaler.scale(sum(terms.values())).backward()
            scale = scaler.get_scale()
            scaler.unscale_(opt)
            bad = [n for n, p in model.named_parameters()
                   if p.grad is not None and not torch.isfinite(p.grad).all()]
            scaler.step(opt)
            scaler.update()
            if bad:
                skipped.append(f"step {i} (scale {scale:g}): {', '.join(bad[:3])}")
        sync(device)
        final_scale = scaler.get_scale()
        row = {"model": model_name, "classifier": c, "steps": args.fp16_steps,
               "finite": (not bad_losses and len(skipped) <= max(5, args.fp16_steps // 10)
                          and final_scale >= 1),
               "non_finite_losses": bad_losses[:10], "skipped_steps": skipped[:20],
               "skipped": len(skipped), "final_scale": final_scale}
        out.append(row)
        log(f"4. fp16 {model_name}/{c}: {args.fp16_steps} steps, pass={row['finite']}, "
            f"{len(bad_losses)} non-finite loss terms, {len(skipped)} step(s) skipped by the "
            f"scaler, final scale {final_scale:g}")
        del model, opt


def item_compile(args, device, results) -> None:
    """5. torch.compile of each model's inference pass: works or not, speed-up."""
    out = results.setdefault("compile", [])
    images, _ = scene_batch(1, args.size, args.classes, device)
    deadline = time.monotonic() + _budget(args, 0.20)
    # every model once (with ssa, the classifier with the most custom code) before the others
    order = [(m, "ssa") for m in args.models] + [
        (m, c) for m in args.models for c in CLASSIFIERS if c != "ssa"]
    for model_name, c in order:
        if time.monotonic() > deadline:
            out.append({"model": model_name, "classifier": c,
                        "status": "skipped: compile budget spent"})
            continue
        model = build(model_name, c, args.classes, device).eval()
        started = time.monotonic()
        try:
            compiled = torch.compile(model)
            infer_pass(compiled, images, device)()            # compiles
            compile_s = time.monotonic() - started
            timing = time_paired({"eager": infer_pass(model, images, device),
                                  "compiled": infer_pass(compiled, images, device)},
                                 "eager", warmup=3, min_rounds=10, max_rounds=200,
                                 max_seconds=3.0, seed=0, n_resamples=999)
            r = timing.ratios["compiled"]
            row = {"model": model_name, "classifier": c, "status": "works",
                   "compile_s": compile_s, "eager_ms": timing.median_ms["eager"],
                   "compiled_ms": timing.median_ms["compiled"],
                   "speedup": 1.0 / r.ratio, "speedup_low": 1.0 / r.high,
                   "speedup_high": 1.0 / r.low}
        except Exception as exc:
            row = {"model": model_name, "classifier": c,
                   "status": f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        out.append(row)
        log(f"5. compile {model_name}/{c}: {row['status']}"
            + (f", x{row['speedup']:.2f} faster, compiled in {row['compile_s']:.0f} s"
               if row["status"] == "works" else ""))
        torch._dynamo.reset()


# ||update(DDP) - update(1 process)|| / ||update(1 process)|| over all parameters that counts as
# equal. linear: float summation order only (measured 1.6e-6 per tensor, gloo, CPU). protoseg:
# Sinkhorn runs over each rank's pixels, as in the reference (measured 2e-4). ssa: the response
# distillation and the Dice terms normalise per rank by design (tests/test_ddp.py), so its
# gradients differ by ~10 % after one step on 2 images (measured 0.10 median per tensor).
DDP_TOLERANCE = {"linear": 1e-4, "protoseg": 1e-2, "ssa": 0.25}


def _ddp_rank(rank: int, world: int, port: int, model_name: str, classifier: str,
              classes: int, size: int, out_file: str) -> None:
    """One rank of the DDP check: one image per rank, one SGD step; rank 0 saves the params."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from ssaseg.engine import distributed

    backend_device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    _, device = distributed.setup(backend_device)
    params = _exact_params(classifier)
    model = _deterministic(build(model_name, classifier, classes, device, **params))
    model = distributed.convert_sync_batchnorm(model, device)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    images, labels = scene_batch(world, size, classes, device, ignore_frac=0.0)
    _one_step(ddp, model, images[rank:rank + 1], labels[rank:rank + 1])
    if rank == 0:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_file)
    distributed.cleanup()


def _deterministic(model: torch.nn.Module) -> torch.nn.Module:
    """Stochastic depth and dropout off (their draws differ per process by design)."""
    for m in model.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return model


def _exact_params(classifier: str) -> dict:
    """No dropout, ProtoSeg's argmax assignment: the two sides draw nothing at random."""
    return {"linear": {"dropout": 0.0}, "ssa": {"dropout": 0.0},
            "protoseg": {"hard_assignment": "argmax"}}[classifier]


def _one_step(module, model, images, labels) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = module(images, labels)
    loss = sum(v.float() for v in out.losses.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def ddp_check(model_name: str, classifier: str, classes: int, size: int,
              world: int = 2) -> dict:
    """One DDP step (``world`` processes, one image each) against the same step in one process
    on all the images, from the same initial weights: the largest relative difference of a
    parameter's update (|d_ddp - d_one| / |d_one|, per tensor), and of the buffers (BatchNorm
    statistics, ProtoSeg's prototypes) the largest absolute difference. No ignored pixels, so
    that a mean over each rank's pixels averages to the mean over all of them."""
    import socket

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out_file = str(Path(tmp) / "ddp.pt")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_ddp_rank, args=(world, port, model_name, classifier, classes, size, out_file),
                 nprocs=world, join=True)
        ddp_state = torch.load(out_file, weights_only=True)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model = _deterministic(build(model_name, classifier, classes, device,
                                 **_exact_params(classifier)))
    initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    images, labels = scene_batch(world, size, classes, device, ignore_frac=0.0)
    _one_step(model, model, images, labels)
    params = {n for n, _ in model.named_parameters()}
    rel, buf, ones, diffs = {}, {}, [], []
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            continue
        one = v.detach().cpu().float() - initial[k].float()
        ddp = ddp_state[k].float() - initial[k].float()
        if k in params:
            ones.append(one.flatten())
            diffs.append((ddp - one).flatten())
            if one.abs().max() > 0:
                rel[k] = ((ddp - one).norm() / one.norm()).item()
        else:
            buf[k] = (ddp - one).abs().max().item()
    protos = [d for k, d in buf.items() if "prototype" in k]
    total = (torch.cat(diffs).norm() / torch.cat(ones).norm()).item()
    return {"rel_update_diff": total, "tolerance": DDP_TOLERANCE[classifier],
            "equal": total <= DDP_TOLERANCE[classifier],
            "median_rel_update_diff": sorted(rel.values())[len(rel) // 2],
            "buffers_max_abs_diff": max(buf.values(), default=0.0),
            "prototypes_max_abs_diff": max(protos, default=None)}


def item_ddp(args, device, results) -> None:
    """6. 2-process DDP step vs 1-process step, per classifier (needs >= 2 GPUs)."""
    gpus = torch.cuda.device_count()
    if gpus < 2:
        results["ddp"] = {"status": f"skipped: {gpus} GPU(s) visible, needs 2"}
        log(f"6. DDP: {results['ddp']['status']}")
        return
    rows = []
    for c in CLASSIFIERS:
        try:
            # Per-rank normalised loss terms (ProtoSeg's Sinkhorn over each rank's pixels, SSA's
            # per-rank class means in distillation and Dice) make the two sides differ slightly
            # by design (tests/test_ddp.py); a broken all-reduce differs by the step itself.
            row = {"classifier": c, **ddp_check(args.models[0], c, args.classes, 256)}
            row["status"] = "ok"
        except Exception as exc:
            row = {"classifier": c, "status": f"error: {type(exc).__name__}: "
                   f"{str(exc).splitlines()[0][:300]}"}
        rows.append(row)
        log(f"6. DDP {c}: {row}")
    results["ddp"] = {"status": "ran", "gpus": gpus, "rows": rows}


def item_pipeline(args, device, results) -> None:
    """7. The default params file end to end on CUDA through Snakemake."""
    work = Path(args.out_dir) / "pipeline"
    work.mkdir(parents=True, exist_ok=True)
    override = work / "gpu_override.yaml"
    override.write_text(
        "models: [segformer_b0]\n"
        "train: {iters: 20, checkpoint_every: 20, device: cuda, amp: auto}\n"
        "evaluate: {device: cuda}\n"
        "profile: {device: cuda, warmup: 3, repeats: 10}\n"
        "paired_latency: {warmup: 3, min_rounds: 20, max_rounds: 200, max_seconds: 20}\n")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(work), "--workflow-profile", "none", "--cores", "4",
           "--configfile", str(REPO / "params/default.yaml"), str(override)]
    log("7. pipeline: " + " ".join(cmd))
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                              timeout=max(120, _budget(args, 0.5)))
        rc, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        rc, tail = None, "timed out"
    row = {"returncode": rc, "seconds": time.monotonic() - started, "log_tail": tail}
    summary = work / "reports/default/summary.md"
    row["report"] = summary.is_file()
    devices = set()
    for path in (work / "results/default").rglob("*.json"):
        data = json.loads(path.read_text())
        if "conditions" in data:
            devices.add(data["conditions"].get("device"))
    row["profiled_on"] = sorted(d for d in devices if d)
    row["cuda_everywhere"] = bool(devices) and all("cpu" not in str(d) for d in devices)
    results["pipeline"] = row
    log(f"7. pipeline: rc {rc}, report {row['report']}, profiled on {row['profiled_on']}, "
        f"{row['seconds']:.0f} s")


# --------------------------------------------------------------------------- output


def _fmt(v, digits=2) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def markdown(results: dict) -> str:
    c = results["conditions"]
    lines = [f"# GPU check ({c['date']})", "",
             f"Device: {c['device']}; torch {c['torch']}; mode: {c['mode']}; "
             f"{c['size']}x{c['size']}, train batch {c['batch']}, {c['classes']} classes.", ""]
    if results.get("note"):
        lines += [results["note"], ""]
    if results.get("train_step"):
        lines += ["## 1. Training step (paper: ssa 1.1x linear, V100)", "",
                  "| model | precision | classifier | median ms | ratio to linear [95 % CI] |",
                  "|---|---|---|---|---|"]
        for row in results["train_step"]:
            for clf, v in row.get("classifiers", {"–": None}).items():
                lines.append(f"| {row['model']} | {row['precision']} | {clf} | " + (
                    f"{v['median_ms']:.2f} | {v['ratio']:.3f} [{v['low']:.3f}, {v['high']:.3f}] |"
                    if v else f"{row['status']} | |"))
        lines.append("")
    if results.get("inference"):
        lines += ["## 2. Inference, batch 1 (paper: ssa +0.5-2 % latency, V100)", "",
                  "| model | classifier | median ms | FPS | ratio to linear [95 % CI] | rounds |",
                  "|---|---|---|---|---|---|"]
        for row in results["inference"]:
            for clf, v in row["classifiers"].items():
                lines.append(f"| {row['model']} | {clf} | {v['median_ms']:.2f} | {v['fps']:.1f} "
                             f"| {v['ratio']:.4f} [{v['low']:.4f}, {v['high']:.4f}] "
                             f"| {row['rounds']} |")
        lines.append("")
    if results.get("memory"):
        lines += ["## 3. Peak memory (authors: SeaFormer-L 4,479 vs 4,511 MB with SSA)", "",
                  "| model | classifier | train step MB | inference MB | measured as |",
                  "|---|---|---|---|---|"]
        for r in results["memory"]:
            lines.append(f"| {r['model']} | {r['classifier']} | {r['train_mb']:.0f} | "
                         f"{r['inference_mb']:.0f} | {r['kind']} |")
        lines.append("")
    if results.get("fp16_stability"):
        lines += ["## 4. fp16 training (GradScaler)", "",
                  "| model | classifier | steps | pass | non-finite loss terms | "
                  "steps skipped by the scaler | final scale |",
                  "|---|---|---|---|---|---|---|"]
        for r in results["fp16_stability"]:
            lines.append(f"| {r['model']} | {r['classifier']} | {r['steps']} | {r['finite']} | "
                         f"{len(r['non_finite_losses'])} | {r['skipped']} | "
                         f"{r['final_scale']:g} |")
        lines += ["", "Pass: every loss term finite, at most max(5, steps/10) overflow steps "
                  "skipped by the GradScaler (its calibration from 65536), scale >= 1."]
        lines.append("")
    if results.get("compile"):
        lines += ["## 5. torch.compile (inference)", "",
                  "| model | classifier | status | speed-up [95 % CI] | compile s |",
                  "|---|---|---|---|---|"]
        for r in results["compile"]:
            extra = (f"{r['speedup']:.2f} [{r['speedup_low']:.2f}, {r['speedup_high']:.2f}] | "
                     f"{r['compile_s']:.0f}" if r["status"] == "works" else " | ")
            lines.append(f"| {r['model']} | {r['classifier']} | {r['status']} | {extra} |")
        lines.append("")
    if results.get("ddp"):
        lines += ["## 6. DDP (2 processes, NCCL) vs 1 process", "", results["ddp"]["status"], ""]
        for r in results["ddp"].get("rows", []):
            lines.append(f"- {r['classifier']}: {r['status']}; equal: {r.get('equal')}; "
                         "parameter update differs by "
                         f"{_fmt(r.get('rel_update_diff', math.nan), 6)}"
                         f" (relative, all parameters; tolerance {r.get('tolerance')}), "
                         f"{_fmt(r.get('median_rel_update_diff', math.nan), 6)} median over "
                         f"tensors; buffers at most "
                         f"{_fmt(r.get('buffers_max_abs_diff', math.nan), 6)}; prototypes "
                         f"{_fmt(r.get('prototypes_max_abs_diff'), 6)}")
        lines.append("")
    if results.get("pipeline"):
        p = results["pipeline"]
        lines += ["## 7. Default pipeline on CUDA", "",
                  f"Return code {p['returncode']}, report written: {p['report']}, profiled on "
                  f"{', '.join(p['profiled_on']) or '–'}, {p['seconds']:.0f} s.", ""]
    for item, status in results.get("skipped", {}).items():
        lines.append(f"- item {item}: {status}")
    lines += ["", "Timings: paired and interleaved in one process (ssaseg.paired_timing), seeded "
              "order, ratio = median of per-round ratios with a 95 % BCa bootstrap interval."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="directory for gpu_check.json and gpu_check.md")
    p.add_argument("--tiny", action="store_true", help="tiny settings (the CPU mode's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--models", nargs="+")
    p.add_argument("--precisions", nargs="+", choices=list(DTYPES))
    p.add_argument("--size", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--classes", type=int)
    p.add_argument("--fp16-steps", type=int, default=50)
    p.add_argument("--warmup", type=int)
    p.add_argument("--min-rounds", type=int)
    p.add_argument("--max-rounds", type=int)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU mode)")
    p.add_argument("--budget-s", type=float, help="time budget shared by the items (seconds)")
    p.add_argument("--skip", nargs="*", type=int, default=[], help="item numbers to leave out")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    tiny = args.tiny or not cuda
    defaults = (dict(models=["segformer_b0"], precisions=["fp32", "bf16"], size=64, batch=2,
                     classes=10, warmup=1, min_rounds=4, max_rounds=8, budget_s=90.0)
                if tiny else
                dict(models=["segformer_b0", "segnext_t", "seaformer_l"],
                     precisions=["fp32", "bf16", "fp16"], size=512, batch=8, classes=150,
                     warmup=3, min_rounds=10, max_rounds=60, budget_s=240.0))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not cuda and "fp16" in args.precisions:
        args.precisions = [p for p in args.precisions if p != "fp16"]
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"conditions": {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device) if cuda
        else f"cpu ({platform.machine()}), {torch.get_num_threads()} threads",
        "torch": torch.__version__, "mode": "cuda" if cuda else "cpu (tiny)",
        "size": args.size, "batch": args.batch, "classes": args.classes,
        "models": args.models, "precisions": args.precisions, "optimizer": "AdamW",
        "cuda_devices": torch.cuda.device_count() if cuda else 0}}
    if not cuda:
        results["note"] = ("No CUDA device: items 1-3 ran on the CPU with tiny settings; "
                           "items 4-7 need a GPU and were not run.")
        log(results["note"])
    items = [(1, item_train_steps), (2, item_inference), (3, item_memory)]
    if cuda:
        items += [(4, item_fp16_stability), (5, item_compile), (6, item_ddp), (7, item_pipeline)]
    else:
        results["skipped"] = {n: "needs CUDA" for n in (4, 5, 6, 7)}
    started = time.monotonic()
    for number, item in items:
        if number in args.skip:
            results.setdefault("skipped", {})[number] = "--skip"
            continue
        log(f"item {number}: {item.__doc__.splitlines()[0]}")
        try:
            item(args, device, results)
        except Exception as exc:
            results.setdefault("errors", {})[number] = traceback.format_exc()[-2000:]
            log(f"item {number} failed: {type(exc).__name__}: {exc}")
        results["conditions"]["seconds"] = time.monotonic() - started
        # written after every item: a run cut short still leaves what it measured
        atomic_io.write_text(out_dir / "gpu_check.json", json.dumps(results, indent=1, default=str))
        atomic_io.write_text(out_dir / "gpu_check.md", markdown(results))
    log(f"done in {time.monotonic() - started:.0f} s: {out_dir / 'gpu_check.md'}")
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
