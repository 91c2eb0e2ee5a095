"""Tensor semantics and the pitfalls of the article's engine."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

import engine
from engine import Tensor, Value, no_grad


def test_value_is_tensor_and_dtypes():
    assert Value is Tensor
    assert Tensor([1, 2, 3]).dtype == np.float64
    assert Tensor(True).dtype == np.bool_ and not Tensor(True).requires_grad
    assert Tensor(np.arange(3, dtype=np.int32)).dtype == np.float64
    assert Tensor(np.ones(3, dtype=np.float32)).dtype == np.float32
    assert Tensor([1, 2], dtype=np.float32).dtype == np.float32
    t = Tensor(np.ones((2, 3)))
    assert (t.shape, t.ndim, t.size, len(t)) == ((2, 3), 2, 6, 2)
    assert Tensor(2.5).item() == 2.5
    assert t.numpy() is t.data
    assert not t.detach().requires_grad and t.detach().data is t.data


def test_int_data_gets_float_gradients():
    x = Tensor([1, 2, 3])
    y = sum(x * i for i in range(3))  # sum() starts from the int 0
    y.sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad, [3.0, 3.0, 3.0])


def test_float32_stays_float32():
    x = Tensor(np.array([1.0, 2.0, 3.0], dtype=np.float32))
    y = ((x * 2 + 1 - 3 / x) ** 2 / 4.0 + 2**x + x.exp().log().tanh()).mean()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32
    z = Tensor(np.ones((2, 3), dtype=np.float32))
    w = Tensor(np.ones((3, 2), dtype=np.float32))
    (z @ w).softmax().sum().backward()
    assert z.grad.dtype == w.grad.dtype == np.float32


def test_grad_is_zeros_until_backward_and_can_be_reset():
    x = Tensor(np.ones((2, 2)))
    np.testing.assert_array_equal(x.grad, np.zeros((2, 2)))
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full((2, 2), 3.0))
    x.grad = 0.0
    assert x.grad.shape == (2, 2) and not x.grad.any()


def test_broadcast_gradients_reduce_to_operand_shape():
    w = Tensor(np.ones((1, 4)))
    b = Tensor(np.ones(4))
    s = Tensor(2.0)
    x = Tensor(np.arange(12.0).reshape(3, 4), requires_grad=False)
    (x * w + b * s).sum().backward()
    assert w.grad.shape == (1, 4) and b.grad.shape == (4,) and s.grad.shape == ()
    np.testing.assert_allclose(w.grad, x.data.sum(0, keepdims=True))
    np.testing.assert_allclose(b.grad, [6.0] * 4)
    np.testing.assert_allclose(s.grad, 12.0)
    assert x._grad is None  # no gradient for an input that does not require one


def test_reuse_and_aliasing():
    a = Tensor(3.0)
    (a * a + a).backward()
    assert a.grad == 7.0
    a = Tensor([1.0, 2.0])
    b = a + 1
    c = b + 1.5
    d = a + b
    e = d + c
    e.backward()
    np.testing.assert_allclose(a.grad, [3.0, 3.0])
    np.testing.assert_allclose(b.grad, [2.0, 2.0])
    grads = [t.grad for t in (a, b, c, d, e)]
    for i, g in enumerate(grads):
        for h in grads[i + 1 :]:
            assert not np.shares_memory(g, h)


def test_no_grad_array_shared_through_views():
    x = Tensor(np.ones((2, 3)))
    y = x.reshape(3, 2)
    z = y.transpose()
    z.sum().backward()
    assert not np.shares_memory(x.grad, y.grad)
    assert not np.shares_memory(y.grad, z.grad)
    x.grad += 1  # writable and private
    assert y.grad[0, 0] == 1.0


def test_gradients_accumulate_across_backward_calls():
    x = Tensor([1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * 2 * x.data)
    z = (x * 3).sum()
    z.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data + 3)


def test_intermediate_tensors_keep_grads():
    x = Tensor(2.0)
    y = x * 3
    z = y.tanh()
    z.backward()
    assert z.grad == 1.0
    np.testing.assert_allclose(y.grad, 1 - np.tanh(6.0) ** 2)
    assert engine.viz.draw_dot(z).pipe(format="svg").startswith(b"<?xml")


def test_backward_with_explicit_gradient():
    x = Tensor([1.0, 2.0])
    y = x * 2
    y.backward(np.array([1.0, -1.0]))
    np.testing.assert_allclose(x.grad, [2.0, -2.0])


def test_deep_chain_100000():
    x = Tensor(1.0)
    y = x
    for _ in range(100_000):
        y = y * 1.0
    y.backward()
    assert x.grad == 1.0
    del y  # freeing a 100,000-deep graph must not overflow the C stack


def test_pow_tensor_exponent_at_zero():
    x = Tensor([0.0, 2.0])
    y = Tensor([2.0, 3.0])
    (x**y).sum().backward()
    np.testing.assert_allclose(y.grad, [0.0, 8.0 * np.log(2.0)])
    np.testing.assert_allclose(x.grad, [0.0, 12.0])
    assert engine.gradcheck(lambda a, b: a**b, Tensor([0.5, 1.5]), Tensor([2.0, -1.0]))


def test_value_pow_value():
    a, b = Value(2.0), Value(3.0)
    c = a**b
    c.backward()
    assert c.item() == 8.0
    np.testing.assert_allclose(a.grad, 12.0)
    np.testing.assert_allclose(b.grad, 8.0 * np.log(2.0))


def test_ndarray_on_the_left():
    x = Tensor([1.0, 2.0])
    for out in (
        np.ones(2) + x,
        np.ones(2) * x,
        np.ones(2) - x,
        np.ones(2) / x,
        np.array([1.0, 1.0]) + x,
        [1.0, 1.0] * x,
    ):
        assert isinstance(out, Tensor)
    (np.array([2.0, 3.0]) * x).sum().backward()
    np.testing.assert_allclose(x.grad, [2.0, 3.0])


def test_unsupported_operands_raise_type_error():
    x = Tensor([1.0])
    with pytest.raises(TypeError, match="str"):
        x + "abc"
    with pytest.raises(TypeError, match="object"):
        object() * x
    with pytest.raises(TypeError, match="dict"):
        x ** {}
    with pytest.raises(TypeError, match="str"):
        Tensor("abc")
    with pytest.raises(TypeError, match="floating"):
        Tensor([1, 2], dtype=np.int64)


def test_repr_is_short():
    r = repr(Tensor(np.zeros((1000, 1000)), label="big"))
    assert len(r) < 200
    assert "(1000, 1000)" in r and "big" in r
    assert "0.5" in repr(Tensor(0.5))


def test_no_grad_records_nothing():
    x = Tensor([1.0, 2.0])
    with no_grad():
        y = x * 2
        assert not engine.is_grad_enabled()
    assert engine.is_grad_enabled()
    assert not y.requires_grad and y._prev == ()
    with pytest.raises(RuntimeError):
        y.backward()
    z = (y * x).sum()
    z.backward()
    np.testing.assert_allclose(x.grad, y.data)  # reached x only through the recorded product


def test_no_grad_is_per_thread():
    inside = threading.Event()
    release = threading.Event()
    seen = {}

    def worker():
        with no_grad():
            inside.set()
            release.wait(5)
            seen["worker"] = (Tensor(1.0) * 2).requires_grad

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(5)
    seen["main"] = (Tensor(1.0) * 2).requires_grad
    release.set()
    t.join()
    assert seen == {"main": True, "worker": False}


def test_graph_freed_without_cyclic_gc():
    gc.disable()
    try:
        x = Tensor(np.ones(3))
        y = (x * 2).tanh()
        loss = (y * y).sum()
        loss.backward()
        ref = weakref.ref(y)
        del y, loss
        assert ref() is None
    finally:
        gc.enable()


def test_unbroadcast_helper():
    g = np.ones((2, 3, 4))
    assert engine.unbroadcast(g, (3, 1)).shape == (3, 1)
    np.testing.assert_allclose(engine.unbroadcast(g, (3, 1)), np.full((3, 1), 8.0))
    assert engine.unbroadcast(g, ()).shape == ()
    assert isinstance(engine.unbroadcast(g, ()), np.ndarray)
    assert engine.unbroadcast(g, (2, 3, 4)) is g
