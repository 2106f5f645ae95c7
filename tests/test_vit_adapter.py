"""UperNet + ViT-Adapter: a miniature of the same code with every classifier (forward, losses,
backward, predict), ViT-Adapter-L itself once for real (~15 s, ~3.3 GB: the brief allows one
forward + backward of ViT-L at a small input), the ImageNet ViT checkpoint loading, the released
checkpoint's key table, and the layer-wise lr decay of its optimiser."""

from __future__ import annotations

import re

import pytest
import torch

from ssaseg.config import OptimizerConfig
from ssaseg.engine.optim import build_optimizer
from ssaseg.models.backbones.checkpoint import CheckpointMismatchError
from ssaseg.models.backbones.timm_backbone import timm
from ssaseg.models.backbones.vit_adapter import ViTAdapter
from ssaseg.models.segmentor_key_tables import VIT_ADAPTER_UPERNET, apply_key_table
from ssaseg.models.zoo import MODELS, ModelSpec, build_segmentor
from tests.conftest import tiny_batch

NUM_CLASSES = 5
TINY = dict(embed_dim=64, depth=4, num_heads=2, deform_num_heads=2, conv_inplane=8,
            pretrain_size=64, interaction_indexes=((0, 0), (1, 1), (2, 2), (3, 3)))


@pytest.fixture
def tiny_model(monkeypatch):
    spec = ModelSpec(backbone="vit_adapter", backbone_kwargs=TINY, head="uper",
                     head_kwargs=dict(channels=32, aux_in_index=2, aux_channels=16))
    monkeypatch.setitem(MODELS, "tiny_vit_adapter", spec)
    return "tiny_vit_adapter"


@pytest.mark.parametrize("classifier", ["linear", "ssa", "protoseg"])
def test_tiny_adapter_trains_and_predicts_with_every_classifier(tiny_model, classifier):
    torch.manual_seed(0)
    seg = build_segmentor(tiny_model, classifier, num_classes=NUM_CLASSES).train()
    images, labels = tiny_batch(NUM_CLASSES, 64, 64)
    out = seg(images, labels)
    assert "aux_ce" in out.losses and torch.isfinite(out.total_loss)
    out.total_loss.backward()
    unused = [n for n, p in seg.named_parameters()
              if not n.startswith("classifier.") and p.requires_grad and p.grad is None]
    assert not unused, unused
    seg.eval()
    odd = torch.randn(1, 3, 75, 106)  # padded to 96x128 inside, features cropped back
    assert [tuple(f.shape[-2:]) for f in seg.backbone(odd)] == [(19, 27), (10, 14), (5, 7), (3, 4)]
    assert seg.predict(odd).shape == (1, NUM_CLASSES, 75, 106)


def test_vit_adapter_l_forward_backward_at_a_small_input():
    torch.manual_seed(0)
    seg = build_segmentor("upernet_vit_adapter_l", "ssa", num_classes=NUM_CLASSES).train()
    backbone = seg.backbone
    assert (backbone.embed_dim, len(backbone.blocks), backbone.num_layers) == (1024, 24, 24)
    assert len(backbone.interactions[-1].extra_extractors) == 2
    assert all(len(i.extra_extractors) == 0 for i in backbone.interactions[:-1])
    images, labels = tiny_batch(NUM_CLASSES, 64, 64)
    out = seg(images, labels)
    out.total_loss.backward()
    assert torch.isfinite(out.total_loss)
    unused = [n for n, p in seg.named_parameters()
              if not n.startswith("classifier.") and p.requires_grad and p.grad is None]
    assert not unused, unused[:10]


def test_input_renormalisation_to_augreg_range():
    """ImageNet-normalised input is taken back to [-1, 1] (AugReg's (x - 127.5) / 127.5)."""
    torch.manual_seed(0)
    augreg = ViTAdapter(**TINY).eval()
    imagenet = ViTAdapter(**TINY, input_norm="imagenet").eval()
    imagenet.load_state_dict(augreg.state_dict())
    raw = torch.rand(1, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        for a, b in zip(augreg((raw - mean) / std), imagenet((raw - 0.5) / 0.5)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="input_norm"):
        ViTAdapter(**TINY, input_norm="none")


def _tiny_timm_vit_state():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, embed_dim=64, depth=4,
                            num_heads=2, num_classes=10)
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_()
    return vit.state_dict()


