"""The newer members (Dynamic Tanh, AdaNorm, Weight Standardization, Batch
Renormalization): values and every gradient against a composition of torch
operations written here from the formula (autograd does the backward),
backwards against finite differences, the detached factors checked to be
detached, bad arguments, NaN confinement, and the layers' state.

The registry tests (test_registry.py) cover the rest through the one seam:
the float64 twins in every dtype, memory layouts, out=, byte order, aliasing."""
import ml_dtypes
import numpy as np
import pytest
import torch

import fastnorm
from fastnorm import nn


def close(a, t, dtype, scale=1.0):
    t = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    rtol, atol = (3e-5, 3e-5 * scale) if dtype == np.float32 else (1e-10, 1e-10 * scale)
    np.testing.assert_allclose(np.asarray(a, np.float64), t, rtol=rtol, atol=atol)


def leaf(a):
    return torch.tensor(a, requires_grad=True)


# ---------------------------------------------------------------- Dynamic Tanh

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,channel_axis", [((4, 7, 33), -1), ((3, 5, 6, 7), 1), ((2, 6, 3, 4), -1),
                                                ((1, 70000), -1), ((9,), -1)])
def test_dynamic_tanh_matches_torch(shape, channel_axis, dtype, rng):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    C = shape[channel_axis]
    a = np.array([0.7], dtype)
    w = (1 + 0.3 * rng.standard_normal(C)).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    view = [1] * len(shape)
    view[channel_axis] = C
    tx, ta, tw, tb = leaf(x), leaf(a), leaf(w), leaf(b)
    ty = tw.reshape(view) * torch.tanh(ta * tx) + tb.reshape(view)
    ty.backward(torch.tensor(g))
    y = fastnorm.dynamic_tanh(x, a, w, b, channel_axis=channel_axis)
    close(y, ty, dtype)
    gx, ga, gw, gb = fastnorm.dynamic_tanh_backward(g, x, a, w, b, channel_axis=channel_axis)
    close(gx, tx.grad, dtype)
    n = x.size
    close(ga, ta.grad, dtype, np.sqrt(n))
    close(gw, tw.grad, dtype, np.sqrt(n))
    close(gb, tb.grad, dtype, np.sqrt(n))
    assert ga.shape == (1,) and ga.dtype == dtype


def test_float32_tanh_is_accurate_over_the_whole_range():
    """The rational float32 tanh: within 4e-7 relative of float64 tanh from
    1e-38 to beyond saturation, |tanh| <= 1, tanh(-x) = -tanh(x), NaN kept,
    +-inf to +-1, zeros to 0."""
    x = np.concatenate([np.linspace(-12, 12, 400001), np.geomspace(1e-38, 20, 20001)]).astype(np.float32)
    x = np.concatenate([x, -x])
    y = fastnorm.dynamic_tanh(x, 1.0)
    ref = np.tanh(x.astype(np.float64))
    rel = np.abs(y - ref) / np.maximum(np.abs(ref), np.finfo(np.float32).tiny)
    assert rel.max() <= 4e-7
    assert np.abs(y).max() <= 1.0
    assert np.array_equal(fastnorm.dynamic_tanh(-x, 1.0), -y)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38], np.float32)
    ys = fastnorm.dynamic_tanh(special, 1.0)
    assert np.isnan(ys[0]) and ys[1] == 1 and ys[2] == -1 and ys[5] == 1
    assert ys[3] == 0 and ys[4] == 0


def test_dynamic_tanh_alpha_forms_and_errors(rng):
    x = rng.standard_normal((3, 8)).astype(np.float32)
    ref = fastnorm.dynamic_tanh(x, np.array([0.5], np.float32))
    for a in (0.5, np.float32(0.5), np.array(0.5, np.float32), 1 / 2):
        assert np.array_equal(fastnorm.dynamic_tanh(x, a), ref)
    _, ga, _, _ = fastnorm.dynamic_tanh_backward(np.ones_like(x), x, 0.5)
    assert isinstance(ga, float)
    with pytest.raises(TypeError, match="alpha"):
        fastnorm.dynamic_tanh(x, np.ones(2, np.float32))
    with pytest.raises(TypeError, match="alpha"):
        fastnorm.dynamic_tanh(x, "0.5")
    with pytest.raises(TypeError, match="alpha"):
        fastnorm.dynamic_tanh(x, None)
    with pytest.raises(ValueError, match="weight"):
        fastnorm.dynamic_tanh(x, 0.5, np.ones(7, np.float32))
    with pytest.raises(ValueError, match="channel_axis"):
        fastnorm.dynamic_tanh(x[None], 0.5, channel_axis=0)


