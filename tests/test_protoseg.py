"""ProtoSeg classifier: Sinkhorn clustering, prototype updates, losses, DDP, checkpoints."""

from __future__ import annotations

import io
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from ssaseg.models.classifiers import CLASSIFIERS, build_classifier
from ssaseg.models.classifiers import protoseg as protoseg_module
from ssaseg.models.classifiers.protoseg import (
    IGNORE_TARGET,
    ProtoSegClassifier,
    prototype_contrast_loss,
    prototype_density_loss,
)
from ssaseg.models.classifiers.sinkhorn import hard_assign, sinkhorn_knopp


def slow_sinkhorn(scores: torch.Tensor, iterations: int, epsilon: float) -> torch.Tensor:
    """One group, step by step as the reference writes it, in float64."""
    q = torch.exp(scores.double() / epsilon).t()  # (M, N)
    num_protos, num_pixels = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / num_protos
        q = q / q.sum(dim=0, keepdim=True) / num_pixels
    return (q * num_pixels).t()


def orthonormal_prototypes(num_classes: int, num_prototypes: int, channels: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    basis, _ = torch.linalg.qr(torch.randn(channels, channels, generator=gen))
    return basis[: num_classes * num_prototypes].reshape(num_classes, num_prototypes, channels)


def labelled_pixels_equal_to_prototypes(clf: ProtoSegClassifier, noise: float = 0.0):
    """Every prototype gets one pixel equal to it (plus noise), plus two ignored pixels.

    Returns a feature/labels pair shaped for forward (1, C, 1, N) / (1, 1, N), the embedding
    the patched ``embed`` returns, and the (class, prototype) slot of every labelled pixel.
    """
    num_classes, num_protos, channels = clf.prototypes.shape
    gen = torch.Generator().manual_seed(3)
    slots = torch.randperm(num_classes * num_protos, generator=gen)
    jitter = noise * torch.randn(len(slots), channels, generator=gen)
    emb = clf.prototypes.flatten(0, 1)[slots] + jitter
    emb = torch.cat([emb, torch.randn(2, channels, generator=gen)])
    emb = F.normalize(emb, dim=-1)
    labels = torch.cat([slots // num_protos, torch.tensor([clf.ignore_index] * 2)])
    feature = torch.zeros(1, channels, 1, len(labels))
    return feature, labels.view(1, 1, -1), emb, slots


# ---------------------------------------------------------------- Sinkhorn-Knopp


@pytest.mark.parametrize("log_domain", [False, True])
@pytest.mark.parametrize("iterations", [1, 3])
def test_sinkhorn_matches_slow_reference_per_group(iterations, log_domain):
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(300, 10, generator=gen) * 2 - 1  # cosines
    groups = torch.randint(0, 4, (300,), generator=gen)
    groups[groups == 2] = 3  # group 2 is empty
    plan = sinkhorn_knopp(scores, groups, 5, iterations, epsilon=0.05, log_domain=log_domain)
    assert plan.shape == scores.shape and plan.dtype == torch.float32
    for k in (0, 1, 3):
        expected = slow_sinkhorn(scores[groups == k], iterations, 0.05)
        torch.testing.assert_close(plan[groups == k].double(), expected, rtol=1e-4, atol=1e-6)


def test_sinkhorn_equipartitions_prototypes_and_rows_sum_to_one():
    gen = torch.Generator().manual_seed(1)
    # every pixel prefers prototype 0: a plain argmax would put them all there
    scores = 0.9 + 0.05 * torch.rand(400, 8, generator=gen)
    scores[:, 0] += 0.05
    groups = torch.randint(0, 3, (400,), generator=gen)
    assert bool((scores.argmax(1) == 0).all())
    converged = sinkhorn_knopp(scores, groups, 3, iterations=200, epsilon=0.05)
    default = sinkhorn_knopp(scores, groups, 3)  # 3 iterations
    torch.testing.assert_close(default.sum(1), torch.ones(400))
    for k in range(3):
        n_k = int((groups == k).sum())
        uniform = torch.full((8,), n_k / 8)
        torch.testing.assert_close(converged[groups == k].sum(0), uniform, rtol=1e-3, atol=0)
        marginal = default[groups == k].sum(0) / (n_k / 8)
        assert float((marginal - 1).abs().max()) < 0.1
        # the hard assignment spreads the pixels over all prototypes, none takes the lot
        counts = torch.bincount(default[groups == k].argmax(1), minlength=8)
        assert int(counts.min()) >= 0.25 * n_k / 8 and int(counts.max()) <= 2 * n_k / 8


def test_sinkhorn_is_stable_for_tiny_epsilon():
    scores = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.5, 0.4], [0.4, 0.5]])
    groups = torch.tensor([0, 0, 1, 1])
    plan = sinkhorn_knopp(scores, groups, 2, epsilon=1e-3)  # exp(+-2000): the log domain
    assert bool(torch.isfinite(plan).all())
    torch.testing.assert_close(plan.sum(1), torch.ones(4))
    torch.testing.assert_close(plan, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))


