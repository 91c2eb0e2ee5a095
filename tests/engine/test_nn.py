"""engine.nn: modules, state dicts, the article's examples, losses."""

from __future__ import annotations

import io

import numpy as np
import pytest

import engine
from engine import Tensor, Value, gradcheck, nn, no_grad


def test_article_tanh_neuron():
    x1, x2 = Value(2.0, label="x1"), Value(0.0, label="x2")
    w1, w2 = Value(-3.0, label="w1"), Value(1.0, label="w2")
    b = Value(6.8813735870195432, label="b")
    n = x1 * w1 + x2 * w2 + b
    o = n.tanh()
    o.backward()
    assert round(o.item(), 4) == 0.7071
    np.testing.assert_allclose(
        [x1.grad, w1.grad, x2.grad, w2.grad], [-1.5, 1.0, 0.5, 0.0], atol=1e-12
    )


def test_article_tanh_neuron_through_exp():
    x1, x2, w1, w2 = Value(2.0), Value(0.0), Value(-3.0), Value(1.0)
    b = Value(6.8813735870195432)
    n = x1 * w1 + x2 * w2 + b
    e = (2 * n).exp()
    o = (e - 1) / (e + 1)
    o.backward()
    assert round(o.item(), 4) == 0.7071
    np.testing.assert_allclose(
        [x1.grad, w1.grad, x2.grad, w2.grad], [-1.5, 1.0, 0.5, 0.0], atol=1e-12
    )


def test_article_training_loop():
    xs = [[2, 3, -1], [3, -1, 0.5], [0.5, 1, 1], [1, 1, -1]]
    ys = [1, -1, -1, 1]
    n = nn.MLP(3, [4, 4, 1], seed=0)
    losses = []
    for _ in range(100):
        ypred = [n(x) for x in xs]
        loss = sum((yout - ygt) ** 2 for ygt, yout in zip(ys, ypred, strict=True))
        for p in n.parameters():
            p.grad = 0.0
        loss.backward()
        for p in n.parameters():
            p.data += -0.05 * p.grad
        losses.append(loss.item())
    assert ypred[0].shape == ()
    assert losses[-1] < 0.01 * losses[0]


def test_mlp_shapes_and_state_dict_names():
    m = nn.MLP(3, [8, 5, 2], activation="relu", seed=1)
    assert m(np.ones((7, 3))).shape == (7, 2)
    assert m(Tensor(np.ones((7, 3)))).shape == (7, 2)
    assert m([1.0, 2.0, 3.0]).shape == (2,)
    assert nn.MLP(3, [4, 1])(np.ones((5, 3))).shape == (5, 1)
    assert nn.MLP(3, [4, 1])([1, 2, 3]).shape == ()
    sd = m.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {
        "layers.0.weight": (8, 3),
        "layers.0.bias": (8,),
        "layers.1.weight": (5, 8),
        "layers.1.bias": (5,),
        "layers.2.weight": (2, 5),
        "layers.2.bias": (2,),
    }
    assert len(m.parameters()) == 6


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_mlp_activations_and_gradcheck(activation):
    m = nn.MLP(3, [4, 2], activation=activation, output_activation="sigmoid", seed=2)
    x = Tensor(np.random.default_rng(0).normal(size=(5, 3)))
    out = m(x)
    assert np.all((out.data > 0) & (out.data < 1))
    params = m.parameters()

    def f(x, *ps):
        return (m(x) * np.arange(10.0).reshape(5, 2)).sum()

    assert gradcheck(f, x, *params)


def test_mlp_seed_dtype_and_bad_activation():
    a, b = nn.MLP(2, [3, 1], seed=5), nn.MLP(2, [3, 1], seed=5)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        np.testing.assert_array_equal(va, vb)
    assert not np.array_equal(
        nn.MLP(2, [3, 1], seed=6).state_dict()["layers.0.weight"], a.state_dict()["layers.0.weight"]
    )
    m32 = nn.MLP(2, [3, 1], seed=5, dtype=np.float32)
    assert all(p.dtype == np.float32 for p in m32.parameters())
    assert m32(np.ones((4, 2))).dtype == np.float32
    with pytest.raises(ValueError, match="activation"):
        nn.MLP(2, [3], activation="gelu")


