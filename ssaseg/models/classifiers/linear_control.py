"""The capacity-matched control: the linear classifier behind extra layers that give it SSA's
inference parameters and FLOPs, with nothing that adapts to the image.

A reviewer argued SSA's gain comes from its added parameters and losses. This classifier has
(within a few per cent) the parameters and FLOPs of SSA's student path, trained with the plain
cross-entropy and the same schedule; what it lacks is the adaptation (class centres of the
image guiding the prototypes). Two additions to the linear classifier, each matching one part
of SSA's cost:

- per pixel: a residual bottleneck ``F + up(relu(down(F)))`` (1x1 convs C -> r -> C). SSA's
  per-pixel work is 4 K C + 9 C multiply-adds (coarse mask, two soft class means, cosine
  logits, the depthwise position conv); the bottleneck's 2 C r matches the 3 K C + 9 C beyond
  the linear classifier's K C at r = ceil(1.5 K + 4.5).
- per image: the class weights are reparameterised, ``W' = W + proj(mlp_a([W, E]) +
  mlp_b([E, W]))`` with a learnable basis E (K, C), two MLPs 2C -> m -> C and a C x C
  projection, the shapes of SSA's prototype MLPs, but fed parameters instead of the image's
  class centres. ``m`` (default) is chosen so that the total parameter count equals SSA's
  student path (``C // 2`` when the bottleneck is small, less when it is wide).

Then the logits are the linear classifier's: dropout, ``F'`` times ``W'`` plus the bias.

    clf = LinearControlClassifier(in_channels=256, num_classes=150)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.classifiers.base import ClassifierOutput
from ssaseg.models.losses import segmentation_cross_entropy


def ssa_student_params(channels: int, num_classes: int) -> int:
    """Parameters of SSA's student path (ssa.py, teacher excluded): coarse conv, position conv,
    position basis, semantic and position MLPs, centre projection."""
    c, k = channels, num_classes
    mlp = 2 * c * (c // 2) + (c // 2) * c + c
    return (k * c + k) + (9 * c + c) + k * c + 2 * mlp + c * c


def matched_bottleneck(num_classes: int) -> int:
    """Width r of the residual bottleneck that matches SSA's per-pixel multiply-adds."""
    return math.ceil(1.5 * num_classes + 4.5)


def matched_mlp_hidden(channels: int, num_classes: int, bottleneck: int) -> int:
    """Hidden width m of the two weight MLPs that brings the parameters to SSA's."""
    c, k = channels, num_classes
    fixed = (k * c + k) + k * c + 2 * c + c * c + (2 * c * bottleneck + bottleneck + c)
    return max(1, round((ssa_student_params(c, k) - fixed) / (6 * c)))


class LinearControlClassifier(nn.Module):
    """See the module docstring.

    Args:
        dropout: Dropout2d before the classification, as the linear classifier.
        loss_weight: weight of the cross-entropy.
        bottleneck: r, width of the residual per-pixel bottleneck (None: matched to SSA).
        mlp_hidden: m, hidden width of the two weight MLPs (None: matched to SSA's params).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        ignore_index: int = 255,
        dropout: float = 0.1,
        loss_weight: float = 1.0,
        bottleneck: int | None = None,
        mlp_hidden: int | None = None,
    ) -> None:
        super().__init__()
        c, k = in_channels, num_classes
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight
        self.bottleneck_width = bottleneck or matched_bottleneck(k)
        self.mlp_hidden = mlp_hidden or matched_mlp_hidden(c, k, self.bottleneck_width)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.down = nn.Conv2d(c, self.bottleneck_width, 1)
        self.up = nn.Conv2d(self.bottleneck_width, c, 1)
        nn.init.zeros_(self.up.weight)  # starts as the linear classifier
        nn.init.zeros_(self.up.bias)
        self.weight = nn.Parameter(torch.randn(k, c) * 0.01)  # W, as the linear classifier's
        self.bias = nn.Parameter(torch.zeros(k))
        self.basis = nn.Parameter(torch.randn(k, c))  # E
        self.mlp_a = self._mlp(c, self.mlp_hidden)
        self.mlp_b = self._mlp(c, self.mlp_hidden)
        self.proj = nn.Linear(c, c, bias=False)
        nn.init.zeros_(self.proj.weight)  # W' = W at the start

    @staticmethod
    def _mlp(channels: int, hidden: int) -> nn.Sequential:
        """Linear(2C -> m, no bias) -> ReLU -> Linear(m -> C): (..., 2C) -> (..., C)."""
        return nn.Sequential(nn.Linear(2 * channels, hidden, bias=False), nn.ReLU(inplace=True),
                             nn.Linear(hidden, channels))

    def class_weights(self) -> torch.Tensor:
        """W' (K, C): the reparameterised class weights, the same for every image."""
        w, e = self.weight, self.basis
        return w + self.proj(self.mlp_a(torch.cat([w, e], -1)) + self.mlp_b(torch.cat([e, w], -1)))

    def forward(self, feature: torch.Tensor, labels: torch.Tensor | None = None) -> ClassifierOutput:
        """feature (B, C, h, w) -> logits (B, K, h, w)."""
        pixels = feature + self.up(F.relu(self.down(feature)))  # (B, C, h, w)
        logits = F.conv2d(self.dropout(pixels), self.class_weights()[..., None, None], self.bias)
        losses = {}
        if labels is not None and self.training:
            losses["ce"] = self.loss_weight * segmentation_cross_entropy(
                logits, labels, self.ignore_index)
        return ClassifierOutput(logits, losses)
