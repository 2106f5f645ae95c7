"""Pretrained weights: served over loopback HTTP, fetched (verified, resumable), and loaded back
into the backbone bit for bit; checkpoints that do not fit fail listing the keys."""

from __future__ import annotations

import hashlib
import io
import re

import pytest
import torch

from ssaseg import weights
from ssaseg.data.download import ChecksumError
from ssaseg.models.backbones.checkpoint import CheckpointMismatchError
from ssaseg.models.backbones.timm_backbone import TimmBackbone, timm
from ssaseg.models.zoo import MODELS
from tests.http_server import FileServer

FAST = dict(progress=False, retries=3, backoff=0.0, sleep=lambda s: None, timeout=10.0)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # timm must never reach the network


def _bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _register(monkeypatch, name: str, url: str, filename: str, **kw) -> None:
    spec = weights.WeightsSpec(url=url, filename=filename, description="test", **kw)
    monkeypatch.setitem(weights.CATALOG, name, spec)


def _mit_to_mmseg(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm pvt_v2 names -> mmsegmentation's MiT names (the format of the mit_b*.pth files)."""
    out = {}
    for original, value in state.items():
        if original.startswith("head."):
            continue
        key = re.sub(r"^patch_embed\.", "layers.0.0.", original)
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"layers.\1.0.", key)
        key = re.sub(r"^stages\.(\d+)\.norm\.", r"layers.\1.2.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.", r"layers.\1.1.", key)
        key = key.replace(".0.proj.", ".0.projection.")
        key = key.replace(".attn.proj.", ".attn.attn.out_proj.")
        for name, index in (("fc1", 0), ("dwconv", 1), ("fc2", 4)):
            if f".mlp.{name}." in key:
                key = key.replace(f".mlp.{name}.", f".ffn.layers.{index}.")
                if name != "dwconv" and value.ndim == 2:
                    value = value[:, :, None, None]
        if ".attn.kv." in key:
            continue
        if ".attn.q." in key:
            kind = key.rsplit(".", 1)[1]
            value = torch.cat([value, state[original.replace(".attn.q.", ".attn.kv.")]], dim=0)
            key = key.replace(f".attn.q.{kind}", f".attn.attn.in_proj_{kind}")
        out[key] = value
    return out


CASES = {
    # (timm model, backbone kwargs, how the file on the server names its keys)
    "timm-flattened": ("efficientformerv2_s0", dict(img_size=64, out_indices=(1, 2, 3)), None),
    "mmseg-mit": ("pvt_v2_b0", dict(mlp_ratios=(4, 4, 4, 4)), _mit_to_mmseg),
    "timm-resnet": ("resnet18", dict(output_stride=8), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fetch_and_load_bit_for_bit(case, tmp_path, monkeypatch) -> None:
    model_name, kwargs, to_source = CASES[case]
    torch.manual_seed(0)
    full = timm.create_model(model_name, **{k: v for k, v in kwargs.items() if k != "out_indices"})
    with torch.no_grad():
        for p in full.parameters():
            p.normal_()  # nothing a fresh init could reproduce by chance
    source = full.state_dict()
    payload = _bytes(to_source(source) if to_source else source)
    with FileServer({"/w.pth": payload}) as server:
        _register(monkeypatch, "test_w", server.url("/w.pth"), "w.pth",
                  sha256=hashlib.sha256(payload).hexdigest())
        path = weights.fetch_weights("test_w", tmp_path, **FAST)
    assert path.read_bytes() == payload
    backbone = TimmBackbone(model_name, weights=path, **kwargs)
    loaded = backbone.model.state_dict()
    checked = 0
    for own_key, tensor in loaded.items():
        if own_key.endswith("num_batches_tracked"):
            continue
        full_key = next(k for k in (own_key, re.sub(r"^(\w+?)_(\w+)\.", r"\1.\2.", own_key))
                        if k in source)
        assert torch.equal(tensor, source[full_key]), own_key
        checked += 1
    assert checked > 50


def test_mismatched_checkpoint_lists_keys(tmp_path) -> None:
    state = timm.create_model("resnet18").state_dict()
    del state["layer1.0.conv1.weight"]
    state["layer1.0.conv9.weight"] = torch.zeros(1)
    state["layer2.0.bn1.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as err:
        TimmBackbone("resnet18", weights=path)
    message = str(err.value)
    for key in ("layer1.0.conv1.weight", "layer1.0.conv9.weight", "layer2.0.bn1.weight"):
        assert key in message


def test_wrong_checksum_is_not_installed(tmp_path, monkeypatch) -> None:
    with FileServer({"/w.pth": b"not the published file"}) as server:
        _register(monkeypatch, "test_w", server.url("/w.pth"), "w.pth", sha256="0" * 64)
        with pytest.raises(ChecksumError):
            weights.fetch_weights("test_w", tmp_path, **FAST)
    assert not (tmp_path / "w.pth").exists()


def test_openmmlab_digest_prefix_is_checked(tmp_path, monkeypatch) -> None:
    payload = b"checkpoint bytes" * 100
    digest = hashlib.sha256(payload).hexdigest()
    with FileServer({"/a.pth": payload, "/b.pth": payload}) as server:
        _register(monkeypatch, "good", server.url("/a.pth"), "a.pth", sha256_prefix=digest[:8])
        assert weights.fetch_weights("good", tmp_path, **FAST).read_bytes() == payload
        wrong = "0" * 8 if not digest.startswith("0" * 8) else "f" * 8
        _register(monkeypatch, "bad", server.url("/b.pth"), "b.pth", sha256_prefix=wrong)
        with pytest.raises(ChecksumError):
            weights.fetch_weights("bad", tmp_path, **FAST)
    assert not (tmp_path / "b.pth").exists()


def test_dropped_connection_resumes(tmp_path, monkeypatch) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    with FileServer({"/w.pth": payload}) as server:
        server.drop_after["/w.pth"] = 100_000
        _register(monkeypatch, "test_w", server.url("/w.pth"), "w.pth",
                  sha256=hashlib.sha256(payload).hexdigest())
        path = weights.fetch_weights("test_w", tmp_path, **FAST)
        ranges = [r for _, r in server.requests if r]
    assert path.read_bytes() == payload
    assert ranges == ["bytes=100000-"]


def test_manual_checkpoint_says_which_file_to_put_where(tmp_path) -> None:
    with pytest.raises(weights.ManualWeightsRequired) as err:
        weights.fetch_weights("efficientformerv2_s2_official", tmp_path)
    assert str((tmp_path / "eformer_s2_450.pth").resolve()) in str(err.value)
    (tmp_path / "eformer_s2_450.pth").write_bytes(b"placed by hand")
    path = weights.fetch_weights("efficientformerv2_s2_official", tmp_path)
    assert path.with_name(path.name + ".sha256").is_file()  # recorded on first use


def test_every_pretrained_baseline_has_a_catalog_entry() -> None:
    for model, name in weights.MODEL_WEIGHTS.items():
        assert model in MODELS
        assert weights.weights_for_model(model) == name
        spec = weights.weights_spec(name)
        assert spec.url or spec.manual
    with pytest.raises(KeyError, match="known"):
        weights.weights_spec("no_such_weights")