def test_dynamic_tanh_nan_stays_where_it_is(rng):
    x = rng.standard_normal((4, 6, 5)).astype(np.float32)
    x[1, 2, 3] = np.nan
    y = fastnorm.dynamic_tanh(x, 0.5, channel_axis=1)
    assert np.isnan(y).sum() == 1 and np.isnan(y[1, 2, 3])


# ---------------------------------------------------------------- AdaNorm

def _torch_ada_norm(tx, nd, scale, k, eps, detach=True):
    dims = tuple(range(tx.ndim - nd, tx.ndim))
    xc = tx - tx.mean(dim=dims, keepdim=True)
    std = xc.flatten(tx.ndim - nd).std(dim=-1).reshape(xc.shape[:tx.ndim - nd] + (1,) * nd)
    z = (xc - xc.mean(dim=dims, keepdim=True)) / (std + eps)
    gz = (k * z).detach() if detach else k * z
    return scale * (z - z * gz)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,nd", [((6, 64), 1), ((2, 3, 40), 1), ((3, 4, 5), 2), ((2, 5000), 1)])
def test_ada_norm_matches_torch(shape, nd, dtype, rng):
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    tx = leaf(x)
    ty = _torch_ada_norm(tx, nd, 2.0, 0.1, 1e-5)
    ty.backward(torch.tensor(g))
    y, mean, std = fastnorm.ada_norm(x, shape[len(shape) - nd:], 2.0, 0.1, return_stats=True)
    close(y, ty, dtype)
    gx = fastnorm.ada_norm_backward(g, x, mean, std, 2.0, 0.1)
    close(gx, tx.grad, dtype, 10)


def test_ada_norm_factor_is_detached(rng):
    """The gradient is the one with k z detached, not autograd through it."""
    x = rng.standard_normal((4, 32))
    g = rng.standard_normal((4, 32))
    grads = {}
    for detach in (True, False):
        tx = leaf(x)
        _torch_ada_norm(tx, 1, 1.0, 0.5, 1e-5, detach).backward(torch.tensor(g))
        grads[detach] = tx.grad.numpy()
    y, mean, std = fastnorm.ada_norm(x, 32, 1.0, 0.5, return_stats=True)
    gx = fastnorm.ada_norm_backward(g, x, mean, std, 1.0, 0.5)
    np.testing.assert_allclose(gx, grads[True], rtol=1e-10, atol=1e-10)
    assert np.abs(gx - grads[False]).max() > 1e-3


def test_ada_norm_errors_and_edges(rng):
    x = rng.standard_normal((3, 8)).astype(np.float32)
    for kw in ({"scale": "2"}, {"k": None}, {"eps": -1.0}):
        with pytest.raises((TypeError, ValueError)):
            fastnorm.ada_norm(x, 8, **kw)
    with pytest.raises(ValueError, match="normalized_shape"):
        fastnorm.ada_norm(x, 7)
    x[1, 3] = np.nan
    y = fastnorm.ada_norm(x, 8)
    assert np.isnan(y[1]).all() and np.isfinite(np.delete(y, 1, 0)).all()
    # a constant row: z = 0, y = 0 and its gradient is finite (the std term's limit)
    c = np.full((2, 16), 3.0)
    y, mean, std = fastnorm.ada_norm(c, 16, return_stats=True)
    assert np.array_equal(y, np.zeros_like(c))
    gx = fastnorm.ada_norm_backward(np.ones_like(c), c, mean, std)
    assert np.isfinite(gx).all()


# ---------------------------------------------------------------- Weight Standardization

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (5, 7), (64, 3, 7, 7), (4, 2, 3, 3, 3)])
def test_weight_standardization_matches_torch(shape, dtype, rng):
    w = (rng.standard_normal(shape) * 0.1 + 0.02).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    tw = leaf(w)
    flat = tw.reshape(shape[0], -1)
    ty = ((flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-5)).reshape(shape)
    ty.backward(torch.tensor(g))
    y, mean, std = fastnorm.weight_standardization(w, return_stats=True)
    close(y, ty, dtype)
    close(fastnorm.weight_standardization_backward(g, w, mean, std), tw.grad, dtype, 100)


def test_weight_standardization_layer_and_errors(rng):
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    layer = nn.WeightStandardization(w)
    out = layer()
    assert np.array_equal(out, fastnorm.weight_standardization(w))
    g = rng.standard_normal(w.shape).astype(np.float32)
    assert np.array_equal(layer.backward(g), layer.grad_weight)
    with pytest.raises(ValueError, match="2 dimensions"):
        fastnorm.weight_standardization(np.ones(5, np.float32))
    with pytest.raises(TypeError, match="weight"):
        fastnorm.weight_standardization(np.ones((3, 3), np.int32))


