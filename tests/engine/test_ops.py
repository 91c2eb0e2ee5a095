"""Issue 9's new ops against NumPy and finite differences (float64), broadcast pairs and random
shapes included; comparisons, conversions and iteration with PyTorch's semantics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import engine
from engine import Tensor
from tests.engine.test_functions import PAIRS, REDUCTION_CASES, check_grad, rand


def distinct(shape, seed=0):
    """Values with no ties (so max/min/maximum/abs/clip are differentiable at them)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    values = rng.permutation(n) * 0.37 - n * 0.18 + 0.05
    return Tensor(values.reshape(shape))


@pytest.mark.parametrize(("shape", "axis"), REDUCTION_CASES)
@pytest.mark.parametrize("keepdims", [False, True])
def test_min(shape, axis, keepdims):
    a = distinct(shape, seed=1)
    out = a.min(axis=axis, keepdims=keepdims)
    np.testing.assert_array_equal(out.data, np.min(a.data, axis=axis, keepdims=keepdims))
    check_grad(lambda t: t.min(axis=axis, keepdims=keepdims), a)


def test_min_and_max_share_ties():
    a = Tensor([1.0, 3.0, 1.0, 2.0])
    a.min().backward()
    np.testing.assert_array_equal(a.grad, [0.5, 0.0, 0.5, 0.0])


@pytest.mark.parametrize(
    ("shape", "axis"), [(s, a) for s, a in REDUCTION_CASES if a is None or isinstance(a, int)]
)
@pytest.mark.parametrize("keepdims", [False, True])
def test_argmax_argmin(shape, axis, keepdims):
    a = distinct(shape, seed=2)
    for name in ("argmax", "argmin"):
        out = getattr(a, name)(axis=axis, keepdims=keepdims)
        expected = getattr(np, name)(a.data, axis=axis, keepdims=keepdims)
        np.testing.assert_array_equal(out.data, expected)
        assert out.dtype == np.int64 and not out.requires_grad


@pytest.mark.parametrize("shape", [(), (4,), (3, 4), (2, 3, 4)])
def test_abs(shape):
    a = distinct(shape, seed=3)
    np.testing.assert_array_equal(abs(a).data, np.abs(a.data))
    check_grad(lambda t: t.abs(), a)
    z = Tensor([0.0, -2.0])
    abs(z).sum().backward()
    np.testing.assert_array_equal(z.grad, [0.0, -1.0])  # sign, 0 at 0 (as PyTorch)


@pytest.mark.parametrize(
    ("lo", "hi"),
    [(-0.5, 0.5), (None, 0.3), (-0.2, None), (np.array([-1.0, 0.01, -0.35, 0.2]), 0.6)],
)
@pytest.mark.parametrize("shape", [(4,), (3, 4)])
def test_clip(shape, lo, hi):
    a = distinct(shape, seed=4)
    np.testing.assert_array_equal(a.clip(lo, hi).data, np.clip(a.data, lo, hi))
    check_grad(lambda t: t.clip(lo, hi), a)
    check_grad(lambda t: engine.functions.clip(t, min=lo, max=hi) * 2, a)


def test_clip_gradient_is_one_at_the_bounds_and_needs_a_bound():
    a = Tensor([-1.0, 0.0, 0.5, 1.0, 2.0])
    a.clip(0.0, 1.0).sum().backward()
    np.testing.assert_array_equal(a.grad, [0, 1, 1, 1, 0])  # as torch.clamp: inclusive
    with pytest.raises(ValueError):
        a.clip()


@pytest.mark.parametrize(("sa", "sb"), PAIRS)
def test_maximum_minimum_where_broadcast(sa, sb):
    a, b = distinct(sa, seed=5), Tensor(distinct(sb, seed=6).data + 0.011)
    for f, ref in ((engine.maximum, np.maximum), (engine.minimum, np.minimum)):
        np.testing.assert_array_equal(f(a, b).data, ref(a.data, b.data))
        check_grad(f, a, b)
    cond = np.random.default_rng(7).random(np.broadcast_shapes(sa, sb)) > 0.5
    np.testing.assert_array_equal(engine.where(cond, a, b).data, np.where(cond, a.data, b.data))
    check_grad(lambda a, b: engine.where(cond, a, b), a, b)
    check_grad(lambda a, b: engine.where(Tensor(cond), a * 2, b), a, b)


