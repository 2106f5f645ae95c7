"""FLOP counts of a model forward pass, in two conventions.

``full`` (:func:`count_flops_full`): torch.utils.flop_counter, 2 FLOPs per multiply-add, every
matmul inside attention included. The honest figure.

``mmcv`` (:func:`count_flops_mmcv`): the convention of the published tables. The papers ran
mmcv's ``get_model_complexity_info`` (mmseg's ``tools/get_flops.py``), which hooks *modules*,
counts one multiply-add as one FLOP and never sees functional calls: ``torch.matmul``/``bmm``
inside attention, ``F.interpolate``, ``F.softmax``, element-wise arithmetic. Per module type:

======================  =====================================================================
Conv1d/2d/3d            k_h*k_w*C_in/groups*C_out per output position (+ C_out per position
                        for the bias)
ConvTranspose2d         k_h*k_w*C_in*C_out/groups per *input* position (+ bias per output)
Linear                  numel(input) * out_features (bias not counted)
BatchNorm/GroupNorm/    numel(input), doubled when the norm has an affine transform; SyncBN
InstanceNorm/LayerNorm  not at all (see below)
ReLU/ReLU6/PReLU/ELU/   numel(output) (GELU, SiLU, Sigmoid, Hardswish... are not counted)
LeakyReLU
Max/Avg(Adaptive)Pool   numel(input)
nn.Upsample             numel(output) of one image
======================  =====================================================================

mmcv looks a module's type up in a table (``type(m) in mapping``), so a subclass is not
counted: ``SyncBatchNorm``, which every mmseg config of the CNN baselines and decode heads
normalises with (``norm_cfg=dict(type="SyncBN")``), contributes nothing, nor do mmseg's own
``Upsample`` module and ``nn.MultiheadAttention``'s output projection. Our models are counted as
the *reference* would be: their BatchNorms are plain ``nn.BatchNorm2d`` and are skipped where
``sync_bn`` patterns say the reference has SyncBN (``ModelSpec.mmcv_sync_bn``); a Linear that is
a 1x1 convolution in the reference (mmseg's MiT MLP) gets the convolution's bias FLOPs
(``conv_linears``, ``ModelSpec.mmcv_conv_linears``); modules the reference runs functionally
are left out by ``uncounted`` patterns (``ModelSpec.mmcv_uncounted``). With them, our count
equals mmcv 2.1.0's ``get_model_complexity_info`` on mmsegmentation 1.2.2's model exactly
(tests/test_mmseg_models.py). ``ModelSpec.mmcv_counting`` holds all three for a zoo model.

Figures are per image (mmcv divides by the batch size). Both counters only look at shapes, so
a model built on the ``meta`` device with ``meta`` inputs is measured without allocating memory
or computing anything: that is how the large baselines are measured in tests.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_DECONV = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
)
_ACT = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU)
_POOL = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)


def _numel(t: torch.Tensor) -> int:
    return math.prod(t.shape)


def _linear_as_conv_bias(module: nn.Linear, inputs: tuple, output) -> int:
    """The bias FLOPs mmcv counts for a 1x1 convolution (out_channels per position), which it
    does not count for the Linear that computes the same."""
    if module.bias is None:
        return 0
    return _numel(output)


def _module_flops(module: nn.Module, inputs: tuple, output) -> int:
    """mmcv-convention multiply-adds of one call, summed over the batch (see module docstring)."""
    x = inputs[0] if inputs else None
    if isinstance(output, (tuple, list)):
        output = output[0]
    if isinstance(module, _CONV):
        batch = x.shape[0]
        positions = batch * math.prod(output.shape[2:])
        per_position = math.prod(module.kernel_size) * module.in_channels * (
            module.out_channels // module.groups
        )
        bias = module.out_channels * positions if module.bias is not None else 0
        return per_position * positions + bias
    if isinstance(module, _DECONV):
        batch = x.shape[0]
        per_position = math.prod(module.kernel_size) * module.in_channels * (
            module.out_channels // module.groups
        )
        bias = (
            module.out_channels * batch * math.prod(output.shape[2:])
            if module.bias is not None else 0
        )
        return per_position * batch * math.prod(x.shape[2:]) + bias
    if isinstance(module, nn.Linear):
        return _numel(x) * output.shape[-1]
    if isinstance(module, _NORM):
        affine = getattr(module, "affine", False) or getattr(module, "elementwise_affine", False)
        return _numel(x) * (2 if affine else 1)
    if isinstance(module, _ACT):
        return _numel(output)
    if isinstance(module, _POOL):
        return _numel(x)
    if isinstance(module, nn.Upsample):
        # mmcv counts the elements of the first image of the batch only; we report per image, so
        # scale it back up to the batch before the division below.
        return _numel(output[0]) * output.shape[0]
    return 0


_COUNTED = (*_CONV, *_DECONV, nn.Linear, *_NORM, *_ACT, *_POOL, nn.Upsample)


@torch.no_grad()
def count_flops_mmcv(
    model: nn.Module,
    images: torch.Tensor,
    uncounted: Sequence[str] = (),
    sync_bn: Sequence[str] = (),
    conv_linears: Sequence[str] = (),
) -> int:
    """Multiply-adds of one forward pass per image, counted the way mmcv's counter does.

    ``model(images)`` runs once in eval mode (training-only branches, e.g. auxiliary heads, are
    not counted, as mmseg's ``forward_dummy`` does not run them). Works on the ``meta`` device.

    ``uncounted``: fnmatch patterns of module names whose work the *reference* implementation
    does where mmcv cannot see it (``ModelSpec.mmcv_uncounted``). Example: mmseg's MiT runs its
    q/kv/output projections inside ``nn.MultiheadAttention``, which calls them functionally, so
    the published SegFormer GFLOPs leave them out while our timm MiT has them as ``nn.Linear``.
    Pass them to reproduce the published figure; leave empty to count every hooked module.

    ``sync_bn``: patterns of BatchNorms that are SyncBN in the reference (not counted);
    ``conv_linears``: patterns of Linears that are 1x1 convolutions there (bias counted). A
    ``nn.SyncBatchNorm`` in ``model`` itself is never counted, as in mmcv.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple, output) -> None:
        nonlocal total
        total += _module_flops(module, inputs, output)

    def conv_bias_hook(module: nn.Module, inputs: tuple, output) -> None:
        nonlocal total
        total += _linear_as_conv_bias(module, inputs, output)

    def matches(name: str, patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    handles = []
    for name, m in model.named_modules():
        if not isinstance(m, _COUNTED) or matches(name, uncounted):
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
            isinstance(m, nn.SyncBatchNorm) or matches(name, sync_bn)
        ):
            continue
        handles.append(m.register_forward_hook(hook))
        if isinstance(m, nn.Linear) and matches(name, conv_linears):
            handles.append(m.register_forward_hook(conv_bias_hook))
    was_training = model.training
    model.eval()
    try:
        model(images)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return int(total // images.shape[0])


@torch.no_grad()
def count_flops_full(model: nn.Module, images: torch.Tensor) -> int:
    """Total FLOPs of one forward pass (2 per multiply-add), as torch's flop counter sees them."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(images)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_params(model: nn.Module, deployed: bool = True) -> int:
    """Trainable parameters, as the published tables count them.

    mmcv counts every parameter of the model it is given, auxiliary heads included; the SSA
    tables leave out the SSA classifier's training-only teacher (e.g. UperNet-Swin-T: 59.94 M
    + 1.13 M = 61.1 M published, the teacher's 1.05 M not included). With ``deployed``, a
    classifier that exposes ``inference_parameters()`` contributes only those.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    classifier = getattr(model, "classifier", None)
    inference = getattr(classifier, "inference_parameters", None)
    if deployed and callable(inference):
        keep = {id(p) for p in inference()}
        training_only = {id(p) for p in classifier.parameters()} - keep
        params = [p for p in params if id(p) not in training_only]
    return sum(p.numel() for p in params)