def test_linear_init():
    rng = np.random.default_rng(0)
    k = nn.Linear(400, 300, init="kaiming", rng=rng)
    assert k.weight.shape == (300, 400) and k.bias.shape == (300,)
    np.testing.assert_allclose(k.weight.data.std(), np.sqrt(2 / 400), rtol=0.05)
    x = nn.Linear(400, 300, rng=rng)
    assert np.abs(x.weight.data).max() <= np.sqrt(6 / 700)
    assert nn.Linear(3, 2, bias=False).parameters()[0].shape == (2, 3)
    assert len(nn.Linear(3, 2, bias=False).parameters()) == 1


def test_neuron_and_layer():
    neuron = nn.Neuron(3, rng=np.random.default_rng(0))
    assert neuron([1.0, 2.0, 3.0]).shape == ()
    assert neuron(np.ones((4, 3))).shape == (4,)
    layer = nn.Layer(3, 5)
    out = layer(np.ones((2, 3)))
    assert out.shape == (2, 5) and np.all(np.abs(out.data) < 1)


def test_state_dict_npz_round_trip_and_copy_semantics():
    m = nn.MLP(3, [4, 2], seed=0)
    buf = io.BytesIO()
    np.savez(buf, **m.state_dict())
    buf.seek(0)
    other = nn.MLP(3, [4, 2], seed=1)
    other.load_state_dict(dict(np.load(buf)))
    x = np.ones((2, 3))
    np.testing.assert_array_equal(other(x).data, m(x).data)
    sd = m.state_dict()
    sd["layers.0.bias"] += 1  # a copy: the model does not change
    assert not m.layers[0].bias.data.any()
    m32 = nn.MLP(3, [4, 2], seed=2, dtype=np.float32)
    m32.load_state_dict(m.state_dict())
    assert m32.layers[0].weight.dtype == np.float32


def test_load_state_dict_errors():
    m = nn.MLP(3, [4, 2], seed=0)
    sd = m.state_dict()
    before = m.layers[0].weight.data.copy()
    missing = {k: v for k, v in sd.items() if k != "layers.1.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['layers.1.bias'\]"):
        m.load_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected keys"):
        m.load_state_dict({**sd, "layers.9.weight": np.ones(2)})
    bad = {**sd, "layers.0.weight": np.zeros((3, 4))}
    with pytest.raises(ValueError, match=r"shape mismatch for 'layers.0.weight'"):
        m.load_state_dict(bad)
    np.testing.assert_array_equal(m.layers[0].weight.data, before)


def test_zero_grad_and_no_grad_inference():
    m = nn.MLP(2, [3, 1], seed=0)
    m(np.ones((4, 2))).sum().backward()
    assert any(p.grad.any() for p in m.parameters())
    m.zero_grad()
    assert all(not p.grad.any() for p in m.parameters())
    with no_grad():
        out = m(np.ones((4, 2)))
    assert not out.requires_grad


def test_losses_values_and_target_gradients():
    pred = Tensor([[0.5], [2.0]])
    target = Tensor([[1.0], [0.0]])
    loss = nn.mse_loss(pred, target)
    loss.backward()
    np.testing.assert_allclose(loss.item(), (0.25 + 4.0) / 2)
    np.testing.assert_allclose(pred.grad, [[-0.5], [2.0]])
    np.testing.assert_allclose(target.grad, [[0.5], [-2.0]])
    x = Tensor([0.0, 2.0])
    y = Tensor([1.0, 0.0])
    bce = nn.binary_cross_entropy_with_logits(x, y)
    bce.backward()
    ref = np.mean([np.log(2.0), np.log1p(np.exp(2.0))])
    np.testing.assert_allclose(bce.item(), ref)
    np.testing.assert_allclose(x.grad, (1 / (1 + np.exp(-x.data)) - y.data) / 2)
    np.testing.assert_allclose(y.grad, -x.data / 2)
    f32 = Tensor(np.zeros((3, 4), dtype=np.float32))
    assert nn.cross_entropy(f32, [0, 1, 2]).dtype == np.float32
    assert nn.mse_loss(f32, np.ones((3, 4))).dtype == np.float32


