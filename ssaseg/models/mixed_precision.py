"""Autocast helpers for code that picks its own precision: loss terms kept in fp32, and the
hand-written autograd functions that must run their backward matrix products in the dtype
autocast chose for the forward."""

from __future__ import annotations

import contextlib

import torch


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast disabled for ``device_type``; a no-op where there is no autocast (meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def matmul_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype a matrix product of ``tensors`` runs in here: autocast's lower precision when
    autocast is on for their device, else their promoted dtype."""
    device_type = tensors[0].device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype
