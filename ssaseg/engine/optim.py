"""Optimisers with per-group learning rates and weight decay, and the poly schedule with warm-up."""

from __future__ import annotations

import torch
from torch import nn

from ssaseg.config import OptimizerConfig, ScheduleConfig
from ssaseg.errors import ParameterError


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm weights and position blocks get the norm weight decay (mmseg's custom keys)."""
    return param.ndim <= 1 or "pos_block" in name or "norm" in name or "pos_embed" in name


def _declared_no_decay(model: nn.Module) -> set[str]:
    """Names of parameters a module declares weight-decay free through a
    ``parameters_without_weight_decay()`` method (names relative to it), made model-relative."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        declared = getattr(module, "parameters_without_weight_decay", None)
        if callable(declared):
            names |= {f"{prefix}.{n}" if prefix else n for n in declared()}
    return names


def _layer_scale(model: nn.Module, name: str, rate: float) -> float:
    """Layer-wise lr decay factor of a parameter: backbone layer i of n gets
    rate^(n + 1 - i) (``backbone.layer_decay_id``), everything else 1."""
    if rate == 1.0:
        return 1.0
    backbone = getattr(model, "backbone", None)
    if not callable(getattr(backbone, "layer_decay_id", None)):
        raise ParameterError(f"train.optimizer.layer_decay_rate is {rate}, but the backbone "
                         f"({type(backbone).__name__}) does not number its layers; set it to 1")
    if not name.startswith("backbone."):
        return 1.0
    layer = backbone.layer_decay_id(name[len("backbone."):])
    return rate ** (backbone.num_layers + 1 - layer)


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Groups: backbone/head x decay/no-decay (x layer, with layer-wise lr decay); head and
    classifier get ``head_lr_mult``. Parameters a module declares through
    ``parameters_without_weight_decay()`` get the norm weight decay, like norms and biases."""
    exempt = _declared_no_decay(model)
    groups: dict[tuple[bool, bool, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = _no_decay(name, param) or name in exempt
        scale = _layer_scale(model, name, cfg.layer_decay_rate)
        key = (not name.startswith("backbone."), no_decay, scale)
        groups.setdefault(key, []).append(param)
    param_groups = []
    for (is_head, no_decay, scale), params in sorted(groups.items()):
        mult = (cfg.head_lr_mult if is_head else 1.0) * scale
        param_groups.append({
            "params": params,
            "lr": cfg.lr * mult,
            "lr_mult": mult,
            "weight_decay": cfg.norm_weight_decay if no_decay else cfg.weight_decay,
        })
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
