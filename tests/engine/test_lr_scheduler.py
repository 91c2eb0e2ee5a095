"""engine.optim.lr_scheduler against torch.optim.lr_scheduler's documented formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine import Tensor, optim
from engine.optim import lr_scheduler


def make_opt(lr=0.5, kind="sgd"):
    p = Tensor(np.zeros(2))
    return p, (optim.SGD([p], lr=lr) if kind == "sgd" else optim.Adam([p], lr=lr))


def rates(scheduler, steps, metrics=None):
    out = []
    for i in range(steps):
        scheduler.step() if metrics is None else scheduler.step(metrics[i])
        out.append(scheduler.get_last_lr()[0])
        assert scheduler.optimizer.lr == out[-1]
    return np.array(out)


@pytest.mark.parametrize(("step_size", "gamma"), [(1, 0.5), (3, 0.1), (7, 0.9)])
def test_step_lr(step_size, gamma):
    _, opt = make_opt()
    s = lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    assert opt.lr == 0.5 and s.get_last_lr() == [0.5]  # construction is epoch 0
    expected = [0.5 * gamma ** (epoch // step_size) for epoch in range(1, 21)]
    np.testing.assert_allclose(rates(s, 20), expected, rtol=1e-12)


@pytest.mark.parametrize(("t_max", "eta_min"), [(5, 0.0), (10, 0.01), (1, 0.1)])
def test_cosine_annealing(t_max, eta_min):
    _, opt = make_opt(kind="adam")
    s = lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=eta_min)
    # eta_min + (eta_max - eta_min) (1 + cos(pi T_cur / T_max)) / 2, periodic past T_max.
    expected = [
        eta_min + (0.5 - eta_min) * (1 + math.cos(math.pi * e / t_max)) / 2 for e in range(1, 31)
    ]
    np.testing.assert_allclose(rates(s, 30), expected, rtol=1e-9, atol=1e-12)


def plateau_reference(
    metrics, lr, mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps=1e-8
):
    """ReduceLROnPlateau as documented: reduce after more than `patience` epochs without
    improvement (relative or absolute threshold), then wait `cooldown` epochs."""
    best = math.inf if mode == "min" else -math.inf
    bad = cool = 0
    out = []
    for m in metrics:
        if mode == "min":
            better = m < (best * (1 - threshold) if threshold_mode == "rel" else best - threshold)
        else:
            better = m > (best * (1 + threshold) if threshold_mode == "rel" else best + threshold)
        if better:
            best, bad = m, 0
        else:
            bad += 1
        if cool > 0:
            cool, bad = cool - 1, 0
        if bad > patience:
            new = max(lr * factor, min_lr)
            if lr - new > eps:
                lr = new
            cool, bad = cooldown, 0
        out.append(lr)
    return np.array(out)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"patience": 2, "factor": 0.5},
        {"patience": 1, "cooldown": 2, "min_lr": 0.05},
        {"mode": "max", "threshold_mode": "abs", "threshold": 0.05, "patience": 0},
        {"threshold": 0.2, "patience": 1},
    ],
    ids=str,
)
def test_reduce_on_plateau(options):
    rng = np.random.default_rng(0)
    metrics = list(np.r_[np.linspace(1.0, 0.5, 8), 0.5 + 0.05 * rng.random(32)])
    _, opt = make_opt()
    s = lr_scheduler.ReduceLROnPlateau(opt, **options)
    full = {
        "mode": "min",
        "factor": 0.1,
        "patience": 10,
        "threshold": 1e-4,
        "threshold_mode": "rel",
        "cooldown": 0,
        "min_lr": 0.0,
    } | options
    expected = plateau_reference(metrics, 0.5, **full)
    got = rates(s, 40, metrics)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[-1] < 0.5  # the schedule did reduce


def test_schedulers_drive_the_optimizer_and_reject_bad_arguments():
    p, opt = make_opt(lr=1.0)
    s = lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    p.grad = np.ones(2)
    opt.step()
    s.step()
    opt.step()
    np.testing.assert_allclose(p.data, [-1.5, -1.5])  # 1.0 then 0.5
    with pytest.raises(ValueError):
        lr_scheduler.StepLR(opt, step_size=0)
    with pytest.raises(ValueError):
        lr_scheduler.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(ValueError):
        lr_scheduler.ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError):
        lr_scheduler.ReduceLROnPlateau(opt, mode="up")
    assert optim.lr_scheduler is lr_scheduler
