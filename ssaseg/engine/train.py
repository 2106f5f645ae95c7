"""The training loop: visible top to bottom, resumable, deterministic on the CPU.

One process (CPU or one GPU):
    python -m ssaseg train --params params/default.yaml --dataset synthetic \
        --model segformer_b0 --classifier linear --seed 0
Several GPUs in one job (DDP; one process per GPU):
    torchrun --standalone --nproc-per-node 4 -m ssaseg train --params ... (same arguments)

Every ``checkpoint_every`` iterations the full state (model, optimiser, scaler, loss history)
goes to ``<run_dir>/checkpoints/last.pt``; a restarted run continues from there and, since
batches and dropout draws are a function of (seed, iteration), follows the same loss curve.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ssaseg import atomic_io
from ssaseg.config import RunConfig
from ssaseg.data.dataset import SegmentationDataset, TrainBatches
from ssaseg.engine import checkpoint
from ssaseg.engine.device import amp_dtype, autocast, select_device
from ssaseg.engine.optim import build_optimizer, set_lr
from ssaseg.models.zoo import build_segmentor
from ssaseg.tracking import NullTracker, RunTracker, device_tag, git_commit

MODEL_FILE = "model.pt"
TRAIN_LOG = "train_log.csv"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message gives the iteration and the last good checkpoint."""


def pretrained_weights(cfg: RunConfig) -> Path | None:
    if not cfg.train.pretrained:
        return None
    from ssaseg.weights import weights_file_for_model

    return weights_file_for_model(cfg.model, cfg.weights_dir)


def open_tracker(cfg: RunConfig, device: torch.device, rank: int = 0):
    if rank != 0:
        return NullTracker()
    return RunTracker(
        cfg.tracking_uri, cfg.run_dir, experiment=cfg.dataset.name, run_name=cfg.run_name,
        tags={"git_commit": git_commit(), "config_hash": cfg.config_hash(),
              "device": device_tag() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
              "model": cfg.model, "classifier": cfg.classifier, "seed": str(cfg.seed),
              "params_name": cfg.experiment},
        params=cfg.to_dict(),
    )


def train(cfg: RunConfig, progress: bool = True) -> Path:
    """Train one run to completion (resuming if a checkpoint exists); returns the model file."""
    torch.set_num_threads(cfg.train.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = select_device(cfg.train.device)
    run_dir = Path(cfg.run_dir)
    ckpt_path = run_dir / "checkpoints" / checkpoint.LAST

    dataset = SegmentationDataset(cfg.dataset.root, "train", train=True,
                                  crop_size=cfg.dataset.crop_size,
                                  scale_range=cfg.dataset.scale_range,
                                  base_size=cfg.dataset.base_size)
    meta = dataset.meta
    torch.manual_seed(cfg.seed)  # parameter initialisation
    model = build_segmentor(cfg.model, cfg.classifier, meta.num_classes, meta.ignore_index,
                            cfg.classifier_params, weights=pretrained_weights(cfg)).to(device)
    optimizer = build_optimizer(model, cfg.train.optimizer)
    dtype = amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    start, history = 0, []
    if ckpt_path.is_file():
        state = checkpoint.load(ckpt_path, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start, history = state["iteration"], state["history"]

    tracker = open_tracker(cfg, device)
    try:
        model_path = _train_loop(cfg, model, optimizer, scaler, dtype, dataset, device, start,
                                 history, tracker, progress)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return model_path


def _train_loop(cfg, model, optimizer, scaler, dtype, dataset, device, start, history, tracker,
                progress) -> Path:
    run_dir = Path(cfg.run_dir)
    ckpt_path = run_dir / "checkpoints" / checkpoint.LAST
    meta = dataset.meta
    sampler = TrainBatches(len(dataset), cfg.train.batch_size, cfg.seed, start, cfg.train.iters)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.train.num_workers,
                        pin_memory=device.type == "cuda")
    model.train()
    bar = tqdm(total=cfg.train.iters, initial=start, disable=not progress, dynamic_ncols=True,
               desc=cfg.run_name, mininterval=2.0)
    started = time.perf_counter()
    for iteration, (images, labels) in zip(range(start, cfg.train.iters), loader):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        lr = set_lr(optimizer, cfg.train.optimizer.lr, iteration, cfg.train.iters,
                    cfg.train.schedule)
        torch.manual_seed(cfg.seed * 1_000_003 + iteration)  # dropout draws: f(seed, iteration)
        with autocast(device, dtype):
            out = model(images, labels)
        losses = {name: value.float() for name, value in out.losses.items()}
        loss = sum(losses.values())
        if not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"{cfg.run_name}: loss is {float(loss)} at iteration {iteration} "
                f"(terms: { {k: float(v) for k, v in losses.items()} }); the last good checkpoint "
                f"is {ckpt_path if ckpt_path.is_file() else 'none (no checkpoint yet)'}; lower "
                "the learning rate or enable grad_clip"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()

        step = iteration + 1
        record = {"iter": step, "lr": lr, "loss": float(loss),
                  **{f"loss/{k}": float(v) for k, v in losses.items()}}
        history.append(record)
        bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{lr:.2e}", refresh=False)
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.iters:
            tracker.log_metrics({k: v for k, v in record.items() if k != "iter"}, step=step)
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.iters:
            checkpoint.save(ckpt_path, {
                "iteration": step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "history": history, "config": cfg.to_dict(),
            })
    bar.close()

    elapsed = time.perf_counter() - started
    log_path = run_dir / TRAIN_LOG
    with atomic_io.atomic_path(log_path) as tmp, tmp.open("w", newline="") as fh:
        fields = sorted({k for rec in history for k in rec}, key=lambda k: (k != "iter", k))
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    model_path = run_dir / MODEL_FILE
    checkpoint.save(model_path, {"model": model.state_dict(), "config": cfg.to_dict(),
                                 "num_classes": meta.num_classes,
                                 "ignore_index": meta.ignore_index, "classes": meta.classes})
    if start < cfg.train.iters:
        tracker.log_metrics({"train_seconds_per_iter": elapsed / (cfg.train.iters - start)},
                            step=cfg.train.iters)
    tracker.log_artifact(log_path)
    return model_path


def load_trained(model_path: str | Path, device: torch.device):
    """(Segmentor in eval mode, saved state) from a file written by :func:`train`."""
    from ssaseg.config import run_config_from_dict

    state = checkpoint.load(model_path, device)
    cfg = run_config_from_dict(state["config"])
    model = build_segmentor(cfg.model, cfg.classifier, state["num_classes"], state["ignore_index"],
                            cfg.classifier_params)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state