# ---------------------------------------------------------------- Batch Renormalization

def _torch_batch_renorm(tx, rm, rv, tw, tb, eps, r_max, d_max, detach=True):
    dims = (0, 2, 3)
    mu = tx.mean(dims)
    var = tx.var(dims, unbiased=False)
    sigma_b = torch.sqrt(var + eps)
    sigma = torch.sqrt(torch.tensor(rv) + eps)
    r = torch.clamp(sigma_b / sigma, 1 / r_max, r_max)
    d = torch.clamp((mu - torch.tensor(rm)) / sigma, -d_max, d_max)
    if detach:
        r, d = r.detach(), d.detach()
    v = lambda t: t.reshape(1, -1, 1, 1)  # noqa: E731
    xhat = (tx - v(mu)) / v(sigma_b) * v(r) + v(d)
    return xhat * v(tw) + v(tb), mu, sigma_b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_batch_renorm_matches_torch(dtype, channel_axis, rng):
    x = (rng.standard_normal((8, 6, 5, 4)) * 2 + 0.5).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    C = 6
    rm = (0.3 * rng.standard_normal(C)).astype(dtype)
    rv = (2.5 + rng.random(C)).astype(dtype)
    w = (1 + 0.2 * rng.standard_normal(C)).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    tx, tw, tb = leaf(x), leaf(w), leaf(b)
    ty, mu, sigma_b = _torch_batch_renorm(tx, rm, rv, tw, tb, 1e-5, 1.1, 0.2)
    ty.backward(torch.tensor(g))
    xin = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channel_axis == -1 else x
    gin = np.ascontiguousarray(np.moveaxis(g, 1, -1)) if channel_axis == -1 else g
    rm2, rv2 = rm.copy(), rv.copy()
    y, mean, invstd, r, d = fastnorm.batch_renorm(xin, rm2, rv2, w, b, True, 0.1, 1e-5, 1.1, 0.2,
                                                  channel_axis=channel_axis, return_stats=True)
    back = (lambda a: np.moveaxis(a, -1, 1)) if channel_axis == -1 else (lambda a: a)
    close(back(y), ty, dtype)
    assert np.isclose(r, 1.1).any() and not np.isclose(r, 1.1).all()  # some channels clipped, some not
    gx, gw, gb = fastnorm.batch_renorm_backward(gin, xin, mean, invstd, r, d, w, b, True,
                                                channel_axis=channel_axis)
    close(back(gx), tx.grad, dtype, 10)
    close(gw, tw.grad, dtype, 100)
    close(gb, tb.grad, dtype, 100)
    # the paper's running updates: on the mean and on sigma
    sigma = np.sqrt(rv.astype(np.float64) + 1e-5)
    new_sigma = sigma + 0.1 * (sigma_b.detach().numpy() - sigma)
    close(rm2, rm + 0.1 * (mu.detach().numpy() - rm), dtype)
    close(rv2, new_sigma ** 2 - 1e-5, dtype)


def test_batch_renorm_factors_are_detached(rng):
    x = rng.standard_normal((8, 3, 4, 4)) * 3
    g = rng.standard_normal(x.shape)
    rm, rv = np.zeros(3), np.ones(3) * 0.5
    w, b = np.ones(3), np.zeros(3)
    grads = {}
    for detach in (True, False):
        tx = leaf(x)
        _torch_batch_renorm(tx, rm, rv, torch.tensor(w), torch.tensor(b), 1e-5, 5.0, 5.0, detach)[0].backward(
            torch.tensor(g))
        grads[detach] = tx.grad.numpy()
    _, mean, invstd, r, d = fastnorm.batch_renorm(x, rm.copy(), rv.copy(), w, b, True, r_max=5.0, d_max=5.0,
                                                  return_stats=True)
    gx, _, _ = fastnorm.batch_renorm_backward(g, x, mean, invstd, r, d, w, b, True)
    np.testing.assert_allclose(gx, grads[True], rtol=1e-9, atol=1e-9)
    assert np.abs(gx - grads[False]).max() > 1e-3


def test_batch_renorm_eval_is_batch_norm_eval(rng):
    x = rng.standard_normal((4, 5, 3, 3)).astype(np.float32)
    rm, rv = rng.standard_normal(5).astype(np.float32), (1 + rng.random(5)).astype(np.float32)
    w, b = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    assert np.array_equal(fastnorm.batch_renorm(x, rm, rv, w, b, False), fastnorm.batch_norm(x, rm, rv, w, b, False))


@pytest.mark.parametrize("kw,match", [({"r_max": 0.5}, "r_max"), ({"d_max": -1.0}, "d_max"),
                                      ({"r_max": "3"}, "r_max"), ({"momentum": None}, "momentum")])
