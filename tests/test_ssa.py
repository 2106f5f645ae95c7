"""SSA classifier: every loss term against a slow loop-by-loop re-computation, gradient flow,
eval behaviour, edge cases and ablation switches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssaseg.models.boundary import label_boundaries
from ssaseg.models.classifiers import CLASSIFIERS, build_classifier
from ssaseg.models.classifiers.class_centers import (
    batch_class_means,
    image_class_means,
    soft_class_means,
    weighted_pixel_sums,
)
from ssaseg.models.classifiers.ssa import SSAClassifier
from ssaseg.models.dice import dice_loss
from ssaseg.models.distillation import (
    relation_distillation_loss,
    response_distillation_loss,
    soft_cross_entropy,
)

IGNORE = 255
LOSS_NAMES = {
    "ce", "coarse_ce", "teacher_ce", "response_distill", "dice", "teacher_dice",
    "semantic_distill", "spatial_distill",
}


# ----------------------------------------------------------------------------- inputs


def random_labels(batch, height, width, num_classes, present, seed=0, ignore_share=0.15):
    """Labels drawn from the class ids in ``present`` (others absent), in blocks so that there
    are interiors and boundaries, with a share of ignored pixels."""
    gen = torch.Generator().manual_seed(seed)
    present = torch.as_tensor(present)
    coarse = present[torch.randint(len(present), (batch, max(height // 4, 1), max(width // 4, 1)),
                                   generator=gen)]
    labels = F.interpolate(coarse[:, None].float(), size=(height, width), mode="nearest")[:, 0]
    labels = labels.long()
    labels[torch.rand(labels.shape, generator=gen) < ignore_share] = IGNORE
    return labels


def make_classifier(channels=16, num_classes=7, seed=0, **kwargs):
    torch.manual_seed(seed)
    clf = SSAClassifier(channels, num_classes, dropout=0.0, **kwargs)
    # non-trivial biases and coarse weights so that every path carries signal
    with torch.no_grad():
        clf.coarse.conv.weight.normal_(0, 0.3)
        clf.coarse.conv.bias.normal_(0, 0.1)
    return clf


def nearest_indices(out_size, in_size):
    """Source index of each output index under PyTorch's 'nearest' resize."""
    return (torch.arange(out_size, dtype=torch.float32) * (in_size / out_size)).floor().long()


# ----------------------------------------------------------------------- slow references