def test_hard_assignments_are_one_hot_rows():
    gen = torch.Generator().manual_seed(2)
    plan = sinkhorn_knopp(torch.rand(5000, 10, generator=gen), iterations=1)
    for mode in ("argmax", "gumbel"):
        index = hard_assign(plan, mode)
        one_hot = F.one_hot(index, 10)
        assert index.shape == (5000,) and bool((one_hot.sum(1) == 1).all())
    assert torch.equal(hard_assign(plan, "argmax"), plan.argmax(1))
    # as in the reference, the Gumbel sample takes the plan's entries (in [0, 1]) as logits:
    # a one-hot row keeps its column with probability e / (e + 9)
    torch.manual_seed(0)
    kept = (hard_assign(F.one_hot(torch.zeros(20000, dtype=torch.long), 10).float(), "gumbel") == 0)
    assert abs(float(kept.float().mean()) - math.e / (math.e + 9)) < 0.02
    with pytest.raises(ValueError, match="hard_assignment"):
        hard_assign(plan, "soft")


# ---------------------------------------------------------------- prototypes


def test_prototypes_are_an_untrained_unit_norm_buffer():
    torch.manual_seed(0)
    clf = ProtoSegClassifier(16, 4)
    assert clf.prototypes.shape == (4, 10, 16)
    assert "prototypes" in dict(clf.named_buffers())
    assert "prototypes" not in dict(clf.named_parameters())
    torch.testing.assert_close(clf.prototypes.norm(dim=-1), torch.ones(4, 10))

    before = clf.prototypes.clone()
    optimizer = torch.optim.SGD(clf.parameters(), lr=10.0)
    feature = torch.randn(2, 16, 6, 6)
    labels = torch.randint(0, 4, (2, 12, 12))
    # no labels, or eval mode: logits only, no update
    clf.train()
    out = clf(feature)
    assert out.losses == {} and out.logits.shape == (2, 4, 6, 6)
    out.logits.sum().backward()
    optimizer.step()
    clf.eval()
    assert clf(feature, labels).losses == {}
    assert torch.equal(clf.prototypes, before)
    # training with labels: the momentum update moves them, gradient never reaches them
    clf.train()
    optimizer.zero_grad()
    sum(clf(feature, labels).losses.values()).backward()
    optimizer.step()
    assert clf.prototypes.grad is None and not clf.prototypes.requires_grad
    torch.testing.assert_close(clf.prototypes.norm(dim=-1), torch.ones(4, 10))


def test_update_matches_slow_reference_present_classes_and_correct_pixels_only():
    torch.manual_seed(0)
    clf = ProtoSegClassifier(8, 5, num_prototypes=3, momentum=0.9)
    gen = torch.Generator().manual_seed(4)
    emb = F.normalize(torch.randn(200, 8, generator=gen), dim=-1)
    target = torch.tensor([0, 2, 3])[torch.randint(0, 3, (200,), generator=gen)]
    assign = torch.randint(0, 3, (200,), generator=gen)
    correct = torch.rand(200, generator=gen) < 0.5
    correct[target == 3] = False  # class 3 is present but never classified correctly
    before = clf.prototypes.clone()
    clf.update_prototypes(emb, target, assign, correct)

    expected = before.clone()
    for k in range(5):
        for m in range(3):
            chosen = (target == k) & (assign == m) & correct
            if chosen.any():
                pulled = F.normalize(emb[chosen].sum(0), dim=0)
                expected[k, m] = F.normalize(0.9 * before[k, m] + 0.1 * pulled, dim=0)
    torch.testing.assert_close(clf.prototypes, expected)
    for k in (1, 3, 4):  # absent, or present without a correct pixel: bit for bit unchanged
        assert torch.equal(clf.prototypes[k], before[k])
    for k in (0, 2):
        assert not torch.equal(clf.prototypes[k], before[k])
    torch.testing.assert_close(clf.prototypes.norm(dim=-1), torch.ones(5, 3))