def test_batch_renorm_bad_arguments_change_nothing(kw, match, rng):
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        fastnorm.batch_renorm(x, rm, rv, training=True, **kw)
    assert np.array_equal(rm, np.zeros(3)) and np.array_equal(rv, np.ones(3))
    with pytest.raises(ValueError, match="running_mean"):
        fastnorm.batch_renorm(x, None, None, training=True)


def test_batch_renorm_layer_loads_batch_norm_state(rng):
    """BatchRenorm2d keeps BatchNorm2d's parameters and buffers: a torch
    BatchNorm2d state dict loads, and in eval it computes BatchNorm's output."""
    t = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        t.running_mean.uniform_(-1, 1)
        t.running_var.uniform_(0.5, 2)
        t.weight.uniform_(0.5, 1.5)
        t.bias.uniform_(-1, 1)
    t.eval()
    layer = nn.BatchRenorm2d(4, r_max=2.0, d_max=1.0)
    layer.load_state_dict(t.state_dict())
    layer.eval()
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    close(layer(x), t(torch.tensor(x)), np.float32)
    layer.train()
    layer(x)
    assert int(layer.num_batches_tracked) == int(t.num_batches_tracked) + 1


# ---------------------------------------------------------------- finite differences and layers

def _fd_check(f, args, i, grad_out, analytic, h=1e-6):
    """<grad_out, f(args with args[i] + h v) - f(... - h v)> / 2h equals
    <analytic, v> for a random direction v."""
    v = np.random.default_rng(3).standard_normal(np.shape(args[i]))
    plus, minus = list(args), list(args)
    plus[i] = args[i] + h * v
    minus[i] = args[i] - h * v
    numeric = np.sum(grad_out * (f(*plus) - f(*minus))) / (2 * h)
    assert np.isclose(numeric, np.sum(np.asarray(analytic) * v), rtol=1e-6, atol=1e-8)


def test_backwards_match_finite_differences(rng):
    x = rng.standard_normal((5, 12)) * 2
    g = rng.standard_normal(x.shape)
    a, w, b = np.array([0.6]), 1 + 0.2 * rng.standard_normal(12), rng.standard_normal(12)
    gx, ga, gw, gb = fastnorm.dynamic_tanh_backward(g, x, a, w, b)
    f = lambda x_, a_, w_, b_: fastnorm.dynamic_tanh(x_, a_, w_, b_)  # noqa: E731
    for i, grad in enumerate((gx, ga, gw, gb)):
        _fd_check(f, (x, a, w, b), i, g, grad)
    # AdaNorm with k = 0 (nothing detached) and Weight Standardization: plain derivatives
    _, mean, std = fastnorm.ada_norm(x, 12, 1.5, 0.0, return_stats=True)
    _fd_check(lambda x_: fastnorm.ada_norm(x_, 12, 1.5, 0.0), (x,), 0, g,
              fastnorm.ada_norm_backward(g, x, mean, std, 1.5, 0.0))
    wt = rng.standard_normal((4, 3, 2, 2))
    gt = rng.standard_normal(wt.shape)
    _, mean, std = fastnorm.weight_standardization(wt, return_stats=True)
    _fd_check(fastnorm.weight_standardization, (wt,), 0, gt,
              fastnorm.weight_standardization_backward(gt, wt, mean, std))
    # Batch Renorm without clipping (r, d inside their bounds) and with running stats = batch's:
    # then r = 1, d = 0 at the point and the forward is BatchNorm's there, r and d held constant
    xb = rng.standard_normal((6, 3, 2, 2))
    gbm = rng.standard_normal(xb.shape)
    wb, bb = 1 + 0.1 * rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = np.zeros(3), np.ones(3)
    _, mean, invstd, r, d = fastnorm.batch_renorm(xb, rm.copy(), rv.copy(), wb, bb, True, return_stats=True)
    grads = fastnorm.batch_renorm_backward(gbm, xb, mean, invstd, r, d, wb, bb, True)

    def fixed(x_, w_, b_):  # the forward with r, d frozen at the point's values
        m = x_.mean((0, 2, 3))
        s = np.sqrt(x_.var((0, 2, 3)) + 1e-5)
        v = lambda t: t.reshape(1, -1, 1, 1)  # noqa: E731
        return ((x_ - v(m)) / v(s) * v(r) + v(d)) * v(w_) + v(b_)
    for i, grad in enumerate(grads):
        _fd_check(fixed, (xb, wb, bb), i, gbm, grad)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_dynamic_tanh_layer_state_and_gradients(dtype, rng):
    layer = nn.DynamicTanh(16, alpha_init_value=0.8, dtype=dtype)
    assert set(layer.state_dict()) == {"alpha", "weight", "bias"}
    assert layer.alpha.shape == (1,) and float(layer.alpha[0]) == pytest.approx(0.8, rel=1e-2)
    x = rng.standard_normal((3, 16)).astype(dtype)
    y = layer(x)
    assert y.dtype == dtype
    gx = layer.backward(np.ones_like(y))
    assert gx.dtype == dtype and layer.grad_alpha.shape == (1,) and layer.grad_weight.shape == (16,)
    t = torch.nn.Module()
    t.alpha = torch.nn.Parameter(torch.ones(1) * 0.3)
    t.weight = torch.nn.Parameter(torch.ones(16) * 2)
    t.bias = torch.nn.Parameter(torch.zeros(16))
    layer.load_state_dict(t.state_dict())
    assert float(layer.alpha[0]) == pytest.approx(0.3, rel=1e-2)


