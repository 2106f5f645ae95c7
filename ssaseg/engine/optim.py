"""Optimisers with per-group learning rates and weight decay, and the poly schedule with warm-up."""

from __future__ import annotations

import torch
from torch import nn

from ssaseg.config import OptimizerConfig, ScheduleConfig


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm weights and position blocks get the norm weight decay (mmseg's custom keys)."""
    return param.ndim <= 1 or "pos_block" in name or "norm" in name or "pos_embed" in name


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Four groups: backbone/head x decay/no-decay; head and classifier get ``head_lr_mult``."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (not name.startswith("backbone."), _no_decay(name, param))
        groups.setdefault(key, []).append(param)
    param_groups = [
        {
            "params": params,
            "lr": cfg.lr * (cfg.head_lr_mult if is_head else 1.0),
            "lr_mult": cfg.head_lr_mult if is_head else 1.0,
            "weight_decay": cfg.norm_weight_decay if no_decay else cfg.weight_decay,
        }
        for (is_head, no_decay), params in sorted(groups.items())
    ]
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum)


def poly_lr(base_lr: float, iteration: int, total: int, cfg: ScheduleConfig) -> float:
    """mmseg's PolyLR with linear warm-up: lr at ``iteration`` (0-based)."""
    progress = min(iteration, total) / total
    lr = (base_lr - cfg.min_lr) * (1.0 - progress) ** cfg.power + cfg.min_lr
    if iteration < cfg.warmup_iters:
        k = (1.0 - iteration / cfg.warmup_iters) * (1.0 - cfg.warmup_ratio)
        lr *= 1.0 - k
    return lr


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, iteration: int, total: int,
           cfg: ScheduleConfig) -> float:
    lr = poly_lr(base_lr, iteration, total, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    return lr
