"""mmcv-lite has Python ``mmcv.ops`` modules but not their compiled ``mmcv._ext``.

:func:`stub_mmcv_ext` puts a stand-in ``mmcv._ext`` in ``sys.modules`` (test processes only,
never on disk) whose every name is a function that raises, so that ``mmcv.ops`` -- and mmseg
and mmdet, which import from it -- import as usual; an op that really runs fails loudly. With a
full mmcv build it does nothing. Every conformance test uses this one stub: two different ones
in the same worker process would break each other.
"""

from __future__ import annotations

import sys
import types


def stub_mmcv_ext() -> None:
    if "mmcv._ext" in sys.modules:
        return
    try:
        import mmcv._ext  # noqa: F401  (a full mmcv build has the real ops)
        return
    except ImportError:
        pass
    ext = types.ModuleType("mmcv._ext")

    def missing(name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name}: compiled op not available (test stub)")

        return call

    ext.__getattr__ = missing
    sys.modules["mmcv._ext"] = ext
