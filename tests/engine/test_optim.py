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


# --- 20 steps against NumPy re-implementations of torch.optim's documented algorithms -----------


def sgd_reference(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD's pseudo-code."""
    p, b = p.copy(), None
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * p if weight_decay else g
        if momentum:
            b = g if t == 1 else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        p = p - lr * g
    return p


def adam_reference(p, grads, lr, betas, eps, weight_decay, amsgrad, decoupled):
    """torch.optim.Adam's / AdamW's pseudo-code; amsgrad keeps the running maximum of v and
    bias-corrects it at each step (as torch's implementation)."""
    p = p.copy()
    m, v, v_max = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        elif weight_decay:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        if amsgrad:
            v_max = np.maximum(v_max, v)
            v_hat = v_max / (1 - b2**t)
        else:
            v_hat = v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def run_steps(make, p0, grads):
    p = Tensor(p0.copy())
    opt = make([p])
    for g in grads:
        p.grad = g
        opt.step()
    return p.data


def problem(dtype, seed=0, steps=20):
    rng = np.random.default_rng(seed)
    p0 = rng.normal(size=(3, 4)).astype(dtype)
    # Gradients that change sign and scale, so that amsgrad's maximum matters.
    grads = [
        (rng.normal(size=(3, 4)) * (3.0 if t % 5 == 0 else 0.3)).astype(dtype) for t in range(steps)
    ]
    return p0, grads


SGD_CASES = [
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True},
    {"momentum": 0.8, "nesterov": True, "weight_decay": 0.05},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 0.5, "dampening": 0.5, "weight_decay": 0.01},
    {"weight_decay": 0.1},
]


@pytest.mark.parametrize("options", SGD_CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sgd_20_steps_against_reference(options, dtype):
    p0, grads = problem(dtype)
    got = run_steps(lambda ps: optim.SGD(ps, lr=0.1, **options), p0, grads)
    ref = sgd_reference(
        p0.astype(np.float64), [g.astype(np.float64) for g in grads], 0.1, **options
    )
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=1e-12 if dtype == np.float64 else 2e-5, atol=1e-6)


ADAM_CASES = [
    ("Adam", {}),
    ("Adam", {"amsgrad": True}),
    ("Adam", {"amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {}),
    ("AdamW", {"weight_decay": 0.3}),
    ("AdamW", {"weight_decay": 0.1, "amsgrad": True, "betas": (0.8, 0.9)}),
]


@pytest.mark.parametrize(("name", "options"), ADAM_CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adam_family_20_steps_against_reference(name, options, dtype):
    p0, grads = problem(dtype, seed=1)
    got = run_steps(lambda ps: getattr(optim, name)(ps, lr=0.05, **options), p0, grads)
    decoupled = name == "AdamW"
    ref = adam_reference(
        p0.astype(np.float64),
        [g.astype(np.float64) for g in grads],
        0.05,
        options.get("betas", (0.9, 0.999)),
        1e-8,
        options.get("weight_decay", 1e-2 if decoupled else 0.0),
        options.get("amsgrad", False),
        decoupled,
    )
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=1e-11 if dtype == np.float64 else 1e-4, atol=1e-6)


def test_amsgrad_and_adamw_change_the_result():
    p0, grads = problem(np.float64, seed=2)
    plain = run_steps(lambda ps: optim.Adam(ps, lr=0.05), p0, grads)
    assert not np.allclose(
        run_steps(lambda ps: optim.Adam(ps, lr=0.05, amsgrad=True), p0, grads), plain
    )
    l2 = run_steps(lambda ps: optim.Adam(ps, lr=0.05, weight_decay=0.1), p0, grads)
    decoupled = run_steps(lambda ps: optim.AdamW(ps, lr=0.05, weight_decay=0.1), p0, grads)
    assert not np.allclose(l2, decoupled)


def test_optimizer_option_errors():
    p = param([1.0], [1.0])
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, dampening=0.1)
    with pytest.raises(ValueError):
        optim.Adam([p], betas=(1.0, 0.9))
    assert optim.AdamW([p]).weight_decay == 0.01