def slow_boundary(labels, width, margin):
    batch, height, wid = labels.shape
    edge = torch.zeros(labels.shape, dtype=torch.bool)
    for b in range(batch):
        for i in range(height):
            for j in range(wid):
                if i < margin or j < margin or i >= height - margin or j >= wid - margin:
                    continue
                right = j + 1 < wid and labels[b, i, j] != labels[b, i, j + 1]
                down = i + 1 < height and labels[b, i, j] != labels[b, i + 1, j]
                edge[b, i, j] = bool(right or down)
    out = torch.zeros_like(edge)
    lo, hi = -(width // 2), (width - 1) // 2
    for b in range(batch):
        for i in range(height):
            for j in range(wid):
                for di in range(lo, hi + 1):
                    for dj in range(lo, hi + 1):
                        y, x = i + di, j + dj
                        if 0 <= y < height and 0 <= x < wid and edge[b, y, x]:
                            out[b, i, j] = True
    return out


def slow_batch_means(values, labels, num_classes, fallback):
    batch, channels = values.shape[:2]
    out = []
    for k in range(num_classes):
        acc, count = torch.zeros(channels), 0
        for b in range(batch):
            for i in range(labels.shape[1]):
                for j in range(labels.shape[2]):
                    if labels[b, i, j] == k:
                        acc = acc + values[b, :, i, j]
                        count += 1
        out.append(acc / count if count else fallback[k])
    return torch.stack(out)


def slow_image_means(values, labels, num_classes, fallback):
    return torch.stack([
        slow_batch_means(values[b : b + 1], labels[b : b + 1], num_classes, fallback)
        for b in range(values.shape[0])
    ])


def slow_response_distill(student, teacher, labels, boundary, smoothing):
    batch, num_classes, height, width = student.shape
    log_p = F.log_softmax(student, 1)
    q = F.softmax(teacher, 1)
    onehot = torch.zeros_like(student)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                if labels[b, i, j] != IGNORE:
                    onehot[b, labels[b, i, j], i, j] = 1.0
    per_pixel = -(log_p * (smoothing * q + (1 - smoothing) * onehot)).sum(1)
    entropy = -(q * torch.log(q + 1e-12)).sum(1) * (labels != IGNORE)
    class_losses = []
    for k in range(num_classes):
        mask = labels == k
        if not mask.any():
            continue
        w_edge = entropy * mask * boundary
        w_inner = entropy * mask * ~boundary
        on_edge = (per_pixel * w_edge).sum() / (w_edge.sum() + 1e-12)
        inner = (per_pixel * w_inner).sum() / (w_inner.sum() + 1e-12)
        class_losses.append((on_edge + inner) / 2)
    return sum(class_losses) / len(class_losses) if class_losses else torch.tensor(0.0)


def slow_dice(logits, labels, smooth=1.0):
    batch, num_classes = logits.shape[:2]
    total, pairs = 0.0, 0
    for b in range(batch):
        for k in range(num_classes):
            target = (labels[b] == k).float()
            if target.sum() == 0:
                continue
            p = logits[b, k].sigmoid()
            ratio = (2 * (p * target).sum() + smooth) / (p.sum() + target.sum() + smooth)
            total = total + 1 - ratio
            pairs += 1
    return total / max(pairs, 1) if pairs else torch.tensor(0.0)


def slow_relation(student, teacher, temperature):
    batch, num_classes = student.shape[:2]
    if teacher.dim() == 2:
        teacher = teacher.expand(batch, -1, -1)

    def relation(protos, b, i):
        row = torch.stack([
            temperature * torch.dot(protos[b, i], protos[b, j])
            / ((protos[b, i].norm() + 1e-12) * (protos[b, j].norm() + 1e-12))
            for j in range(num_classes)
        ])
        return row.softmax(0)

    total = 0.0
    for b in range(batch):
        for i in range(num_classes):
            excess = F.relu(relation(student, b, i) - relation(teacher, b, i))
            total = total + excess.sum() - excess[i]
    return total / (batch * num_classes)


def slow_soft_ce(student, teacher):
    rows = student.reshape(-1, student.shape[-1])
    targets = teacher.reshape(-1, teacher.shape[-1])
    values = [-(targets[r].softmax(0) * rows[r].log_softmax(0)).sum() for r in range(len(rows))]
    return sum(values) / len(values)


def slow_cosine_logits(pixels, centers, scale):
    """pixels (C, h, w), centers (K, C), one image, pixel by pixel."""
    _, height, width = pixels.shape
    out = torch.zeros(centers.shape[0], height, width, dtype=pixels.dtype)
    c_norm = centers / (centers.norm(dim=1, keepdim=True) + 1e-12)
    for i in range(height):
        for j in range(width):
            v = pixels[:, i, j]
            out[:, i, j] = scale * (c_norm @ v) / (v.norm() + 1e-12)
    return out


def slow_forward(clf: SSAClassifier, feature, labels):
    """The whole classifier, image by image and class by class, as DESIGN.md describes it."""
    batch, channels, height, width = feature.shape
    num_classes = clf.num_classes
    weight = clf.coarse.conv.weight[:, :, 0, 0]
    coarse = torch.einsum("kc,bchw->bkhw", weight, feature) + clf.coarse.conv.bias[:, None, None]
    position = F.conv2d(feature, clf.position_conv.weight, clf.position_conv.bias, padding=1,
                        groups=channels)
    basis = clf.position_basis
    rows = nearest_indices(height, labels.shape[1])
    cols = nearest_indices(width, labels.shape[2])
    small = labels[:, rows][:, :, cols]
    gt_sem_centers = slow_batch_means(feature, small, num_classes, weight.detach())
    gt_sem = clf.teacher_sem_mlp(torch.cat([gt_sem_centers, weight], -1))
    gt_pos_centers = slow_image_means(position, small, num_classes, basis.detach())
    logits, teacher_logits, sems, poses, gt_poses = [], [], [], [], []
    for b in range(batch):
        m = coarse[b].reshape(num_classes, -1)
        f = feature[b].reshape(channels, -1)
        p = position[b].reshape(channels, -1)
        pos = clf.pos_mlp(torch.cat([basis, m.softmax(1) @ p.T], -1))
        a_c = m.softmax(0)
        sem = clf.sem_mlp(torch.cat([(a_c @ f.T) / (a_c.sum(1, keepdim=True) + 1e-12), weight], -1))
        pixels = feature[b] + position[b]
        logits.append(slow_cosine_logits(pixels, clf.center_proj(sem + pos), 15.0))
        gt_pos = clf.teacher_pos_mlp(torch.cat([gt_pos_centers[b], basis], -1))
        teacher_logits.append(
            slow_cosine_logits(pixels, clf.teacher_center_proj(gt_sem + gt_pos), 15.0)
        )
        sems.append(sem)
        poses.append(pos)
        gt_poses.append(gt_pos)
    logits, teacher_logits = torch.stack(logits), torch.stack(teacher_logits)
    size = labels.shape[-2:]
    up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    up_t = F.interpolate(teacher_logits, size=size, mode="bilinear", align_corners=False)
    up_c = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    boundary = slow_boundary(small, clf.boundary_width, clf.boundary_margin)
    w = clf.weights
    losses = {
        "ce": w["ce"] * F.cross_entropy(up, labels, ignore_index=IGNORE),
        "coarse_ce": w["coarse_ce"] * F.cross_entropy(up_c, labels, ignore_index=IGNORE),
        "teacher_ce": w["teacher_ce"] * F.cross_entropy(up_t, labels, ignore_index=IGNORE),
        "response_distill": w["response_distill"] * slow_response_distill(
            logits, teacher_logits.detach(), small, boundary, clf.distill_smoothing),
        "dice": w["dice"] * slow_dice(up, labels),
        "teacher_dice": w["teacher_dice"] * slow_dice(up_t, labels),
        "semantic_distill": w["semantic_distill"] * slow_relation(
            torch.stack(sems), gt_sem.detach(), 15.0),
        "spatial_distill": w["spatial_distill"] * slow_soft_ce(
            torch.stack(poses), torch.stack(gt_poses).detach()),
    }
    return logits, losses


# ------------------------------------------------------------------ helper-level checks


@pytest.mark.parametrize("width,margin", [(1, 0), (2, 0), (3, 6), (4, 1), (5, 2)])
def test_boundaries_match_loop(width, margin):
    labels = random_labels(2, 15, 18, 5, [0, 2, 3], seed=width, ignore_share=0.05)
    expected = slow_boundary(labels, width, margin)
    assert torch.equal(label_boundaries(labels, width, margin), expected)


def test_boundary_of_a_step_is_width_wide():
    labels = torch.zeros(1, 20, 20, dtype=torch.long)
    labels[:, :, 10:] = 1
    band = label_boundaries(labels, width=3, margin=0)
    assert band[0, 5].nonzero().flatten().tolist() == [8, 9, 10]
    assert not label_boundaries(torch.zeros(1, 8, 8, dtype=torch.long), 3, 0).any()


def test_class_means_match_loop_with_absent_classes_and_ignore():
    values = torch.randn(3, 4, 5, 6)
    labels = random_labels(3, 5, 6, 6, [1, 4, 5], seed=1, ignore_share=0.3)
    labels[2] = IGNORE  # an image without any labelled pixel
    fallback = torch.randn(6, 4)
    assert torch.allclose(batch_class_means(values, labels, 6, IGNORE, fallback),
                          slow_batch_means(values, labels, 6, fallback), atol=1e-6)
    assert torch.allclose(image_class_means(values, labels, 6, IGNORE, fallback),
                          slow_image_means(values, labels, 6, fallback), atol=1e-6)


def test_soft_class_means_match_loop():
    values, weights = torch.randn(2, 4, 10), torch.rand(2, 3, 10)
    got = soft_class_means(values, weights)
    for b in range(2):
        for k in range(3):
            expected = (weights[b, k] * values[b]).sum(1) / (weights[b, k].sum() + 1e-12)
            assert torch.allclose(got[b, k], expected, atol=1e-6)


def test_weighted_pixel_sums_gradients_and_layout():
    """The hand-written backward against autograd on an einsum; gradients in NCHW layout; under
    autocast the product runs in bf16 and the gradients come back in the inputs' dtypes."""
    gen = torch.Generator().manual_seed(0)
    weights = torch.rand(2, 3, 10, dtype=torch.float64, generator=gen).requires_grad_()
    values = torch.randn(2, 4, 10, dtype=torch.float64, generator=gen).requires_grad_()
    assert torch.autograd.gradcheck(weighted_pixel_sums, (weights, values))
    got = weighted_pixel_sums(weights, values)
    torch.testing.assert_close(got, torch.einsum("bkp,bcp->bkc", weights, values))
    g_weights, g_values = torch.autograd.grad(got.square().sum(), [weights, values])
    assert g_values.is_contiguous() and g_weights.is_contiguous()

    weights32, values32 = (t.detach().float().requires_grad_() for t in (weights, values))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = weighted_pixel_sums(weights32, values32)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().sum(), [weights32, values32])
    want = torch.autograd.grad(weighted_pixel_sums(weights32, values32).sum(),
                               [weights32, values32])
    for g, w in zip(grads, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=0.05, rtol=0.02)