def test_maximum_ties_share_and_where_takes_scalars():
    a, b = Tensor([1.0, 2.0, 3.0]), Tensor([1.0, 0.0, 4.0])
    engine.maximum(a, b).sum().backward()
    np.testing.assert_array_equal(a.grad, [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(b.grad, [0.5, 0.0, 1.0])
    out = engine.where(a > 1.5, a, 0.0)
    np.testing.assert_array_equal(out.data, [0.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="boolean"):
        engine.where(np.array([1.0, 0.0, 1.0]), a, b)


def test_permute_flatten_squeeze_unsqueeze():
    a = rand((2, 1, 3, 1), seed=8)
    cases = [
        (lambda t: t.permute(3, 0, 2, 1), np.transpose(a.data, (3, 0, 2, 1))),
        (lambda t: t.permute((-1, -2, -3, -4)), np.transpose(a.data, (3, 2, 1, 0))),
        (lambda t: t.flatten(), a.data.reshape(-1)),
        (lambda t: t.flatten(1), a.data.reshape(2, 3)),
        (lambda t: t.flatten(1, -2), a.data.reshape(2, 3, 1)),
        (lambda t: t.squeeze(), a.data.reshape(2, 3)),
        (lambda t: t.squeeze(-1), a.data.reshape(2, 1, 3)),
        (lambda t: t.squeeze((1, 3)), a.data.reshape(2, 3)),
        (lambda t: t.squeeze(0), a.data),  # not of length 1: kept, as torch.squeeze
        (lambda t: t.unsqueeze(0), a.data[None]),
        (lambda t: t.unsqueeze(-1), a.data[..., None]),
        (lambda t: t.unsqueeze(2), a.data[:, :, None]),
    ]
    for f, expected in cases:
        np.testing.assert_array_equal(f(a).data, expected)
        check_grad(f, a)
    assert Tensor(3.0).flatten().shape == (1,)
    with pytest.raises(ValueError):
        a.flatten(2, 1)


@pytest.mark.parametrize(("sa", "sb"), PAIRS)
@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!="])
def test_comparisons(sa, sb, op):
    a, b = rand(sa, seed=1), rand(sb, seed=2)
    b.data[...] = np.where(np.random.default_rng(3).random(sb) > 0.5, b.data, 0.0)
    if sa == sb:
        a.data[...] = np.where(b.data == 0, b.data, a.data)  # some equal pairs
    f = {
        "<": lambda x, y: x < y,
        "<=": lambda x, y: x <= y,
        ">": lambda x, y: x > y,
        ">=": lambda x, y: x >= y,
        "==": lambda x, y: x == y,
        "!=": lambda x, y: x != y,
    }[op]
    out = f(a, b)
    assert isinstance(out, Tensor) and out.dtype == np.bool_ and not out.requires_grad
    np.testing.assert_array_equal(out.data, f(a.data, b.data))
    np.testing.assert_array_equal(f(a, b.data).data, f(a.data, b.data))
    np.testing.assert_array_equal(f(a, 0.0).data, f(a.data, 0.0))
    np.testing.assert_array_equal(f(b.data, a).data, f(b.data, a.data))  # reflected


def test_tensors_hash_by_identity_and_compare_to_none():
    a, b = Tensor([1.0]), Tensor([1.0])
    assert len({a, b}) == 2 and {a: 1}[a] == 1
    assert (a == None) is False  # noqa: E711
    assert a != None  # noqa: E711
    with pytest.raises(TypeError):
        a < None  # noqa: B015
    (a * (a > 0)).sum().backward()  # a mask in arithmetic
    np.testing.assert_array_equal(a.grad, [1.0])


def test_bool_float_int_and_iteration_as_pytorch():
    assert bool(Tensor(0.0)) is False and bool(Tensor([[2.0]])) is True
    assert float(Tensor([[2.5]])) == 2.5 and int(Tensor(3.7)) == 3
    assert bool(Tensor([1.0]) > 0)
    for bad in (Tensor([1.0, 2.0]), Tensor(np.zeros(0))):
        with pytest.raises(RuntimeError, match="ambiguous"):
            bool(bad)
        with pytest.raises(RuntimeError):
            float(bad)
    with pytest.raises(RuntimeError):
        if Tensor([1.0, 2.0]) > 0:
            pass
    with pytest.raises(TypeError, match="0-d"):
        iter(Tensor(1.0))
    with pytest.raises(TypeError, match="0-d"):
        len(Tensor(1.0))
    m = Tensor(np.arange(6.0).reshape(3, 2))
    rows = list(m)
    assert len(rows) == 3 and all(r.shape == (2,) for r in rows)
    total = rows[0] * 1 + rows[2] * 3
    total.sum().backward()
    np.testing.assert_array_equal(m.grad, [[1, 1], [0, 0], [3, 3]])
    assert [float(x) for x in Tensor([1.0, 2.0])] == [1.0, 2.0]


@settings(max_examples=25, deadline=None)
@given(
    shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=3, max_side=3),
    seed=st.integers(0, 2**16),
)
def test_property_new_ops_random_shapes(shapes, seed):
    sa, sb = shapes.input_shapes
    a, b = distinct(sa, seed=seed), Tensor(distinct(sb, seed=seed + 1).data + 0.013)
    cond = np.random.default_rng(seed).random(shapes.result_shape) > 0.5

    def f(a, b):
        mixed = engine.where(cond, engine.maximum(a, b), engine.minimum(a, b).abs())
        return mixed.clip(-1.0, 1.5) + (a - b).abs().unsqueeze(0).squeeze(0)

    assert f(a, b).shape == shapes.result_shape
    check_grad(f, a, b, seed=seed)
    check_grad(lambda a, b: f(a, b).flatten().logsumexp(axis=-1), a, b, seed=seed)
