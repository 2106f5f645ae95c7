"""Device selection and mixed-precision settings."""

from __future__ import annotations

import contextlib

import torch

from ssaseg.errors import UnavailableError


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; an unavailable device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnavailableError(f"device {name!r} requested but CUDA is not available; use 'auto' "
                               "or 'cpu'")
    return device


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for an ``amp`` setting, or None for full fp32."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[setting]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
