"""The training loop: visible top to bottom, resumable, deterministic on the CPU.

One process (CPU or one GPU):
    python -m ssaseg train --params params/default.yaml --dataset synthetic \
        --model segformer_b0 --classifier linear --seed 0
Several GPUs in one job (DDP; one process per GPU; ``train.gpus: 4`` makes the Snakemake rule
do this):
    torchrun --standalone --nproc-per-node 4 -m ssaseg train --params ... (same arguments)

Under torchrun (see :mod:`ssaseg.engine.distributed`) each rank trains on its contiguous share
of every global batch (``train.batch_size`` is the global batch), BatchNorm becomes
SyncBatchNorm when ``train.sync_bn``, dropout draws are seeded per (seed, iteration, rank), the
logged losses are means over the ranks, and only rank 0 logs to MLflow and writes files.

Every ``checkpoint_every`` iterations the full state (model, optimiser, scaler, loss history)
goes to ``<run_dir>/checkpoints/last.pt``; a restarted run continues from there and, since
batches and dropout draws are a function of (seed, iteration), follows the same loss curve.
A checkpoint is only written once it is known to be good: its weights and optimiser state are
finite and the next iteration's forward, which uses exactly those weights, gave a finite loss
(the write waits for that forward and saves the buffers it changes, BatchNorm statistics and
ProtoSeg's prototypes, as they were before it). So the "last good checkpoint" a
:class:`NonFiniteLossError` names never gives NaN on its first step, and a killed run loses at
most ``checkpoint_every`` + 1 iterations. The iteration, the last step already in the MLflow
run, and the checkpoint a run resumes from are printed when it does; steps MLflow already has
(logged before a kill, after the checkpoint) are not logged a second time.

Preemption: SIGTERM or SIGUSR1 (Slurm's time-limit warning, ``--signal``; a preempted or
cancelled job's SIGTERM) lets the current iteration finish, writes the checkpoint and raises
:class:`Preempted`; ``python -m ssaseg train`` then exits with ``PREEMPTED_EXIT_CODE`` (75,
EX_TEMPFAIL) and the re-run job resumes where the signal stopped it. Under DDP the ranks agree
on the stop iteration (one all-reduce per iteration carries the flag with the losses).
"""

from __future__ import annotations

import contextlib
import csv
import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ssaseg import atomic_io
from ssaseg.config import RunConfig, run_config_from_dict
from ssaseg.data.dataset import SegmentationDataset, TrainBatches, opencv_single_threaded
from ssaseg.data.layout import read_meta
from ssaseg.data.transforms import TrainPipeline, normalize
from ssaseg.engine import checkpoint, distributed
from ssaseg.engine.device import amp_dtype, autocast, select_device
from ssaseg.engine.optim import build_optimizer, set_lr
from ssaseg.engine.run_lock import RunLock
from ssaseg.errors import InputError
from ssaseg.models.zoo import build_segmentor
from ssaseg.tracking import RUN_ID_FILE, NullTracker, RunTracker, device_tag, git_commit

MODEL_FILE = "model.pt"
TRAIN_COST_FILE = "train_cost.json"  # peak memory and speed of the training run
TRAIN_LOG = "train_log.csv"
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by a signal after a checkpoint; re-run to resume
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class NonFiniteLossError(InputError, RuntimeError):
    """The loss (or the weights) became NaN/inf; the message gives the iteration and the last
    good checkpoint. An input error: the learning rate or the clipping is what to change."""


class Preempted(RuntimeError):
    """Training stopped on SIGTERM/SIGUSR1 after writing a checkpoint; re-running resumes."""

    def __init__(self, signal_name: str, iteration: int, checkpoint_path: Path) -> None:
        super().__init__(f"stopped by {signal_name} after iteration {iteration}; checkpoint "
                         f"{checkpoint_path} written; re-run the same command to resume")
        self.iteration = iteration
        self.checkpoint_path = checkpoint_path


class _StopSignals:
    """Within the block, SIGTERM/SIGUSR1 only set :attr:`signum` (the loop stops after the
    current iteration); the previous handlers come back afterwards. The handler is installed
    only from the main thread (Python's rule)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _init_worker(worker_id: int) -> None:
    """DataLoader workers ignore the stop signals: Slurm signals every process of the job, and a
    worker killed by SIGTERM would fail the iteration the main process is finishing. OpenCV runs
    single-threaded in them (as mmengine sets it): the workers are the parallelism."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    opencv_single_threaded(worker_id)


def dropout_seed(seed: int, iteration: int, rank: int = 0) -> int:
    """Seed of the dropout (and other in-model random) draws of one iteration on one rank."""
    return seed * 1_000_003 + iteration + rank * 2**40


def all_finite(tensors) -> bool:
    """Whether every floating-point tensor among ``tensors`` is free of NaN and inf: one
    max-abs reduction per tensor (NaN propagates through it; no tensor-sized temporary), one
    device-to-host transfer. 180 M floats (UperNet-Swin-T's weights and AdamW moments) take
    1.4 s on one shared CPU thread, twice as fast as ``isfinite().all()`` (2026-12-03)."""
    norms = [torch.linalg.vector_norm(t, float("inf")).float() for t in tensors
             if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    return bool(torch.isfinite(torch.stack(norms)).all()) if norms else True


def optimizer_tensors(optimizer_state: dict) -> list[torch.Tensor]:
    """The tensors (moments, ...) of an optimiser's ``state_dict()``."""
    return [v for per_param in optimizer_state["state"].values() for v in per_param.values()
            if isinstance(v, torch.Tensor)]


def pretrained_weights(cfg: RunConfig) -> Path | None:
    if not cfg.train.pretrained:
        return None
    from ssaseg.weights import weights_for_model, weights_path

    return weights_path(weights_for_model(cfg.model), cfg.weights_dir)


def precision_tag(amp: str, device: torch.device) -> str:
    """What ``train.amp`` means on ``device``: fp32, or the autocast dtype (bf16, fp16)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype(amp, device)]


def open_tracker(cfg: RunConfig, device: torch.device, rank: int = 0):
    if rank != 0:
        return NullTracker()
    return RunTracker(
        cfg.tracking_uri, cfg.run_dir, experiment=cfg.dataset.name, run_name=cfg.run_name,
        tags={"git_commit": git_commit(), "config_hash": cfg.config_hash(),
              "device": device_tag() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
              "precision": precision_tag(cfg.train.amp, device),
              "model": cfg.model, "classifier": cfg.classifier, "seed": str(cfg.seed),
              "params_name": cfg.experiment},
        params=cfg.to_dict(),
    )


def train(cfg: RunConfig, progress: bool = True) -> Path:
    """Train one run to completion (resuming if a checkpoint exists); returns the model file.

    Raises :class:`Preempted` when SIGTERM/SIGUSR1 stopped it (after writing the checkpoint).
    Under torchrun (WORLD_SIZE > 1) this is one rank of a DDP job.
    """
    torch.set_num_threads(cfg.train.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    info, device = distributed.setup(select_device(cfg.train.device))
    if cfg.train.gpus > 1 and not info.distributed:
        print(f"note: train.gpus is {cfg.train.gpus} but this is a single process; launch with "
              f"torchrun --nproc-per-node {cfg.train.gpus} for DDP", file=sys.stderr)
    # rank 0 alone holds the run directory: the ranks of one job share it by design
    owner = RunLock(cfg.run_dir) if info.is_main else contextlib.nullcontext()
    with owner, _StopSignals() as stop:
        return _train(cfg, progress and info.is_main, info, device, stop)


def _train(cfg: RunConfig, progress: bool, info: distributed.DistInfo, device: torch.device,
           stop: _StopSignals) -> Path:
    run_dir = Path(cfg.run_dir)
    ckpt_path = checkpoint.last_checkpoint(run_dir)
    if info.is_main:  # what a killed write of last.pt / model.pt left (its writer's PID is dead)
        for target in (ckpt_path, run_dir / MODEL_FILE):
            atomic_io.remove_stale_temporaries(target)

    meta = read_meta(cfg.dataset.root)
    dataset = SegmentationDataset(
        cfg.dataset.root, "train", train=True,
        train_pipeline=TrainPipeline.from_config(cfg.dataset, meta.ignore_index))
    torch.manual_seed(cfg.seed)  # parameter initialisation
    model = build_segmentor(cfg.model, cfg.classifier, meta.num_classes, meta.ignore_index,
                            cfg.classifier_params, weights=pretrained_weights(cfg))
    if info.distributed and cfg.train.sync_bn:
        model = distributed.convert_sync_batchnorm(model, device)
    model = model.to(device)
    optimizer = build_optimizer(model, cfg.train.optimizer)
    dtype = amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    start, history = 0, []
    state = checkpoint.load(ckpt_path, device) if ckpt_path.is_file() else None
    if state is not None and run_config_from_dict(state["config"]).config_hash() != cfg.config_hash():
        if info.is_main:  # trained with other settings: keep it aside, start a new run
            stale = ckpt_path.with_name(f"{ckpt_path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            ckpt_path.rename(stale)
            (run_dir / RUN_ID_FILE).unlink(missing_ok=True)
            print(f"note: {ckpt_path} was written with a different config; moved to {stale}, "
                  "training from scratch in a new MLflow run", file=sys.stderr)
        distributed.barrier()
        state = None
    if state is not None and not all_finite([*state["model"].values(),
                                             *optimizer_tensors(state["optimizer"])]):
        raise checkpoint.CheckpointError(
            f"checkpoint {ckpt_path} holds NaN/inf weights or optimiser state (written before "
            "ssaseg checked them); resuming would give NaN at once: delete it to start over")
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start, history = state["iteration"], state["history"]

    tracker = open_tracker(cfg, device, info.rank)
    logged = tracker.last_logged_step("loss")  # steps a stopped run already sent to MLflow
    if info.is_main and (start or logged):
        what = (f"resuming from {ckpt_path} at iteration {start}" if start else
                "no checkpoint: starting at iteration 0")
        note = (f"; MLflow run {tracker.run_id} has steps up to {logged}, not logged again"
                if logged > start else "")
        print(f"{cfg.run_name}: {what}{note}", file=sys.stderr, flush=True)
    try:
        model_path = _train_loop(cfg, model, optimizer, scaler, dtype, dataset, device, start,
                                 history, tracker, progress, info, stop, logged)
    except Preempted:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return model_path


def _train_loop(cfg, model, optimizer, scaler, dtype, dataset, device, start, history, tracker,
                progress, info: distributed.DistInfo = distributed.DistInfo(),
                stop: _StopSignals | None = None, logged: int = 0) -> Path:
    """Iterations ``start`` .. ``cfg.train.iters``; metrics of steps up to ``logged`` (already in
    the MLflow run: replayed after a resume) are not logged again."""
    run_dir = Path(cfg.run_dir)
    ckpt_path = checkpoint.last_checkpoint(run_dir)
    meta = dataset.meta
    stop = stop or _StopSignals()
    sampler = TrainBatches(len(dataset), cfg.train.batch_size, cfg.seed, start, cfg.train.iters,
                           info.rank, info.world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.train.num_workers,
                        pin_memory=device.type == "cuda",
                        worker_init_fn=_init_worker if cfg.train.num_workers else None)
    raw_model = model  # what is checkpointed; DDP wraps it for the forward/backward
    if info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # The step of the checkpoint on disk, every one of which is good: finite weights and
    # optimiser state, and a finite loss from the forward that used them.
    saved = start if start else None

    def last_good() -> str:
        if saved is None:
            return "none (no checkpoint yet)"
        return f"{ckpt_path} (iteration {saved})"

    def save_checkpoint(step: int, buffers: dict[str, torch.Tensor] | None = None) -> None:
        """Write the state after ``step`` updates (with ``buffers`` as they were then), only if
        it is finite on every rank."""
        nonlocal saved
        weights = raw_model.state_dict()
        if buffers:
            weights = {k: buffers.get(k, v) for k, v in weights.items()}
        optim_state = optimizer.state_dict()
        finite = all_finite([*weights.values(), *optimizer_tensors(optim_state)])
        if distributed.mean_over_ranks(torch.tensor([float(finite)], device=device)).item() < 1:
            raise NonFiniteLossError(
                f"{cfg.run_name}: the weights or optimiser state are NaN/inf after the update "
                f"of iteration {step - 1} (not written to a checkpoint); the last good "
                f"checkpoint is {last_good()}; lower the learning rate or enable grad_clip")
        if info.is_main:
            checkpoint.save(ckpt_path, {
                "iteration": step, "model": weights,
                "optimizer": optim_state, "scaler": scaler.state_dict(),
                "history": history, "config": cfg.to_dict(), "world_size": info.world_size,
            })
        saved = step

    # A checkpoint due after step s waits for the forward of iteration s to prove its weights
    # (see the module docstring); ``buffers`` keeps what that forward changes, as it was before.
    pending: int | None = None
    buffers: dict[str, torch.Tensor] | None = None

    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(total=cfg.train.iters, initial=start, disable=not progress, dynamic_ncols=True,
               desc=cfg.run_name, mininterval=2.0)
    started = time.perf_counter()
    for iteration, batch in zip(range(start, cfg.train.iters), loader):
        images = normalize(batch.image.to(device, non_blocking=True), batch.valid_size)
        labels = batch.label.to(device, non_blocking=True).long()
        lr = set_lr(optimizer, cfg.train.optimizer.lr, iteration, cfg.train.iters,
                    cfg.train.schedule)
        torch.manual_seed(dropout_seed(cfg.seed, iteration, info.rank))
        if pending == iteration:
            buffers = {name: b.detach().clone() for name, b in raw_model.named_buffers()}
        with autocast(device, dtype):
            out = model(images, labels)
        losses = {name: value.float() for name, value in out.losses.items()}
        loss = sum(losses.values())
        # one collective per iteration: each loss term averaged over the ranks (what is logged
        # and checked), and the stop flag (> 0 when any rank got a signal), so that every rank
        # raises, or stops, at the same iteration
        flag = torch.tensor([float(stop.signum is not None)], device=loss.device)
        summary = distributed.mean_over_ranks(
            torch.cat([torch.stack([loss.detach(), *[v.detach() for v in losses.values()]]), flag]))
        values = summary[:-1].tolist()
        stopping = bool(summary[-1] > 0)
        mean_loss, mean_terms = values[0], dict(zip(losses, values[1:]))
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(
                f"{cfg.run_name}: loss is {mean_loss} at iteration {iteration} "
                f"(terms: {mean_terms}); the last good checkpoint is {last_good()}; lower "
                "the learning rate or enable grad_clip"
            )
        if pending == iteration:  # the weights of step `pending` gave a finite loss
            save_checkpoint(pending, buffers)
            pending, buffers = None, None
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()

        step = iteration + 1
        record = {"iter": step, "lr": lr, "loss": mean_loss,
                  **{f"loss/{k}": v for k, v in mean_terms.items()}}
        history.append(record)
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        bar.update(1)
        if step > logged and (step % cfg.train.log_every == 0 or step == cfg.train.iters
                              or stopping):
            tracker.log_metrics({k: v for k, v in record.items() if k != "iter"}, step=step)
        if step == cfg.train.iters or stopping:  # no next forward to wait for
            save_checkpoint(step)
        elif step % cfg.train.checkpoint_every == 0:
            pending = step
        if stopping and step < cfg.train.iters:
            bar.close()
            distributed.barrier()  # rank 0's checkpoint is on disk before any rank exits
            name = signal.Signals(stop.signum).name if stop.signum else "a signal on another rank"
            print(f"{cfg.run_name}: {name}: checkpoint at iteration {step} written to "
                  f"{ckpt_path}; exiting with code {PREEMPTED_EXIT_CODE}", file=sys.stderr,
                  flush=True)
            raise Preempted(name, step, ckpt_path)
    bar.close()
    if not info.is_main:
        distributed.barrier()  # rank 0 writes the log and the model file
        return run_dir / MODEL_FILE

    elapsed = time.perf_counter() - started
    log_path = run_dir / TRAIN_LOG
    with atomic_io.atomic_path(log_path) as tmp, tmp.open("w", newline="") as fh:
        fields = sorted({k for rec in history for k in rec}, key=lambda k: (k != "iter", k))
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    cost = training_cost(cfg, device, elapsed, cfg.train.iters - start)
    atomic_io.write_json(run_dir / TRAIN_COST_FILE, cost)  # before model.pt marks the run done
    tracker.log_metrics({"train_peak_memory_mb": cost["peak_memory_mb"]}, step=cfg.train.iters)
    model_path = run_dir / MODEL_FILE
    checkpoint.save(model_path, {"model": raw_model.state_dict(), "config": cfg.to_dict(),
                                 "num_classes": meta.num_classes,
                                 "ignore_index": meta.ignore_index, "classes": meta.classes})
    if start < cfg.train.iters:
        tracker.log_metrics({"train_seconds_per_iter": elapsed / (cfg.train.iters - start)},
                            step=cfg.train.iters)
    tracker.log_artifact(log_path)
    distributed.barrier()
    return model_path


def training_cost(cfg: RunConfig, device: torch.device, seconds: float, iterations: int
                  ) -> dict:
    """Peak memory of this training process (CUDA: peak allocated by the caching allocator on
    ``device`` since the loop started; CPU: the process's peak resident set, imports and data
    included) and its speed, with the conditions. A resumed run counts its last session."""
    import resource

    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
        name = torch.cuda.get_device_name(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kind, name = "process peak RSS (CPU)", f"cpu, {torch.get_num_threads()} threads"
    return {"peak_memory_mb": peak, "peak_memory_kind": kind,
            "seconds_per_iter": seconds / iterations if iterations else None,
            "iterations_timed": iterations,
            "conditions": {"batch_size": cfg.train.batch_size,
                           "crop_size": list(cfg.dataset.crop_size), "amp": cfg.train.amp,
                           "device": name, "gpus": cfg.train.gpus}}


def load_trained(model_path: str | Path, device: torch.device):
    """(Segmentor in eval mode, saved state) from a file written by :func:`train`."""

    state = checkpoint.load(model_path, device)
    if not isinstance(state, dict) or "config" not in state:
        raise checkpoint.CheckpointError(
            f"{model_path} is not a model file written by `ssaseg train` (it has no run config); "
            "to evaluate a released segmentor checkpoint pass it to `python -m ssaseg evaluate "
            "... --checkpoint FILE`")
    cfg = run_config_from_dict(state["config"])
    model = build_segmentor(cfg.model, cfg.classifier, state["num_classes"], state["ignore_index"],
                            cfg.classifier_params)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state
