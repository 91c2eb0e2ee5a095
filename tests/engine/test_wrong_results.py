"""Issue 9's wrong results, each with the class of problem it belongs to: axes normalised in one
place, constant exponents, precision of sigmoid and softmax, gradcheck on views, tied
parameters, all-or-nothing state loading, non-numbers, boolean indices, empty losses, dtype
promotion. References are NumPy formulas (float64, or longdouble where precision is measured)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import engine
from engine import GradcheckError, Tensor, gradcheck, nn, optim
from engine.tensor import _result
from tests.engine.test_functions import check_grad, rand

# --- axes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("axes", [p for n in (2, 3) for p in itertools.permutations(range(-n, 0))])
def test_transpose_negative_axes_square_and_not(axes):
    for shape in ((3,) * len(axes), (2, 3, 4)[: len(axes)]):
        a = rand(shape, seed=len(shape))
        out = a.transpose(*axes)
        np.testing.assert_array_equal(out.data, a.data.transpose(axes))
        check_grad(lambda t, axes=axes: t.transpose(axes), a)
        check_grad(lambda t, axes=axes: t.permute(*axes), a)


def test_square_transpose_gradient_is_the_inverse_permutation():
    a = Tensor(np.zeros((2, 2, 2)))
    r = np.arange(8.0).reshape(2, 2, 2)
    (a.transpose(-1, -3, -2) * r).sum().backward()
    # d/da of sum(a.transpose(p) * r) is r transposed back by the inverse of p.
    np.testing.assert_array_equal(a.grad, r.transpose(np.argsort((2, 0, 1))))


@pytest.mark.parametrize(
    ("op", "axis"),
    list(
        itertools.product(
            ["sum", "mean", "max", "min", "logsumexp", "softmax", "log_softmax"],
            [-1, -2, (-1, -3), (0, -1)],
        )
    ),
)
def test_every_axis_taking_op_accepts_negative_axes(op, axis):
    a = rand((2, 3, 4), seed=3)
    check_grad(lambda t: getattr(t, op)(axis=axis), a)
    positive = tuple(i % 3 for i in np.atleast_1d(axis))
    np.testing.assert_allclose(
        getattr(a, op)(axis=axis).data, getattr(a, op)(axis=positive).data, rtol=1e-15
    )


def test_axis_errors_are_uniform():
    a = rand((2, 3))
    for f in (
        lambda: a.sum(axis=2),
        lambda: a.max(axis=-3),
        lambda: a.transpose(0, 0),
        lambda: a.sum(axis=(1, -1)),
        lambda: engine.concat([a, a], axis=2),
        lambda: a.unsqueeze(3),
    ):
        with pytest.raises((ValueError, IndexError)):
            f()


# --- pow with a zero exponent -----------------------------------------------------------------


def test_zero_exponent_has_zero_gradient_at_zero():
    x = Tensor([0.0, 2.0, -1.0])
    (x**0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0])
    x.grad = None
    (x**0.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0])
    # 0 ** 0 with a tensor exponent: both gradients are finite (d/db is 0 at a == 0).
    a, b = Tensor([0.0, 0.0]), Tensor([0.0, 2.0])
    (a**b).sum().backward()
    np.testing.assert_array_equal(a.grad, [0.0, 0.0])
    np.testing.assert_array_equal(b.grad, [0.0, 0.0])
    c = Tensor([0.0, 3.0])
    (c ** np.array([0.0, 0.0])).sum().backward()
    np.testing.assert_array_equal(c.grad, [0.0, 0.0])


# --- precision --------------------------------------------------------------------------------


def sigmoid_reference(x: np.ndarray) -> np.ndarray:
    xl = x.astype(np.longdouble)
    return 1 / (1 + np.exp(-xl))


@pytest.mark.parametrize(("dtype", "low"), [(np.float32, -87.0), (np.float64, -708.0)])
def test_sigmoid_is_accurate_over_the_whole_range(dtype, low):
    x = np.linspace(low, 40, 40001).astype(dtype)
    got = Tensor(x).sigmoid().data
    assert got.dtype == dtype
    ref = sigmoid_reference(x)
    ulps = np.abs(got - ref) / (np.abs(ref) * np.finfo(dtype).eps)
    assert ulps.max() < 4
    assert np.isfinite(Tensor(np.array([-20.0], dtype)).sigmoid().log().data).all()
    assert Tensor(np.array(-40.0)).sigmoid().log().item() == pytest.approx(-40.0, rel=1e-15)
    # The gradient sigmoid(x) sigmoid(-x) is accurate too, where 1 - sigmoid(x) would be 0.
    t = Tensor(np.array([-30.0, 30.0], dtype))
    t.sigmoid().sum().backward()
    ref_grad = sigmoid_reference(t.data) * sigmoid_reference(-t.data)
    np.testing.assert_allclose(t.grad, ref_grad.astype(np.float64), rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_and_log_softmax_with_large_logits(dtype):
    z = np.array([[1000.0, 1001.0, 1002.0], [-1e4, -1e4 + 0.5, -1e4 + 3.0]], dtype=dtype)
    zl = z.astype(np.longdouble)
    shifted = zl - zl.max(axis=1, keepdims=True)
    log_ref = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    eps = np.finfo(dtype).eps
    got = Tensor(z).log_softmax(axis=1).data
    assert np.max(np.abs(got - log_ref) / np.abs(log_ref)) < 4 * eps
    got = Tensor(z).softmax(axis=1).data
    assert np.max(np.abs(got - np.exp(log_ref)) / np.exp(log_ref)) < 4 * eps


@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("axis", [0, -1])
def test_softmax_primitives_gradcheck(shape, axis):
    a = rand(shape, seed=2)
    check_grad(lambda t: t.softmax(axis), a)
    check_grad(lambda t: t.log_softmax(axis), a)
    np.testing.assert_allclose(a.softmax(axis).data.sum(axis), 1.0)


def test_softmax_of_a_row_of_minus_infinity_but_one():
    z = Tensor([[-np.inf, 0.0, -np.inf]])
    np.testing.assert_array_equal(z.softmax().data, [[0.0, 1.0, 0.0]])


# --- gradcheck on views -----------------------------------------------------------------------


def zero_backward_square(a: Tensor) -> Tensor:
    ad = a.data
    return _result(ad**2, (a,), lambda g: (np.zeros_like(ad),), "wrong")


def test_gradcheck_perturbs_non_contiguous_inputs_in_place():
    base = np.random.default_rng(0).normal(size=(3, 4))
    assert gradcheck(lambda t: (t * t).sum(axis=0), Tensor(base.T))
    assert gradcheck(lambda t: t.tanh() @ t.T, Tensor(base[:, ::2]))
    with pytest.raises(GradcheckError):
        gradcheck(lambda t: zero_backward_square(t), Tensor(base.T))
    read_only = np.broadcast_to(np.arange(1.0, 4.0), (2, 3))
    t = Tensor(read_only)
    assert gradcheck(lambda t: t * 2, t)
    assert t.data is read_only


# --- tied parameters --------------------------------------------------------------------------


def test_tied_parameters_are_listed_and_stepped_once():
    model = nn.MLP(3, [3, 3], seed=0)
    model.layers[1].weight = model.layers[0].weight
    params = model.parameters()
    assert len(params) == 3 and len({id(p) for p in params}) == 3
    assert [n for n, _ in model.named_parameters()] == [
        "layers.0.weight",
        "layers.0.bias",
        "layers.1.bias",
    ]
    assert "layers.1.weight" in model.state_dict()
    w0 = model.layers[0].weight.data.copy()
    model.layers[0].weight.grad = np.ones((3, 3))
    optim.SGD(model.parameters(), lr=0.5).step()
    np.testing.assert_allclose(model.layers[0].weight.data, w0 - 0.5)
    shared = nn.Linear(2, 2)

    class Twice(nn.Module):
        def __init__(self):
            self.a, self.b = shared, shared

    assert len(Twice().parameters()) == 2
    model.load_state_dict(model.state_dict())


# --- all-or-nothing loading -------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        np.array([["a", "b"], ["c", "d"]]),
        np.array([[1.0, np.nan], [0.0, 0.0]]),
        np.array([[1.0, np.inf], [0.0, 0.0]]),
        np.array([[1e300, 0.0], [0.0, 0.0]]),  # finite in float64, inf in float32
        [[None, 1.0], [2.0, 3.0]],
    ],
)
def test_load_state_dict_changes_nothing_when_a_later_tensor_is_bad(bad):
    model = nn.MLP(2, [2, 2], seed=0, dtype=np.float32)
    before = model.state_dict()
    state = {k: v + 1 for k, v in before.items()}
    state["layers.1.weight"] = bad
    with pytest.raises(ValueError, match=r"layers\.1\.weight"):
        model.load_state_dict(state)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    state["layers.1.weight"] = before["layers.1.weight"] + 1
    model.load_state_dict(state)
    np.testing.assert_array_equal(model.layers[0].bias.data, before["layers.0.bias"] + 1)


# --- non-numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [None, [1.0, None], np.array([1.0, None], dtype=object), "1.5", ["1", "2"], 1 + 2j, {}],
)
def test_non_numbers_are_a_type_error(data):
    with pytest.raises(TypeError):
        Tensor(data)
    with pytest.raises(TypeError):
        Tensor([1.0, 2.0]) + data


def test_object_arrays_of_numbers_are_accepted():
    t = Tensor(np.array([1, 2.5, True], dtype=object))
    assert t.dtype == np.float64
    np.testing.assert_array_equal(t.data, [1.0, 2.5, 1.0])


# --- boolean and float indices ----------------------------------------------------------------


def test_boolean_tensor_index_is_a_mask():
    a = rand((2, 3))
    mask = Tensor([True, False])
    assert mask.dtype == np.bool_
    out = a[mask]
    np.testing.assert_array_equal(out.data, a.data[np.array([True, False])])
    check_grad(lambda t: t[mask], a)
    check_grad(lambda t: t[a > 0], a)
    check_grad(lambda t: t[:, Tensor([True, False, True])], a)
    np.testing.assert_array_equal(a[a > 0].data, a.data[a.data > 0])


def test_integer_tensor_index_gathers_and_float_index_is_an_error():
    a = rand((4, 3))
    idx = a.sum(axis=1).argmax(keepdims=True)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(a[idx].data, a.data[idx.data])
    for bad in (Tensor([0.0, 1.0]), np.array([0.0, 1.0]), (slice(None), Tensor([1.0]))):
        with pytest.raises((TypeError, IndexError)):
            a[bad]


# --- empty inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss",
    [
        lambda p, t: nn.mse_loss(p, t),
        lambda p, t: nn.binary_cross_entropy_with_logits(p, t),
        lambda p, t: nn.cross_entropy(p.reshape(0, 3), np.zeros(0, dtype=int)),
        lambda p, t: nn.cross_entropy(p.reshape(0, 3), t.reshape(0, 3)),
    ],
)
def test_losses_of_empty_inputs_are_nan_and_backward_works(loss):
    p = Tensor(np.zeros((0, 3)))
    out = loss(p, Tensor(np.zeros((0, 3))))
    assert np.isnan(out.item())
    out.backward()
    assert p.grad.shape == (0, 3)
    assert nn.mse_loss(p, np.zeros((0, 3)), reduction="sum").item() == 0.0


# --- dtype promotion --------------------------------------------------------------------------

SCALARS = [
    2,
    2.5,
    True,
    np.float64(2.5),
    np.int64(2),
    np.float32(2.5),
    np.array(2.5),
    np.array(2),
    Tensor(2.5),
]


@pytest.mark.parametrize("scalar", SCALARS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("op", ["+", "-", "*", "/", "**", "max", "min", "where", "cmp"])
def test_a_scalar_never_widens_a_float32_tensor(scalar, op):
    a = Tensor(np.array([1.0, 2.0, 3.0], np.float32))
    results = {
        "+": lambda: (a + scalar, scalar + a),
        "-": lambda: (a - scalar, scalar - a),
        "*": lambda: (a * scalar, scalar * a),
        "/": lambda: (a / scalar, scalar / a),
        "**": lambda: (a**scalar, scalar**a),
        "max": lambda: (engine.maximum(a, scalar), engine.maximum(scalar, a)),
        "min": lambda: (engine.minimum(a, scalar), engine.minimum(scalar, a)),
        "where": lambda: (engine.where(a.data > 1, a, scalar),),
        "cmp": lambda: (a + (a < scalar),),
    }[op]()
    for out in results:
        assert out.dtype == np.float32, (op, type(scalar))


def test_lists_and_arrays_follow_pytorch_promotion():
    a = Tensor(np.ones(3, np.float32))
    assert (a + [1.0, 2.0, 3.0]).dtype == np.float32  # noqa: RUF005 (a list operand)
    assert ([1, 2, 3] * a).dtype == np.float32
    assert (a + np.arange(3)).dtype == np.float32  # integer arrays take the float's dtype
    assert (a + np.ones(3, np.float16)).dtype == np.float32
    assert (a + np.ones(3)).dtype == np.float64  # a dimensioned float64 array widens
    assert (Tensor(np.float32(1)) + np.ones(3)).dtype == np.float64
    assert (Tensor(np.float32(1)) + np.float64(1)).dtype == np.float32
    assert engine.concat([a, np.ones(2)]).dtype == np.float64
    assert engine.result_dtype(a, 2.0, np.float64(1.0), [1.0]) == np.float32
    assert engine.result_dtype(np.arange(3), True) == np.float64
    b = Tensor(np.ones(3, np.float32))
    (a * np.float64(3.0) + b * np.ones(3)).sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float32
    np.testing.assert_array_equal(a.grad, [3.0, 3.0, 3.0])


def test_linear_float32_takes_float64_data_like_mlp():
    x = np.random.default_rng(0).normal(size=(5, 3))
    lin = nn.Linear(3, 2, dtype=np.float32, rng=np.random.default_rng(0))
    out = lin(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(
        out.data, x.astype(np.float32) @ lin.weight.data.T + lin.bias.data, rtol=1e-6
    )
    assert lin(np.arange(3)).dtype == np.float32
    mlp = nn.MLP(3, [2], seed=0, dtype=np.float32)
    assert mlp(x).dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.mse_loss(lin(x), np.zeros((5, 2))).backward()
    assert lin.weight.grad.dtype == np.float32
