"""Every op checked against finite differences (float64), broadcast pairs included."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import engine
from engine import Tensor, gradcheck, nn

BROADCAST_SHAPES = [(), (4,), (3, 4), (1, 4), (3, 1), (2, 3, 4)]


def check_grad(f: Callable[..., Tensor], *inputs: Tensor, seed: int = 0) -> None:
    """gradcheck of `(f(*inputs) * R).sum()` with a random R, then a plain backward whose
    gradients must have their tensors' shapes and dtypes."""
    out = f(*inputs)
    r = np.random.default_rng(seed).normal(size=out.shape)
    assert gradcheck(lambda *ts: (f(*ts) * r).sum(), *inputs)
    for t in inputs:
        t.grad = None
    (f(*inputs) * r).sum().backward()
    for t in inputs:
        if t.requires_grad:
            assert t.grad.shape == t.shape
            assert t.grad.dtype == t.dtype


PAIRS = list(itertools.product(BROADCAST_SHAPES, BROADCAST_SHAPES))


def rand(shape, low=None, high=None, seed=0):
    rng = np.random.default_rng(seed)
    if low is None:
        return Tensor(rng.normal(size=shape))
    return Tensor(rng.uniform(low, high, size=shape))


def away_from_zero(shape, seed=0):
    rng = np.random.default_rng(seed)
    return Tensor(rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape))


@pytest.mark.parametrize(("sa", "sb"), PAIRS)
def test_add_sub_mul_broadcast(sa, sb):
    a, b = rand(sa, seed=1), rand(sb, seed=2)
    check_grad(lambda a, b: a + b, a, b)
    check_grad(lambda a, b: a - b, a, b)
    check_grad(lambda a, b: a * b, a, b)


@pytest.mark.parametrize(("sa", "sb"), PAIRS)
def test_div_pow_broadcast(sa, sb):
    a, b = rand(sa, seed=1), away_from_zero(sb, seed=2)
    check_grad(lambda a, b: a / b, a, b)
    base, exponent = rand(sa, 0.5, 2.0, seed=3), rand(sb, seed=4)
    check_grad(lambda a, b: a**b, base, exponent)


@pytest.mark.parametrize("shape", BROADCAST_SHAPES)
def test_scalar_operands_both_sides(shape):
    a = away_from_zero(shape)
    check_grad(lambda a: 2 + a - 3 - (1.5 - a) * 2.5 / a, a)
    check_grad(lambda a: 2.0 / a + a / 4 + (-a) * 3, a)
    check_grad(lambda a: a**2 + a**3 + a**-1 + a**0.0, a)
    check_grad(lambda a: 2**a + 1.5**a, a)
    check_grad(lambda a: a + np.ones(shape) * 2 + [1.0] * (shape[-1] if shape else 1), a)


@pytest.mark.parametrize("shape", BROADCAST_SHAPES)
@pytest.mark.parametrize("op", ["exp", "tanh", "sigmoid", "neg", "relu", "log", "sqrt"])
def test_unary(shape, op):
    if op in ("log", "sqrt"):
        a = rand(shape, 0.5, 2.0)
    elif op == "relu":
        a = away_from_zero(shape)
    else:
        a = rand(shape)
    f = (lambda t: -t) if op == "neg" else (lambda t: getattr(t, op)())
    check_grad(f, a)


def test_tanh_large_float64_uses_stable_path():
    x = Tensor(np.linspace(-800, 800, 4096))
    y = x.tanh()
    assert np.allclose(y.data, np.tanh(x.data), atol=1e-15)
    y.sum().backward()
    assert np.all(np.isfinite(x.grad))
    check_grad(lambda t: t.tanh(), rand((2, 1024)))


REDUCTION_CASES = [
    ((), None),
    ((4,), None),
    ((4,), 0),
    ((3, 4), 0),
    ((3, 4), -1),
    ((3, 4), (0, 1)),
    ((2, 3, 4), 1),
    ((2, 3, 4), (0, 2)),
    ((2, 3, 4), (-1, -3)),
    ((2, 3, 4), None),
]


@pytest.mark.parametrize(("shape", "axis"), REDUCTION_CASES)
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("op", ["sum", "mean", "max", "logsumexp"])
def test_reductions(shape, axis, keepdims, op):
    a = rand(shape)
    out = getattr(a, op)(axis=axis, keepdims=keepdims)
    expected = getattr(np, op if op != "logsumexp" else "sum")(
        a.data if op != "logsumexp" else np.exp(a.data), axis=axis, keepdims=keepdims
    )
    expected = np.log(expected) if op == "logsumexp" else expected
    assert out.shape == np.shape(expected)
    np.testing.assert_allclose(out.data, expected)
    check_grad(lambda t: getattr(t, op)(axis=axis, keepdims=keepdims), a)