# ---------------------------------------------------------------- Switchable Normalization

def _torch_switchable_norm(tx, rm, rv, tw, tb, tmw, tvw, training, eps=1e-5):
    """The reference SwitchNorm2d's forward, written from its definitions."""
    N, C = tx.shape[:2]
    v = tx.reshape(N, C, -1)
    mean_in = v.mean(-1, keepdim=True)
    var_in = v.var(-1, keepdim=True)
    mean_ln = mean_in.mean(1, keepdim=True)
    temp = var_in + mean_in ** 2
    var_ln = temp.mean(1, keepdim=True) - mean_ln ** 2
    if training:
        mean_bn = mean_in.mean(0, keepdim=True)
        var_bn = temp.mean(0, keepdim=True) - mean_bn ** 2
    else:
        mean_bn, var_bn = torch.tensor(rm).view(1, C, 1), torch.tensor(rv).view(1, C, 1)
    mw, vw = torch.softmax(tmw, 0), torch.softmax(tvw, 0)
    mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn
    var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn
    y = ((v - mean) / (var + eps).sqrt()).view_as(tx)
    return y * tw.view(1, C, *([1] * (tx.ndim - 2))) + tb.view(1, C, *([1] * (tx.ndim - 2))), mean_bn, var_bn


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_switchable_norm_matches_torch(dtype, training, channel_axis, rng):
    x = (rng.standard_normal((4, 6, 5, 3)) * 2 + 0.7).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    C = 6
    rm = (0.2 * rng.standard_normal(C)).astype(dtype)
    rv = (1 + rng.random(C)).astype(dtype)
    w, b = (1 + 0.2 * rng.standard_normal(C)).astype(dtype), rng.standard_normal(C).astype(dtype)
    mw, vw = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    tx, tw, tb, tmw, tvw = leaf(x), leaf(w), leaf(b), leaf(mw), leaf(vw)
    ty, mean_bn, var_bn = _torch_switchable_norm(tx, rm, rv, tw, tb, tmw, tvw, training)
    ty.backward(torch.tensor(g))
    xin = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channel_axis == -1 else x
    gin = np.ascontiguousarray(np.moveaxis(g, 1, -1)) if channel_axis == -1 else g
    back = (lambda a: np.moveaxis(a, -1, 1)) if channel_axis == -1 else (lambda a: a)
    rm2, rv2 = rm.copy(), rv.copy()
    y, *stats = fastnorm.switchable_norm(xin, rm2, rv2, w, b, mw, vw, training, 0.1,
                                         channel_axis=channel_axis, return_stats=True)
    close(back(y), ty, dtype)
    gx, gw, gb, gmw, gvw = fastnorm.switchable_norm_backward(gin, xin, *stats, w, b, mw, vw, training,
                                                             channel_axis=channel_axis)
    close(back(gx), tx.grad, dtype, 10)
    for got, want in ((gw, tw.grad), (gb, tb.grad), (gmw, tmw.grad), (gvw, tvw.grad)):
        close(got, want, dtype, 100)
    if training:  # torch's momentum convention on the batch statistics
        close(rm2, 0.9 * rm + 0.1 * mean_bn.detach().numpy().ravel(), dtype)
        close(rv2, 0.9 * rv + 0.1 * var_bn.detach().numpy().ravel(), dtype)
    else:
        assert np.array_equal(rm2, rm) and np.array_equal(rv2, rv)


