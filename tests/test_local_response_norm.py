"""Local Response Normalization: sliding-window kernels vs the reference twin
and torch (values, gradients, layer), finite differences, errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import fastnorm
from fastnorm import nn
from fastnorm import reference as ref
from conftest import numeric_gradient
from test_channel_norms import make_input

SHAPES = [(2, 7, 5), (2, 6, 3, 4), (1, 3, 2, 2, 3), (3, 1, 9), (2, 96, 1100)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("layout", ["contiguous", "other_memory_format", "strided"])
@pytest.mark.parametrize("size", [1, 2, 5, 8])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(isa, rng, shape, size, layout, channel_axis, dtype):
    x = make_input(shape, channel_axis, layout, dtype, rng)
    g = rng.standard_normal(x.shape).astype(dtype)
    before = x.copy()
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    for n_threads in (1, 2):
        y, s = fastnorm.local_response_norm(x, size, 0.01, 0.75, 2.0, channel_axis=channel_axis,
                                            return_stats=True, n_threads=n_threads)
        yr, sr = ref.local_response_norm(x, size, 0.01, 0.75, 2.0, channel_axis=channel_axis,
                                         return_stats=True)
        np.testing.assert_allclose(y, yr, **tol)
        np.testing.assert_allclose(s, sr, **tol)
        gx = fastnorm.local_response_norm_backward(g, x, s, size, 0.01, 0.75, 2.0,
                                                   channel_axis=channel_axis, n_threads=n_threads)
        np.testing.assert_allclose(gx, ref.local_response_norm_backward(g, x, sr, size, 0.01, 0.75, 2.0,
                                                                        channel_axis=channel_axis),
                                   rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.6])
@pytest.mark.parametrize("size", [3, 4])
def test_matches_torch(rng, size, beta):
    x = rng.standard_normal((2, 9, 4, 5)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = TF.local_response_norm(tx, size, 1e-3, beta, 1.5)
    ty.backward(torch.tensor(g))
    layer = nn.LocalResponseNorm(size, 1e-3, beta, 1.5)
    np.testing.assert_allclose(layer(x), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.backward(g), tx.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_finite_differences_float64(rng):
    x = rng.standard_normal((2, 5, 3))
    g = rng.standard_normal(x.shape)
    y, s = fastnorm.local_response_norm(x, 3, 0.5, 0.75, 1.0, return_stats=True)
    gx = fastnorm.local_response_norm_backward(g, x, s, 3, 0.5, 0.75, 1.0)

    def loss(xx):
        return float((fastnorm.local_response_norm(xx, 3, 0.5, 0.75, 1.0) * g).sum())

    np.testing.assert_allclose(gx, numeric_gradient(loss, dict(xx=x), "xx"), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("size", [7, 2**20 + 1, 2**54, 2**63 - 1])
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_windows_wider_than_the_channels(size, dtype, channel_axis, rng):
    """A window wider than the channels covers them all; its memory is that
    of C channels whatever `size` (a size of 2**54 once overflowed the
    backward's scratch size), and the results match the twin."""
    x = rng.standard_normal((2, 5, 3, 4)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    xk = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channel_axis == -1 else x
    gk = np.ascontiguousarray(np.moveaxis(g, 1, -1)) if channel_axis == -1 else g
    y, scale = fastnorm.local_response_norm(xk, size, 0.5, 0.75, 1.0, channel_axis=channel_axis,
                                            return_stats=True)
    gx = fastnorm.local_response_norm_backward(gk, xk, scale, size, 0.5, 0.75, 1.0, channel_axis=channel_axis)
    if channel_axis == -1:
        y, gx = np.moveaxis(y, -1, 1), np.moveaxis(gx, -1, 1)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    y_ref, s_ref = ref.local_response_norm(x64, size, 0.5, 0.75, 1.0, return_stats=True)
    tol = {np.float32: 1e-5, np.float64: 1e-12, np.float16: 2e-3}[dtype]
    np.testing.assert_allclose(y.astype(np.float64), y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(gx.astype(np.float64),
                               ref.local_response_norm_backward(g64, x64, s_ref, size, 0.5, 0.75, 1.0),
                               rtol=tol * 10, atol=tol * 10)


class TestErrors:
    x = np.ones((2, 4, 3), np.float32)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match=r"size must be in \[1, 2\*\*63 - 1\]"):
            fastnorm.local_response_norm(self.x, 0)
        with pytest.raises(ValueError, match="size must be in"):
            fastnorm.local_response_norm(self.x, 2**64)
        with pytest.raises(TypeError, match="size must be an int"):
            fastnorm.local_response_norm(self.x, 2.5)
        with pytest.raises(ValueError, match="3 or more dimensions"):
            fastnorm.local_response_norm(np.ones((2, 4), np.float32), 3)
        with pytest.raises(TypeError, match="x must be a floating-point array"):
            fastnorm.local_response_norm(np.ones((2, 4, 3), np.int64), 3)
        y, s = fastnorm.local_response_norm(self.x, 3, return_stats=True)
        with pytest.raises(ValueError, match="scale"):
            fastnorm.local_response_norm_backward(self.x, self.x, s[:1], 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [2, 3, 5])
def test_nonfinite_confined_to_their_windows(isa, rng, size, dtype):
    """A NaN or inf reaches exactly the channels whose window holds it: the
    sliding sums recompute a position when one leaves (inf - inf would be NaN
    for every later channel).  Values and gradients as torch."""
    x = rng.standard_normal((2, 9, 4, 3)).astype(dtype)
    x[0, 1, 2, 1] = np.nan
    x[1, 4, 0, 0] = np.inf
    x[1, 6, 1, 2] = -np.inf
    g = rng.standard_normal(x.shape).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    ty = TF.local_response_norm(tx, size)
    ty.backward(torch.tensor(g))
    y, s = fastnorm.local_response_norm(x, size, return_stats=True)
    gx = fastnorm.local_response_norm_backward(g, x, s, size)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    assert np.isfinite(y[0, 1 + size:]).all()  # past the NaN's last window


@pytest.mark.parametrize("x,size,kw", [
    (np.array([0.0, 2e15, 0.0], np.float32), 5, {}),                   # scale^1.5 beyond float32
    (np.array([1e-16, 1e-16], np.float32), 2, dict(alpha=1.0, k=0.0)),  # tiny scales
    (np.array([1e9, 1, 1, 1, 1], np.float64), 2, dict(k=0.0)),          # a value that dwarfs the rest leaves
    (np.array([1e154, 1e154, 1, 1, 1, 1], np.float64), 2, {}),          # a window sum that overflows
], ids=["huge-f32", "tiny-f32", "cancel-f64", "overflow-f64"])
def test_extreme_ranges_as_torch(x, size, kw):
    """Powers never form scale^1.5, and a sliding sum that a departing value
    leaves overflowed or cancelled is recomputed: values as torch's direct
    window sums, gradients as the float64 twin (torch's float32 backward
    overflows to -inf on the tiny scales, where the gradient is ~1e24)."""
    x = x.reshape(1, -1, 1)
    g = np.ones_like(x)
    ty = TF.local_response_norm(torch.tensor(x), size, **kw)
    y, s = fastnorm.local_response_norm(x, size, return_stats=True, **kw)
    np.testing.assert_allclose(y, ty.numpy(), rtol=1e-6)
    gx = fastnorm.local_response_norm_backward(g, x, s, size, **kw)
    with np.errstate(over="ignore"):  # the reference's window holding both 1e154 overflows, as torch's
        _, sr = ref.local_response_norm(x, size, return_stats=True, **kw)
        np.testing.assert_allclose(gx, ref.local_response_norm_backward(g, x, sr, size, **kw),
                                   rtol=1e-5, atol=1e-300)


def test_window_sums_keep_precision_as_values_fall():
    """Values falling by nearly 1024x per channel never trip a per-departure
    check, but the rounding left by the early giants would swamp the later
    sums: each position tracks its sum's peak since the last exact sum."""
    x = (np.round(np.sqrt(1e30 / 900.0 ** np.arange(9) * (1 + 0.0137 * np.arange(1, 10)))) + 0.3)
    x = x.reshape(1, 9, 1)
    g = np.ones_like(x)
    kw = dict(alpha=2.0, beta=1.0, k=0.0)
    tx = torch.tensor(x, requires_grad=True)
    ty = TF.local_response_norm(tx, 2, **kw)
    ty.backward(torch.tensor(g))
    y, s = fastnorm.local_response_norm(x, 2, return_stats=True, **kw)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-11)
    np.testing.assert_allclose(fastnorm.local_response_norm_backward(g, x, s, 2, **kw),
                               tx.grad.numpy(), rtol=1e-11)


def test_float16_backward_keeps_the_float32_scale():
    """The scale of float16 input comes back in float32 (it may pass 65504);
    the backward uses it as given, not rounded to float16 (it was inf)."""
    x = np.full((1, 1, 4), 300, np.float16)
    y, s = fastnorm.local_response_norm(x, 1, alpha=1.0, return_stats=True)
    assert s.dtype == np.float32 and s.max() > 65504
    gx = fastnorm.local_response_norm_backward(np.ones_like(x), x, s, 1, alpha=1.0)
    tx = torch.tensor(x.astype(np.float32), requires_grad=True)
    TF.local_response_norm(tx, 1, alpha=1.0).backward(torch.ones(x.shape))
    np.testing.assert_allclose(gx.astype(np.float32), tx.grad.numpy(), rtol=2e-3)
