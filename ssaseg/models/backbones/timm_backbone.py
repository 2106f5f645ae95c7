"""A thin wrapper over a timm model with ``features_only=True``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ssaseg.torchvision_cpu import declare_missing_torchvision_ops

declare_missing_torchvision_ops()
import timm  # noqa: E402  (after the CPU-torch fix above)


class TimmBackbone(nn.Module):
    """Multi-scale features of a timm model, always channels-first.

    ``weights`` is a local checkpoint file (see ``python -m ssaseg fetch-weights``); None trains
    from scratch. timm never reaches the network from here: without a file ``pretrained=False``.
    """

    def __init__(
        self,
        model_name: str,
        out_indices: tuple[int, ...] | None = None,
        weights: str | Path | None = None,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        kwargs = dict(features_only=True, **timm_kwargs)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if weights is not None:
            weights = Path(weights)
            if not weights.is_file():
                raise FileNotFoundError(
                    f"pretrained weights {weights} not found; run `python -m ssaseg fetch-weights` "
                    "or set the model's weights to null to train from scratch"
                )
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
        else:
            kwargs["pretrained"] = False
        self.model = timm.create_model(model_name, **kwargs)
        self.out_channels: list[int] = list(self.model.feature_info.channels())
        self.out_strides: list[int] = list(self.model.feature_info.reduction())
        self._channels_last_output = getattr(self.model, "output_fmt", "NCHW") == "NHWC"

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.model(images)
        if self._channels_last_output:
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]
        return list(features)
