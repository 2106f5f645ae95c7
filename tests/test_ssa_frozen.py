"""SSA's training outputs frozen: every loss term and every gradient (each term's and the total's,
w.r.t. each classifier parameter and the input feature) must stay what the implementation gave
when the fixture was recorded (commit 4475d4b, before the training path was optimised), to 1e-5.

The fixture ``tests/fixtures/ssa_frozen.pt`` holds the inputs (feature, labels, the classifier's
state) and the outputs; it is loaded with ``weights_only=True``. It was written by
``python -m tests.test_ssa_frozen --write`` and must not be rewritten to make this test pass: a
change of any figure is a change of SSA's results.

The logits are not stored (file size); every loss term depends on them.

Inputs: 2 images, 19 classes, C = 8 channels, 16 x 16 feature maps, 64 x 64 labels in 4 x 4
blocks with ignored pixels, classes absent from the batch and from one image, a half-ignored
image, dropout 0.1 drawn from a fixed seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from ssaseg.models.classifiers.ssa import SSAClassifier

FIXTURE = Path(__file__).with_name("fixtures") / "ssa_frozen.pt"
CLASSES, CHANNELS, FEATURE, LABEL = 19, 8, 16, 64
DROPOUT_SEED = 3
IGNORE = 255


def frozen_inputs() -> dict[str, torch.Tensor | dict]:
    """Seeded inputs and classifier state (what the fixture stores)."""
    gen = torch.Generator().manual_seed(0)
    feature = torch.randn(2, CHANNELS, FEATURE, FEATURE, generator=gen)
    present = torch.tensor([0, 1, 2, 4, 5, 7, 9, 12, 15, 18])  # 3, 6, 8, ... absent
    cells = present[torch.randint(len(present), (2, LABEL // 4, LABEL // 4), generator=gen)]
    labels = F.interpolate(cells[:, None].float(), size=(LABEL, LABEL), mode="nearest")[:, 0]
    labels = labels.long()
    labels[torch.rand(labels.shape, generator=gen) < 0.1] = IGNORE
    labels[1, :, : LABEL // 2] = IGNORE  # image 1: half ignored
    labels[1][labels[1] == 2] = 4  # class 2 absent from image 1 only
    torch.manual_seed(1)
    clf = SSAClassifier(CHANNELS, CLASSES)
    with torch.no_grad():  # non-trivial coarse mask so that every path carries signal
        clf.coarse.conv.weight.normal_(0, 0.3)
        clf.coarse.conv.bias.normal_(0, 0.1)
    return {"feature": feature, "labels": labels.to(torch.uint8), "state": clf.state_dict()}


def frozen_outputs(inputs: dict) -> dict[str, torch.Tensor | dict]:
    """Losses and gradients of the CURRENT ssa.py on ``inputs``."""
    clf = SSAClassifier(CHANNELS, CLASSES).train()
    clf.load_state_dict(inputs["state"])
    feature = inputs["feature"].clone().requires_grad_(True)
    labels = inputs["labels"].long()
    torch.manual_seed(DROPOUT_SEED)
    out = clf(feature, labels)
    names = [name for name, _ in clf.named_parameters()]
    params = [p for _, p in clf.named_parameters()]
    losses = dict(out.losses)
    losses["total"] = sum(out.losses.values())
    result = {"losses": {k: v.detach() for k, v in losses.items()}, "grads": {}}
    for term, value in losses.items():
        got = torch.autograd.grad(value, [feature, *params], retain_graph=True, allow_unused=True)
        result["grads"][term] = {
            name: torch.zeros_like(ref) if g is None else g.detach()
            for name, g, ref in zip(["feature", *names], got, [feature, *params])
        }
    return result


def test_losses_and_gradients_equal_the_frozen_fixture():
    frozen = torch.load(FIXTURE, weights_only=True)
    now = frozen_outputs(frozen["inputs"])
    assert set(now["losses"]) == set(frozen["losses"])
    for term, value in frozen["losses"].items():
        torch.testing.assert_close(now["losses"][term], value, rtol=1e-5, atol=1e-5,
                                   msg=lambda m, t=term: f"loss {t}: {m}")
    for term, by_name in frozen["grads"].items():
        assert set(now["grads"][term]) == set(by_name), term
        for name, grad in by_name.items():
            torch.testing.assert_close(now["grads"][term][name], grad, rtol=1e-5, atol=1e-5,
                                       msg=lambda m, t=term, n=name: f"d {t} / d {n}: {m}")


def test_fixture_is_not_trivial():
    """Every term is non-zero and each parameter receives gradient from the total."""
    frozen = torch.load(FIXTURE, weights_only=True)
    assert all(float(v) != 0.0 for v in frozen["losses"].values())
    assert all(g.abs().sum() > 0 for g in frozen["grads"]["total"].values())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="write the frozen SSA fixture")
    parser.add_argument("--write", action="store_true", help="(re)write it; only on purpose")
    if parser.parse_args().write:
        inputs = frozen_inputs()
        FIXTURE.parent.mkdir(exist_ok=True)
        torch.save({"inputs": inputs, **frozen_outputs(inputs)}, FIXTURE)
        print(FIXTURE, FIXTURE.stat().st_size, "bytes")