def test_forward_updates_only_present_classes_from_correct_pixels():
    torch.manual_seed(0)
    clf = ProtoSegClassifier(16, 4, dropout=0.0).train()
    feature = torch.randn(2, 16, 8, 8)
    labels = torch.full((2, 8, 8), 255)
    labels[0, :4] = 1
    labels[1, 4:] = 2
    # the class LayerNorm decides the prediction: everything is classified as class 1
    with torch.no_grad():
        clf.class_norm.weight.zero_()
        clf.class_norm.bias.zero_()
        clf.class_norm.bias[1] = 1.0
    before = clf.prototypes.clone()
    clf(feature, labels)
    changed = (clf.prototypes != before).any(dim=-1).any(dim=-1)
    assert changed.tolist() == [False, True, False, False]  # class 2's pixels are all wrong
    torch.testing.assert_close(clf.prototypes.norm(dim=-1), torch.ones(4, 10))


# ---------------------------------------------------------------- losses


def test_ppc_targets_index_the_class_prototype_pair_and_ppd_is_zero_on_prototypes(monkeypatch):
    # 30 classes x 10 prototypes: targets run past ignore_index = 255 and must not be dropped
    clf = ProtoSegClassifier(320, 30, dropout=0.0).train()
    clf.prototypes.copy_(orthonormal_prototypes(30, 10, 320))
    feature, labels, emb, slots = labelled_pixels_equal_to_prototypes(clf)
    monkeypatch.setattr(clf, "embed", lambda feature: emb)
    seen = {}

    def spy(similarity, target):
        seen["target"] = target.clone()
        return prototype_contrast_loss(similarity, target)

    monkeypatch.setattr(protoseg_module, "prototype_contrast_loss", spy)
    out = clf(feature, labels)
    assert torch.equal(seen["target"][:-2], slots)  # the pixel's own (class, prototype) pair
    assert seen["target"][-2:].tolist() == [IGNORE_TARGET] * 2
    assert 255 in seen["target"].tolist()
    assert float(out.losses["ppd"]) < 1e-10
    similarity = emb[:-2] @ clf.prototypes.flatten(0, 1).t()
    torch.testing.assert_close(out.losses["ppc"], 0.01 * F.cross_entropy(similarity, slots))


