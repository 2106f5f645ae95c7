"""Key tables of the released segmentors that mmsegmentation 1.2.2 does not have (SeaFormer,
AFFormer, CGRSeg) and of the classifiers inside a released decode head (``conv_seg`` and the SSA
heads of xwmaxwma/SSAClassifier), as data beside the whole-segmentor loader
(:mod:`ssaseg.models.segmentor_checkpoint`).

Rows are those of :mod:`ssaseg.models.segmentor_key_tables` (``re.fullmatch`` pattern, first
match wins; ``None`` drops the key, a tuple of names copies the tensor to each), plus one more
kind of replacement, :class:`BackboneKey`: the (expanded) name is handed to the backbone's own
ImageNet-checkpoint converter (``models/backbones``), which knows that backbone's official
naming and layout. Every dropped key is a row here with the reason beside it.

Where the names come from (``tests/data/released_keys/*.txt`` lists them, built from the
reference code by ``tests/data/released_keys/generate.py``):

* SeaFormer-B/L: fudan-zvg/SeaFormer ``seaformer-seg`` (``SeaFormer`` backbone, ``LightHead``);
  the same modules in xwmaxwma/SSAClassifier.
* AFFormer-B: dongbo811/AFFormer (``afformer_base`` backbone, ``CLS`` head).
* CGRSeg-B/L: nizhenliang/CGRSeg (``efficientformerv2_{s2,l}_feat`` backbone, ``CGRSeg`` head).
  Each repository links its ADE20K segmentors from its README (mmseg 0.x code).
* +SSA: xwmaxwma/SSAClassifier's ``*_ssa`` heads: the linear head's names plus
  ``get_feat_pos``, ``center_pos``, ``{gt_,}center_content_proj``, ``{gt_,}center_pos_proj``,
  ``{gt_,}center_proj`` (the same in all of its heads) and a constant loss buffer.

Checked against the reference code itself: each reference segmentor, every weight and BN
statistic perturbed, saved as an mmseg 1.x file and loaded into ours through these tables, gives
the same logits at 256x256 to a max |difference| of 9e-8 to 1e-5 (SeaFormer-B/L, AFFormer-B
with linear and ssa, CGRSeg-B/L linear; ``generate.py --compare 256``, CPU fp32, 2026-12-03).
CGRSeg + SSA is refused (:data:`UNSUPPORTED`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneKey:
    """Replacement: ``template`` (``re`` expansion of the match) is a key of a backbone-only
    checkpoint in the backbone's official naming; the backbone's converter maps it to ours."""

    template: str


# the name's last part, a named group so that the row's other groups keep their numbers
_BN = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"
_WB = r"(?P<p>weight|bias)"
_P = r"\g<p>"


def _conv_module(released: str, ours: str, norm: str = "bn") -> tuple[tuple[str, str], ...]:
    """mmcv ConvModule (``conv``, ``bn``/``gn``) -> our Sequential(conv, norm): ``.0``, ``.1``."""
    return (
        (released + rf"\.conv\.{_WB}", ours + ".0." + _P),
        (released + rf"\.{norm}\.{_BN}", ours + ".1." + _P),
    )


# ---------------------------------------------------------------- classifiers (decode head) ---

def linear_classifier_rows(head: str = "decode_head") -> tuple:
    """mmseg's ``conv_seg`` is our linear classifier's 1x1 convolution."""
    return ((rf"{head}\.conv_seg\.(weight|bias)", r"classifier.conv.\1"),)


def ssa_classifier_rows(head: str = "decode_head") -> tuple:
    """SSAClassifier's ``*_ssa`` decode heads -> our SSAClassifier (models/classifiers/ssa.py).

    Reference -> ours: conv_seg (coarse mask) -> coarse.conv; get_feat_pos (depthwise 3x3 P) ->
    position_conv; center_pos (Embedding, E) -> position_basis; center_content_proj (MLP_sem,
    input [sem_center, W]) -> sem_mlp; gt_center_content_proj -> teacher_sem_mlp;
    center_pos_proj (MLP_pos, input [E, A_s @ P]) -> pos_mlp; gt_center_pos_proj ->
    teacher_pos_mlp; center_proj / gt_center_proj (Linear, no bias) -> center_proj /
    teacher_center_proj. The MLPs are Sequential(Linear, ReLU, Linear) on both sides (.0, .2).
    """
    mlp = r"\.(0\.weight|2\.weight|2\.bias)"
    return (
        (rf"{head}\.conv_seg\.(weight|bias)", r"classifier.coarse.conv.\1"),
        (rf"{head}\.get_feat_pos\.(weight|bias)", r"classifier.position_conv.\1"),
        (rf"{head}\.center_pos\.weight", "classifier.position_basis"),
        (rf"{head}\.center_content_proj{mlp}", r"classifier.sem_mlp.\1"),
        (rf"{head}\.gt_center_content_proj{mlp}", r"classifier.teacher_sem_mlp.\1"),
        (rf"{head}\.center_pos_proj{mlp}", r"classifier.pos_mlp.\1"),
        (rf"{head}\.gt_center_pos_proj{mlp}", r"classifier.teacher_pos_mlp.\1"),
        (rf"{head}\.center_proj\.weight", "classifier.center_proj.weight"),
        (rf"{head}\.gt_center_proj\.weight", "classifier.teacher_center_proj.weight"),
        # SSALoss's Mask2Former-style SetCriterion keeps a constant (K + 1) class-weight buffer
        # (no-object weight); our Dice term has no such weight (DESIGN.md, SSA losses)
        (rf"{head}\.ssa_loss\.criterion\.empty_weight", None),
    )


# classifier name -> rows for a decode head at ``head`` (the prefix holding its conv_seg)
CLASSIFIER_ROWS = {"linear": linear_classifier_rows, "ssa": ssa_classifier_rows}

# ------------------------------------------------------------------------------- SeaFormer ---

def _seaformer(num_fusions: int) -> tuple:
    rows: list = [(r"backbone\.(.+)", BackboneKey(r"\1"))]  # official names = ours
    rows += _conv_module(r"decode_head\.linear_fuse", "head.linear_fuse")
    for i in range(num_fusions):  # the reference's fuse1.. are our fuse.0..
        for part in ("local_embedding", "global_act"):
            rows += _conv_module(rf"decode_head\.fuse{i + 1}\.{part}", f"head.fuse.{i}.{part}")
    return tuple(rows)


SEAFORMER_B = _seaformer(2)
SEAFORMER_L = _seaformer(3)

# -------------------------------------------------------------------------------- AFFormer ---

AFFORMER_B = (
    (r"backbone\.(.+)", BackboneKey(r"\1")),  # shared-module aliases dropped by its converter
    *_conv_module(r"decode_head\.squeeze", "head.squeeze", norm="gn"),
    # the reference CLS head builds an `align` ConvModule that its forward never calls
    (r"decode_head\.align\.(conv|gn)\.(weight|bias)", None),
)

# ---------------------------------------------------------------------------------- CGRSeg ---

def _rcm(released: str, ours: str) -> tuple:
    """The reference's RCM (token_mixer = RCA) -> ours (models/heads/cgr.py)."""
    return (
        (released + r"\.gamma", ours + ".gamma"),
        (released + rf"\.token_mixer\.dwconv_hw\.{_WB}", ours + ".token_mixer.local." + _P),
        (released + r"\.token_mixer\.excite\.(?P<p>\d\.\w+)", ours + ".token_mixer.excite." + _P),
        (released + rf"\.norm\.{_BN}", ours + ".norm." + _P),
        (released + rf"\.mlp\.fc1\.{_WB}", ours + ".mlp.0." + _P),
        (released + rf"\.mlp\.fc2\.{_WB}", ours + ".mlp.2." + _P),
    )


