"""FLOP counts of a model forward pass.

``full``: torch.utils.flop_counter, 2 FLOPs per multiply-add, matmuls inside attention included.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_flops_full(model: nn.Module, images: torch.Tensor) -> int:
    """Total FLOPs of one forward pass (2 per multiply-add), as torch's flop counter sees them."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(images)
    model.train(was_training)
    return int(counter.get_total_flops())
