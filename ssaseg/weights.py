"""ImageNet-pretrained backbone checkpoints: where each comes from, and fetching it.

    python -m ssaseg fetch-weights upernet_swin_t     # -> weights/swin_tiny_patch4_window7_224.pth

The baselines start from the checkpoints their reference configs use (SSA-Seg's configs, which
are mmsegmentation's). :func:`fetch_weights` downloads one into ``weights/`` with the dataset
downloader (:func:`ssaseg.data.download.download_file`: resumable through ``<file>.part`` and
HTTP ``Range``, retried with back-off, renamed into place only once verified).

Verification, strongest first:
* ``sha256``: a full published digest. None is published for these files, and none is made
  up here, so every entry has ``sha256=None``.
* ``sha256_prefix``: OpenMMLab names every file it publishes ``<name>-<first 8 hex digits of
  its sha256>.pth``; that prefix is checked.
* otherwise (GitHub releases, Hugging Face): the sha256 is recorded on first download in
  ``<file>.sha256`` and every later run checks the file against that record (trust on first
  use). To pin a file, put its digest in ``sha256`` here.

Where a checkpoint has no direct URL (``url=None``), the step does not download: it checks the
file the user placed at ``weights/<filename>`` or raises :class:`ManualWeightsRequired` saying
exactly which file to put where. ``TimmBackbone.load_pretrained`` maps each source's key names
to timm's (``ssaseg/models/backbones/timm_weights.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ssaseg.data.download import (
    ChecksumError,
    DownloadError,
    download_file,
    file_digests,
    move_aside,
    verify,
)
from ssaseg.errors import UnknownNameError

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS_DIR = Path("weights")
_OPENMMLAB = "https://download.openmmlab.com"
_SWIN = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0"
_HF = "https://huggingface.co/timm"


@dataclass(frozen=True)
class WeightsSpec:
    url: str | None  # None: no direct link, the user places the file by hand
    filename: str
    description: str
    sha256: str | None = None  # a full, published digest (none known: see module docstring)
    sha256_prefix: str | None = None  # OpenMMLab's file-name digest prefix
    manual: str = ""  # where to get the file when url is None


def _mit(i: int, digest: str) -> WeightsSpec:
    name = f"mit_b{i}_20220624-{digest}.pth"
    return WeightsSpec(
        url=f"{_OPENMMLAB}/mmsegmentation/v0.5/pretrain/segformer/{name}", filename=name,
        sha256_prefix=digest,
        description=f"MiT-B{i} ImageNet-1k (SegFormer's release, converted by mmsegmentation)",
    )


def _openmmlab_third_party(stem: str, digest: str, description: str) -> WeightsSpec:
    name = f"{stem}-{digest}.pth"
    return WeightsSpec(url=f"{_OPENMMLAB}/pretrain/third_party/{name}", filename=name,
                       sha256_prefix=digest, description=description)


CATALOG: dict[str, WeightsSpec] = {
    **{f"mit_b{i}": _mit(i, d) for i, d in enumerate(
        ("7e0fe6dd", "02e5a6a1", "66e8bf70", "13b1141c", "d588d980", "658746d9"))},
    "swin_tiny_in1k": WeightsSpec(
        url=f"{_SWIN}/swin_tiny_patch4_window7_224.pth",
        filename="swin_tiny_patch4_window7_224.pth",
        description="Swin-T ImageNet-1k, official release (the file mmseg's swin_tiny_..."
        "-1cdeb081.pth was converted from)",
    ),
    "swin_large_in22k": WeightsSpec(
        url=f"{_SWIN}/swin_large_patch4_window7_224_22k.pth",
        filename="swin_large_patch4_window7_224_22k.pth",
        description="Swin-L ImageNet-22k, official release (source of mmseg's "
        "swin_large_..._22k-aeecf2aa.pth)",
    ),
    "hrnetv2_w18": _openmmlab_third_party(
        "hrnetv2_w18", "00eb2006", "HRNetV2-W18 ImageNet-1k (open-mmlab://msra/hrnetv2_w18)"),
    "hrnetv2_w48": _openmmlab_third_party(
        "hrnetv2_w48", "d2186c55", "HRNetV2-W48 ImageNet-1k (open-mmlab://msra/hrnetv2_w48)"),
    "resnet101_v1c": _openmmlab_third_party(
        "resnet101_v1c", "e67eebb6", "ResNet-101-V1c ImageNet-1k (open-mmlab://resnet101_v1c)"),
    "efficientformerv2_s2": WeightsSpec(
        url=f"{_HF}/efficientformerv2_s2.snap_dist_in1k/resolve/main/model.safetensors",
        filename="efficientformerv2_s2.snap_dist_in1k.safetensors",
        description="EfficientFormerV2-S2 ImageNet-1k (snap-research's eformer_s2_450.pth, "
        "as converted by timm)",
    ),
    "efficientformerv2_l": WeightsSpec(
        url=f"{_HF}/efficientformerv2_l.snap_dist_in1k/resolve/main/model.safetensors",
        filename="efficientformerv2_l.snap_dist_in1k.safetensors",
        description="EfficientFormerV2-L ImageNet-1k (snap-research's eformer_l_450.pth, "
        "as converted by timm)",
    ),
    "resnet18_v1c": _openmmlab_third_party(
        "resnet18_v1c", "b5776b93", "ResNet-18-V1c ImageNet-1k (open-mmlab://resnet18_v1c)"),
    "mscan_t": WeightsSpec(
        url=f"{_OPENMMLAB}/mmsegmentation/v0.5/pretrain/segnext/mscan_t_20230227-119e8c9f.pth",
        filename="mscan_t_20230227-119e8c9f.pth", sha256_prefix="119e8c9f",
        description="MSCAN-T ImageNet-1k (SegNeXt's release, converted by mmsegmentation)",
    ),
    "resnet50_tv_in1k": WeightsSpec(
        url=f"{_HF}/resnet50.tv_in1k/resolve/main/model.safetensors",
        filename="resnet50.tv_in1k.safetensors",
        description="ResNet-50 ImageNet-1k, torchvision's original weights (what Mask2Former's "
        "R-50.pkl and mmseg's torchvision://resnet50 are), as timm hosts them",
    ),
    "vit_large_augreg_384": WeightsSpec(
        url=f"{_HF}/vit_large_patch16_384.augreg_in21k_ft_in1k/resolve/main/model.safetensors",
        filename="vit_large_patch16_384.augreg_in21k_ft_in1k.safetensors",
        description="AugReg ViT-L/16, ImageNet-21k then 1k at 384 (L_16-i21k-300ep-lr_0.001-"
        "aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384, the file "
        "ViT-Adapter's configs name), as timm converted and hosts it",
    ),
    # SeaFormer and AFFormer publish their ImageNet checkpoints on Google Drive / Baidu only.
    "seaformer_b_cls": WeightsSpec(
        url=None, filename="SeaFormer_B_cls_76.4.pth",
        description="SeaFormer-B ImageNet-1k, the authors' release",
        manual="download SeaFormer_B_cls_76.4.pth from the ImageNet table of "
        "https://github.com/fudan-zvg/SeaFormer (Google Drive: "
        "https://drive.google.com/file/d/1pTqkYXmEfGuRD2119vWikwd68lGNo8Lx/view)",
    ),
    "seaformer_l_cls": WeightsSpec(
        url=None, filename="SeaFormer_L_cls_79.9.pth",
        description="SeaFormer-L ImageNet-1k, the authors' release",
        manual="download SeaFormer_L_cls_79.9.pth from the ImageNet table of "
        "https://github.com/fudan-zvg/SeaFormer (Google Drive: "
        "https://drive.google.com/file/d/1FYyCHV1deCs02ims2Y-NybAMlo_a5o2p/view)",
    ),
    "afformer_b_in1k": WeightsSpec(
        url=None, filename="AFFormer_base_ImageNet1k.pth",
        description="AFFormer-B ImageNet-1k, the authors' release",
        manual="download AFFormer_base_ImageNet1k.pth from the pretrained-weights folder of "
        "https://github.com/dongbo811/AFFormer (Google Drive: "
        "https://drive.google.com/drive/folders/1Mru24qPdta9o8aLn1RwT8EapiQCih1Sw)",
    ),
    # The authors' own files, which CGRSeg's configs name; Google Drive only.
    "efficientformerv2_s2_official": WeightsSpec(
        url=None, filename="eformer_s2_450.pth",
        description="EfficientFormerV2-S2, the authors' release (used by CGRSeg's configs)",
        manual="download eformer_s2_450.pth from the 'EfficientFormerV2' table of "
        "https://github.com/snap-research/EfficientFormer (Google Drive link)",
    ),
    "efficientformerv2_l_official": WeightsSpec(
        url=None, filename="eformer_l_450.pth",
        description="EfficientFormerV2-L, the authors' release (used by CGRSeg's configs)",
        manual="download eformer_l_450.pth from the 'EfficientFormerV2' table of "
        "https://github.com/snap-research/EfficientFormer (Google Drive link)",
    ),
}

# The checkpoint each baseline starts from (the reference configs' choice, or the same
# weights in a directly downloadable form).
MODEL_WEIGHTS: dict[str, str] = {
    **{f"segformer_b{i}": f"mit_b{i}" for i in range(6)},
    "upernet_swin_t": "swin_tiny_in1k",
    "upernet_swin_l": "swin_large_in22k",
    "ocrnet_hrnet_w18": "hrnetv2_w18",
    "ocrnet_hrnet_w48": "hrnetv2_w48",
    "hrnet_w48": "hrnetv2_w48",
    "fcn_resnet101": "resnet101_v1c",
    "cgrseg_b": "efficientformerv2_s2",
    "cgrseg_l": "efficientformerv2_l",
    "fcn_resnet18": "resnet18_v1c",
    "segnext_t": "mscan_t",
    "seaformer_b": "seaformer_b_cls",
    "seaformer_l": "seaformer_l_cls",
    "afformer_b": "afformer_b_in1k",
    "upernet_vit_adapter_l": "vit_large_augreg_384",
    "mask2former_r50": "resnet50_tv_in1k",
}


class ManualWeightsRequired(DownloadError):
    """The checkpoint has no direct URL: the message says which file to put where."""


def weights_spec(name: str) -> WeightsSpec:
    if name not in CATALOG:
        raise UnknownNameError(f"unknown weights {name!r}; known: {', '.join(sorted(CATALOG))}")
    return CATALOG[name]


def weights_for_model(model: str) -> str:
    """The catalog name of the checkpoint a zoo model starts from."""
    if model not in MODEL_WEIGHTS:
        raise UnknownNameError(f"no pretrained weights for model {model!r}; models with weights: "
                       f"{', '.join(sorted(MODEL_WEIGHTS))}")
    return MODEL_WEIGHTS[model]


def weights_path(name: str, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> Path:
    return Path(weights_dir) / weights_spec(name).filename


def _check_prefix(path: Path, spec: WeightsSpec) -> None:
    if not spec.sha256_prefix:
        return
    digest = file_digests(path, ["sha256"])["sha256"]
    if not digest.startswith(spec.sha256_prefix.lower()):
        moved = move_aside(path)
        raise ChecksumError(
            f"{path.name}: sha256 {digest} does not start with {spec.sha256_prefix} (the digest "
            f"prefix in its published file name); it was moved to {moved}. Fetch it again; if it "
            "fails the same way, the file changed upstream.",
            moved_to=moved,
        )


def fetch_weights(name: str, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, *,
                  url: str | None = None, **download_options) -> Path:
    """Download catalog entry ``name`` (or a model name of MODEL_WEIGHTS) into ``weights_dir``
    and verify it; returns its path. A file already there and verified is not fetched again.

    ``url`` overrides the catalog's (a mirror). ``download_options`` go to
    :func:`ssaseg.data.download.download_file` (retries, backoff, timeout, progress).
    """
    if name not in CATALOG and name in MODEL_WEIGHTS:
        name = MODEL_WEIGHTS[name]
    spec = weights_spec(name)
    from ssaseg.data.catalog import Archive

    dest = Path(weights_dir) / spec.filename
    archive = Archive(url=url or spec.url or "", filename=spec.filename, sha256=spec.sha256,
                      extract=False, checksum_source=f"ssaseg.weights catalog ({name})")
    if url is None and spec.url is None:
        if not dest.is_file():
            raise ManualWeightsRequired(
                f"{spec.description} cannot be downloaded automatically: {spec.manual}, and "
                f"put it at {dest.resolve()}"
            )
        verify(dest, archive)  # records its sha256 on first use, checks it afterwards
    else:
        download_file(archive.url, dest, archive, **download_options)
    _check_prefix(dest, spec)
    log.info("%s: %s", name, dest)
    return dest