def test_switchable_norm_errors_and_layer(rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="mean_weight"):
        fastnorm.switchable_norm(x, rm, rv, mean_weight=np.ones(2, np.float32), training=True)
    with pytest.raises(ValueError, match="spatial"):
        fastnorm.switchable_norm(x[:, :, :1, :1], rm, rv, training=True)
    with pytest.raises(ValueError, match="running_mean"):
        fastnorm.switchable_norm(x, None, None, training=False)
    assert np.array_equal(rm, np.zeros(3)) and np.array_equal(rv, np.ones(3))
    layer = nn.SwitchableNorm2d(3)
    assert set(layer.state_dict()) == {"weight", "bias", "mean_weight", "var_weight", "running_mean",
                                       "running_var"}
    y = layer(x)
    layer.backward(np.ones_like(y))
    assert layer.grad_mean_weight.shape == (3,) and layer.grad_var_weight.shape == (3,)
    assert np.abs(layer.running_mean).max() > 0
    with pytest.raises(ValueError, match="4-D"):
        layer(x[0])


# ---------------------------------------------------------------- PowerNorm

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("warmup", [True, False])
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_power_norm_matches_the_reference_formulas(dtype, warmup, channel_axis, rng):
    """Forward, running update and the parameter gradients against torch
    autograd of the forward; grad_x and the new ema_gz against the
    reference PowerFunction's approximate backward written in torch."""
    x = (rng.standard_normal((6, 5, 4, 3)) * 2 + 0.5).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    C = 5
    phi = (1 + rng.random(C)).astype(dtype)
    ema = (0.2 * rng.standard_normal(C)).astype(dtype)
    w, b = (1 + 0.2 * rng.standard_normal(C)).astype(dtype), rng.standard_normal(C).astype(dtype)
    tx, tw, tb = leaf(x), leaf(w), leaf(b)
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    psi2 = (tx * tx).mean((0, 2, 3))
    used = psi2 if warmup else torch.tensor(phi)
    z = tx / v(torch.sqrt(used + 1e-5))
    ty = v(tw) * z + v(tb)
    ty.backward(torch.tensor(g))
    # the reference's backward: approx = g w - (1 - abkw) ema z, grad_x = approx / sqrt(psi2 + eps)
    zd, tg = z.detach(), torch.tensor(g)
    approx = tg * v(torch.tensor(w)) - (1 - 0.9) * v(torch.tensor(ema)) * zd
    want_gx = approx / v(torch.sqrt(psi2.detach() + 1e-5))
    want_ema = torch.tensor(ema) + (approx * zd).mean((0, 2, 3))
    xin = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channel_axis == -1 else x
    gin = np.ascontiguousarray(np.moveaxis(g, 1, -1)) if channel_axis == -1 else g
    back = (lambda a: np.moveaxis(a, -1, 1)) if channel_axis == -1 else (lambda a: a)
    phi2 = phi.copy()
    y, s_psi2, s_phi = fastnorm.power_norm(xin, phi2, w, b, True, 0.1, warmup=warmup, channel_axis=channel_axis,
                                           return_stats=True)
    close(back(y), ty, dtype)
    close(phi2, 0.9 * phi + 0.1 * psi2.detach().numpy(), dtype)
    gx, gw, gb, new_ema = fastnorm.power_norm_backward(gin, xin, s_psi2, s_phi, ema, w, b, 0.9, True,
                                                       channel_axis=channel_axis)
    close(back(gx), want_gx, dtype, 10)
    close(new_ema, want_ema, dtype, 10)
    close(gw, tw.grad, dtype, 100)
    close(gb, tb.grad, dtype, 100)
    assert np.array_equal(ema, ema)  # the argument is not written: the new statistic is returned


def test_power_norm_eval_backward_is_exact(rng):
    x = rng.standard_normal((4, 3, 5))
    g = rng.standard_normal(x.shape)
    phi, w = 1 + rng.random(3), 1 + 0.1 * rng.standard_normal(3)
    y, psi2, used = fastnorm.power_norm(x, phi, w, None, False, return_stats=True)
    gx, gw, gb, ema = fastnorm.power_norm_backward(g, x, psi2, used, np.ones(3), w, None, 0.9, False)
    np.testing.assert_allclose(gx, g * (w / np.sqrt(phi + 1e-5))[None, :, None], rtol=1e-12)
    assert gb is None and np.array_equal(ema, np.ones(3))


def test_power_norm_layer_warmup_and_state(rng):
    layer = nn.PowerNorm2d(3, warmup_iters=2)
    assert set(layer.state_dict()) == {"weight", "bias", "running_phi", "ema_gz", "iters"}
    x = (rng.standard_normal((4, 3, 2, 2)) * 3).astype(np.float32)
    psi2 = (x.astype(np.float64) ** 2).mean((0, 2, 3))
    y1 = layer(x)   # t = 1 <= warmup: the batch statistic normalizes; cumulative average: phi = psi2
    np.testing.assert_allclose(layer.running_phi, psi2, rtol=1e-5)
    np.testing.assert_allclose(y1, x / np.sqrt(psi2 + 1e-5)[None, :, None, None], rtol=1e-5, atol=1e-6)
    layer.backward(np.ones_like(y1))
    assert np.abs(layer.ema_gz).max() > 0
    layer(x)
    layer(x)  # t = 3 > warmup: running_phi normalizes
    assert int(layer.iters) == 3
    with pytest.raises(ValueError, match="running_phi"):
        fastnorm.power_norm(x, None, training=True)


