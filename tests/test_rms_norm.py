"""RMSNorm: fast kernels vs the reference twin, finite differences, layouts,
threads, out=, hard inputs, errors."""
import numpy as np
import pytest

import fastnorm
from fastnorm import reference as ref
from conftest import numeric_gradient, tol
from zoo import LAYOUTS, SHAPES, make, norm_shape_of

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,normalized_shape", SHAPES)
def test_forward_backward_match_reference(isa, rng, shape, normalized_shape, layout, dtype):
    x = make(shape, layout, dtype, rng)
    x_before = x.copy()
    ns = norm_shape_of(shape, normalized_shape)
    w = (rng.standard_normal(ns) + 1.0).astype(dtype)
    g = make(shape, "contiguous", dtype, rng, offset=0.0)
    rtol, atol = tol(dtype)
    for n_threads in (1, 2):
        for eps in (None, 1e-5):
            y, rstd = fastnorm.rms_norm(x, normalized_shape, w, eps, return_stats=True, n_threads=n_threads)
            yr, rstdr = ref.rms_norm(x, normalized_shape, w, eps, return_stats=True)
            assert y.dtype == dtype and rstd.shape == shape[: len(shape) - len(ns)]
            np.testing.assert_allclose(y, yr, rtol=rtol, atol=atol)
            np.testing.assert_allclose(rstd, rstdr, rtol=rtol, atol=atol)
        gx, gw = fastnorm.rms_norm_backward(g, x, rstd, w, n_threads=n_threads)
        gxr, gwr = ref.rms_norm_backward(g, x, rstdr, w)
        scale = max(1.0, float(np.abs(gwr).max()) if gwr.size else 1.0)
        np.testing.assert_allclose(gx, gxr, rtol=rtol * 10, atol=atol * 10)
        np.testing.assert_allclose(gw, gwr, rtol=rtol * 10, atol=atol * 10 * scale)
        gx0, gw0 = fastnorm.rms_norm_backward(g, x, rstd, None, n_threads=n_threads)
        assert gw0 is None
        np.testing.assert_allclose(gx0, ref.rms_norm_backward(g, x, rstdr)[0], rtol=rtol * 10, atol=atol * 10)
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_and_in_place(isa, rng, dtype):
    x = make((5, 2, 70), "contiguous", dtype, rng)
    w = rng.standard_normal(70).astype(dtype)
    expected = fastnorm.rms_norm(x, 70, w)
    out = np.empty_like(x)
    assert fastnorm.rms_norm(x, 70, w, out=out) is out
    np.testing.assert_array_equal(out, expected)
    xi = x.copy()
    assert fastnorm.rms_norm(xi, 70, w, out=xi) is xi
    np.testing.assert_array_equal(xi, expected)
    out_t = np.empty((70, 2, 5), dtype).T
    assert fastnorm.rms_norm(x, 70, w, out=out_t) is out_t
    np.testing.assert_array_equal(out_t, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_are_deterministic(isa, rng, dtype):
    x = make((257, 300), "contiguous", dtype, rng)
    g = make((257, 300), "contiguous", dtype, rng)
    w = rng.standard_normal(300).astype(dtype)
    y, r = fastnorm.rms_norm(x, 300, w, return_stats=True, n_threads=2)
    a = fastnorm.rms_norm_backward(g, x, r, w, n_threads=2)
    b = fastnorm.rms_norm_backward(g, x, r, w, n_threads=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = fastnorm.rms_norm_backward(g, x, r, w, n_threads=1)
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(a[1], c[1], rtol=rtol, atol=atol * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_wide_row(isa, rng, dtype):
    x = (1.0 + rng.standard_normal((1, 1_000_000))).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    w = rng.standard_normal(1_000_000).astype(dtype)
    yr, rr = ref.rms_norm(x, None, w, 1e-6, return_stats=True)
    gxr, gwr = ref.rms_norm_backward(g, x, rr, w)
    rtol, atol = tol(dtype)
    for n_threads in (1, 2):
        y, r = fastnorm.rms_norm(x, None, w, 1e-6, return_stats=True, n_threads=n_threads)
        np.testing.assert_allclose(y, yr, rtol=rtol, atol=atol)
        np.testing.assert_allclose(r, rr, rtol=rtol)
        gx, gw = fastnorm.rms_norm_backward(g, x, r, w, n_threads=n_threads)
        np.testing.assert_allclose(gx, gxr, rtol=rtol * 10, atol=atol * 10)
        np.testing.assert_allclose(gw, gwr, rtol=rtol * 10, atol=atol * 10)


def test_large_values_float32(isa, rng):
    x = (1e4 + rng.standard_normal((4, 4096))).astype(np.float32)
    y, r = fastnorm.rms_norm(x, return_stats=True)
    yr, rr = ref.rms_norm(x.astype(np.float64), eps=float(np.finfo(np.float32).eps), return_stats=True)
    assert np.abs(y - yr).max() < 1e-5
    np.testing.assert_allclose(r, rr, rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_confined(isa, rng, bad):
    x = rng.standard_normal((5, 200)).astype(np.float32)
    x[3, 0] = bad
    y, r = fastnorm.rms_norm(x, return_stats=True)
    assert np.isfinite(np.delete(y, 3, axis=0)).all()
    assert not np.isfinite(y[3]).all()
    gx, gw = fastnorm.rms_norm_backward(np.ones_like(x), x, r)
    assert np.isfinite(np.delete(gx, 3, axis=0)).all()


def test_zero_rows(isa):
    x = np.zeros((2, 16), np.float32)
    y, r = fastnorm.rms_norm(x, return_stats=True)
    np.testing.assert_array_equal(y, 0)
    np.testing.assert_allclose(r, 1 / np.sqrt(np.finfo(np.float32).eps), rtol=1e-6)


def test_finite_differences_float64(rng):
    x = rng.standard_normal((4, 3, 2))
    w = rng.standard_normal((3, 2))
    g = rng.standard_normal(x.shape)
    y, r = fastnorm.rms_norm(x, (3, 2), w, 1e-3, return_stats=True)
    gx, gw = fastnorm.rms_norm_backward(g, x, r, w)

    def loss(xx, ww):
        return float((fastnorm.rms_norm(xx, (3, 2), ww, 1e-3) * g).sum())

    arrays = dict(xx=x, ww=w)
    np.testing.assert_allclose(gx, numeric_gradient(loss, arrays, "xx"), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(gw, numeric_gradient(loss, arrays, "ww"), rtol=1e-7, atol=1e-8)


def test_empty():
    x = np.empty((0, 5), np.float64)
    y, r = fastnorm.rms_norm(x, 5, np.ones(5), return_stats=True)
    assert y.shape == (0, 5) and r.shape == (0,)
    gx, gw = fastnorm.rms_norm_backward(x, x, r, np.ones(5))
    assert gx.shape == (0, 5)
    np.testing.assert_array_equal(gw, 0)


class TestErrors:
    x = np.zeros((3, 4), np.float64)

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match="normalized_shape"):
            fastnorm.rms_norm(self.x, 3)
        with pytest.raises(ValueError, match="weight"):
            fastnorm.rms_norm(self.x, 4, np.ones(3))
        with pytest.raises(TypeError, match="weight"):
            fastnorm.rms_norm(self.x, 4, np.ones(4, np.float32))
        with pytest.raises(TypeError, match="x must be a floating-point array"):
            fastnorm.rms_norm(np.ones((3, 4), np.int64))
        with pytest.raises(TypeError, match="x must be a floating-point array"):
            fastnorm.rms_norm(np.ones((3, 4), np.complex128))
        with pytest.raises(ValueError, match="eps"):
            fastnorm.rms_norm(self.x, eps=-1e-6)
        with pytest.raises(ValueError, match="out"):
            fastnorm.rms_norm(self.x, out=np.empty((3, 5)))

    def test_backward_bad_inputs(self):
        y, r = fastnorm.rms_norm(self.x, return_stats=True)
        with pytest.raises(ValueError, match="rstd"):
            fastnorm.rms_norm_backward(self.x, self.x, r[:2])
        with pytest.raises(ValueError, match="grad_out"):
            fastnorm.rms_norm_backward(self.x[:2], self.x, r)
        with pytest.raises(TypeError, match="rstd"):
            fastnorm.rms_norm_backward(self.x, self.x, np.ones(3, np.int64))


def test_large_output_streaming_path(isa, rng):
    x = rng.standard_normal((1100, 4097)).astype(np.float32)
    w = rng.standard_normal(4097).astype(np.float32)
    yr = ref.rms_norm(x, None, w, 1e-6)
    for n_threads in (1, 2):
        np.testing.assert_allclose(fastnorm.rms_norm(x, None, w, 1e-6, n_threads=n_threads), yr,
                                   rtol=2e-5, atol=2e-5)
    xi = x.copy()
    fastnorm.rms_norm(xi, None, w, 1e-6, out=xi)
    np.testing.assert_allclose(xi, yr, rtol=2e-5, atol=2e-5)
