"""Dataset catalog: where each dataset's archives live, how to check them, and what it contains.

One frozen :class:`DatasetInfo` per dataset in :data:`CATALOG`; look one up with
:func:`get_dataset` (an unknown name lists the known ones). The facts here (archive names and
layouts, class lists and their order, label ids, palettes, the usual crop sizes and evaluation
modes) follow the datasets' own releases and the conventions of the published baselines
(mmsegmentation configs), so that our numbers are comparable with the papers'.

Checksums: an archive lists the digests that are publicly documented, with where they come
from (``checksum_source``). Where none is published (``sha256=None``, and no md5/sha1 either),
the archive is verified by reading every member of it (zip: against each member's CRC-32;
tar: each member to its full size and the end-of-archive marker) before a sha256 is recorded
in ``<archive>.sha256`` beside it; every later run checks against that record (see
:mod:`ssaseg.data.download`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from ssaseg.data import synthetic
from ssaseg.data.layout import DatasetError, DatasetMeta

IGNORE_INDEX = 255


class UnknownDatasetError(DatasetError, KeyError):
    """A dataset name that is not in the catalog; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class Archive:
    """One file to download. ``size`` is in bytes; ``None`` where it is not published."""

    url: str
    filename: str
    size: int | None = None
    md5: str | None = None
    sha1: str | None = None
    sha256: str | None = None
    approx_size: str = ""  # for humans ("923 MB"); never used for verification
    checksum_source: str = ""  # where the published digest comes from
    extract: bool = True  # False: a plain file (e.g. a JSON annotation), not an archive

    @property
    def checksums(self) -> dict[str, str]:
        """The published digests, by hashlib algorithm name (may be empty)."""
        return {
            algo: value.lower()
            for algo, value in (("md5", self.md5), ("sha1", self.sha1), ("sha256", self.sha256))
            if value
        }


@dataclass(frozen=True)
class EvalMode:
    """How a model is evaluated: on the whole (resized) image, or by sliding crops."""

    mode: str  # "whole" | "slide"
    scale: tuple[int, int]  # (long side, short side) the image is resized to, keeping ratio
    crop: tuple[int, int] | None = None  # (h, w) of a sliding window
    stride: tuple[int, int] | None = None  # (h, w) step of the sliding window

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"eval mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.mode == "slide" and (self.crop is None or self.stride is None):
            raise ValueError("eval mode 'slide' needs crop and stride")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    homepage: str
    archives: tuple[Archive, ...]
    classes: Sequence[str]
    palette: Sequence[tuple[int, int, int]]
    reduce_zero_label: bool
    # our split name -> the dataset's own split name (the common layout uses train/val)
    splits: tuple[tuple[str, str], ...]
    # images per split in the official release; prepare checks them (check_counts=True)
    expected_counts: tuple[tuple[str, int], ...]
    crop_size: tuple[int, int]  # (h, w) of a training crop
    train_scale: tuple[int, int]  # (long, short) base resize before random scaling 0.5-2.0
    eval: EvalMode
    iterations: int  # the schedule of the published tables
    ignore_index: int = IGNORE_INDEX
    needs_login: bool = False
    login_instructions: str = ""
    license: str = ""
    notes: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def split_map(self) -> dict[str, str]:
        return dict(self.splits)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.expected_counts)

    def archive(self, filename: str) -> Archive:
        for archive in self.archives:
            if archive.filename == filename:
                return archive
        raise DatasetError(
            f"{self.name}: no archive named {filename!r}; archives: "
            f"{[a.filename for a in self.archives]}"
        )

    def meta(self) -> DatasetMeta:
        """The ``meta.json`` content of a prepared copy of this dataset."""
        return DatasetMeta(
            name=self.name,
            classes=list(self.classes),
            palette=[list(c) for c in self.palette],
            ignore_index=self.ignore_index,
        )


# --- class lists ---------------------------------------------------------------------------

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

# COCO-Stuff: 80 things then 91 stuff classes, in the order of their ids (0 = unlabeled
# and the 11 COCO thing ids that were never annotated are absent), see coco_stuff.py.
COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "banner",
    "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net",
    "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield",
    "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea",
    "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

