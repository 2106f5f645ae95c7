"""Let timm import torchvision next to a CPU-only torch build.

PyPI ships torchvision only as wheels built against CUDA torch. Next to the CPU build of torch
their compiled operators cannot load (they link ``libtorch_cuda.so``), torchvision then falls
back to pure Python, except that its import registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` unconditionally and dies with ``operator torchvision::nms does not exist``.
timm needs only torchvision's pure-Python parts (``FrozenBatchNorm2d``, transforms).

:func:`declare_missing_torchvision_ops` declares the schemas of those two operators, without
kernels, when torch has no CUDA and the operators are not already there; calling them still
raises. On CUDA builds of torch it does nothing, so GPU installs stay exactly as they are.
Call it before the first ``import timm``/``import torchvision``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None  # must stay alive for the schemas to exist


def _has_op(name: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel(f"torchvision::{name}") or bool(
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        )
    except RuntimeError:
        return False


def _compiled_ops_load() -> bool:
    """Try torchvision's compiled operators without importing the package (whose import fails)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for location in spec.submodule_search_locations:
        for library in Path(location).glob("_C*.so"):
            try:
                torch.ops.load_library(str(library))
                return True
            except (OSError, RuntimeError):
                continue
    return False


def declare_missing_torchvision_ops() -> list[str]:
    """Declare the operator schemas torchvision's import needs; returns the names declared."""
    global _library
    if torch.version.cuda is not None:
        return []
    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if not missing:
        return []
    if _compiled_ops_load():  # a CPU build of torchvision (built by hand) brings its own
        return []
    if missing:
        if _library is None:
            _library = torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            _library.define(_SCHEMAS[name])
    return missing