def test_max_ties_share_gradient():
    a = Tensor([1.0, 3.0, 3.0])
    a.max().backward()
    np.testing.assert_allclose(a.grad, [0.0, 0.5, 0.5])


@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("axis", [0, -1])
def test_softmax_log_softmax(shape, axis):
    a = rand(shape)
    s = a.softmax(axis)
    np.testing.assert_allclose(s.data.sum(axis=axis), 1.0)
    np.testing.assert_allclose(a.log_softmax(axis).data, np.log(s.data))
    check_grad(lambda t: t.softmax(axis), a)
    check_grad(lambda t: t.log_softmax(axis), a)


@pytest.mark.parametrize("logits", [[1000.0, 0.0], [0.0, -1000.0], [-1000.0, 1000.0]])
def test_stable_softmax_family(logits):
    for op in ("softmax", "log_softmax", "logsumexp"):
        x = Tensor(logits)
        out = getattr(x, op)()
        r = np.ones(out.shape) if out.ndim == 0 else np.array([0.3, -0.7])
        (out * r).sum().backward()
        assert np.all(np.isfinite(out.data)), op
        assert np.all(np.isfinite(x.grad)), op
    np.testing.assert_allclose(Tensor(logits).softmax().data.max(), 1.0)
    np.testing.assert_allclose(Tensor(logits).logsumexp().item(), max(logits))


MATMUL_SHAPES = [
    ((4,), (4,)),
    ((3, 4), (4,)),
    ((4,), (4, 5)),
    ((3, 4), (4, 5)),
    ((2, 3, 4), (4, 5)),
    ((2, 3, 4), (4,)),
    ((4,), (2, 4, 5)),
    ((2, 3, 4), (2, 4, 5)),
    ((1, 3, 4), (2, 4, 5)),
    ((3, 4), (2, 4, 5)),
]


@pytest.mark.parametrize(("sa", "sb"), MATMUL_SHAPES)
def test_matmul(sa, sb):
    a, b = rand(sa, seed=1), rand(sb, seed=2)
    np.testing.assert_allclose((a @ b).data, a.data @ b.data)
    check_grad(lambda a, b: a @ b, a, b)


def test_matmul_with_arrays_either_side():
    w = rand((4, 5))
    x = np.ones((3, 4))
    out = x @ w
    assert isinstance(out, Tensor)
    check_grad(lambda w: np.ones((3, 4)) @ w @ np.ones(5), w)