def test_glorot_init_draws_weights_and_biases_within_the_bound() -> None:
    from engine.nn import Linear

    layer = Linear(30, 100, init="glorot", rng=np.random.default_rng(0))
    bound = np.sqrt(6.0 / 130)
    assert np.abs(layer.weight.data).max() <= bound
    assert np.abs(layer.bias.data).max() <= bound
    assert np.abs(layer.bias.data).max() > bound / 2  # not zeros
    assert np.all(Linear(30, 100, init="xavier").bias.data == 0)
    with pytest.raises(ValueError, match="unknown init"):
        Linear(2, 2, init="uniform")


def test_dropout_train_and_eval():
    x = Tensor(np.ones((200, 50)))
    drop = nn.Dropout(0.3, seed=0)
    assert drop.training
    out = drop(x)
    kept = out.data != 0
    # Kept elements are scaled by 1 / (1 - p); about p of them are zeroed.
    np.testing.assert_allclose(out.data[kept], 1 / 0.7)
    assert abs(1 - kept.mean() - 0.3) < 0.02
    out.sum().backward()
    np.testing.assert_allclose(x.grad, kept / 0.7)
    assert drop.eval() is drop and not drop.training
    assert drop(x) is x
    drop.train()
    assert not np.array_equal(drop(x).data, out.data)  # a fresh mask each call
    assert nn.Dropout(0.0)(x) is x
    np.testing.assert_array_equal(nn.Dropout(1.0)(x).data, 0.0)
    with pytest.raises(ValueError):
        nn.Dropout(1.5)
    x32 = Tensor(np.ones(10, np.float32))
    assert nn.Dropout(0.5, seed=1)(x32).dtype == np.float32


def test_dropout_gradcheck_with_a_fixed_mask():
    x = Tensor(np.random.default_rng(0).normal(size=(4, 3)))

    def f(t):
        return nn.Dropout(0.4, seed=7)(t).tanh()  # the same mask at every evaluation

    assert engine.gradcheck(f, x)


def test_mlp_dropout_train_eval_and_state_dict():
    x = np.random.default_rng(1).normal(size=(64, 4))
    model = nn.MLP(4, [32, 32, 2], seed=0, dropout=0.5)
    plain = nn.MLP(4, [32, 32, 2], seed=0)
    assert list(model.state_dict()) == list(plain.state_dict())
    for (_, a), (_, b) in zip(model.named_parameters(), plain.named_parameters(), strict=True):
        np.testing.assert_array_equal(a.data, b.data)  # same seed, same weights
    train_out = model(x).data
    assert not np.allclose(train_out, plain(x).data)
    model.eval()
    assert all(not m.training for m in model.modules())
    np.testing.assert_array_equal(model(x).data, plain(x).data)
    model.train()
    assert all(m.training for m in model.modules())
    again = nn.MLP(4, [32, 32, 2], seed=0, dropout=0.5)
    np.testing.assert_array_equal(again(x).data, train_out)  # reproducible from the seed
    assert nn.MLP(4, [2], dropout=0.5)(x).shape == (64, 2)
    # The last layer's output is never dropped.
    one = nn.MLP(4, [3], seed=0, dropout=0.9)
    np.testing.assert_array_equal(one(x).data, nn.MLP(4, [3], seed=0)(x).data)
