"""Importing mmsegmentation 1.2.2 with mmcv-lite, for the tests that use mmseg as an oracle.

mmcv-lite ships no compiled ``mmcv.ops``; mmseg imports a few names from it at import time.
:func:`stub_mmcv_ops` puts an ``mmcv.ops`` into ``sys.modules`` whose every name is a function
that raises when called (none is called on the CPU paths the tests run). A full mmcv build is
left alone. For tests only: ssaseg itself never imports mmcv or mmseg.
"""

from __future__ import annotations

import sys
import types


def stub_mmcv_ops() -> None:
    try:
        import mmcv.ops  # noqa: F401  (full mmcv: nothing to stub)
        return
    except (ImportError, ModuleNotFoundError):
        pass
    ops = types.ModuleType("mmcv.ops")

    def missing(name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def stub(*args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} is a test stub (mmcv-lite has no compiled ops)")

        return stub

    ops.__getattr__ = missing
    sys.modules["mmcv.ops"] = ops


def import_mmseg_models():
    """mmseg's model registry, every module registered, with ``mmseg`` as the default scope."""
    from ssaseg.torchvision_cpu import declare_missing_torchvision_ops

    declare_missing_torchvision_ops()
    stub_mmcv_ops()
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    init_default_scope("mmseg")
    return MODELS
