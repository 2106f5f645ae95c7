"""Several processes, one per GPU (or CPU process group), in one training job: torchrun + DDP.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; :func:`setup` reads them, starts the process
group (NCCL on CUDA, gloo on the CPU) and picks this rank's device. Without them everything
here is a no-op, so the single-process path is unchanged.

    torchrun --standalone --nproc-per-node 4 -m ssaseg train --params ... RUN

Collectives that classifiers use inside their forward pass (the SSA teacher's class centres
over the global batch) go through :func:`all_reduce_sum`, which is differentiable: the
backward pass sums the incoming gradients over the ranks, the same contract as SyncBatchNorm.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ssaseg.errors import UnavailableError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment (a single process without)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Start the process group when launched by torchrun with WORLD_SIZE > 1.

    Returns this rank's info and device: ``cuda:LOCAL_RANK`` when ``device`` is CUDA (NCCL),
    the CPU otherwise (gloo).
    """
    info = env_info()
    if not info.distributed:
        return info, device
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise UnavailableError(
                f"rank {info.rank}: LOCAL_RANK {info.local_rank} but only "
                f"{torch.cuda.device_count()} GPU(s) visible; set train.gpus (and the job's GPU "
                "request) to the GPUs of one node"
            )
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # one group per process, kept until exit: re-creating it after destroy_process_group
        # under torchrun's store reads the previous group's stale addresses
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=info.rank, world_size=info.world_size,
                                device_id=device if device.type == "cuda" else None)
        atexit.register(cleanup)
    return info, device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks, differentiable (backward: sum of the ranks' gradients);
    ``tensor`` itself when not distributed."""
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor, op=dist.ReduceOp.SUM)


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a detached tensor (for logging); ``values`` when not distributed."""
    if not is_distributed():
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, on any device.

    ``torch.nn.SyncBatchNorm`` only runs on accelerators; this is the same computation with one
    differentiable all-reduce of (count, sum, sum of squares) per layer, used for gloo/CPU
    process groups (the CPU tests; CUDA jobs use SyncBatchNorm). Same parameters and buffers
    as the BatchNorm it replaces, so checkpoints load into the plain model.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        dims = [0] + list(range(2, input.dim()))
        x = input.float()
        count = x.new_full((1,), x.numel() / x.shape[1])
        stats = all_reduce_sum(torch.cat([count, x.sum(dims), x.square().sum(dims)]))
        channels = x.shape[1]
        n = stats[0]
        mean = stats[1:1 + channels] / n
        var = (stats[1 + channels:] / n - mean.square()).clamp_min(0.0)  # biased, as BN uses
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1.0))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers -> batch statistics over all ranks.

    CUDA: timm's converter (torch's SyncBatchNorm, also for timm's BatchNormAct2d). CPU: plain
    ``BatchNorm{1,2,3}d`` -> :class:`GlobalBatchNorm` (subclasses such as timm's BatchNormAct2d
    keep per-rank statistics on the CPU; none of the CPU-tested models has one).
    """
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm as timm_convert

        return timm_convert(model)
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if type(model) in plain:
        new = GlobalBatchNorm(model.num_features, model.eps, model.momentum, model.affine,
                              model.track_running_stats)
        new.load_state_dict(model.state_dict())
        new.train(model.training)
        for name, param in model.named_parameters(recurse=False):  # frozen affine stays frozen
            getattr(new, name).requires_grad_(param.requires_grad)
        return new
    for name, child in model.named_children():
        converted = convert_sync_batchnorm(child, device)
        if converted is not child:
            setattr(model, name, converted)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


__all__ = ["DistInfo", "GlobalBatchNorm", "all_reduce_sum", "barrier", "cleanup",
           "convert_sync_batchnorm", "env_info", "is_distributed", "mean_over_ranks", "setup",
           "unwrap"]
