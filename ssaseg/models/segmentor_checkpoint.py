"""Loading a released whole-segmentor checkpoint (mmseg 1.x or 0.x) into one of our Segmentors.

    model = build_segmentor("seaformer_b", "ssa", num_classes=150)
    load_released_checkpoint(model, "seaformer_b_ssa_ade20k.pth", "seaformer_b", "ssa")

The file: ``{"meta": ..., "state_dict": {...}}`` (mmseg 1.x, mmcv 0.x runners), ``{"state_dict":
...}``, ``{"model": ...}`` or the flat state dict, with ``backbone.``, ``decode_head.`` and
``auxiliary_head.`` prefixes (a DataParallel ``module.`` in front is removed). It is read with
``torch.load(weights_only=True)``: tensors and plain containers; NumPy arrays and scalars
(mmseg 0.x palettes) are rebuilt as data; mmengine's ``message_hub`` bookkeeping is rebuilt as
inert stand-ins and dropped (:data:`DROPPED_GLOBALS`); any other pickled object is refused,
naming it, before anything is unpickled.

The names are mapped by data, not branches: the rows of the classifier inside the decode head
(``released_key_tables.CLASSIFIER_ROWS``: ``conv_seg`` is the linear classifier; the SSA heads
of xwmaxwma/SSAClassifier map explicitly), then the model family's table
(``segmentor_key_tables.MODEL_KEY_TABLES`` for the families mmseg has, the released tables for
SeaFormer, AFFormer, CGRSeg). A row may hand backbone keys to the backbone's own
ImageNet-checkpoint converter (:class:`~ssaseg.models.released_key_tables.BackboneKey`).
Every key dropped on purpose is a row of a table. Afterwards each key of the file must land on
exactly one key of ours, and each key of ours must be filled, with the same shape: otherwise
:class:`SegmentorCheckpointError` lists every key left over on either side and every shape
mismatch, and nothing is loaded.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssaseg.errors import InputError
from ssaseg.models.backbones.checkpoint import OPTIONAL_SUFFIXES
from ssaseg.models.released_key_tables import (
    CLASSIFIER_HEAD,
    CLASSIFIER_ROWS,
    CLASSIFIER_ROWS_OVERRIDE,
    RELEASED_MODEL_KEY_TABLES,
    UNSUPPORTED,
    BackboneKey,
)
from ssaseg.models.segmentor_key_tables import MODEL_KEY_TABLES

State = dict[str, torch.Tensor]
ENVELOPE_KEYS = ("state_dict", "model")
LISTED = 20  # names shown per category in the one-line message (the exception holds all)


class SegmentorCheckpointError(InputError, ValueError):
    """A released checkpoint cannot be loaded into the model; one line naming the file."""

    def __init__(self, message: str, missing: list[str] = (), unexpected: list[str] = (),
                 wrong_shape: list[str] = ()) -> None:
        super().__init__(message)
        self.missing, self.unexpected, self.wrong_shape = (
            list(missing), list(unexpected), list(wrong_shape))


# --------------------------------------------------------------------------------- reading ---

def _numpy_data_globals() -> list:
    """NumPy's array, scalar and dtype reconstruction: data only (mmseg 0.x meta palettes)."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    found = [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar]
    found += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUV"]
    return found


class _Dropped:
    """Inert stand-in for training bookkeeping pickled beside the weights (see DROPPED_GLOBALS):
    takes any arguments and state, holds nothing, runs nothing."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


def _dropped(*args, **kwargs) -> _Dropped:
    return _Dropped()


# What mmengine's runner (mmseg 1.x) pickles next to the weights and mmseg's publish_model.py
# keeps: ``message_hub`` holds HistoryBuffer objects, whose state names their statistics
# methods through getattr(HistoryBuffer, "mean"). Rebuilt as inert stand-ins - their code is
# neither imported nor run, getattr included - and never part of the state dict.
DROPPED_GLOBALS: tuple[tuple[object, str], ...] = (
    (_Dropped, "mmengine.logging.history_buffer.HistoryBuffer"),
    (_dropped, "builtins.getattr"),
)


def _safe_globals() -> list:
    return [*_numpy_data_globals(), *DROPPED_GLOBALS]


def _allowed_global_names() -> set[str]:
    names = {name for _, name in DROPPED_GLOBALS}
    for obj in _numpy_data_globals():
        names.add(f"{obj.__module__}.{obj.__qualname__}")
    return names


def read_released_state(path: str | Path) -> State:
    """The flat {name: tensor} of a released segmentor file (envelope and ``module.`` removed).

    Raises SegmentorCheckpointError (one line) for a missing, unreadable or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise SegmentorCheckpointError(f"checkpoint {path} not found")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError):  # legacy (non-zip) format: torch.load refuses below
        unsafe = []
    refused = sorted(set(unsafe) - _allowed_global_names())
    if refused:
        raise _refused(path, refused)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # a legacy (non-zip) file: refused while reading
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise _refused(path, sorted(set(found))) from exc
        raise SegmentorCheckpointError(f"cannot load checkpoint {path}: {_first_line(exc)}"
                                       ) from exc
    except Exception as exc:
        raise SegmentorCheckpointError(f"cannot load checkpoint {path}: {_first_line(exc)}"
                                       ) from exc
    if not isinstance(checkpoint, dict):
        raise SegmentorCheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, "
                                       "not a state dict")
    if "config" in checkpoint and "model" in checkpoint and "num_classes" in checkpoint:
        raise SegmentorCheckpointError(
            f"{path} is a model file written by `ssaseg train`; evaluate it with `python -m "
            "ssaseg evaluate` and its run's --dataset/--model/--classifier/--seed")
    for key in ENVELOPE_KEYS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state: State = {}
    for name, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise SegmentorCheckpointError(
                f"checkpoint {path}: entry {name!r} of its state dict is a "
                f"{type(value).__name__}, not a tensor; is this a segmentor checkpoint?")
        state[name.removeprefix("module.")] = value
    return state