def test_ppc_target_is_the_sinkhorn_argmax_with_noise(monkeypatch):
    clf = ProtoSegClassifier(64, 3, num_prototypes=4, dropout=0.0).train()
    clf.prototypes.copy_(orthonormal_prototypes(3, 4, 64))
    feature, labels, emb, slots = labelled_pixels_equal_to_prototypes(clf, noise=0.05)
    own = (emb[:-2] @ clf.prototypes.flatten(0, 1).t()).view(-1, 3, 4)
    own = own[torch.arange(len(slots)), slots // 4]
    prototype, _ = clf.cluster(own, slots // 4)
    assert torch.equal(slots // 4 * 4 + prototype, slots)


def test_ppd_and_ppc_values():
    similarity = torch.tensor([[1.0, 0.2, -0.3], [0.1, 1.0, 0.0], [0.5, 0.5, 0.5]])
    target = torch.tensor([0, 1, IGNORE_TARGET])
    assert float(prototype_density_loss(similarity, target)) == 0.0
    torch.testing.assert_close(
        prototype_density_loss(similarity, torch.tensor([1, 1, IGNORE_TARGET])),
        torch.tensor(0.8**2 / 2),
    )
    torch.testing.assert_close(
        prototype_contrast_loss(similarity, target), F.cross_entropy(similarity[:2], target[:2])
    )
    none = torch.full((3,), IGNORE_TARGET)
    assert float(prototype_contrast_loss(similarity, none)) == 0.0
    assert float(prototype_density_loss(similarity, none)) == 0.0


def test_all_ignored_labels_give_finite_zero_prototype_losses():
    clf = ProtoSegClassifier(8, 3).train()
    feature = torch.randn(1, 8, 4, 4, requires_grad=True)
    before = clf.prototypes.clone()
    out = clf(feature, torch.full((1, 8, 8), 255))
    assert set(out.losses) == {"ce", "ppc", "ppd"}
    assert all(float(v) == 0.0 for v in out.losses.values())
    sum(out.losses.values()).backward()
    assert torch.equal(clf.prototypes, before)


def test_registered_and_parameters_validated():
    assert CLASSIFIERS["protoseg"] is ProtoSegClassifier
    clf = build_classifier("protoseg", 8, 3, 255, num_prototypes=2, hard_assignment="argmax")
    assert clf.prototypes.shape == (3, 2, 8)
    with pytest.raises(ValueError, match="hard_assignment"):
        ProtoSegClassifier(8, 3, hard_assignment="soft")
    with pytest.raises(ValueError, match="sinkhorn_epsilon"):
        ProtoSegClassifier(8, 3, sinkhorn_epsilon=0.0)


# ---------------------------------------------------------------- checkpoints


def test_state_dict_round_trip_restores_prototypes_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    clf = ProtoSegClassifier(16, 4).train()
    for _ in range(3):
        clf(torch.randn(2, 16, 8, 8), torch.randint(0, 4, (2, 8, 8)))
    state = clf.state_dict()
    assert "prototypes" in state

    torch.manual_seed(1)
    fresh = ProtoSegClassifier(16, 4)
    assert not torch.equal(fresh.prototypes, clf.prototypes)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.prototypes, clf.prototypes)

    path = tmp_path / "checkpoint.pt"
    torch.save({"model": clf.state_dict()}, path)
    resumed = ProtoSegClassifier(16, 4)
    resumed.load_state_dict(torch.load(path, weights_only=True)["model"])
    assert torch.equal(resumed.prototypes, clf.prototypes)
    buffer = io.BytesIO()
    torch.save(clf.state_dict(), buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=True)["prototypes"], clf.prototypes)


# ---------------------------------------------------------------- DDP


def _ddp_data(rank: int, clf: ProtoSegClassifier):
    """Rank-specific features, labelled with the model's own prediction (all pixels correct,
    so every class present on a rank updates), plus a band of ignored pixels."""
    gen = torch.Generator().manual_seed(100 + rank)
    feature = torch.randn(2, 16, 8, 8, generator=gen)
    with torch.no_grad():
        labels = clf.eval()(feature).logits.argmax(1)
    clf.train()
    labels[:, :, :2] = 255
    return feature, labels


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        torch.manual_seed(0)
        clf = ProtoSegClassifier(16, 6, dropout=0.0, hard_assignment="argmax")
        model = DistributedDataParallel(clf)
        feature, labels = _ddp_data(rank, clf)
        out = model(feature, labels)
        sum(out.losses.values()).backward()
        torch.save(clf.prototypes, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_ranks_hold_identical_averaged_prototypes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert torch.equal(ranks[0], ranks[1])

    # what each rank would hold on its own, then their average, re-normalised where updated
    local = []
    for rank in range(2):
        torch.manual_seed(0)
        clf = ProtoSegClassifier(16, 6, dropout=0.0, hard_assignment="argmax")
        initial = clf.prototypes.clone()
        clf(*_ddp_data(rank, clf))
        local.append(clf.prototypes.clone())
    assert not torch.equal(local[0], local[1])  # the ranks saw different data
    updated = (local[0] != initial).any(-1) | (local[1] != initial).any(-1)
    mean = (local[0] + local[1]) / 2
    expected = torch.where(updated[..., None], F.normalize(mean, dim=-1), mean)
    torch.testing.assert_close(ranks[0], expected)
    torch.testing.assert_close(ranks[0].norm(dim=-1), torch.ones(6, 10))


# ---------------------------------------------------------------- the whole model


def test_segformer_b0_with_protoseg_trains_and_predicts():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ssaseg.models.zoo import build_segmentor

    torch.manual_seed(0)
    model = build_segmentor("segformer_b0", "protoseg", 10).train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 10, (2, 64, 64))
    labels[:, :8] = 255
    before = model.classifier.prototypes.clone()
    out = model(images, labels)
    assert set(out.losses) == {"ce", "ppc", "ppd"}
    assert all(bool(torch.isfinite(v)) for v in out.losses.values())
    out.total_loss.backward()
    assert model.backbone.model.patch_embed.proj.weight.grad is not None
    assert model.classifier.projection[0].weight.grad is not None
    assert model.classifier.prototypes.grad is None
    assert not torch.equal(model.classifier.prototypes, before)
    model.eval()
    assert model.predict(images).shape == (2, 10, 64, 64)