# ---------------------------------------------------------------- cosine-normalized linear layer

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("xshape,out_features", [((8, 32), 16), ((2, 3, 20), 7), ((1, 300), 300)])
def test_cosine_linear_matches_torch(xshape, out_features, centered, dtype, rng):
    x = (rng.standard_normal(xshape) + 0.3).astype(dtype)
    w = (0.2 * rng.standard_normal((out_features, xshape[-1])) + 0.01).astype(dtype)
    g = rng.standard_normal(xshape[:-1] + (out_features,)).astype(dtype)
    tx, tw = leaf(x), leaf(w)
    cx = tx - tx.mean(-1, keepdim=True) if centered else tx
    cw = tw - tw.mean(-1, keepdim=True) if centered else tw
    ty = torch.nn.functional.normalize(cx, dim=-1) @ torch.nn.functional.normalize(cw, dim=-1).T
    ty.backward(torch.tensor(g))
    y, nx, nw = fastnorm.cosine_linear(x, w, centered=centered, return_stats=True)
    close(y, ty, dtype)
    gx, gw = fastnorm.cosine_linear_backward(g, x, w, nx, nw, centered=centered)
    close(gx, tx.grad, dtype, 10)
    close(gw, tw.grad, dtype, 10)
    # every output is a cosine
    assert np.abs(y).max() <= 1 + 1e-6