def test_dice_matches_loop():
    logits = torch.randn(3, 6, 9, 7)
    labels = random_labels(3, 9, 7, 6, [0, 2, 5], seed=2)
    labels[1] = IGNORE
    assert torch.allclose(dice_loss(logits, labels, IGNORE), slow_dice(logits, labels), atol=1e-6)


def test_response_distillation_matches_loop():
    student, teacher = torch.randn(2, 6, 14, 15), 3 * torch.randn(2, 6, 14, 15)
    labels = random_labels(2, 14, 15, 6, [0, 1, 3, 4], seed=3)
    boundary = slow_boundary(labels, 3, 2)
    got = response_distillation_loss(student, teacher, labels, boundary, IGNORE, 0.5)
    expected = slow_response_distill(student, teacher, labels, boundary, 0.5)
    assert torch.allclose(got, expected, atol=1e-5)
    # a class whose pixels are all interior contributes (0 + interior) / 2, as in the reference
    got0 = response_distillation_loss(student, teacher, labels, torch.zeros_like(boundary),
                                      IGNORE, 0.3)
    expected0 = slow_response_distill(student, teacher, labels, torch.zeros_like(boundary), 0.3)
    assert torch.allclose(got0, expected0, atol=1e-5)


@pytest.mark.parametrize("teacher_batched", [False, True])
def test_relation_distillation_matches_loop(teacher_batched):
    student = torch.randn(2, 5, 8)
    teacher = torch.randn(2, 5, 8) if teacher_batched else torch.randn(5, 8)
    got = relation_distillation_loss(student, teacher, 15.0)
    assert torch.allclose(got, slow_relation(student, teacher, 15.0), atol=1e-5)