@pytest.mark.parametrize("xshape", [(4,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(xshape, bias):
    x, w, b = rand(xshape, seed=1), rand((5, 4), seed=2), rand((5,), seed=3)
    f = (lambda x, w, b: engine.functions.linear(x, w, b)) if bias else None
    if bias:
        np.testing.assert_allclose(f(x, w, b).data, x.data @ w.data.T + b.data)
        check_grad(f, x, w, b)
    else:
        check_grad(lambda x, w: engine.functions.linear(x, w), x, w)


def test_linear_single_output_unit():
    check_grad(
        lambda x, w, b: engine.functions.linear(x, w, b), rand((6, 3)), rand((1, 3)), rand((1,))
    )


def test_shape_ops():
    a = rand((2, 3, 4))
    check_grad(lambda t: t.reshape(6, 4), a)
    check_grad(lambda t: t.reshape((4, 6)) * 2, a)
    check_grad(lambda t: t.reshape(-1), a)
    check_grad(lambda t: t.transpose(), a)
    check_grad(lambda t: t.transpose(1, 0, 2), a)
    check_grad(lambda t: t.transpose((2, 0, 1)), a)
    check_grad(lambda t: t.T, rand((3, 4)))
    assert a.reshape(6, 4).shape == (6, 4)
    assert a.transpose(2, 0, 1).shape == (4, 2, 3)


@pytest.mark.parametrize(
    "index",
    [
        0,
        -1,
        slice(1, None),
        (slice(None), 1),
        (0, slice(None), None),
        (Ellipsis, 2),
        (None, Ellipsis),
        np.array([True, False]),
        np.array([0, 1, 0, 0]),
        (np.array([0, 1, 1]), slice(None), np.array([3, 3, 0])),
    ],
)
def test_getitem(index):
    a = rand((2, 3, 4))
    np.testing.assert_allclose(a[index].data, a.data[index])
    check_grad(lambda t: t[index], a)


def test_getitem_repeated_indices_accumulate():
    a = Tensor([1.0, 2.0, 3.0])
    a[[0, 0, 2, 0]].sum().backward()
    np.testing.assert_allclose(a.grad, [3.0, 0.0, 1.0])
    m = Tensor(np.arange(6.0).reshape(2, 3))
    m[m.data > 2].sum().backward()
    np.testing.assert_allclose(m.grad, [[0, 0, 0], [1, 1, 1]])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_stack(axis):
    a, b, c = rand((2, 3), seed=1), rand((2, 3), seed=2), rand((2, 3), seed=3)
    assert engine.concat([a, b, c], axis).shape == np.concatenate([a.data] * 3, axis).shape
    check_grad(lambda a, b, c: engine.concat([a, b, c], axis), a, b, c)
    assert engine.stack([a, b, c], axis).shape == np.stack([a.data] * 3, axis).shape
    check_grad(lambda a, b, c: engine.stack([a, b, c], axis), a, b, c)
    check_grad(lambda a: engine.concat([a, np.zeros((2, 3))], axis), a)


def test_concat_uneven_sizes():
    a, b = rand((2, 3), seed=1), rand((2, 5), seed=2)
    out = engine.concat([a, b], axis=1)
    assert out.shape == (2, 8)
    check_grad(lambda a, b: engine.concat([a, b], axis=1), a, b)


@pytest.mark.parametrize(("sp", "st_"), PAIRS)
def test_losses_broadcast(sp, st_):
    p, t = rand(sp, seed=1), rand(st_, 0.0, 1.0, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_grad(lambda p, t: nn.mse_loss(p, t), p, t)
        check_grad(lambda p, t: nn.binary_cross_entropy_with_logits(p, t), p, t)
        ref = np.mean((p.data - t.data) ** 2)
        np.testing.assert_allclose(nn.mse_loss(p, t).item(), ref)


def test_loss_warns_when_target_broadcasts_prediction():
    with pytest.warns(UserWarning, match="broadcasts"):
        nn.mse_loss(Tensor(np.zeros((5, 1))), np.zeros(5))


@pytest.mark.parametrize("n", [1, 3, 8])
def test_cross_entropy(n):
    rng = np.random.default_rng(n)
    logits = Tensor(rng.normal(size=(n, 5)))
    idx = rng.integers(0, 5, size=n)
    x = logits.data
    ref = np.mean(np.log(np.exp(x).sum(1)) - x[np.arange(n), idx])
    np.testing.assert_allclose(nn.cross_entropy(logits, idx).item(), ref)
    check_grad(lambda z: nn.cross_entropy(z, idx), logits)
    check_grad(lambda z: nn.cross_entropy(z, list(idx)), logits)


def test_cross_entropy_single_sample_and_probabilities():
    logits = rand((5,))
    check_grad(lambda z: nn.cross_entropy(z, 3), logits)
    np.testing.assert_allclose(
        nn.cross_entropy(logits, 3).item(), -logits.log_softmax().data[3], rtol=1e-12
    )
    z = rand((4, 5), seed=1)
    probs = Tensor(np.random.default_rng(2).dirichlet(np.ones(5), size=4))
    check_grad(lambda z, p: nn.cross_entropy(z, p), z, probs)


def test_cross_entropy_errors():
    with pytest.raises(IndexError):
        nn.cross_entropy(rand((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="class indices"):
        nn.cross_entropy(rand((2, 3)), [0, 1, 2])


def test_losses_stable_at_extreme_logits():
    logits = Tensor([[1000.0, 0.0], [0.0, -1000.0]])
    ce = nn.cross_entropy(logits, [1, 1])
    ce.backward()
    np.testing.assert_allclose(ce.item(), (1000.0 + 1000.0) / 2)
    assert np.all(np.isfinite(logits.grad))
    x = Tensor([1000.0, -1000.0, 0.0])
    y = Tensor([0.0, 1.0, 1.0])
    bce = nn.binary_cross_entropy_with_logits(x, y)
    bce.backward()
    np.testing.assert_allclose(bce.item(), (1000 + 1000 + np.log(2)) / 3)
    assert np.all(np.isfinite(x.grad)) and np.all(np.isfinite(y.grad))


@settings(max_examples=30, deadline=None)
@given(
    shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
    seed=st.integers(0, 2**16),
)
def test_property_composite_ops_random_shapes(shapes, seed):
    sa, sb = shapes.input_shapes
    rng = np.random.default_rng(seed)
    a = Tensor(rng.normal(size=sa))
    b = Tensor(rng.uniform(0.5, 2.0, size=sb))

    def f(a, b):
        return (a * b + a / b - b**2).tanh() * (a - b).sigmoid() + (b.log() * a).exp()

    out = f(a, b)
    assert out.shape == shapes.result_shape
    check_grad(f, a, b, seed=seed)
    check_grad(lambda a, b: (a + b).sum(axis=-1) if out.ndim else (a + b).sum(), a, b, seed=seed)