def test_imagenet_vit_checkpoint_loads_into_the_vit_part(tmp_path):
    state = _tiny_timm_vit_state()  # timm naming, with class token, final norm and classifier
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    backbone = ViTAdapter(**TINY, weights=path)
    own = backbone.state_dict()
    for key in backbone.vit_state_keys():
        assert torch.equal(own[key], state[key]), key
    assert len(backbone.vit_state_keys()) == 1 + 2 + 4 * 12  # pos, patch conv, 12 per block
    assert torch.equal(own["blocks.0.ls1.gamma"], torch.ones(64))  # AugReg has no layer scale


def test_imagenet_vit_checkpoint_mismatch_lists_keys(tmp_path):
    state = _tiny_timm_vit_state()
    del state["blocks.1.mlp.fc1.weight"]
    state["blocks.1.mlp.fc9.weight"] = torch.zeros(1)
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as err:
        ViTAdapter(**TINY, weights=path)
    assert "blocks.1.mlp.fc1.weight" in str(err.value)
    assert "blocks.1.mlp.fc9.weight" in str(err.value)


def _released_state(num_classes: int = 150) -> dict[str, tuple[int, ...]]:
    """Names and shapes of czczup/ViT-Adapter's upernet_augreg_adapter_large_512_160k_ade20k
    release, written out from the reference code's module tree (mmseg_custom/models/backbones/
    {vit_adapter,adapter_modules,base/vit}.py, mmseg 0.x UPerHead and FCNHead)."""
    c, names = 1024, {}

    def bn(prefix, n):
        for k in ("weight", "bias", "running_mean", "running_var"):
            names[f"{prefix}.{k}"] = (n,)
        names[f"{prefix}.num_batches_tracked"] = ()

    def linear(prefix, cout, cin):
        names[f"{prefix}.weight"], names[f"{prefix}.bias"] = (cout, cin), (cout,)

    def layer_norm(prefix):
        names[f"{prefix}.weight"], names[f"{prefix}.bias"] = (c,), (c,)

    b = "backbone"
    names[f"{b}.pos_embed"] = (1, 577, c)
    names[f"{b}.patch_embed.proj.weight"] = (c, 3, 16, 16)
    names[f"{b}.patch_embed.proj.bias"] = (c,)
    for i in range(24):
        p = f"{b}.blocks.{i}"
        layer_norm(f"{p}.norm1")
        linear(f"{p}.attn.qkv", 3 * c, c)
        linear(f"{p}.attn.proj", c, c)
        layer_norm(f"{p}.norm2")
        linear(f"{p}.mlp.fc1", 4 * c, c)
        linear(f"{p}.mlp.fc2", c, 4 * c)
        names[f"{p}.gamma1"], names[f"{p}.gamma2"] = (c,), (c,)
    names[f"{b}.level_embed"] = (3, c)
    for index, (cin, cout) in zip((0, 3, 6), ((3, 64), (64, 64), (64, 64))):
        names[f"{b}.spm.stem.{index}.weight"] = (cout, cin, 3, 3)
        bn(f"{b}.spm.stem.{index + 1}", cout)
    for name, (cin, cout) in (("conv2", (64, 128)), ("conv3", (128, 256)), ("conv4", (256, 256))):
        names[f"{b}.spm.{name}.0.weight"] = (cout, cin, 3, 3)
        bn(f"{b}.spm.{name}.1", cout)
    for name, cin in (("fc1", 64), ("fc2", 128), ("fc3", 256), ("fc4", 256)):
        names[f"{b}.spm.{name}.weight"], names[f"{b}.spm.{name}.bias"] = (c, cin, 1, 1), (c,)

    def deform(prefix, levels):
        linear(f"{prefix}.sampling_offsets", 16 * levels * 4 * 2, c)
        linear(f"{prefix}.attention_weights", 16 * levels * 4, c)
        linear(f"{prefix}.value_proj", c // 2, c)
        linear(f"{prefix}.output_proj", c, c // 2)

    def extractor(prefix):
        layer_norm(f"{prefix}.query_norm")
        layer_norm(f"{prefix}.feat_norm")
        deform(f"{prefix}.attn", 1)
        linear(f"{prefix}.ffn.fc1", c // 4, c)
        names[f"{prefix}.ffn.dwconv.dwconv.weight"] = (c // 4, 1, 3, 3)
        names[f"{prefix}.ffn.dwconv.dwconv.bias"] = (c // 4,)
        linear(f"{prefix}.ffn.fc2", c, c // 4)
        layer_norm(f"{prefix}.ffn_norm")

    for i in range(4):
        p = f"{b}.interactions.{i}"
        names[f"{p}.injector.gamma"] = (c,)
        layer_norm(f"{p}.injector.query_norm")
        layer_norm(f"{p}.injector.feat_norm")
        deform(f"{p}.injector.attn", 3)
        extractor(f"{p}.extractor")
    for j in range(2):
        extractor(f"{b}.interactions.3.extra_extractors.{j}")
    names[f"{b}.up.weight"], names[f"{b}.up.bias"] = (c, c, 2, 2), (c,)
    for i in range(1, 5):
        bn(f"{b}.norm{i}", c)

    def conv_module(prefix, cout, cin, k):
        names[f"{prefix}.conv.weight"] = (cout, cin, k, k)
        bn(f"{prefix}.bn", cout)

    for i in range(4):
        conv_module(f"decode_head.psp_modules.{i}.1", 512, c, 1)
    conv_module("decode_head.bottleneck", 512, c + 4 * 512, 3)
    for i in range(3):
        conv_module(f"decode_head.lateral_convs.{i}", 512, c, 1)
        conv_module(f"decode_head.fpn_convs.{i}", 512, 512, 3)
    conv_module("decode_head.fpn_bottleneck", 512, 4 * 512, 3)
    names["decode_head.conv_seg.weight"] = (num_classes, 512, 1, 1)
    names["decode_head.conv_seg.bias"] = (num_classes,)
    conv_module("auxiliary_head.convs.0", 256, c, 3)
    names["auxiliary_head.conv_seg.weight"] = (num_classes, 256, 1, 1)
    names["auxiliary_head.conv_seg.bias"] = (num_classes,)
    return names


def test_released_checkpoint_names_map_onto_ours_exactly():
    released = _released_state()
    with torch.device("meta"):
        seg = build_segmentor("upernet_vit_adapter_l", "linear", num_classes=150)
        state = {k: torch.empty(shape) for k, shape in released.items()}
    mapped = apply_key_table(state, VIT_ADAPTER_UPERNET)
    own = seg.state_dict()
    assert sorted(mapped.keys() - own.keys()) == []
    assert sorted(own.keys() - mapped.keys()) == []
    wrong = [k for k in own if tuple(own[k].shape) != tuple(mapped[k].shape)]
    assert wrong == []


def test_layer_wise_lr_decay_numbers_the_vit_blocks(tiny_model):
    seg = build_segmentor(tiny_model, "linear", num_classes=NUM_CLASSES)
    cfg = OptimizerConfig(name="adamw", lr=1.0, weight_decay=0.05, momentum=0.9,
                          betas=(0.9, 0.999), head_lr_mult=1.0, norm_weight_decay=0.0,
                          layer_decay_rate=0.5)
    optimizer = build_optimizer(seg, cfg)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(seg.named_parameters())
    depth = 4  # layers: embeddings 0, block i -> i + 1, the rest depth + 1; scale 0.5^(depth+1-id)
    assert lr_of[id(params["backbone.pos_embed"])] == 0.5 ** 5
    assert lr_of[id(params["backbone.patch_embed.proj.weight"])] == 0.5 ** 5
    for i in range(depth):
        assert lr_of[id(params[f"backbone.blocks.{i}.attn.qkv.weight"])] == 0.5 ** (depth - i)
    for name in ("backbone.spm.fc1.weight", "backbone.interactions.0.injector.gamma",
                 "head.fuse.0.weight", "classifier.conv.weight"):
        assert lr_of[id(params[name])] == 1.0
    assert decay_of[id(params["backbone.blocks.0.attn.qkv.weight"])] == 0.05
    assert decay_of[id(params["backbone.blocks.0.attn.qkv.bias"])] == 0.0
    # a backbone without layer numbering refuses a decay rate
    with torch.device("meta"):
        swin = build_segmentor("segformer_b0", "linear", num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="layer_decay_rate"):
        build_optimizer(swin, cfg)


def test_interaction_indexes_must_cover_the_blocks():
    with pytest.raises(ValueError, match="interaction_indexes"):
        ViTAdapter(**{**TINY, "interaction_indexes": ((0, 1), (3, 3))})
    assert re.fullmatch(r"\d+", str(ViTAdapter(**TINY).layer_decay_id("blocks.3.mlp.fc1.weight")))