def test_soft_cross_entropy_matches_loop():
    student, teacher = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    assert torch.allclose(soft_cross_entropy(student, teacher), slow_soft_ce(student, teacher),
                          atol=1e-6)


# ------------------------------------------------------------------ the whole classifier


@pytest.mark.parametrize("feature_size,label_size", [((6, 9), (24, 36)), ((7, 5), (25, 19))])
def test_every_loss_term_matches_slow_recomputation(feature_size, label_size):
    clf = make_classifier(boundary_margin=1).train()
    feature = torch.randn(3, 16, *feature_size)
    labels = random_labels(3, *label_size, 7, [0, 2, 3, 6], seed=4)  # 1, 4, 5 absent
    labels[2, :, : label_size[1] // 2] = 4 if feature_size == (7, 5) else IGNORE
    out = clf(feature, labels)
    logits, expected = slow_forward(clf, feature, labels)
    assert set(out.losses) == LOSS_NAMES
    assert torch.allclose(out.logits, logits, atol=1e-4)
    for name, value in expected.items():
        assert value.ndim == 0 or value.numel() == 1
        assert torch.allclose(out.losses[name], value, rtol=1e-4, atol=1e-5), name


def test_losses_are_weighted_by_their_parameters():
    feature = torch.randn(2, 16, 8, 8)
    labels = random_labels(2, 32, 32, 7, [0, 1, 2], seed=5)
    base = make_classifier().train()(feature, labels).losses
    weights = {f"{name}_weight": 0.5 + i for i, name in enumerate(sorted(LOSS_NAMES))}
    scaled = make_classifier(**weights).train()(feature, labels).losses
    for i, name in enumerate(sorted(LOSS_NAMES)):
        ratio = 0.5 + i
        default = {"semantic_distill": 10.0, "spatial_distill": 0.4}.get(name, 1.0)
        assert torch.allclose(scaled[name], base[name] * ratio / default, rtol=1e-5), name


# ------------------------------------------------------------------------------ gradients


def grads(loss, params):
    got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [0.0 if g is None else float(g.abs().sum()) for g in got]


def groups(clf):
    return {
        "student": list(clf.sem_mlp.parameters()) + list(clf.pos_mlp.parameters())
        + list(clf.center_proj.parameters()),
        "teacher": list(clf.teacher_sem_mlp.parameters()) + list(clf.teacher_pos_mlp.parameters())
        + list(clf.teacher_center_proj.parameters()),
        "sem_mlp": list(clf.sem_mlp.parameters()),
        "pos_mlp": list(clf.pos_mlp.parameters()),
        "center_proj": list(clf.center_proj.parameters()),
        "position": [clf.position_basis, *clf.position_conv.parameters()],
        "coarse": list(clf.coarse.parameters()),
    }


def test_gradient_flow_per_term():
    clf = make_classifier().train()
    feature = torch.randn(2, 16, 8, 10, requires_grad=True)
    labels = random_labels(2, 32, 40, 7, [0, 1, 3, 5], seed=6)
    losses = clf(feature, labels).losses
    g = groups(clf)
    # distillation terms never reach the teacher (its outputs are detached targets)
    for name in ("response_distill", "semantic_distill", "spatial_distill"):
        assert sum(grads(losses[name], g["teacher"])) == 0.0, name
    # student terms: every student module is trained by ce, dice and response distillation
    for name in ("ce", "dice", "response_distill"):
        for part in ("sem_mlp", "pos_mlp", "center_proj", "position", "coarse"):
            assert all(v > 0 for v in grads(losses[name], g[part])), (name, part)
        assert grads(losses[name], [feature])[0] > 0
    assert all(v > 0 for v in grads(losses["semantic_distill"], g["sem_mlp"]))
    assert sum(grads(losses["semantic_distill"], g["pos_mlp"] + g["center_proj"])) == 0.0
    assert all(v > 0 for v in grads(losses["spatial_distill"], g["pos_mlp"]))
    assert all(v > 0 for v in grads(losses["spatial_distill"], g["position"]))
    assert sum(grads(losses["spatial_distill"], g["sem_mlp"] + g["center_proj"])) == 0.0
    # the coarse CE trains the linear classifier only; teacher terms train the teacher only
    assert sum(grads(losses["coarse_ce"], g["student"] + g["teacher"] + g["position"])) == 0.0
    assert all(v > 0 for v in grads(losses["coarse_ce"], g["coarse"]))
    for name in ("teacher_ce", "teacher_dice"):
        assert all(v > 0 for v in grads(losses[name], g["teacher"])), name
        assert sum(grads(losses[name], g["student"])) == 0.0, name
    total = sum(losses.values())
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in clf.parameters())