def _refused(path: Path, names: list[str]) -> SegmentorCheckpointError:
    return SegmentorCheckpointError(
        f"refusing checkpoint {path}: it holds pickled objects ({', '.join(names)}) beyond "
        "tensors, plain types and NumPy arrays, and unpickling them could run code; none of "
        "them was run. Re-save only its state_dict where you trust the file: torch.save("
        "{'state_dict': torch.load(F, weights_only=False)['state_dict']}, F2)")


def _first_line(exc: Exception) -> str:
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)


# ------------------------------------------------------------------------------- the table ---

def released_key_table(model_name: str, classifier: str, mask_classification: bool = False
                       ) -> tuple:
    """The rows that map model ``model_name`` + ``classifier``'s released names to ours."""
    if (model_name, classifier) in UNSUPPORTED:
        raise SegmentorCheckpointError(
            f"released {model_name} + {classifier} checkpoints cannot be loaded: "
            f"{UNSUPPORTED[(model_name, classifier)]}")
    tables = {**MODEL_KEY_TABLES, **RELEASED_MODEL_KEY_TABLES}
    if model_name not in tables:
        raise SegmentorCheckpointError(
            f"no key table for released {model_name} checkpoints; models with one: "
            f"{', '.join(sorted(tables))}")
    if mask_classification:
        if classifier != "linear":  # Mask2Former's own semantic inference has no parameters
            raise SegmentorCheckpointError(
                f"no released {model_name} checkpoint has a {classifier!r} classifier; "
                "load one with classifier linear")
        return tuple(tables[model_name])
    if (model_name, classifier) in CLASSIFIER_ROWS_OVERRIDE:
        rows = CLASSIFIER_ROWS_OVERRIDE[(model_name, classifier)]
    elif classifier in CLASSIFIER_ROWS:
        rows = CLASSIFIER_ROWS[classifier](CLASSIFIER_HEAD.get(model_name, r"decode_head"))
    else:
        raise SegmentorCheckpointError(
            f"released mmseg checkpoints hold no {classifier!r} classifier; classifiers with a "
            f"released layout: {', '.join(sorted(CLASSIFIER_ROWS))}")
    return (*rows, *tables[model_name])


def _rename(name: str, table: tuple) -> tuple[tuple[str, ...] | BackboneKey | None, str | None]:
    """(our names, or a BackboneKey, or None when dropped; the row's layout change or None).
    Rows are ``(pattern, replacement)`` or ``(pattern, replacement, layout)``, the layout a
    name of ``segmentor_key_tables.LAYOUTS``; no row matching: the name is kept."""
    for row in table:
        pattern, replacement = row[0], row[1]
        match = re.fullmatch(pattern, name)
        if match is None:
            continue
        layout = row[2] if len(row) > 2 else None
        if replacement is None:
            return None, None
        if isinstance(replacement, BackboneKey):
            return BackboneKey(match.expand(replacement.template)), None
        names = (replacement,) if isinstance(replacement, str) else tuple(replacement)
        return tuple(match.expand(r) for r in names), layout
    return (name,), None


def _tensors(name: str, tensor: torch.Tensor, count: int, layout: str | None
             ) -> tuple[torch.Tensor, ...]:
    """``tensor`` for each of ``count`` names: copies, or the parts of a layout change."""
    if layout is None:
        return (tensor,) * count
    from ssaseg.models import segmentor_key_tables

    layouts = getattr(segmentor_key_tables, "LAYOUTS", {})
    if layout not in layouts:
        raise SegmentorCheckpointError(f"key table row for {name!r} names the unknown layout "
                                       f"{layout!r}")
    parts = layouts[layout](tensor)
    if len(parts) != count:
        raise SegmentorCheckpointError(f"key table row for {name!r}: {count} names for "
                                       f"{len(parts)} tensors (layout {layout})")
    return tuple(parts)


