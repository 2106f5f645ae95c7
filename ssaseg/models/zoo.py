"""The baselines: which backbone and which head make each named model.

Add a model by adding an entry to MODELS; nothing else needs to know about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssaseg.errors import UnknownNameError

if TYPE_CHECKING:
    from ssaseg.models.segmentor import Segmentor

# This module is plain data and imports no torch: validating a params file (which checks model
# names against MODELS) must stay instant. build_segmentor imports the model code it needs.


# The classifiers a mask-classification model (ModelSpec.mask_classification) takes; their code
# is models/classifiers/mask_classification.py (MASK_CLASSIFIERS), named here torch-free.
MASK_CLASSIFICATION_CLASSIFIERS: tuple[str, ...] = ("linear", "ssa")


@dataclass(frozen=True)
class ModelSpec:
    backbone: str  # key of BACKBONES
    head: str  # key of HEADS
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    aux_loss_weight: float = 0.4
    description: str = ""
    # module-name patterns (fnmatch, relative to the Segmentor) that the *reference*
    # implementation runs inside code mmcv's FLOP counter cannot see (see engine/flops.py)
    mmcv_uncounted: tuple[str, ...] = ()
    # module-name patterns of the BatchNorms that are SyncBN in the reference config: mmcv
    # matches module types exactly and does not count them
    mmcv_sync_bn: tuple[str, ...] = ()
    # module-name patterns of Linear layers that are 1x1 convolutions in the reference (mmcv
    # counts a convolution's bias, not a Linear's)
    mmcv_conv_linears: tuple[str, ...] = ()
    # a mask-classification head (Mask2Former): its classifiers are those of
    # models/classifiers/mask_classification.py, built with these set-criterion settings
    mask_classification: bool = False
    criterion_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def mmcv_counting(self) -> dict[str, tuple[str, ...]]:
        """Keyword arguments of ``ssaseg.engine.flops.count_flops_mmcv`` that count this model
        the way mmcv counted the reference implementation."""
        return dict(uncounted=self.mmcv_uncounted, sync_bn=self.mmcv_sync_bn,
                    conv_linears=self.mmcv_conv_linears)


# the reference configs normalise every BatchNorm of these models with SyncBN (norm_cfg; ViT-
# Adapter's spatial prior module builds nn.SyncBatchNorm itself)
_MMSEG_SYNC_BN = ("*",)

MODELS: dict[str, ModelSpec] = {
    "fcn_resnet18": ModelSpec(
        # mmsegmentation 1.2.2 configs/fcn/fcn_r18-d8_4xb2-80k_cityscapes-512x1024.py
        backbone="dilated_resnet",
        backbone_kwargs=dict(model_name="resnet18", stem_type="deep", stem_width=32,
                             output_stride=8, out_indices=(1, 2, 3, 4)),
        head="fcn",
        head_kwargs=dict(channels=128, num_convs=2, concat_input=True, aux_in_index=2,
                         aux_channels=64),
        mmcv_sync_bn=_MMSEG_SYNC_BN,
        description="FCN-ResNet18-D8: ResNet-18-V1c (deep stem, dilated, output stride 8) + "
        "FCN head (128) + auxiliary FCN on stage 3 (64), a small CNN baseline",
    ),
    **{
        f"segformer_b{i}": ModelSpec(
            backbone="timm",
            backbone_kwargs=dict(
                model_name=f"pvt_v2_b{i}", mlp_ratios=(4, 4, 4, 4), drop_path_rate=0.1
            ),
            head="all_mlp", head_kwargs=dict(channels=256),
            # mmseg's MiT hides q/kv/out projections in nn.MultiheadAttention
            mmcv_uncounted=("backbone.*.attn.q", "backbone.*.attn.kv", "backbone.*.attn.proj"),
            # its MixFFN's fc1/fc2 are 1x1 convolutions; the head normalises with SyncBN
            mmcv_conv_linears=("backbone.*.mlp.fc1", "backbone.*.mlp.fc2"),
            mmcv_sync_bn=_MMSEG_SYNC_BN,
            description=f"SegFormer-B{i}: MiT-B{i} (timm pvt_v2_b{i} with MiT's MLP ratio 4) "
            "+ all-MLP head (256 channels, as in the reference configs)",
        )
        for i in range(6)
    },
    **{
        f"upernet_swin_{size[0]}": ModelSpec(
            backbone="swin",
            backbone_kwargs=dict(model_name=f"swin_{size}_patch4_window7_224", drop_path_rate=0.3),
            head="uper", head_kwargs=dict(channels=512, aux_in_index=2, aux_channels=256),
            mmcv_sync_bn=_MMSEG_SYNC_BN,
            description=f"UPerNet-Swin-{size[0].upper()}: Swin-{size[0].upper()} as mmseg "
            "builds it (window 7, shifted in every second block of every stage, pad then roll, "
            "a LayerNorm on each output stage; any input size) + UPerNet (PPM + FPN, 512 "
            "channels) + auxiliary FCN on stage 3",
        )
        for size in ("tiny", "large")
    },
    **{
        f"ocrnet_hrnet_w{width}": ModelSpec(
            backbone="hrnet",
            backbone_kwargs=dict(
                model_name=f"hrnet_w{width}", feature_location="", out_indices=(1, 2, 3, 4),
            ),
            head="ocr", head_kwargs=dict(channels=512, ocr_channels=256),
            mmcv_sync_bn=_MMSEG_SYNC_BN,
            description=f"OCRNet-HRNet-W{width}: HRNetV2-W{width} as mmseg builds it (bilinear "
            "branch fusion, any input size) + OCR head (soft object regions as auxiliary "
            "logits)",
        )
        for width in (18, 48)
    },
    "hrnet_w48": ModelSpec(
        backbone="hrnet",
        backbone_kwargs=dict(
            model_name="hrnet_w48", feature_location="", out_indices=(1, 2, 3, 4),
            pad_to_multiple=32, fuse_align_corners=True,  # ProtoSeg's HRNet fuses bilinearly
        ),
        head="hrnet_concat",
        description="HRNet-W48 as in ProtoSeg's Cityscapes table: HRNetV2-W48 + plain head (4 "
        "branches upsampled and concatenated, 720 channels -> 3x3 conv + BN + ReLU, 720)",
    ),
    "fcn_resnet101": ModelSpec(
        backbone="dilated_resnet",
        backbone_kwargs=dict(model_name="resnet101c", output_stride=8, out_indices=(1, 2, 3, 4)),
        head="fcn",
        head_kwargs=dict(channels=512, num_convs=2, concat_input=True, aux_in_index=2),
        mmcv_sync_bn=_MMSEG_SYNC_BN,
        description="FCN-ResNet101-D8: ResNet-101-V1c (deep stem, dilated, output stride 8) + "
        "FCN head (512) + auxiliary FCN on stage 3",
    ),
    **{
        f"cgrseg_{size}": ModelSpec(
            backbone="timm",
            backbone_kwargs=dict(
                model_name=f"efficientformerv2_{arch}", img_size=512, out_indices=(1, 2, 3),
                dynamic_size=True, pad_to_multiple=32, freeze_bn_stats=True,
                drop_path_rate=drop_path,
            ),
            head="cgr",
            head_kwargs=dict(
                channels=256, band_kernel=kernel, neck_band_kernel=kernel, neck_repeat=repeat
            ),
            description=f"CGRSeg-{size.upper()}: EfficientFormerV2-{arch.upper()} (any input "
            "size) + CGR head",
        )
        for size, arch, drop_path, kernel, repeat in (
            ("b", "s2", 0.02, 11, 6), ("l", "l", 0.1, 9, 5)
        )
    },
    "segnext_t": ModelSpec(
        backbone="mscan", backbone_kwargs=dict(arch="tiny", drop_path_rate=0.1),
        head="light_ham",
        head_kwargs=dict(in_index=(1, 2, 3), channels=256, ham_channels=256, rank=16),
        description="SegNeXt-T: MSCAN-T (ours) + LightHam head (NMF, rank 16)",
    ),
    "seaformer_b": ModelSpec(
        backbone="seaformer", backbone_kwargs=dict(arch="base", drop_path_rate=0.1),
        head="seaformer_light", head_kwargs=dict(embed_dims=(128, 160), channels=160),
        # xwmaxwma/SSAClassifier configs/seaformer/seaformer_{base,large}.py: SyncBN in the
        # backbone and the head (with it, 1.78 / 6.40 GFLOPs: published 1.8 / 6.4)
        mmcv_sync_bn=_MMSEG_SYNC_BN,
        description="SeaFormer-B (ours) + SeaFormer light head",
    ),
    "seaformer_l": ModelSpec(
        backbone="seaformer", backbone_kwargs=dict(arch="large", drop_path_rate=0.1),
        head="seaformer_light", head_kwargs=dict(embed_dims=(128, 160, 192), channels=192),
        # xwmaxwma/SSAClassifier configs/seaformer/seaformer_{base,large}.py: SyncBN in the
        # backbone and the head (with it, 1.78 / 6.40 GFLOPs: published 1.8 / 6.4)
        mmcv_sync_bn=_MMSEG_SYNC_BN,
        description="SeaFormer-L (ours) + SeaFormer light head",
    ),
    "afformer_b": ModelSpec(
        backbone="afformer", backbone_kwargs=dict(arch="base"),
        head="afformer", head_kwargs=dict(in_index=-1, channels=256),
        description="AFFormer-B (ours) + AFFormer's single ConvGNReLU head",
    ),
    "upernet_vit_adapter_l": ModelSpec(
        # czczup/ViT-Adapter configs/ade20k/upernet_augreg_adapter_large_512_160k_ade20k.py =
        # xwmaxwma/SSAClassifier configs/vit-adapter/*: the ViTAdapter defaults are its settings
        backbone="vit_adapter", backbone_kwargs=dict(drop_path_rate=0.4),
        head="uper", head_kwargs=dict(channels=512, aux_in_index=2, aux_channels=256),
        mmcv_sync_bn=_MMSEG_SYNC_BN,
        description="UperNet-ViT-Adapter-L: AugReg ViT-L/16 (384) + ViT-Adapter (SPM, 4 "
        "injector/extractor interactions) + UPerNet (512 channels) + auxiliary FCN on stage 3",
    ),
    "mask2former_r50": ModelSpec(
        # facebookresearch/Mask2Former configs/ade20k/semantic-segmentation/
        # maskformer2_R50_bs16_160k.yaml (= mmsegmentation 1.2.2 mask2former_r50_8xb2-160k_ade20k):
        # torchvision-style ResNet-50 with frozen BatchNorm (statistics and affine)
        backbone="timm",
        backbone_kwargs=dict(model_name="resnet50", out_indices=(1, 2, 3, 4),
                             freeze_bn_stats=True, freeze_bn_affine=True),
        head="mask2former",
        mmcv_sync_bn=_MMSEG_SYNC_BN,  # its frozen ResNet's norm_cfg is SyncBN
        mask_classification=True,
        criterion_kwargs=dict(class_weight=2.0, mask_weight=5.0, dice_weight=5.0,
                              no_object_weight=0.1, num_points=12544, oversample_ratio=3.0,
                              importance_sample_ratio=0.75),
        description="Mask2Former-R50: ResNet-50 (frozen BN) + deformable-attention pixel "
        "decoder (6 layers) + masked-attention decoder (9 layers, 100 queries); mask "
        "classification: `linear` is its own semantic inference",
    ),
}


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UnknownNameError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_segmentor(
    model: str,
    classifier: str,
    num_classes: int,
    ignore_index: int = 255,
    classifier_params: dict[str, Any] | None = None,
    weights: str | Path | None = None,
) -> Segmentor:
    """Compose backbone, head and classifier for a named model and classifier."""
    from ssaseg.models.backbones import BACKBONES
    from ssaseg.models.classifiers import build_classifier
    from ssaseg.models.classifiers.mask_classification import build_mask_classifier
    from ssaseg.models.heads import HEADS
    from ssaseg.models.segmentor import MaskClassificationSegmentor, Segmentor

    from ssaseg.config import classifier_kind

    classifier = classifier_kind(classifier)  # a variant (ssa-no_dice) builds its classifier
    spec = model_spec(model)
    backbone = BACKBONES[spec.backbone](weights=weights, **spec.backbone_kwargs)
    head = HEADS[spec.head](
        in_channels=backbone.out_channels,
        in_strides=backbone.out_strides,
        num_classes=num_classes,
        **spec.head_kwargs,
    )
    if spec.mask_classification:
        clf = build_mask_classifier(classifier, head.out_channels, num_classes, ignore_index,
                                    criterion=spec.criterion_kwargs, **(classifier_params or {}))
        return MaskClassificationSegmentor(backbone, head, clf, ignore_index)
    clf = build_classifier(
        classifier, head.out_channels, num_classes, ignore_index, **(classifier_params or {})
    )
    return Segmentor(backbone, head, clf, ignore_index, spec.aux_loss_weight)