def capture_inputs(module):
    captured = []
    handle = module.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    return captured, handle


def test_absent_class_fallbacks_pass_no_gradient_to_weight_or_basis():
    clf = make_classifier().train()
    feature = torch.randn(2, 16, 8, 8, requires_grad=True)
    labels = random_labels(2, 32, 32, 7, [0, 2], seed=7)
    labels[1] = 0  # class 2 only in image 0
    sem_in, h1 = capture_inputs(clf.teacher_sem_mlp)
    pos_in, h2 = capture_inputs(clf.teacher_pos_mlp)
    clf(feature, labels)
    h1.remove()
    h2.remove()
    (sem_in,), (pos_in,) = sem_in, pos_in  # (K, 2C), (B, K, 2C)
    weight, basis, c = clf.coarse.conv.weight, clf.position_basis, 16
    absent, present = [1, 3, 4, 5, 6], [0, 2]
    # centre halves: absent rows are the detached copies, present rows come from the feature
    assert torch.equal(sem_in[absent, :c], weight[absent, :, 0, 0].detach())
    assert grads(sem_in[absent, :c].sum(), [weight, feature]) == [0.0, 0.0]
    assert grads(sem_in[present, :c].sum(), [weight])[0] == 0.0
    assert grads(sem_in[present, :c].sum(), [feature])[0] > 0
    assert grads(pos_in[1, 2, :c].sum(), [basis])[0] == 0.0  # class 2 absent from image 1
    assert torch.equal(pos_in[1, 2, :c], basis[2].detach())
    # the other halves are the live W and E, trained through the teacher
    assert grads(sem_in[:, c:].sum(), [weight])[0] > 0
    assert grads(pos_in[..., c:].sum(), [basis])[0] > 0


