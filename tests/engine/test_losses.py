"""Loss options against PyTorch's documented definitions, written in NumPy here (torch is not a
test dependency): cross entropy with class weights, ignore_index, label smoothing and the
class axis second for any rank; BCE with logits with weight and pos_weight; every reduction.
Gradients against finite differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Tensor, nn
from tests.engine.test_functions import check_grad

LOGIT_SHAPES = [(5,), (4, 5), (3, 5, 2), (2, 5, 2, 3)]


def log_softmax_ref(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def cross_entropy_ref(x, target, weight=None, ignore_index=None, smoothing=0.0, reduction="mean"):
    """torch.nn.functional.cross_entropy's documented definition. Class indices: with the
    smoothed target q = (1 - e) onehot(y) + e / C, l_n = -sum_c w_c q_c log p_c, 0 where
    y_n == ignore_index; "mean" divides by sum_n w_{y_n} over the kept n. Probabilities p:
    q = (1 - e) p + e / C, l_n = -sum_c w_c q_c log p_c; "mean" divides by the number of n."""
    caxis = 0 if x.ndim == 1 else 1
    n_classes = x.shape[caxis]
    logp = np.moveaxis(log_softmax_ref(x, caxis), caxis, -1)  # (..., C)
    w = np.ones(n_classes) if weight is None else weight
    target = np.asarray(target)
    if target.dtype.kind == "f" and target.shape == x.shape:
        q = (1 - smoothing) * np.moveaxis(target, caxis, -1) + smoothing / n_classes
        losses = -(w * q * logp).sum(-1)
        denom = losses.size
    else:
        keep = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
        y = np.where(keep, target, 0)
        onehot = np.eye(n_classes)[y]
        q = (1 - smoothing) * onehot + smoothing / n_classes
        losses = np.where(keep, -(w * q * logp).sum(-1), 0.0)
        denom = (w[y] * keep).sum()
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.sum() / denom


def index_target(shape, seed, ignore=None):
    rng = np.random.default_rng(seed)
    caxis = 0 if len(shape) == 1 else 1
    tshape = shape[:caxis] + shape[caxis + 1 :]
    t = np.array(rng.integers(0, shape[caxis], size=tshape))
    if ignore is not None:
        flat = t.reshape(-1)
        flat[flat == ignore] = (ignore + 1) % shape[caxis]
        flat[1::2] = ignore  # half of them ignored, never all
        t = flat.reshape(tshape)
    return t


OPTIONS = [
    {},
    {"weight": np.array([0.5, 2.0, 1.0, 0.3, 1.5])},
    {"ignore_index": 2},
    {"label_smoothing": 0.2},
    {"weight": np.array([0.5, 2.0, 1.0, 0.3, 1.5]), "ignore_index": 4, "label_smoothing": 0.1},
]


@pytest.mark.parametrize("shape", LOGIT_SHAPES)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "+".join(o) or "plain")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_indices(shape, options, reduction):
    x = Tensor(np.random.default_rng(1).normal(size=shape) * 2)
    t = index_target(shape, 2, options.get("ignore_index"))
    out = nn.cross_entropy(x, t, reduction=reduction, **options)
    ref = cross_entropy_ref(
        x.data,
        t,
        options.get("weight"),
        options.get("ignore_index"),
        options.get("label_smoothing", 0.0),
        reduction,
    )
    assert out.shape == np.shape(ref)
    np.testing.assert_allclose(out.data, ref, rtol=1e-12, atol=1e-14)
    check_grad(lambda z: nn.cross_entropy(z, t, reduction=reduction, **options), x)


@pytest.mark.parametrize("shape", LOGIT_SHAPES)
@pytest.mark.parametrize("options", [o for o in OPTIONS if "ignore_index" not in o], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_probabilities(shape, options, reduction):
    rng = np.random.default_rng(3)
    x = Tensor(rng.normal(size=shape))
    caxis = 0 if len(shape) == 1 else 1
    p = np.moveaxis(rng.dirichlet(np.ones(5), size=shape[:caxis] + shape[caxis + 1 :]), -1, caxis)
    probs = Tensor(p)
    out = nn.cross_entropy(x, probs, reduction=reduction, **options)
    ref = cross_entropy_ref(
        x.data, p, options.get("weight"), None, options.get("label_smoothing", 0.0), reduction
    )
    np.testing.assert_allclose(out.data, ref, rtol=1e-12)
    check_grad(lambda z, q: nn.cross_entropy(z, q, reduction=reduction, **options), x, probs)


def test_cross_entropy_probability_targets_as_core_uses_them():
    # Scaled one-hot rows (class weights folded into the target), float32 logits.
    x = Tensor(np.random.default_rng(4).normal(size=(6, 3)).astype(np.float32))
    target = np.zeros((6, 3), np.float32)
    target[np.arange(6), [0, 1, 2, 0, 1, 2]] = [0.5, 1.5, 1.0, 0.5, 1.5, 1.0]
    out = nn.cross_entropy(x, target)
    assert out.dtype == np.float32
    ref = cross_entropy_ref(x.data.astype(np.float64), target.astype(np.float64))
    np.testing.assert_allclose(out.item(), ref, rtol=1e-6)


def test_cross_entropy_ignore_everything_and_errors():
    x = Tensor(np.zeros((3, 4)))
    out = nn.cross_entropy(x, [1, 1, 1], ignore_index=1)
    assert np.isnan(out.item())  # 0 / 0, as PyTorch
    assert nn.cross_entropy(x, [1, 1, 1], ignore_index=1, reduction="sum").item() == 0.0
    with pytest.raises(IndexError):
        nn.cross_entropy(x, [0, 4, 1])
    with pytest.raises(IndexError):
        nn.cross_entropy(x, [0, -1, 1])
    assert nn.cross_entropy(x, [0, -1, 1], ignore_index=-1).item() == pytest.approx(np.log(4))
    with pytest.raises(ValueError, match="reduction"):
        nn.cross_entropy(x, [0, 1, 2], reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.cross_entropy(x, [0, 1, 2], label_smoothing=1.5)
    with pytest.raises(ValueError, match="weight"):
        nn.cross_entropy(x, [0, 1, 2], weight=np.ones(3))
    with pytest.raises(ValueError, match="ignore_index"):
        nn.cross_entropy(x, np.full((3, 4), 0.25), ignore_index=0)
    with pytest.raises(ValueError, match="class indices of shape"):
        nn.cross_entropy(Tensor(np.zeros((2, 4, 3))), np.zeros((2, 4), int))


def bce_ref(x, y, weight=None, pos_weight=None, reduction="mean"):
    """-w [p y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))] (torch's documented definition)."""
    s = 1 / (1 + np.exp(-x))
    p = 1.0 if pos_weight is None else pos_weight
    w = 1.0 if weight is None else weight
    losses = -w * (p * y * np.log(s) + (1 - y) * np.log(1 - s))
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"pos_weight": np.array([0.5, 2.0, 3.0])},
        {"weight": np.array([[0.2], [1.0], [2.0], [0.7]])},
        {"pos_weight": np.array([0.5, 2.0, 3.0]), "weight": np.array([1.0, 0.1, 2.0])},
    ],
    ids=lambda o: "+".join(o) or "plain",
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_options(options, reduction):
    rng = np.random.default_rng(5)
    x, y = Tensor(rng.normal(size=(4, 3)) * 3), Tensor(rng.uniform(size=(4, 3)))
    out = nn.binary_cross_entropy_with_logits(x, y, reduction=reduction, **options)
    np.testing.assert_allclose(out.data, bce_ref(x.data, y.data, reduction=reduction, **options))
    check_grad(
        lambda a, b: nn.binary_cross_entropy_with_logits(a, b, reduction=reduction, **options),
        x,
        y,
    )


def test_bce_pos_weight_stable_at_extreme_logits():
    x = Tensor([1000.0, -1000.0, 0.0])
    out = nn.binary_cross_entropy_with_logits(x, [1.0, 1.0, 0.0], pos_weight=[2.0, 3.0, 4.0])
    out.backward()
    np.testing.assert_allclose(out.item(), (0 + 3 * 1000 + np.log(2)) / 3)
    assert np.isfinite(x.grad).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_reductions(reduction):
    rng = np.random.default_rng(6)
    p, t = Tensor(rng.normal(size=(3, 2))), Tensor(rng.normal(size=(3, 2)))
    d2 = (p.data - t.data) ** 2
    ref = {"mean": d2.mean(), "sum": d2.sum(), "none": d2}[reduction]
    np.testing.assert_allclose(nn.mse_loss(p, t, reduction=reduction).data, ref)
    check_grad(lambda a, b: nn.mse_loss(a, b, reduction=reduction), p, t)
    with pytest.raises(ValueError):
        nn.mse_loss(p, t, reduction="elementwise")