def test_cosine_linear_zero_rows_errors_and_layer(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    x[2] = 0
    w = rng.standard_normal((3, 6)).astype(np.float32)
    y = fastnorm.cosine_linear(x, w)
    assert np.array_equal(y[2], np.zeros(3)) and np.isfinite(y).all()
    with pytest.raises(ValueError, match="weight"):
        fastnorm.cosine_linear(x, w[:, :5])
    with pytest.raises(TypeError, match="weight"):
        fastnorm.cosine_linear(x, w.astype(np.float64))
    layer = nn.CosineLinear(6, 3)
    assert layer.weight.shape == (3, 6) and set(layer.state_dict()) == {"weight"}
    t = torch.nn.Linear(6, 3, bias=False)
    layer.load_state_dict(t.state_dict())
    assert np.array_equal(layer.weight, t.weight.detach().numpy())
    out = layer(x)
    gx = layer.backward(np.ones_like(out))
    assert gx.shape == x.shape and layer.grad_weight.shape == (3, 6)


# ---------------------------------------------------------------- Batch Layer Normalization

def _torch_bln(tx, tw, tb, B, eps=1e-3):
    N, d = tx.shape[0], tx.shape[-1]
    x2 = tx.reshape(N, -1)
    xb = ((x2 - x2.mean(0)) / torch.sqrt(x2.var(0, unbiased=False) + eps)).reshape(tx.shape)
    xf = (tx - tx.mean(-1, keepdim=True)) / torch.sqrt(tx.var(-1, unbiased=False, keepdim=True) + eps)
    return tw * ((1 / B - 1e-4) * xf + (1 - 1 / B - 1e-4) * xb) / d ** 0.5 + tb


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,batch_size", [((16, 8), None), ((6, 5, 12), None), ((9, 40), 32)])
def test_batch_layer_norm_matches_torch(shape, batch_size, dtype, rng):
    x = (rng.standard_normal(shape) * 2 + 0.4).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    d = shape[-1]
    K = int(np.prod(shape[1:]))
    w, b = (1 + 0.2 * rng.standard_normal(d)).astype(dtype), rng.standard_normal(d).astype(dtype)
    tx, tw, tb = leaf(x), leaf(w), leaf(b)
    ty = _torch_bln(tx, tw, tb, shape[0] if batch_size is None else batch_size)
    ty.backward(torch.tensor(g))
    rm, rv = np.zeros(K, dtype), np.ones(K, dtype)
    y, *stats = fastnorm.batch_layer_norm(x, rm, rv, w, b, True, 0.1, 1e-3, batch_size, return_stats=True)
    close(y, ty, dtype)
    gx, gw, gb = fastnorm.batch_layer_norm_backward(g, x, *stats, w, b, True, batch_size)
    close(gx, tx.grad, dtype, 10)
    close(gw, tw.grad, dtype, 100)
    close(gb, tb.grad, dtype, 100)
    x2 = x.reshape(shape[0], -1).astype(np.float64)
    close(rm, 0.1 * x2.mean(0), dtype)
    close(rv, 0.9 + 0.1 * x2.var(0, ddof=1), dtype)


def test_batch_layer_norm_eval_and_errors(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    rm, rv = rng.standard_normal(6).astype(np.float32), (1 + rng.random(6)).astype(np.float32)
    y = fastnorm.batch_layer_norm(x, rm, rv, training=False)
    x64 = x.astype(np.float64)
    xb = (x64 - rm) / np.sqrt(rv + 1e-3)
    xf = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-3)
    np.testing.assert_allclose(y, ((0.25 - 1e-4) * xf + (0.75 - 1e-4) * xb) / np.sqrt(6), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        fastnorm.batch_layer_norm(x, rm, rv, batch_size=0)
    with pytest.raises(ValueError, match="2 dimensions"):
        fastnorm.batch_layer_norm(x[0], rm, rv)
    layer = nn.BatchLayerNorm(6)
    layer(x)
    layer.backward(np.ones_like(x))
    assert layer.grad_weight.shape == (6,) and np.abs(layer.running_mean).max() > 0


# ---------------------------------------------------------------- cluster-based normalization

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cluster_norm_matches_torch(dtype, rng):
    x = (rng.standard_normal((50, 12)) * 2).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    c = rng.integers(0, 4, 50)
    mu = rng.standard_normal((4, 12)).astype(dtype)
    ls = (0.3 * rng.standard_normal((4, 12))).astype(dtype)
    tx, tmu, tls = leaf(x), leaf(mu), leaf(ls)
    tc = torch.tensor(c)
    ty = (tx - tmu[tc]) / (torch.exp(tls[tc]) + 1e-3)
    ty.backward(torch.tensor(g))
    close(fastnorm.cluster_norm(x, c, mu, ls), ty, dtype)
    gx, gm, gs = fastnorm.cluster_norm_backward(g, x, c, mu, ls)
    close(gx, tx.grad, dtype)
    close(gm, tmu.grad, dtype, 10)
    close(gs, tls.grad, dtype, 10)


def test_cluster_norm_bad_ids(rng):
    x = rng.standard_normal((5, 3)).astype(np.float32)
    mu = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="cluster ids"):
        fastnorm.cluster_norm(x, np.array([0, 1, 2, 0, 1]), mu, mu)
    with pytest.raises(ValueError, match="one id per row"):
        fastnorm.cluster_norm(x, np.array([0, 1]), mu, mu)
    with pytest.raises(TypeError, match="integer"):
        fastnorm.cluster_norm(x, np.zeros(5), mu, mu)
    with pytest.raises(ValueError, match="log_scale"):
        fastnorm.cluster_norm(x, np.zeros(5, int), mu, np.zeros((3, 3), np.float32))


def _torch_mixture_norm(tx, trho, tE, tnu, eps=1e-5):
    """Mixture Normalization from its definition: per-row posteriors of the
    diagonal Gaussian components (torch.distributions), then the weighted
    normalizations."""
    pi = torch.softmax(trho, 0)
    V = torch.nn.functional.softplus(tnu)
    comp = torch.distributions.Normal(tE[None], V.sqrt()[None])       # (1, K, D)
    logp = torch.log(pi)[None] + comp.log_prob(tx[:, None]).sum(-1)  # (B, K)
    tau = torch.softmax(logp, 1)
    terms = tau[..., None] / torch.sqrt(pi + eps)[None, :, None] * (tx[:, None] - tE[None]) / torch.sqrt(V + eps)[None]
    return terms.sum(1), tau


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K", [1, 3])
def test_mixture_norm_matches_torch(K, dtype, rng):
    x = rng.standard_normal((40, 6)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    rho = (0.3 * rng.standard_normal(K)).astype(dtype)
    E = (0.4 * rng.standard_normal((K, 6))).astype(dtype)
    nu = (0.5 + 0.3 * rng.standard_normal((K, 6))).astype(dtype)
    tx, trho, tE, tnu = leaf(x), leaf(rho), leaf(E), leaf(nu)
    ty, ttau = _torch_mixture_norm(tx, trho, tE, tnu)
    ty.backward(torch.tensor(g))
    y, tau = fastnorm.mixture_norm(x, rho, E, nu, return_stats=True)
    close(y, ty, dtype)
    close(tau, ttau, dtype)
    grads = fastnorm.mixture_norm_backward(g, x, tau, rho, E, nu)
    for got, want in zip(grads, (tx.grad, trho.grad, tE.grad, tnu.grad)):
        close(got, want, dtype, 100)
    if K == 3:  # the posteriors matter: neither 0 nor 1 everywhere
        assert 0.05 < float(tau.max(1).mean()) < 0.99