# ------------------------------------------------------------------ inference behaviour


def test_eval_output_is_student_logits_and_ignores_labels():
    clf = make_classifier()
    feature = torch.randn(2, 16, 6, 7)
    labels = random_labels(2, 24, 28, 7, [0, 1], seed=8)
    train_out = clf.train()(feature, labels)
    train_no_labels = clf(feature)
    clf.eval()
    with_labels, without = clf(feature, labels), clf(feature)
    other = clf(feature, random_labels(2, 24, 28, 7, [3, 4], seed=9))
    assert with_labels.losses == {} and without.losses == {} and train_no_labels.losses == {}
    assert torch.equal(with_labels.logits, without.logits)
    assert torch.equal(other.logits, without.logits)
    assert torch.allclose(train_out.logits, without.logits, atol=1e-6)
    assert torch.allclose(train_no_labels.logits, without.logits, atol=1e-6)


def test_no_grad_inference_path_gives_the_same_logits():
    clf = make_classifier().eval()
    feature = torch.randn(2, 16, 6, 7)
    expected = clf(feature).logits
    with torch.no_grad():
        assert torch.allclose(clf(feature).logits, expected, atol=1e-6)
    with torch.inference_mode():
        assert torch.allclose(clf(feature).logits, expected, atol=1e-6)
        assert torch.allclose(clf.train()(feature).logits, expected, atol=1e-6)
    assert torch.equal(feature, feature.clone())  # the input is never written to


def test_teacher_parameters_unused_at_inference():
    clf = make_classifier().eval()
    clf(torch.randn(1, 16, 5, 5)).logits.sum().backward()
    teacher = groups(clf)["teacher"]
    assert all(p.grad is None for p in teacher)
    assert all(p.grad is not None for p in groups(clf)["student"])