# ---------------------------------------------------------------------- backbone converters ---

def _timm_backbone_state(backbone: nn.Module, state: State) -> State:
    """Official/mmseg backbone names -> TimmBackbone's, by its own ImageNet loader's means."""
    from ssaseg.models.backbones.timm_backbone import _match_names
    from ssaseg.models.backbones.timm_weights import to_timm

    full = backbone._full_model()
    state = to_timm(state, full)
    full_to_own = _match_names(set(backbone.model.state_dict()), set(full.state_dict()))
    return {"model." + full_to_own.get(k, k): v for k, v in state.items()}


def _renamed_by(rename: Callable[[str], str | None]) -> Callable[[nn.Module, State], State]:
    def convert(backbone: nn.Module, state: State) -> State:
        out = {}
        for name, tensor in state.items():
            new = rename(name)
            if new is not None:
                out[new] = tensor
        return out
    return convert


def _backbone_converters() -> dict[str, Callable[[nn.Module, State], State]]:
    from ssaseg.models.backbones import afformer, seaformer

    return {
        "timm": _timm_backbone_state,
        "seaformer": _renamed_by(seaformer.rename_official_key),
        "afformer": _renamed_by(afformer.rename_official_key),
    }


# --------------------------------------------------------------------------------- loading ---

def map_released_state(model: nn.Module, state: State, model_name: str, classifier: str
                       ) -> State:
    """``state`` (released names) in ``model``'s names, by the table of ``model_name``."""
    return _map(model, state, model_name, classifier)[0]


def _map(model: nn.Module, state: State, model_name: str, classifier: str
         ) -> tuple[State, dict[str, str]]:
    """(the mapped state, our name -> the file's name it came from)."""
    from ssaseg.models.zoo import model_spec

    spec = model_spec(model_name)
    table = released_key_table(model_name, classifier, spec.mask_classification)
    mapped: State = {}
    origin: dict[str, str] = {}
    for_backbone: State = {}
    backbone_origin: dict[str, str] = {}
    for name, tensor in state.items():
        new, layout = _rename(name, table)
        if isinstance(new, BackboneKey):
            for_backbone[new.template] = tensor
            backbone_origin[new.template] = name
        elif new is not None:
            for target, part in zip(new, _tensors(name, tensor, len(new), layout)):
                mapped[target] = part
                origin[target] = name
    if for_backbone:
        converters = _backbone_converters()
        if spec.backbone not in converters:
            raise SegmentorCheckpointError(
                f"the {model_name} key table hands keys to the {spec.backbone!r} backbone's "
                "converter, which it has not")
        converted = converters[spec.backbone](model.backbone, for_backbone)
        for name, tensor in converted.items():  # origin: where the converter kept the name
            mapped[f"backbone.{name}"] = tensor
            origin[f"backbone.{name}"] = backbone_origin.get(name, f"backbone.{name}")
    return mapped, origin


def _listed(title: str, names: list[str]) -> str:
    shown = ", ".join(names[:LISTED]) + (f", ... ({len(names) - LISTED} more)"
                                         if len(names) > LISTED else "")
    return f"{title} ({len(names)}): {shown}"


def load_released_checkpoint(model: nn.Module, path: str | Path, model_name: str,
                             classifier: str) -> dict[str, Any]:
    """Load the released checkpoint ``path`` into ``model`` (built as ``model_name`` +
    ``classifier``) completely, or raise SegmentorCheckpointError listing what does not fit.
    Returns a summary: the file's key count and the number of keys dropped by table rows."""
    state = read_released_state(path)
    mapped, origin = _map(model, state, model_name, classifier)
    own = model.state_dict()
    missing = sorted(k for k in own.keys() - mapped.keys() if not k.endswith(OPTIONAL_SUFFIXES))
    unexpected = sorted(origin.get(k, k) for k in mapped.keys() - own.keys())
    wrong_shape = sorted(
        f"{k} {tuple(mapped[k].shape)} vs ours {tuple(own[k].shape)}"
        for k in mapped.keys() & own.keys() if mapped[k].shape != own[k].shape)
    if missing or unexpected or wrong_shape:
        parts = [_listed(title, names) for title, names in (
            ("keys of ours the file does not fill", missing),
            ("keys of the file with no place in ours", unexpected),
            ("shape mismatches", wrong_shape)) if names]
        raise SegmentorCheckpointError(
            f"checkpoint {path} does not fit {model_name} + {classifier}: " + "; ".join(parts)
            + f"; check --model/--classifier and the dataset's class count ({model_name} "
            "table: ssaseg/models/released_key_tables.py, segmentor_key_tables.py)",
            missing, unexpected, wrong_shape)
    model.load_state_dict(mapped, strict=False)  # completeness checked above
    return {"file_keys": len(state), "loaded_keys": len(mapped)}
