"""Tests for wav2small.metrics: CCC conventions, the CCC loss and UAR."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from wav2small.metrics import ccc, ccc_loss, uar

try:
    import torch
except ImportError:  # ccc and uar must work without torch
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")
RNG = np.random.default_rng(0)


def direct_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's formula written out with population moments."""
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


# --- ccc ------------------------------------------------------------------------------------
def test_ccc_matches_direct_formula():
    gold = RNG.uniform(0, 1, (200, 3))
    pred = 0.6 * gold + 0.3 * RNG.uniform(0, 1, (200, 3)) + 0.1
    got = ccc(pred, gold)
    assert got.shape == (3,)
    expected = [direct_ccc(pred[:, d], gold[:, d]) for d in range(3)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert isinstance(ccc(pred[:, 0], gold[:, 0]), float)
    assert ccc(pred[:, 0], gold[:, 0]) == pytest.approx(expected[0], rel=1e-12)


def test_ccc_audmetric_doc_example():
    assert ccc([0, 1, 1], [0, 1, 2]) == pytest.approx(2 / 3)


def test_ccc_identical_shifted_negated():
    x = RNG.standard_normal(100)
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(x + 0.5, x) < 1.0
    assert ccc(2 * x, x) < 1.0
    centred = x - x.mean()
    assert ccc(-centred, centred) == pytest.approx(-1.0)


def test_ccc_one_constant_side_is_zero():
    x = RNG.standard_normal(50)
    assert ccc(np.full(50, 0.1), x) == 0.0
    assert ccc(x, np.full(50, 0.3)) == 0.0
    assert ccc(np.full(50, 0.1), np.full(50, 0.7)) == 0.0  # both constant, different means


def test_ccc_undefined_is_nan():
    assert math.isnan(ccc(np.full(10, 0.1), np.full(10, 0.1)))  # 0/0
    assert math.isnan(ccc([0.5], [0.2]))
    assert math.isnan(ccc([], []))
    assert math.isnan(ccc([0.0, np.nan, 1.0], [0.0, 1.0, 2.0]))
    out = ccc(np.array([[0.1, 0.2, 0.3]]), np.array([[0.3, 0.2, 0.1]]))
    assert out.shape == (3,) and np.isnan(out).all()
    cols = ccc(np.array([[0.1, 0.0], [0.1, 1.0]]), np.array([[0.1, 0.0], [0.1, 1.0]]))
    assert math.isnan(cols[0]) and cols[1] == pytest.approx(1.0)


def test_ccc_shape_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        ccc(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="differ in shape"):
        ccc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="expected shape"):
        ccc(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))


def test_metrics_import_does_not_import_torch():
    code = "import sys, wav2small.metrics; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- ccc_loss -------------------------------------------------------------------------------
@needs_torch
def test_ccc_loss_equals_one_minus_ccc():
    gold = RNG.uniform(0, 1, (64, 3))
    pred = 0.5 * gold + 0.5 * RNG.uniform(0, 1, (64, 3))
    expected = 1 - ccc(pred, gold)
    p, g = torch.from_numpy(pred), torch.from_numpy(gold)
    np.testing.assert_allclose(ccc_loss(p, g, reduction="none").numpy(), expected, rtol=1e-6)
    assert ccc_loss(p, g).item() == pytest.approx(expected.sum(), rel=1e-6)
    assert ccc_loss(p, g, reduction="mean").item() == pytest.approx(expected.mean(), rel=1e-6)


@needs_torch
def test_ccc_loss_finite_on_constant_batches():
    for pred, gold in [
        (torch.zeros(8, 3), torch.zeros(8, 3)),
        (torch.full((8, 3), 0.5), torch.rand(8, 3)),
        (torch.rand(1, 3), torch.rand(1, 3)),
    ]:
        pred.requires_grad_(True)
        loss = ccc_loss(pred, gold)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


@needs_torch
def test_ccc_loss_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        ccc_loss(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="reduction"):
        ccc_loss(torch.zeros(4, 3), torch.zeros(4, 3), reduction="max")


@needs_torch
def test_ccc_loss_gradient_steps_raise_ccc():
    torch.manual_seed(0)
    features = torch.randn(128, 8)
    gold = features @ torch.randn(8, 3) * 0.3 + 0.5
    model = torch.nn.Linear(8, 3)
    before = ccc(model(features).detach().numpy(), gold.numpy())
    for _ in range(50):  # plain gradient descent (building a torch.optim optimiser costs ~2 s)
        model.zero_grad()
        ccc_loss(model(features), gold).backward()
        with torch.no_grad():
            for p in model.parameters():
                assert torch.isfinite(p.grad).all()
                p -= 0.5 * p.grad
    after = ccc(model(features).detach().numpy(), gold.numpy())
    assert (after > before + 0.2).all() and (after > 0.9).all(), (before, after)


# --- uar ------------------------------------------------------------------------------------
def test_uar_known_cases():
    gold = np.repeat(np.arange(4), 25)
    assert uar(gold, gold) == 1.0
    assert uar(np.zeros_like(gold), gold) == pytest.approx(1 / 4)  # majority-class predictor
    assert uar(["a", "b", "b", "b"], ["a", "a", "b", "b"]) == pytest.approx((0.5 + 1.0) / 2)
    # imbalanced: accuracy 0.9 but UAR 0.5; a class only predicted ("z") does not count
    assert uar(["x"] * 9 + ["z"], ["x"] * 9 + ["y"]) == pytest.approx(0.5)
    assert math.isnan(uar([], []))
    with pytest.raises(ValueError, match="differ in shape"):
        uar([0, 1], [0])