# ------------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize(
    "batch,num_classes,feature_size,label_size",
    [(1, 7, (5, 5), (20, 20)), (2, 150, (6, 4), (24, 16)), (2, 7, (3, 11), (13, 45))],
)
def test_shapes_and_finite_losses(batch, num_classes, feature_size, label_size):
    clf = make_classifier(num_classes=num_classes).train()
    feature = torch.randn(batch, 16, *feature_size, requires_grad=True)
    labels = random_labels(batch, *label_size, num_classes, [0, num_classes - 1], seed=10)
    out = clf(feature, labels)
    assert out.logits.shape == (batch, num_classes, *feature_size)
    total = sum(out.losses.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(feature.grad).all()


def test_all_ignore_batch_gives_finite_losses():
    clf = make_classifier().train()
    feature = torch.randn(2, 16, 6, 6, requires_grad=True)
    labels = torch.full((2, 24, 24), IGNORE)
    out = clf(feature, labels)
    assert set(out.losses) == LOSS_NAMES
    for name, value in out.losses.items():
        assert torch.isfinite(value), name
    for name in ("ce", "coarse_ce", "teacher_ce", "response_distill", "dice", "teacher_dice"):
        assert out.losses[name].item() == 0.0, name
    sum(out.losses.values()).backward()
    assert torch.isfinite(feature.grad).all()


def test_losses_are_fp32_under_autocast():
    clf = make_classifier().train()
    feature = torch.randn(2, 16, 6, 6)
    labels = random_labels(2, 24, 24, 7, [0, 1, 2], seed=11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = clf(feature, labels)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.losses.values())
    reference = clf(feature, labels).losses
    for name in ("ce", "coarse_ce", "teacher_ce", "dice", "teacher_dice"):
        assert math.isclose(out.losses[name].item(), reference[name].item(), rel_tol=0.1), name
    sum(out.losses.values()).backward()


# -------------------------------------------------------------------------------- ablations


def param_names(clf):
    return {name for name, _ in clf.named_parameters()}


def test_without_sppa_no_position_parameters_exist():
    full, clf = make_classifier(), make_classifier(use_sppa=False)
    assert not any("pos" in n for n in param_names(clf))
    assert not any("pos" in n for n in clf.state_dict())
    assert any("position" in n for n in param_names(full))
    feature = torch.randn(2, 16, 6, 6)
    labels = random_labels(2, 24, 24, 7, [0, 1, 2], seed=12)
    out = clf.train()(feature, labels)
    assert set(out.losses) == LOSS_NAMES - {"spatial_distill"}
    # student = t * cos(F, center_proj(sem)): no position feature anywhere
    clf.eval()
    weight = clf.coarse.conv.weight[:, :, 0, 0]
    m = clf.coarse.conv(feature).flatten(2)
    sem = clf.sem_mlp(torch.cat([soft_class_means(feature.flatten(2), m.softmax(1)),
                                 weight.expand(2, -1, -1)], -1))
    expected = torch.stack([slow_cosine_logits(feature[b], clf.center_proj(sem[b]), 15.0)
                            for b in range(2)])
    assert torch.allclose(clf(feature).logits, expected, atol=1e-4)


def test_without_sepa_semantic_prototypes_are_the_linear_weights():
    clf = make_classifier(use_sepa=False)
    assert not any("sem" in n for n in param_names(clf))
    feature = torch.randn(2, 16, 6, 6)
    labels = random_labels(2, 24, 24, 7, [0, 1, 2], seed=13)
    assert set(clf.train()(feature, labels).losses) == LOSS_NAMES - {"semantic_distill"}
    with pytest.raises(ValueError, match="use_sepa"):
        SSAClassifier(16, 7, use_sepa=False, use_sppa=False)


@pytest.mark.parametrize("switch,name", [
    ("response_distill", "response_distill"),
    ("semantic_distill", "semantic_distill"),
    ("spatial_distill", "spatial_distill"),
])
def test_distillation_switches_drop_exactly_their_term(switch, name):
    feature = torch.randn(2, 16, 6, 6)
    labels = random_labels(2, 24, 24, 7, [0, 1, 2], seed=14)
    full = make_classifier().train()(feature, labels)
    ablated = make_classifier(**{switch: False}).train()(feature, labels)
    assert set(ablated.losses) == LOSS_NAMES - {name}
    for key, value in ablated.losses.items():
        assert torch.allclose(value, full.losses[key]), key
    assert torch.allclose(ablated.logits, full.logits)


@pytest.mark.parametrize("kind", ["random", "learned"])
def test_position_basis_without_adaptation(kind):
    clf = make_classifier(position_basis=kind)
    names = param_names(clf)
    assert not any("pos_mlp" in n for n in names)
    assert ("position_basis" in names) == (kind == "learned")
    assert "position_basis" in clf.state_dict()
    feature = torch.randn(2, 16, 6, 6)
    labels = random_labels(2, 24, 24, 7, [0, 1, 2], seed=15)
    out = clf.train()(feature, labels)
    assert set(out.losses) == LOSS_NAMES - {"spatial_distill"}
    before = clf.position_basis.detach().clone()
    sum(out.losses.values()).backward()
    torch.optim.SGD(clf.parameters(), lr=1.0).step()
    assert torch.equal(clf.position_basis, before) == (kind == "random")


def test_self_distillation_teacher_sees_coarse_mask_not_labels():
    feature = torch.randn(2, 16, 6, 6)
    labels_a = random_labels(2, 24, 24, 7, [0, 1, 2], seed=16)
    labels_b = random_labels(2, 24, 24, 7, [3, 4], seed=17)
    for mode, same in (("coarse_mask", True), ("labels", False)):
        clf = make_classifier(teacher_input=mode).train()
        captured, handle = capture_inputs(clf.teacher_sem_mlp)
        clf(feature, labels_a)
        clf(feature, labels_b)
        handle.remove()
        assert torch.equal(captured[0], captured[1]) == same, mode
    clf = make_classifier(teacher_input="coarse_mask").train()
    captured, handle = capture_inputs(clf.teacher_sem_mlp)
    clf(feature, labels_a)
    handle.remove()
    guide = clf.coarse.conv(feature).argmax(1)
    expected = batch_class_means(feature, guide, 7, IGNORE, clf.coarse.conv.weight[:, :, 0, 0])
    assert torch.allclose(captured[0][:, :16], expected, atol=1e-5)


def test_presets_and_validation():
    code = SSAClassifier(16, 7)
    assert code.weights["semantic_distill"] == 10.0 and code.weights["spatial_distill"] == 0.4
    assert code.boundary_width == 3 and code.boundary_margin == 6
    paper = SSAClassifier(16, 7, preset="paper")
    assert paper.weights["semantic_distill"] == 1.0 and paper.weights["spatial_distill"] == 1.0
    assert paper.boundary_width == 4
    assert SSAClassifier(16, 7, preset="paper", boundary_width=5).boundary_width == 5
    for key, value in (("preset", "nope"), ("position_basis", "x"), ("teacher_input", "x"),
                       ("boundary_width", 0), ("distill_smoothing", 2.0)):
        with pytest.raises(ValueError, match=key):
            SSAClassifier(16, 7, **{key: value})


# -------------------------------------------------------------------------- integration


def test_registered_and_built_by_name():
    assert CLASSIFIERS["ssa"] is SSAClassifier
    clf = build_classifier("ssa", 16, 5, IGNORE, preset="paper", use_sppa=False)
    assert isinstance(clf, SSAClassifier) and clf.boundary_width == 4 and not clf.use_sppa


def test_segformer_b0_with_ssa_forward_backward(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from ssaseg.models.zoo import build_segmentor

    torch.manual_seed(0)
    model = build_segmentor("segformer_b0", "ssa", 10).train()
    images = torch.randn(2, 3, 64, 64)
    labels = random_labels(2, 64, 64, 10, [0, 3, 9], seed=18)
    out = model(images, labels)
    assert LOSS_NAMES <= set(out.losses)
    out.total_loss.backward()
    assert torch.isfinite(out.total_loss)
    assert model.backbone.model.patch_embed.proj.weight.grad.abs().sum() > 0
    model.eval()
    assert model.predict(images).shape == (2, 10, 64, 64)


def test_inference_parameters_are_exactly_what_eval_uses():
    """Every parameter outside inference_parameters() is the teacher's: eval never touches it."""
    clf = SSAClassifier(16, 5).eval()
    used = {id(p) for p in clf.inference_parameters()}
    assert used and all(not n.startswith("teacher_") for n, p in clf.named_parameters()
                        if id(p) in used)
    feature = torch.randn(2, 16, 6, 7)
    before = clf(feature).logits
    with torch.no_grad():
        for name, p in clf.named_parameters():
            if id(p) not in used:
                p.add_(1.0)  # perturbing the teacher must not change inference
    torch.testing.assert_close(clf(feature).logits, before)
    with torch.no_grad():
        clf.center_proj.weight.add_(1.0)  # perturbing the student must
    assert not torch.allclose(clf(feature).logits, before)