CGRSEG = (
    # EfficientFormerV2 for segmentation: its attention bias table at the segmentation
    # resolution is `attention_biases_seg`; `attention_biases` (heads x 49) is a zero buffer the
    # segmentation forward never reads, the index buffers are recomputed from the resolution
    (r"backbone\.(.+)\.attention_bias_idxs(_seg)?", None),
    (r"backbone\.(.+)\.attention_biases", None),
    (r"backbone\.(.+)\.attention_biases_seg", BackboneKey(r"\1.attention_biases")),
    (r"backbone\.(.+)", BackboneKey(r"\1")),
    *_rcm(r"decode_head\.trans\.transformer_blocks\.(\d+)", r"head.neck.\1"),
    *_rcm(r"decode_head\.meta\.(\d+)", r"head.local.\1"),
    *_conv_module(r"decode_head\.SIM\.(\d+)\.fuse1", r"head.fusion.\1.local"),
    *_conv_module(r"decode_head\.SIM\.(\d+)\.fuse2", r"head.fusion.\1.gate"),
    (r"decode_head\.conv\.(\d+)\.(weight|bias)", r"head.project.\1.\2"),
    *_conv_module(r"decode_head\.linear_fuse", "head.depthwise"),
    (r"decode_head\.lgc\.conv_mask\.(weight|bias)", r"head.prototype_gate.attend.\1"),
    (r"decode_head\.lgc\.channel_mul_conv\.(\d)\.(weight|bias)",
     r"head.prototype_gate.transform.\1.\2"),
)

# the reference classifies the coarse prediction and the output with ONE conv_seg; ours has a
# coarse conv of its own in the head (models/heads/cgr.py): the weights are copied to both
_CGRSEG_CONV_SEG = (
    (r"decode_head\.conv_seg\.(weight|bias)", (r"head.coarse.1.\1", r"classifier.conv.\1")),
)

# model name -> the table of its released whole-segmentor checkpoints
RELEASED_MODEL_KEY_TABLES = {
    "seaformer_b": SEAFORMER_B,
    "seaformer_l": SEAFORMER_L,
    "afformer_b": AFFORMER_B,
    "cgrseg_b": CGRSEG,
    "cgrseg_l": CGRSEG,
}

# (model, classifier) -> its classifier's rows where the generic CLASSIFIER_ROWS do not fit
CLASSIFIER_ROWS_OVERRIDE = {
    ("cgrseg_b", "linear"): _CGRSEG_CONV_SEG,
    ("cgrseg_l", "linear"): _CGRSEG_CONV_SEG,
}

# the prefix of the decode head that holds the classifier (``conv_seg``) where it is not
# ``decode_head`` (mmseg's cascade heads: OCRNet's decode_head.0 is its soft-region FCN head)
CLASSIFIER_HEAD = {"ocrnet_hrnet_w18": r"decode_head\.1", "ocrnet_hrnet_w48": r"decode_head\.1"}

# (model, classifier) pairs whose released checkpoints have an architecture ours does not build
UNSUPPORTED = {
    ("cgrseg_b", "ssa"): "SSAClassifier's CGRSeg_ssa head drops the prototype guidance (lgc) "
    "and feeds SSA the linear_fuse output; our CGR head keeps one architecture for every "
    "classifier (models/heads/cgr.py)",
    ("cgrseg_l", "ssa"): "SSAClassifier's CGRSeg_ssa head drops the prototype guidance (lgc) "
    "and feeds SSA the linear_fuse output; our CGR head keeps one architecture for every "
    "classifier (models/heads/cgr.py)",
}
