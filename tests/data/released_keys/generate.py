"""Writes the released-checkpoint key lists of this folder (``<file>.txt``: one ``name shape``
per line) by building the reference segmentors from their own code and configs and listing
their ``state_dict()``: the names and shapes a released whole-segmentor checkpoint of that model
holds. Not a test and not run by pytest or CI: it needs the reference repositories, e.g.

    # git dirs from the `fetch` tool, unpacked: git --git-dir=.../repo archive HEAD | tar -x
    python tests/data/released_keys/generate.py --ssa-classifier /tmp/ref/SSAClassifier
    python tests/data/released_keys/generate.py --ssa-classifier ... --compare 256

``--compare SIZE`` writes nothing: it loads each reference model's weights (perturbed) into ours
through ssaseg's released-checkpoint loader and prints the max logit difference (2026-12-03, CPU
fp32, 256x256: 9e-8 .. 1e-5 for the 8 loadable pairs; ~4 min on 2 shared cores). AFFormer's
forward needs einops (``pip install --target DIR einops==0.8.2``, DIR on PYTHONPATH).

Reference: xwmaxwma/SSAClassifier 8833e268 (its models/ are the official SeaFormer, AFFormer,
EfficientFormerV2 and CGRSeg modules with their imports changed, plus the *_ssa decode heads),
built with mmsegmentation 1.2.2's registry and BaseDecodeHead (same conv_seg as 0.x). mmcv 1.x
names the code imports and does not run here (``mmcv.runner``, ``mmseg.ops``,
``get_root_logger``, einops) are stubbed; SyncBN is built as BN (same state-dict names).
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

OUT = Path(__file__).parent

# (output file, config under configs/, decode-head type override or None)
MODELS = (
    ("seaformer_b_linear", "seaformer/seaformer_base_512x512_160k_4x4_ade20k.py", None),
    ("seaformer_b_ssa", "seaformer/seaformer_base_512x512_160k_4x4_ade20k_ssa.py", None),
    ("seaformer_l_linear", "seaformer/seaformer_large_512x512_160k_4x4_ade20k.py", None),
    ("seaformer_l_ssa", "seaformer/seaformer_large_512x512_160k_4x4_ade20k_ssa.py", None),
    ("afformer_b_linear", "afformer/afformer_base_ade20k.py", None),
    ("afformer_b_ssa", "afformer/afformer_base_ade20k_ssa.py", None),
    ("cgrseg_b_linear", "cgrseg/cgrseg-b_ade20k_160k.py", None),
    ("cgrseg_b_ssa", "cgrseg/cgrseg-b_ade20k_160k_ssa.py", None),
    ("cgrseg_l_linear", "cgrseg/cgrseg-l_ade20k_160k.py", None),
    ("cgrseg_l_ssa", "cgrseg/cgrseg-l_ade20k_160k_ssa.py", None),
)


def _stub_mmcv_1x() -> None:
    sys.path.insert(0, str(Path(__file__).parents[3]))
    from tests.mmcv_stub import stub_mmcv_ext

    stub_mmcv_ext()  # mmcv-lite has no compiled ops; nothing here calls them
    from mmengine.model import BaseModule, ModuleList
    from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint
    from mmengine.model.weight_init import constant_init, kaiming_init
    import mmcv.cnn
    import mmseg.models.utils
    import mmseg.utils

    runner = types.ModuleType("mmcv.runner")
    runner.BaseModule, runner.ModuleList = BaseModule, ModuleList
    runner._load_checkpoint, runner.load_checkpoint = _load_checkpoint, load_checkpoint
    sys.modules["mmcv.runner"] = runner
    mmcv.cnn.kaiming_init, mmcv.cnn.constant_init = kaiming_init, constant_init
    import mmengine.model.weight_init as weight_init
    sys.modules["mmcv.cnn.utils"] = types.ModuleType("mmcv.cnn.utils")
    sys.modules["mmcv.cnn.utils.weight_init"] = weight_init
    from mmengine.registry import Registry

    register = Registry.register_module  # the reference's MSCAN/LightHamHead: mmseg 1.x's names
    Registry.register_module = lambda self, name=None, force=False, module=None: register(
        self, name, True, module)
    ops = types.ModuleType("mmseg.ops")
    ops.resize = mmseg.models.utils.resize
    sys.modules["mmseg.ops"] = ops
    mmseg.utils.get_root_logger = lambda *a, **k: None
    if "einops" not in sys.modules:
        try:
            import einops  # noqa: F401
        except ImportError:  # only used in forward
            sys.modules["einops"] = types.ModuleType("einops")
            sys.modules["einops"].rearrange = None


def _bn_not_syncbn(cfg):
    if isinstance(cfg, dict):
        if cfg.get("type") == "SyncBN":
            cfg["type"] = "BN"
        for value in cfg.values():
            _bn_not_syncbn(value)
    elif isinstance(cfg, list):
        for value in cfg:
            _bn_not_syncbn(value)


def _perturbed(model):
    """Every parameter and BN statistic moved at random: no zero-initialised weight can hide
    a mapping error."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def compare(reference, out_name: str, size: int) -> float:
    """Max |logit difference| between the reference segmentor and ours loaded with its weights
    through ssaseg's released-checkpoint loader (a saved mmseg 1.x file), at size x size."""
    import tempfile

    import torch

    from ssaseg.models.segmentor_checkpoint import load_released_checkpoint
    from ssaseg.models.zoo import build_segmentor

    model_name, classifier = out_name.rsplit("_", 1)
    reference = _perturbed(reference)
    ours = build_segmentor(model_name, classifier, reference.decode_head.num_classes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{out_name}.pth"
        torch.save({"meta": {"note": "generate.py --compare"},
                    "state_dict": reference.state_dict()}, path)
        load_released_checkpoint(ours, path, model_name, classifier)
    ours.eval()
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = reference.backbone(images)
        if classifier == "ssa":
            theirs = reference.decode_head.forward_test(feats, None, None)
        else:
            theirs = reference.decode_head(feats)
        mine = ours(images).logits
    return float((theirs - mine).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ssa-classifier", required=True, type=Path)
    parser.add_argument("--compare", type=int, metavar="SIZE", help="instead of writing the "
                        "lists: load each reference model's (perturbed) weights into ours with "
                        "the released loader and print the max logit difference at SIZE")
    args = parser.parse_args()
    sys.path.insert(0, str(args.ssa_classifier))
    from ssaseg.torchvision_cpu import declare_missing_torchvision_ops

    declare_missing_torchvision_ops()
    _stub_mmcv_1x()
    import torch
    from mmengine.config import Config
    from mmseg.registry import MODELS as REGISTRY

    import models  # noqa: F401  (the reference repo's package: registers its modules)

    for out_name, config, _ in MODELS:
        cfg = Config.fromfile(str(args.ssa_classifier / "configs" / config)).model.to_dict()
        _bn_not_syncbn(cfg)
        cfg.pop("pretrained", None)
        cfg["backbone"].pop("init_cfg", None)
        model = REGISTRY.build(cfg)  # on the CPU: the reference calls .item() in __init__
        if args.compare:
            try:
                print(f"{out_name}: max |logit diff| {compare(model, out_name, args.compare):.3g}")
            except Exception as exc:  # e.g. a pair our loader refuses, with its reason
                print(f"{out_name}: {type(exc).__name__}: {exc}"[:400])
            continue
        lines = [f"{k} {'x'.join(map(str, v.shape)) or '-'}" for k, v in model.state_dict().items()]
        (OUT / f"{out_name}.txt").write_text("\n".join(lines) + "\n")
        print(f"{out_name}: {len(lines)} keys")


if __name__ == "__main__":
    main()