# PASCAL-Context-59, in the order of their ids in the 459-class PASCAL-Context label list
# (which is alphabetical): see pascal_context.py for the ids.
PASCAL_CONTEXT59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck",
    "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

# --- palettes ------------------------------------------------------------------------------

# The ADE20K colour map (as distributed with the scene-parsing benchmark), 150 colours.
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7),
    (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82),
    (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230),
    (220, 220, 220), (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224),
    (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255), (224, 255, 8), (102, 8, 255),
    (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153),
    (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200),
    (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0),
    (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0), (0, 82, 255),
    (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0),
    (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),
    (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0),
    (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204),
    (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255),
    (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194),
    (102, 255, 0), (92, 0, 255),
)  # fmt: skip

# Official Cityscapes colours of the 19 evaluated classes (cityscapesScripts labels.py).
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip


def bit_palette(n: int, offset: int = 1) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour-map construction (bits of the index spread over R, G, B): ``n``
    distinct colours, starting at index ``offset`` (index 0 is black)."""
    colours = []
    for index in range(offset, offset + n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


# --- the catalog ---------------------------------------------------------------------------

_SLIDE_NOTE = "slide windows as in the published baselines' test configs"

CATALOG: dict[str, DatasetInfo] = {
    "ade20k": DatasetInfo(
        name="ade20k",
        title="ADE20K (SceneParsing, ADEChallengeData2016)",
        homepage="http://sceneparsing.csail.mit.edu/",
        archives=(
            Archive(
                url="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                filename="ADEChallengeData2016.zip",
                sha1="219e1696abb36c8ba3a3afe7fb2f4b4606a897c7",
                approx_size="923 MB",
                checksum_source="GluonCV scripts/datasets/ade20k.py (sha1); no published sha256",
            ),
        ),
        classes=ADE20K_CLASSES,
        palette=ADE20K_PALETTE,
        reduce_zero_label=True,  # 0 = "other objects" -> ignore; 1..150 -> 0..149
        splits=(("train", "training"), ("val", "validation")),
        expected_counts=(("train", 20210), ("val", 2000)),
        crop_size=(512, 512),
        train_scale=(2048, 512),
        eval=EvalMode("whole", scale=(2048, 512)),
        iterations=160_000,
        license="BSD-3 (annotations); images: see the MIT Scene Parsing benchmark terms",
    ),
    "coco_stuff10k": DatasetInfo(
        name="coco_stuff10k",
        title="COCO-Stuff-10K (v1.1)",
        homepage="https://github.com/nightrome/cocostuff10k",
        archives=(
            Archive(
                url="http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
                "cocostuff-10k-v1.1.zip",
                filename="cocostuff-10k-v1.1.zip",
                approx_size="2.0 GB",
                checksum_source="none published: verified by zip structure and a sha256 "
                "recorded on first download",
            ),
        ),
        classes=COCO_STUFF_CLASSES,
        palette=bit_palette(171),
        reduce_zero_label=True,  # .mat label 0 = unlabeled -> ignore
        splits=(("train", "train"), ("val", "test")),  # imageLists/train.txt, test.txt
        expected_counts=(("train", 9000), ("val", 1000)),
        crop_size=(512, 512),
        train_scale=(2048, 512),
        eval=EvalMode("whole", scale=(2048, 512)),
        iterations=80_000,
        license="COCO images: Flickr terms; COCO-Stuff annotations: CC BY 4.0",
    ),
    "pascal_context59": DatasetInfo(
        name="pascal_context59",
        title="PASCAL-Context, 59 classes (VOC2010 images + Detail/context annotations)",
        homepage="https://cs.stanford.edu/~roozbeh/pascal-context/",
        archives=(
            Archive(
                url="http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
                filename="VOCtrainval_03-May-2010.tar",
                md5="da459979d0c395079b5c75ee67908abb",
                sha1="bf9985e9f2b064752bf6bd654d89f017c76c395a",
                approx_size="1.3 GB",
                checksum_source="md5: torchvision datasets/voc.py; sha1: GluonCV "
                "scripts/datasets/pascal_context.py; no published sha256",
            ),
            Archive(
                url="https://codalabuser.blob.core.windows.net/public/trainval_merged.json",
                filename="trainval_merged.json",
                sha1="169325d9f7e9047537fedca7b04de4dddf10b881",
                checksum_source="GluonCV scripts/datasets/pascal_context.py (sha1)",
                extract=False,
            ),
        ),
        classes=PASCAL_CONTEXT59_CLASSES,
        palette=ADE20K_PALETTE[1:60],
        reduce_zero_label=True,  # 0 = background -> ignore; the 59 ids -> 0..58
        splits=(("train", "train"), ("val", "val")),
        expected_counts=(("train", 4996), ("val", 5104)),
        crop_size=(480, 480),
        train_scale=(520, 520),
        eval=EvalMode("slide", scale=(520, 520), crop=(480, 480), stride=(320, 320)),
        iterations=80_000,
        license="VOC images: Flickr terms; PASCAL-Context annotations: see homepage",
        notes=_SLIDE_NOTE,
    ),
    "cityscapes": DatasetInfo(
        name="cityscapes",
        title="Cityscapes (gtFine, 19 evaluated classes)",
        homepage="https://www.cityscapes-dataset.com/",
        archives=(
            Archive(
                url="https://www.cityscapes-dataset.com/file-handling/?packageID=3",
                filename="leftImg8bit_trainvaltest.zip",
                approx_size="11 GB",
                checksum_source="none published: verified by zip structure and a sha256 "
                "recorded when first seen",
            ),
            Archive(
                url="https://www.cityscapes-dataset.com/file-handling/?packageID=1",
                filename="gtFine_trainvaltest.zip",
                approx_size="241 MB",
                checksum_source="none published: verified by zip structure and a sha256 "
                "recorded when first seen",
            ),
        ),
        classes=CITYSCAPES_CLASSES,
        palette=CITYSCAPES_PALETTE,
        reduce_zero_label=False,  # labelIds -> trainIds by table, see cityscapes.py
        splits=(("train", "train"), ("val", "val")),
        expected_counts=(("train", 2975), ("val", 500)),
        crop_size=(512, 1024),
        train_scale=(2048, 1024),
        eval=EvalMode("slide", scale=(2048, 1024), crop=(512, 1024), stride=(341, 683)),
        iterations=80_000,
        needs_login=True,
        login_instructions=(
            "Cityscapes needs a (free) account. Log in at "
            "https://www.cityscapes-dataset.com/login/ , then download from "
            "https://www.cityscapes-dataset.com/downloads/ the packages "
            "'leftImg8bit_trainvaltest.zip (11GB)' [packageID=3] and "
            "'gtFine_trainvaltest.zip (241MB)' [packageID=1] (or use `csDownload` from the "
            "cityscapesscripts package), and put both files, unrenamed and unextracted, into "
            "the raw directory named below. Then run the download step again: it verifies "
            "them and records their sha256."
        ),
        license="Cityscapes license: non-commercial research only",
        notes="evaluated at full resolution 1024x2048 by " + _SLIDE_NOTE,
    ),
    "synthetic": DatasetInfo(
        name="synthetic",
        title="Embedded synthetic dataset (generated from a seed; no download)",
        homepage="",
        archives=(),
        classes=tuple(synthetic.CLASSES),
        palette=tuple(tuple(colour) for colour in synthetic.PALETTE),
        reduce_zero_label=False,
        splits=(("train", "train"), ("val", "val")),
        expected_counts=(),
        crop_size=(64, 64),
        train_scale=(64, 64),
        eval=EvalMode("whole", scale=(64, 64)),
        iterations=0,  # set by params/default.yaml
        notes="crop/eval sizes here are placeholders; params/*.yaml are authoritative",
    ),
}


def get_dataset(name: str) -> DatasetInfo:
    """The catalog entry of ``name``; an unknown name raises, listing the known names."""
    try:
        return CATALOG[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), CATALOG, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(CATALOG))}.{hint}"
        ) from None


def dataset_names() -> list[str]:
    return sorted(CATALOG)
