"""Optimizer steps against hand-computed updates."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Tensor, nn, optim


def param(values, grad):
    p = Tensor(np.array(values, dtype=float))
    p.grad = np.array(grad, dtype=float)
    return p


def test_sgd_plain():
    p = param([1.0, -2.0], [0.5, 0.25])
    optim.SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [0.95, -2.025])


def test_sgd_momentum_and_weight_decay():
    p = param([1.0], [0.5])
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    opt.step()
    g1 = 0.5 + 0.01 * 1.0
    w1 = 1.0 - 0.1 * g1
    np.testing.assert_allclose(p.data, [w1])
    p.grad = np.array([0.2])
    opt.step()
    buf = 0.9 * g1 + (0.2 + 0.01 * w1)
    np.testing.assert_allclose(p.data, [w1 - 0.1 * buf])


def test_adam_two_steps():
    p = param([1.0, 2.0], [0.1, -0.3])
    opt = optim.Adam([p], lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    w = np.array([1.0, 2.0])
    m = v = np.zeros(2)
    for t, g in enumerate([np.array([0.1, -0.3]), np.array([-0.2, 0.4])], start=1):
        p.grad = g
        opt.step()
        gg = g + 0.1 * w
        m = 0.9 * m + 0.1 * gg
        v = 0.99 * v + 0.01 * gg**2
        w = w - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.99**t)) + 1e-8)
        np.testing.assert_allclose(p.data, w, rtol=1e-12)


def test_params_without_grad_are_skipped_and_zero_grad():
    a = param([1.0], [1.0])
    b = Tensor([5.0])
    opt = optim.Adam([a, b], lr=0.1)
    opt.step()
    np.testing.assert_allclose(b.data, [5.0])
    assert a.data[0] < 1.0
    opt.zero_grad()
    assert a._grad is None and not a.grad.any()


def test_updates_in_place_and_errors():
    p = param([1.0], [1.0])
    data = p.data
    optim.SGD(iter([p]), lr=0.5).step()
    assert p.data is data and p.data[0] == 0.5
    with pytest.raises(ValueError):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError):
        optim.SGD([p], lr=-1.0)


@pytest.mark.parametrize(
    "make", [lambda ps: optim.SGD(ps, 0.1, momentum=0.9), lambda ps: optim.Adam(ps, 0.02)]
)
def test_training_reduces_loss(make):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2))
    y = (x[:, :1] * x[:, 1:] > 0).astype(float)
    m = nn.MLP(2, [16, 1], seed=0)
    opt = make(m.parameters())
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = nn.binary_cross_entropy_with_logits(m(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.7 * first
