"""A thin wrapper over a timm model with ``features_only=True``."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.torchvision_cpu import declare_missing_torchvision_ops

declare_missing_torchvision_ops()
import timm  # noqa: E402  (after the CPU-torch fix above)

# kwargs that only make sense for the feature wrapper, not for the plain timm model
_FEATURE_ONLY_KWARGS = ("out_indices", "feature_location", "feature_cls", "output_fmt")


class TimmBackbone(nn.Module):
    """Multi-scale features of a timm model, always channels-first.

    ``weights`` is a local checkpoint file (see ``python -m ssaseg fetch-weights``), loaded by
    :meth:`load_pretrained`; None trains from scratch. timm never reaches the network from here.

    ``pad_to_multiple``: pad the input (right/bottom, zeros) to a multiple of this before the
    model and crop each feature map back to ``ceil(H / stride)``; for backbones that need sizes
    divisible by their strides (EfficientFormerV2) to take whole images of any size (Swin and
    HRNet handle any size themselves, as mmseg's do: ``backbones/swin.py``, ``backbones/hrnet.py``).
    ``dynamic_size``: make EfficientFormerV2's fixed-size attention accept any size (see
    :mod:`ssaseg.models.backbones.timm_dynamic`). ``freeze_bn_stats``: keep every BatchNorm in
    eval mode during training (running statistics frozen, affine parameters still trained), as
    CGRSeg's EfficientFormerV2 does. ``freeze_bn_affine``: also keep the BatchNorm scales and
    shifts fixed (``requires_grad=False``); with ``freeze_bn_stats`` this is detectron2's
    FrozenBatchNorm, which Mask2Former's ResNet uses.
    """

    def __init__(
        self,
        model_name: str,
        out_indices: tuple[int, ...] | None = None,
        weights: str | Path | None = None,
        pad_to_multiple: int | None = None,
        dynamic_size: bool = False,
        freeze_bn_stats: bool = False,
        freeze_bn_affine: bool = False,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self._timm_kwargs = dict(timm_kwargs)
        kwargs = dict(features_only=True, pretrained=False, **timm_kwargs)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        self.model = timm.create_model(model_name, **kwargs)
        if dynamic_size:
            from ssaseg.models.backbones.timm_dynamic import make_efficientformerv2_dynamic

            if not make_efficientformerv2_dynamic(self.model):
                raise ValueError(f"dynamic_size=True, but {model_name} has no attention to adapt")
        self.pad_to_multiple = pad_to_multiple
        self.freeze_bn_stats = freeze_bn_stats
        if freeze_bn_affine:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.requires_grad_(False)
        self.out_channels: list[int] = list(self.model.feature_info.channels())
        self.out_strides: list[int] = list(self.model.feature_info.reduction())
        self._channels_last_output = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
        if weights is not None:
            self.load_pretrained(weights)

    def train(self, mode: bool = True) -> TimmBackbone:
        super().train(mode)
        if mode and self.freeze_bn_stats:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        h, w = images.shape[-2:]
        if self.pad_to_multiple:
            m = self.pad_to_multiple
            pad_h, pad_w = (-h) % m, (-w) % m
            if pad_h or pad_w:
                images = F.pad(images, (0, pad_w, 0, pad_h))
        features = self.model(images)
        if self._channels_last_output:
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]
        if self.pad_to_multiple:
            features = [
                f[..., : math.ceil(h / s), : math.ceil(w / s)]
                for f, s in zip(features, self.out_strides)
            ]
        return list(features)

    # --- pretrained weights ----------------------------------------------------------------

    def _full_model(self) -> nn.Module:
        """The plain timm model (with its classifier) on the meta device: the naming reference
        for checkpoints, at no memory cost."""
        kwargs = {k: v for k, v in self._timm_kwargs.items() if k not in _FEATURE_ONLY_KWARGS}
        with torch.device("meta"):
            return timm.create_model(self.model_name, pretrained=False, **kwargs)

    def load_pretrained(self, path: str | Path) -> None:
        """Load an ImageNet checkpoint (timm's naming or an official release's, see
        :mod:`ssaseg.models.backbones.timm_weights`). Keys that only the classification model
        has (its classifier, final norm, ...) are skipped; any other missing, unexpected or
        mis-shaped key raises :class:`CheckpointMismatchError` listing them all."""
        from ssaseg.models.backbones.checkpoint import load_mapped_state_dict, require_file
        from ssaseg.models.backbones.timm_weights import to_timm

        path = require_file(path)
        state = read_checkpoint(path)
        full = self._full_model()
        state = to_timm(state, full)
        own_keys = set(self.model.state_dict())
        full_to_own = _match_names(own_keys, set(full.state_dict()))
        classification_only = set(full.state_dict()) - set(full_to_own)

        def rename(name: str) -> str | None:
            if name in full_to_own:
                return full_to_own[name]
            if name in classification_only or name.endswith("num_batches_tracked"):
                return None
            return name  # not a key of this model: reported as unexpected

        load_mapped_state_dict(self.model, state, rename, source=f"{path.name} ({self.model_name})")


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Flat {name: tensor} of a .safetensors or torch checkpoint (envelopes unwrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        from ssaseg.errors import CheckpointError, load_failure
        from ssaseg.models.backbones.checkpoint import require_file

        try:
            return load_file(str(require_file(path)), device="cpu")
        except Exception as exc:  # safetensors' own error types for a truncated/corrupt file
            raise CheckpointError(f"cannot load weights {path}: {load_failure(exc)}; delete it "
                                  "and fetch it again (`python -m ssaseg fetch-weights`)") from exc
    from ssaseg.models.backbones.checkpoint import read_state_dict

    return read_state_dict(path)


def _match_names(own_keys: set[str], full_keys: set[str]) -> dict[str, str]:
    """Map the plain model's state-dict names to the feature wrapper's.

    timm's wrappers rename in two ways: ``FeatureListNet(flatten_sequential=True)`` joins a
    top-level Sequential and its child with ``_`` (``stages.0`` -> ``stages_0``), and
    ``FeatureGetterNet`` nests the model under ``model.``.
    """
    mapping: dict[str, str] = {}
    for own in own_keys:
        candidates = [own, own[len("model."):] if own.startswith("model.") else None]
        head, _, tail = own.partition(".")
        for i, ch in enumerate(head):
            if ch == "_":
                candidates.append(f"{head[:i]}.{head[i + 1:]}.{tail}" if tail else None)
        for c in candidates:
            if c is not None and c in full_keys:
                mapping[c] = own
                break
    return mapping
