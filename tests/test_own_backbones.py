"""The baselines whose backbones timm lacks (SegNeXt-T, SeaFormer-B/L, AFFormer-B): every model x
every registered classifier trains and predicts at the label's size; whole images of any size
evaluate; the sizes match params/published_sizes.csv; official checkpoints load bit for bit and
mismatched ones fail listing the keys.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
import torch

from ssaseg.models.backbones import BACKBONES
from ssaseg.models.backbones.checkpoint import CheckpointMismatchError
from ssaseg.models.heads.light_ham import NMF2D
from ssaseg.models.zoo import build_segmentor

OWN_MODELS = ["segnext_t", "seaformer_b", "seaformer_l", "afformer_b"]
NUM_CLASSES = 5
TABLE = Path(__file__).resolve().parents[1] / "params" / "published_sizes.csv"


# ----------------------------------------------------------------------------- train / predict


@pytest.mark.parametrize("model", OWN_MODELS)
def test_whole_image_of_any_size(model: str) -> None:
    """A non-square image whose sides are no multiple of 32 (nor of SeaFormer's 64)."""
    torch.manual_seed(0)
    seg = build_segmentor(model, "linear", num_classes=NUM_CLASSES).eval()
    image = torch.randn(1, 3, 75, 101)
    features = seg.backbone(image)
    assert [f.shape[1] for f in features] == seg.backbone.out_channels
    for f, stride in zip(features, seg.backbone.out_strides):
        assert f.shape[-2:] == (math.ceil(75 / stride), math.ceil(101 / stride))
    logits = seg.predict(image)
    assert logits.shape == (1, NUM_CLASSES, 75, 101)
    assert torch.isfinite(logits).all()


# ----------------------------------------------------------------------------- LightHam's NMF


def test_nmf_steps_follow_the_mode_and_reconstruct_low_rank_input() -> None:
    nmf = NMF2D(rank=4, train_steps=6, eval_steps=7)
    calls = []
    original = nmf._update_bases
    nmf._update_bases = lambda *a: calls.append(1) or original(*a)  # type: ignore[method-assign]
    g = torch.Generator().manual_seed(0)
    # an exactly rank-4 non-negative (B=2, C=16, 8x8) map
    x = (torch.rand(2, 16, 4, generator=g) @ torch.rand(2, 4, 64, generator=g)).view(2, 16, 8, 8)
    nmf.train()
    nmf(x)
    assert len(calls) == 6
    calls.clear()
    nmf.eval()
    torch.manual_seed(0)
    rebuilt = nmf(x)
    assert len(calls) == 7
    assert rebuilt.shape == x.shape and (rebuilt >= 0).all()
    assert (rebuilt - x).norm() < 0.1 * x.norm()


def test_nmf_gradient_flows_through_the_updates_like_the_reference() -> None:
    """The reference back-propagates through every multiplicative update; ``one_step_grad``
    (HamNet's original) only through the last coefficient update: different gradients."""
    x = torch.rand(1, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    grads = {}
    for one_step in (False, True):
        torch.manual_seed(0)  # same random bases
        leaf = x.clone().requires_grad_()
        NMF2D(rank=4, train_steps=3, one_step_grad=one_step).train()(leaf).square().sum().backward()
        grads[one_step] = leaf.grad
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert not torch.allclose(grads[False], grads[True])


# ----------------------------------------------------------------------------- sizes


def _published_rows() -> list[dict[str, str]]:
    with open(TABLE, newline="") as handle:
        return [r for r in csv.DictReader(handle) if r["model"] in OWN_MODELS]


def test_every_own_model_has_published_sizes() -> None:
    pairs = {(r["model"], r["classifier"]) for r in _published_rows()}
    assert pairs == {(m, c) for m in OWN_MODELS for c in ("linear", "ssa")}


# ----------------------------------------------------------------------------- checkpoints

_SHARED_IN_AFFORMER = re.compile(r"^(mhca_stages\.\d+\.mhca_blks\.\d+\.)(cpe|crpe)\.(.*)$")


def _official_mscan(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {re.sub(r"\.mlp\.dwconv\.", ".mlp.dwconv.dwconv.", k): v for k, v in ours.items()}
    state["head.weight"], state["head.bias"] = torch.randn(1000, 256), torch.randn(1000)
    return {"state_dict": state}


def _official_seaformer(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = dict(ours)
    state["linear.weight"], state["linear.bias"] = torch.randn(1000, 256), torch.randn(1000)
    # timm's training output: raw weights and their EMA; the EMA is the one to load
    raw = {k: torch.zeros_like(v) for k, v in state.items()}
    return {"epoch": 600, "state_dict": raw, "state_dict_ema": state}


def _official_afformer(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {re.sub(r"\.mlp\.dwconv\.", ".mlp.dwconv.dwconv.", k): v for k, v in ours.items()}
    # the official blocks register the encoder's shared modules again under their own names
    layers = {k.split(".MHCA_layers.")[0] + "." + k.split(".MHCA_layers.")[1].split(".")[0]
              for k in ours if ".MHCA_layers." in k}
    for key, value in list(ours.items()):
        match = _SHARED_IN_AFFORMER.match(key)
        if not match:
            continue
        encoder, kind, rest = match.groups()
        for layer in sorted(lay for lay in layers if lay.startswith(encoder)):
            index = layer.rsplit(".", 1)[1]
            state[f"{encoder}MHCA_layers.{index}.{kind}.{rest}"] = value
            if kind == "crpe":
                state[f"{encoder}MHCA_layers.{index}.factoratt_crpe.crpe.{rest}"] = value
    state["cls_head.cls.weight"] = torch.randn(1000, 216)
    state["cls_head.cls.bias"] = torch.randn(1000)
    return {"model": state}


OFFICIAL = {
    "mscan": (dict(arch="tiny"), _official_mscan),
    "seaformer": (dict(arch="base"), _official_seaformer),
    "afformer": (dict(arch="base"), _official_afformer),
}


def _random_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 7)
        for k, v in module.state_dict().items()
    }


@pytest.mark.parametrize("backbone", sorted(OFFICIAL))
def test_official_checkpoint_round_trip(backbone: str, tmp_path: Path) -> None:
    kwargs, to_official = OFFICIAL[backbone]
    source = BACKBONES[backbone](**kwargs)
    ours = _random_state(source)
    path = tmp_path / f"{backbone}.pth"
    torch.save(to_official(ours), path)
    loaded = BACKBONES[backbone](weights=path, **kwargs).state_dict()
    assert loaded.keys() == ours.keys()
    for key, value in ours.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("backbone", sorted(OFFICIAL))
def test_mismatched_checkpoint_lists_the_keys(backbone: str, tmp_path: Path) -> None:
    kwargs, to_official = OFFICIAL[backbone]
    model = BACKBONES[backbone](**kwargs)
    state = dict(model.state_dict())
    dropped = next(k for k in state if k.endswith(".weight"))
    del state[dropped]
    state["extra_branch.weight"] = torch.zeros(3)
    resized = next(k for k in state if k.endswith(".bias"))
    state[resized] = torch.zeros(state[resized].numel() + 1)
    path = tmp_path / "bad.pth"
    torch.save(to_official(state), path)
    with pytest.raises(CheckpointMismatchError) as info:
        model.load_pretrained(path)
    message = str(info.value)
    assert "missing keys (1)" in message and dropped in message
    assert "unexpected keys (1)" in message and "extra_branch.weight" in message
    assert "shape mismatches (1)" in message and resized in message


@pytest.mark.parametrize("backbone", sorted(OFFICIAL))
def test_missing_weights_file_says_what_to_do(backbone: str, tmp_path: Path) -> None:
    kwargs, _ = OFFICIAL[backbone]
    with pytest.raises(FileNotFoundError, match="fetch-weights"):
        BACKBONES[backbone](weights=tmp_path / "absent.pth", **kwargs)
