"""Released whole-segmentor checkpoints: names, files, errors, and `evaluate --checkpoint`.

Names: ``tests/data/released_keys/*.txt`` are the state-dict names and shapes of the reference
segmentors, listed by building them from their own code (``generate.py`` there: SeaFormer-B/L,
AFFormer-B, CGRSeg-B/L, each with its linear head and SSAClassifier's SSA head). ViT-Adapter's
are test_vit_adapter's list written from its code; Mask2Former's are mmseg 1.2.2's own model's.
Mapped on the meta device (no memory, ~1 s each): no key left over on either side, no shape
mismatch. Files: real tensors in the mmseg 1.x and 0.x envelopes, loaded, every value where a
hand-written expectation (not the table) puts it. End to end: a model we trained, re-saved under
the released names, evaluates to the very mIoU of our own evaluation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ssaseg.engine.checkpoint import CheckpointError
from ssaseg.models.backbones.checkpoint import OPTIONAL_SUFFIXES
from ssaseg.models.segmentor_checkpoint import (
    SegmentorCheckpointError,
    load_released_checkpoint,
    map_released_state,
    read_released_state,
)
from ssaseg.models.zoo import build_segmentor
from tests.conftest import miniature_params, write_params
from tests.test_mask2former import mmseg_mask2former  # noqa: F401  (fixture: mmseg's model)

KEYS = Path(__file__).parent / "data" / "released_keys"
LOADABLE = ["seaformer_b_linear", "seaformer_b_ssa", "seaformer_l_linear", "seaformer_l_ssa",
            "afformer_b_linear", "afformer_b_ssa", "cgrseg_b_linear", "cgrseg_l_linear"]


def released_names(listing: str) -> dict[str, tuple[int, ...]]:
    names = {}
    for line in (KEYS / f"{listing}.txt").read_text().splitlines():
        name, shape = line.split()
        names[name] = () if shape == "-" else tuple(int(s) for s in shape.split("x"))
    return names


def ssa_extras(channels: int, num_classes: int, head: str = "decode_head") -> dict:
    """The parameters every SSAClassifier ``*_ssa`` head adds to its linear head, written from
    its code (models/decode_heads/*_ssa.py): names and shapes."""
    c, k, names = channels, num_classes, {}
    names[f"{head}.get_feat_pos.weight"], names[f"{head}.get_feat_pos.bias"] = (c, 1, 3, 3), (c,)
    names[f"{head}.center_pos.weight"] = (k, c)
    for mlp in ("center_content_proj", "gt_center_content_proj", "center_pos_proj",
                "gt_center_pos_proj"):
        names[f"{head}.{mlp}.0.weight"] = (c // 2, 2 * c)
        names[f"{head}.{mlp}.2.weight"], names[f"{head}.{mlp}.2.bias"] = (c, c // 2), (c,)
    names[f"{head}.center_proj.weight"] = names[f"{head}.gt_center_proj.weight"] = (c, c)
    names[f"{head}.ssa_loss.criterion.empty_weight"] = (k + 1,)
    return names


def _leftovers(model, mapped):
    own = model.state_dict()
    missing = sorted(k for k in own.keys() - mapped.keys() if not k.endswith(OPTIONAL_SUFFIXES))
    unexpected = sorted(mapped.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & mapped.keys() if own[k].shape != mapped[k].shape)
    return missing, unexpected, wrong


def _meta_map(model_name, classifier, names, num_classes=150):
    with torch.device("meta"):
        model = build_segmentor(model_name, classifier, num_classes)
        state = {k: torch.empty(s) for k, s in names.items()}
    return model, map_released_state(model, state, model_name, classifier)


def test_ssa_extras_written_from_the_code_equal_the_generated_lists():
    linear, ssa = released_names("seaformer_b_linear"), released_names("seaformer_b_ssa")
    assert {k: ssa[k] for k in ssa.keys() - linear.keys()} == ssa_extras(160, 150)


@pytest.mark.parametrize("listing", LOADABLE)
def test_released_names_map_onto_ours_with_nothing_left(listing):
    model_name, classifier = listing.rsplit("_", 1)
    model, mapped = _meta_map(model_name, classifier, released_names(listing))
    assert _leftovers(model, mapped) == ([], [], [])


@pytest.mark.parametrize("classifier", ["linear", "ssa"])
def test_released_vit_adapter_names_map_onto_ours(classifier):
    from tests.test_vit_adapter import _released_state

    names = _released_state(150)
    if classifier == "ssa":
        names.update(ssa_extras(512, 150))
    model, mapped = _meta_map("upernet_vit_adapter_l", classifier, names)
    assert _leftovers(model, mapped) == ([], [], [])


def test_released_mask2former_names_map_onto_ours(mmseg_mask2former):
    names = {k: tuple(v.shape) for k, v in mmseg_mask2former.state_dict().items()}
    model, mapped = _meta_map("mask2former_r50", "linear", names)
    assert _leftovers(model, mapped) == ([], [], [])


def _every_table_model():
    from ssaseg.models.released_key_tables import RELEASED_MODEL_KEY_TABLES, UNSUPPORTED
    from ssaseg.models.segmentor_key_tables import MODEL_KEY_TABLES
    from ssaseg.models.zoo import model_spec

    return sorted(m for m in {**MODEL_KEY_TABLES, **RELEASED_MODEL_KEY_TABLES}
                  if not model_spec(m).mask_classification and (m, "ssa") not in UNSUPPORTED)


@pytest.mark.parametrize("model_name", _every_table_model())
def test_every_family_places_an_ssa_head_on_our_ssa_classifier(model_name):
    """Whatever the family's table: SSAClassifier's names inside its decode head (conv_seg +
    the SSA extras) fill exactly our SSA classifier's keys, with its shapes."""
    from ssaseg.models.released_key_tables import CLASSIFIER_HEAD

    head = CLASSIFIER_HEAD.get(model_name, r"decode_head").replace("\\", "")
    with torch.device("meta"):
        model = build_segmentor(model_name, "ssa", 150)
    channels = model.classifier.center_proj.weight.shape[0]
    names = {**ssa_extras(channels, 150, head), f"{head}.conv_seg.weight": (150, channels, 1, 1),
             f"{head}.conv_seg.bias": (150,)}
    with torch.device("meta"):
        mapped = map_released_state(model, {k: torch.empty(s) for k, s in names.items()},
                                    model_name, "ssa")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()
            if k.startswith("classifier.")}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == ours


def test_cgrseg_ssa_and_protoseg_are_refused_with_the_reason():
    with pytest.raises(SegmentorCheckpointError, match="CGRSeg_ssa head drops the prototype"):
        _meta_map("cgrseg_b", "ssa", released_names("cgrseg_b_ssa"))
    with pytest.raises(SegmentorCheckpointError, match="no 'protoseg' classifier"):
        _meta_map("afformer_b", "protoseg", released_names("afformer_b_linear"))


# ---------------------------------------------------------------------------------- files ---

def _numbered(names: dict) -> dict[str, torch.Tensor]:
    """Real tensors, each a distinct value pattern: tensor i = i + 1e-3 * N(0, 1)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for i, (name, shape) in enumerate(names.items()):
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(i)
        else:
            out[name] = i + 1e-3 * torch.randn(shape, generator=g)
    return out


def _save(path: Path, state: dict, form: str) -> Path:
    if form == "mmseg1":  # mmengine runner (mmseg 1.x)
        meta = {"dataset_meta": {"classes": ("wall", "sky"), "palette": [[1, 2, 3], [4, 5, 6]]},
                "mmengine_version": "0.10.7", "iter": 160000, "seed": 0, "cfg": "model = ..."}
        torch.save({"meta": meta, "state_dict": state}, path)
    elif form == "mmseg0":  # mmcv runner (mmseg 0.x): a NumPy palette in the meta
        meta = {"mmseg_version": "0.30.0", "CLASSES": ("wall", "sky"),
                "PALETTE": np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8),
                "iter": np.int64(160000), "config": "model = ..."}
        torch.save({"meta": meta, "state_dict": state}, path)
    elif form == "model":
        torch.save({"model": state}, path)
    elif form == "dataparallel":
        torch.save({"module." + k: v for k, v in state.items()}, path)
    return path


@pytest.fixture(scope="module")
def afformer_ssa():
    torch.manual_seed(0)
    return build_segmentor("afformer_b", "ssa", 150).eval()


@pytest.mark.parametrize("form", ["mmseg1", "mmseg0", "model", "dataparallel"])
def test_file_loads_and_values_land_where_the_reference_names_say(tmp_path, afformer_ssa, form):
    released = _numbered(released_names("afformer_b_ssa"))
    path = _save(tmp_path / "afformer_b_ssa.pth", released, form)
    load_released_checkpoint(afformer_ssa, path, "afformer_b", "ssa")
    ours = afformer_ssa.state_dict()
    expected = {  # released -> ours, from reading both codes (not from the table)
        "decode_head.conv_seg.weight": "classifier.coarse.conv.weight",
        "decode_head.center_pos.weight": "classifier.position_basis",
        "decode_head.get_feat_pos.weight": "classifier.position_conv.weight",
        "decode_head.center_content_proj.0.weight": "classifier.sem_mlp.0.weight",
        "decode_head.gt_center_pos_proj.2.bias": "classifier.teacher_pos_mlp.2.bias",
        "decode_head.gt_center_proj.weight": "classifier.teacher_center_proj.weight",
        "decode_head.squeeze.conv.weight": "head.squeeze.0.weight",
        "decode_head.squeeze.gn.bias": "head.squeeze.1.bias",
        "backbone.stem.0.conv.weight": "backbone.stem.0.conv.weight",
    }
    for theirs, mine in expected.items():
        assert torch.equal(ours[mine], released[theirs]), theirs
    # every tensor of ours is exactly one released tensor (i + noise, read back by rounding)
    by_index = list(released)
    for name, tensor in ours.items():
        source = by_index[int(tensor.float().mean().round())]
        assert torch.equal(tensor, released[source].to(tensor.dtype)), (name, source)


def test_cgrseg_file_copies_conv_seg_and_reshapes_layer_scales():
    released = _numbered(released_names("cgrseg_b_linear"))
    with torch.device("meta"):
        model = build_segmentor("cgrseg_b", "linear", 150)
    mapped = map_released_state(model, released, "cgrseg_b", "linear")
    assert torch.equal(mapped["classifier.conv.weight"], released["decode_head.conv_seg.weight"])
    assert torch.equal(mapped["head.coarse.1.weight"], released["decode_head.conv_seg.weight"])
    assert torch.equal(mapped["head.prototype_gate.attend.weight"],
                       released["decode_head.lgc.conv_mask.weight"])
    assert torch.equal(mapped["head.neck.2.mlp.2.bias"],
                       released["decode_head.trans.transformer_blocks.2.mlp.fc2.bias"])
    gamma = released["backbone.network.0.0.layer_scale_2"]  # (32, 1, 1) in the reference
    assert torch.equal(mapped["backbone.model.stages_0.blocks.0.ls2.gamma"], gamma.flatten())
    table = released["backbone.network.4.8.token_mixer.attention_biases_seg"]
    assert torch.equal(mapped["backbone.model.stages_2.blocks.8.token_mixer.attention_biases"],
                       table)


def test_a_key_too_many_or_too_few_or_a_wrong_class_count_is_one_error_listing_it(
        tmp_path, afformer_ssa):
    names = released_names("afformer_b_ssa")
    extra = {**names, "decode_head.conv_seg2.weight": (3,),
             "decode_head.fuse1.global_act.conv.weight": (3,)}  # a SeaFormer name: no row
    with pytest.raises(SegmentorCheckpointError) as err:
        load_released_checkpoint(afformer_ssa, _save(tmp_path / "a.pth", _numbered(extra),
                                                     "mmseg1"), "afformer_b", "ssa")
    assert err.value.unexpected == ["decode_head.conv_seg2.weight",
                                    "decode_head.fuse1.global_act.conv.weight"]
    assert "decode_head.conv_seg2.weight" in str(err.value) and "\n" not in str(err.value)

    fewer = {k: v for k, v in names.items() if k != "decode_head.center_proj.weight"}
    with pytest.raises(SegmentorCheckpointError) as err:
        load_released_checkpoint(afformer_ssa, _save(tmp_path / "b.pth", _numbered(fewer),
                                                     "mmseg0"), "afformer_b", "ssa")
    assert err.value.missing == ["classifier.center_proj.weight"]

    with torch.device("meta"):
        nine = build_segmentor("afformer_b", "ssa", 9)
    with pytest.raises(SegmentorCheckpointError) as err:
        load_released_checkpoint(nine, _save(tmp_path / "c.pth", _numbered(names), "mmseg1"),
                                 "afformer_b", "ssa")
    assert any(s.startswith("classifier.coarse.conv.weight (150, 256, 1, 1) vs ours (9,")
               for s in err.value.wrong_shape)
    # nothing was loaded by the failed attempts: the model still holds the last good load
    assert not any(t.is_meta for t in afformer_ssa.state_dict().values())


TRIPPED: list[str] = []


def _trip(*args):  # what unpickling the object below would call
    TRIPPED.append("unpickled")
    return None


class Tripwire:
    def __reduce__(self):
        return (_trip, ())


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_pickled_object_in_meta_is_refused_before_anything_is_unpickled(tmp_path, zipped):
    path = tmp_path / "evil.pth"
    torch.save({"meta": {"hook": Tripwire()}, "state_dict": {"a": torch.ones(1)}}, path,
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(SegmentorCheckpointError, match=r"refusing checkpoint .*_trip"):
        read_released_state(path)
    assert TRIPPED == []
    ok = _save(tmp_path / "ok.pth", {"a": torch.ones(1)}, "mmseg0")  # NumPy meta is data
    assert list(read_released_state(ok)) == ["a"]


def test_an_mmengine_message_hub_beside_the_weights_is_dropped_without_running_it(tmp_path,
                                                                                   monkeypatch):
    pytest.importorskip("mmengine")
    from mmengine.logging import HistoryBuffer, MessageHub

    hub = MessageHub.get_instance("test_segmentor_checkpoint")
    hub.update_scalar("train/loss", 1.5)
    hub.update_info("iter", 3)
    path = tmp_path / "mmseg1_trained.pth"
    torch.save({"meta": {"iter": 3}, "state_dict": {"a": torch.ones(1)},
                "message_hub": hub.state_dict()}, path)

    def tripped(*args, **kwargs):
        raise AssertionError("HistoryBuffer code ran")

    monkeypatch.setattr(HistoryBuffer, "__setstate__", tripped, raising=False)
    monkeypatch.setattr(HistoryBuffer, "__init__", tripped)
    assert list(read_released_state(path)) == ["a"]


def test_load_trained_on_a_released_file_points_to_checkpoint(tmp_path):
    from ssaseg.engine.train import load_trained

    path = _save(tmp_path / "released.pth", {"a": torch.ones(1)}, "mmseg1")
    with pytest.raises(CheckpointError, match=r"--checkpoint"):
        load_trained(path, torch.device("cpu"))


# ------------------------------------------------------------------------------ end to end ---

def _as_released(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our AFFormer-B + SSA state under the reference's names, by a hand-written inverse
    (reference names from aff_head_ssa.py / afformer.py; not the loader's table)."""
    ssa = {"coarse.conv": "conv_seg", "position_conv": "get_feat_pos",
           "position_basis": "center_pos.weight", "sem_mlp": "center_content_proj",
           "teacher_sem_mlp": "gt_center_content_proj", "pos_mlp": "center_pos_proj",
           "teacher_pos_mlp": "gt_center_pos_proj", "center_proj": "center_proj",
           "teacher_center_proj": "gt_center_proj"}
    out = {}
    for name, tensor in ours.items():
        if name.startswith("backbone."):
            name = re.sub(r"\.mlp\.dwconv\.", ".mlp.dwconv.dwconv.", name)
        elif name.startswith("head.squeeze."):
            name = name.replace("head.squeeze.0.", "decode_head.squeeze.conv.")
            name = name.replace("head.squeeze.1.", "decode_head.squeeze.gn.")
        else:
            part, _, rest = name.removeprefix("classifier.").partition(".")
            if part == "coarse":
                part, rest = "coarse.conv", rest.removeprefix("conv.")
            name = f"decode_head.{ssa[part]}" + (f".{rest}" if rest else "")
        out[name] = tensor
    out["decode_head.align.conv.weight"] = torch.zeros(256, 256, 1, 1)  # unused by the reference
    out["decode_head.ssa_loss.criterion.empty_weight"] = torch.ones(11)
    return out


def test_evaluate_checkpoint_gives_the_miou_of_the_same_weights_trained_by_us(tmp_path, capsys):
    from ssaseg.cli import main

    params = miniature_params(tmp_path, models=["afformer_b"], classifiers={"ssa": {}})
    params["train"]["iters"] = 2
    path = str(write_params(tmp_path / "p.yaml", params))
    run = ["--params", path, "--dataset", "synthetic", "--model", "afformer_b",
           "--classifier", "ssa", "--seed", "0", "--no-progress"]
    assert main(["prepare", "--params", path, "--dataset", "synthetic"]) == 0
    assert main(["train", *run]) == 0
    assert main(["evaluate", *run]) == 0
    run_dir = tmp_path / "results" / "mini" / "synthetic" / "afformer_b" / "ssa"
    ours = json.loads((run_dir / "seed0" / "eval.json").read_text())

    trained = torch.load(run_dir / "seed0" / "model.pt", weights_only=True)["model"]
    released = tmp_path / "afformer_b_ssa_synthetic.pth"
    _save(released, _as_released(trained), "mmseg1")
    assert main(["evaluate", *run, "--checkpoint", str(released)]) == 0
    theirs = json.loads((run_dir / "released" / "eval.json").read_text())
    assert theirs["miou"] == ours["miou"] and theirs["per_class"] == ours["per_class"]
    assert theirs["checkpoint"] == str(released) and len(theirs["checkpoint_sha256"]) == 64

    params["checkpoints"] = {"synthetic": {"afformer_b": {"ssa": str(released)}}}
    write_params(tmp_path / "p.yaml", params)
    (run_dir / "released" / "eval.json").unlink()
    assert main(["evaluate", *run, "--released"]) == 0
    assert json.loads((run_dir / "released" / "eval.json").read_text())["miou"] == ours["miou"]

    capsys.readouterr()
    assert main(["evaluate", *run, "--checkpoint", str(run_dir / "seed0" / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "written by `ssaseg train`" in err
    assert err.count("\n") == 1


def test_params_checkpoints_become_workflow_jobs_and_typos_stop_early(tmp_path):
    from ssaseg.config import ConfigError, validate_params
    from tests.test_workflow import _planned_jobs, _snakemake

    released = tmp_path / "released.pth"
    torch.save({"state_dict": {}}, released)
    params = miniature_params(tmp_path)
    params["checkpoints"] = {"synthetic": {"segformer_b0": {"linear": str(released)}}}
    result = _snakemake(tmp_path, write_params(tmp_path / "p.yaml", params), "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _planned_jobs(result)["evaluate_released"] == 1
    assert "segformer_b0/linear/released/eval.json" in result.stdout + result.stderr

    params["checkpoints"] = {"synthetic": {"segformer_b0": {"sa": str(released)}}}
    with pytest.raises(ConfigError, match=r"checkpoints\.synthetic\.segformer_b0\.sa: 'sa'"):
        validate_params(params, source="p.yaml")
