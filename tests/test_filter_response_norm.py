"""Filter Response Normalization + TLU: kernels vs the reference twin, a torch
composition, finite differences, layer, errors."""
import numpy as np
import pytest
import torch

import fastnorm
from fastnorm import nn
from fastnorm import reference as ref
from conftest import numeric_gradient
from test_channel_norms import make_input

# (1, 5, 70): one sample split across threads; (2, 300, 9): channels-last rows over 1 KiB
SHAPES = [(2, 3, 5), (3, 4, 5, 6), (2, 3, 2, 3, 4), (4, 6), (1, 5, 70), (2, 300, 9)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "other_memory_format", "strided"])
@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("with_tau", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(isa, rng, shape, with_tau, channel_axis, layout, dtype):
    x = make_input(shape, channel_axis, layout, dtype, rng)
    C = shape[1]
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    t = (rng.standard_normal(C) * 0.3).astype(dtype) if with_tau else None
    g = rng.standard_normal(x.shape).astype(dtype)
    before = x.copy()
    tol = dict(rtol=3e-5, atol=3e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)
    for n_threads in (1, 2):
        y, r = fastnorm.filter_response_norm(x, w, b, t, channel_axis=channel_axis, return_stats=True,
                                             n_threads=n_threads)
        yr, rr = ref.filter_response_norm(x, w, b, t, channel_axis=channel_axis, return_stats=True)
        np.testing.assert_allclose(y, yr, **tol)
        np.testing.assert_allclose(r, rr, **tol)
        grads = fastnorm.filter_response_norm_backward(g, x, r, w, b, t, channel_axis=channel_axis,
                                                       n_threads=n_threads)
        grads_r = ref.filter_response_norm_backward(g, x, rr, w, b, t, channel_axis=channel_axis)
        for a, e in zip(grads, grads_r):
            if e is None:
                assert a is None
            else:
                np.testing.assert_allclose(a, e, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
    np.testing.assert_array_equal(x, before)


def test_matches_torch_composition(rng):
    x = rng.standard_normal((3, 4, 5, 6))
    w, b, t = rng.standard_normal((1, 4, 1, 1)), rng.standard_normal((1, 4, 1, 1)), rng.standard_normal((1, 4, 1, 1))
    g = rng.standard_normal(x.shape)
    tx, tw, tb, tt = (torch.tensor(a, requires_grad=True) for a in (x, w, b, t))
    nu2 = (tx * tx).mean(dim=(2, 3), keepdim=True)
    ty = torch.maximum(tw * tx * torch.rsqrt(nu2 + 1e-6) + tb, tt)
    ty.backward(torch.tensor(g))
    y, r = fastnorm.filter_response_norm(x, w, b, t, return_stats=True)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    gx, gw, gb, gt = fastnorm.filter_response_norm_backward(g, x, r, w, b, t)
    for a, e in ((gx, tx), (gw, tw), (gb, tb), (gt, tt)):
        assert a.shape == e.shape
        np.testing.assert_allclose(a, e.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_nan_and_ties_as_torch_maximum(rng):
    """The TLU is torch.maximum: a NaN (in x, so in its whole block, or in tau)
    comes out NaN instead of being replaced by tau, ties split the gradient,
    and a NaN block gives both z and tau the whole gradient."""
    x = rng.standard_normal((2, 3, 5))
    x[0, 1, 2] = np.nan
    w, b = np.array([1.0, 0.5, 2.0]), np.array([0.0, 0.1, -0.2])
    t = np.array([-0.3, np.nan, 0.0])
    b[2] = 0.0
    x[1, 2, :] = 0.0  # z == tau == 0 in this block: every element a tie
    g = rng.standard_normal(x.shape)
    tx, tw, tb, tt = (torch.tensor(a.reshape(s), requires_grad=True)
                      for a, s in ((x, x.shape), (w, (1, 3, 1)), (b, (1, 3, 1)), (t, (1, 3, 1))))
    ty = torch.maximum(tw * tx * torch.rsqrt((tx * tx).mean(dim=2, keepdim=True) + 1e-6) + tb, tt)
    ty.backward(torch.tensor(g))
    y, r = fastnorm.filter_response_norm(x, w, b, t, return_stats=True)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    assert np.isnan(y[0, 1]).all() and np.isnan(y[:, 1]).all()
    gx, gw, gb, gt = fastnorm.filter_response_norm_backward(g, x, r, w, b, t)
    for a, e in ((gx, tx), (gw, tw), (gb, tb), (gt, tt)):
        np.testing.assert_allclose(a.reshape(e.shape), e.grad.numpy(), rtol=1e-10, atol=1e-12)
    for a, e in zip((gx, gw, gb, gt), ref.filter_response_norm_backward(g, x, r, w, b, t)):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)


def test_finite_differences_float64(rng):
    x = rng.standard_normal((2, 3, 4))
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    t = np.array([-5.0, 0.1, -5.0])  # one channel's TLU active, away from ties
    g = rng.standard_normal(x.shape)
    y, r = fastnorm.filter_response_norm(x, w, b, t, return_stats=True)
    grads = fastnorm.filter_response_norm_backward(g, x, r, w, b, t)

    def loss(xx, ww, bb, tt):
        return float((fastnorm.filter_response_norm(xx, ww, bb, tt) * g).sum())

    arrays = dict(xx=x, ww=w, bb=b, tt=t)
    for grad, name in zip(grads, ("xx", "ww", "bb", "tt")):
        np.testing.assert_allclose(grad, numeric_gradient(loss, arrays, name, h=1e-5), rtol=1e-5, atol=1e-7)


def test_layer(rng):
    layer = nn.FilterResponseNorm(4)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    y = layer(x)
    np.testing.assert_allclose(y, ref.filter_response_norm(x, layer.weight, layer.bias, layer.tau), rtol=1e-5, atol=1e-6)
    gx = layer.backward(np.ones_like(x))
    assert gx.shape == x.shape and layer.grad_tau.shape == (4,)
    assert set(layer.state_dict()) == {"weight", "bias", "tau"}


class TestErrors:
    x = np.ones((2, 3, 4), np.float32)

    def test_bad_arguments(self):
        p = np.ones(3, np.float32)
        with pytest.raises(ValueError, match="weight must have 3 values"):
            fastnorm.filter_response_norm(self.x, np.ones(4, np.float32), p)
        with pytest.raises(TypeError, match="bias must have the dtype"):
            fastnorm.filter_response_norm(self.x, p, np.ones(3))
        with pytest.raises(TypeError, match="weight must be an array"):
            fastnorm.filter_response_norm(self.x, None, p)
        with pytest.raises(ValueError, match="channel_axis"):
            fastnorm.filter_response_norm(self.x, p, p, channel_axis=0)
        y, r = fastnorm.filter_response_norm(self.x, p, p, return_stats=True)
        with pytest.raises(ValueError, match="rstd"):
            fastnorm.filter_response_norm_backward(self.x, self.x, r[:1], p, p)


OUT_OPS = {
    "filter_response_norm": lambda x, **kw: fastnorm.filter_response_norm(
        x, np.linspace(0.5, 1.5, 6).astype(x.dtype), np.linspace(-1, 1, 6).astype(x.dtype),
        np.full(6, -0.2, x.dtype), **kw),
    "local_response_norm": lambda x, **kw: fastnorm.local_response_norm(x, 3, **kw),
}


@pytest.mark.parametrize("op", sorted(OUT_OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_out_direct_and_through_a_temporary(rng, op, dtype):
    """FRN and LRN write straight into a C-contiguous channels-first `out`, and
    through a temporary when `out` is x itself, strided, channels-last or of a
    dtype computed in another precision; the result is the same every way."""
    f = OUT_OPS[op]
    x = rng.standard_normal((3, 6, 7, 5)).astype(dtype)
    expected = f(x)
    out = np.empty_like(x)
    assert f(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    xi = x.copy()
    assert f(xi, out=xi) is xi  # in place: the kernel must not read what it wrote
    np.testing.assert_array_equal(xi, expected)
    strided = np.empty((3, 12, 7, 5), dtype)[:, ::2]
    f(x, out=strided)
    np.testing.assert_array_equal(strided, expected)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    out_l = np.empty_like(xl)
    assert f(xl, channel_axis=-1, out=out_l) is out_l
    # FRN has its own channels-last kernels (sums in another order)
    np.testing.assert_allclose(out_l, np.moveaxis(expected, 1, -1), rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(out_l, f(xl, channel_axis=-1))
    xm = np.moveaxis(x, 1, -1)  # channels-last axes over channels-first memory
    out_m = np.empty(xm.shape, dtype)  # C-contiguous in the channels-last order
    assert f(xm, channel_axis=-1, out=out_m) is out_m
    np.testing.assert_array_equal(out_m, np.moveaxis(expected, 1, -1))
    with pytest.raises(TypeError, match="out must have dtype"):
        f(x, out=np.empty(x.shape, np.float64))
    with pytest.raises(ValueError, match="out must have shape"):
        f(x, out=np.empty((3, 6, 7, 4), dtype))


def test_infinite_gradient_where_its_share_is_none():
    """An inf in grad_out where z < tau goes all to tau: z's share is 0, not
    inf * 0 = NaN, so the other gradients stay finite (as torch)."""
    x = np.array([[[1.0, -1.0, 2.0, -2.0]]], np.float32)
    w, b, t = np.ones(1, np.float32), np.zeros(1, np.float32), np.full(1, 0.5, np.float32)
    g = np.array([[[1.0, np.inf, 1.0, 1.0]]], np.float32)
    tx, tw, tb, tt = (torch.tensor(a, requires_grad=True) for a in (x, w[:, None], b[:, None], t[:, None]))
    ty = torch.maximum(tw * tx * torch.rsqrt((tx * tx).mean(dim=2, keepdim=True) + 1e-6) + tb, tt)
    ty.backward(torch.tensor(g))
    for channel_axis, xx, gg in ((1, x, g), (-1, np.moveaxis(x, 1, -1).copy(), np.moveaxis(g, 1, -1).copy())):
        y, r = fastnorm.filter_response_norm(xx, w, b, t, channel_axis=channel_axis, return_stats=True)
        gx, gw, gb, gt = fastnorm.filter_response_norm_backward(gg, xx, r, w, b, t, channel_axis=channel_axis)
        gx = gx if channel_axis == 1 else np.moveaxis(gx, -1, 1)
        np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-5)
        for a, e in ((gw, tw), (gb, tb), (gt, tt)):
            np.testing.assert_allclose(a, e.grad.numpy().ravel(), rtol=1e-5)


def test_no_positions_give_nan_rstd():
    w = np.ones(3, np.float32)
    for channel_axis, x in ((1, np.ones((2, 3, 0), np.float32)), (-1, np.ones((2, 0, 3), np.float32))):
        y, r = fastnorm.filter_response_norm(x, w, w * 0, channel_axis=channel_axis, return_stats=True)
        assert y.shape == x.shape and r.shape == (2, 3) and np.isnan(r).all()
