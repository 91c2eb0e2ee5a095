"""engine.gradcheck accepts correct backward passes and names the worst wrong element."""

from __future__ import annotations

import numpy as np
import pytest

from engine import GradcheckError, Tensor, gradcheck
from engine.tensor import _result


def wrong_square(a: Tensor) -> Tensor:
    """a ** 2 with a backward that is off by one on the last element."""
    ad = a.data

    def backward(g):
        ga = 2 * ad * g
        ga.reshape(-1)[-1] += 1.0
        return (ga,)

    return _result(ad**2, (a,), backward, "wrong")


def test_gradcheck_passes_for_correct_ops():
    a = Tensor(np.random.default_rng(0).normal(size=(2, 3)))
    b = Tensor(np.random.default_rng(1).normal(size=(3,)))
    assert gradcheck(lambda a, b: (a * b).tanh() @ b, a, b) is True


def test_gradcheck_full_jacobian_of_nonscalar_output():
    a = Tensor(np.random.default_rng(0).normal(size=(3,)))
    assert gradcheck(lambda a: a.softmax(), a)


def test_gradcheck_names_the_worst_element():
    a = Tensor(np.arange(6.0).reshape(2, 3))
    with pytest.raises(GradcheckError, match=r"input 0 element \(1, 2\)"):
        gradcheck(lambda a: wrong_square(a).sum(), a)


def test_gradcheck_restores_data_and_grads():
    a = Tensor([1.0, 2.0])
    a.grad = np.array([5.0, 6.0])
    gradcheck(lambda a: (a * a).sum(), a)
    np.testing.assert_array_equal(a.data, [1.0, 2.0])
    np.testing.assert_array_equal(a.grad, [5.0, 6.0])


def test_gradcheck_wants_float64():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda a: a.sum(), Tensor(np.ones(2, dtype=np.float32)))
    with pytest.raises(ValueError):
        gradcheck(lambda a: a.sum(), Tensor(np.ones(2), requires_grad=False))
