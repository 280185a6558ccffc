"""LayerNorm: fast kernels vs the reference twin, torch, finite differences,
hard statistics, layouts, threads, out=, errors."""
import numpy as np
import pytest

import fastnorm
from fastnorm import reference as ref, _dispatch
from conftest import numeric_gradient, tol
from zoo import LAYOUTS, SHAPES, make, norm_shape_of

DTYPES = [np.float32, np.float64]


def params(rng, norm_shape, dtype, affine):
    if not affine:
        return None, None
    w = (rng.standard_normal(norm_shape) + 1.0).astype(dtype)
    b = rng.standard_normal(norm_shape).astype(dtype)
    return w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,normalized_shape", SHAPES)
def test_forward_backward_match_reference(isa, rng, shape, normalized_shape, layout, dtype):
    x = make(shape, layout, dtype, rng)
    x_before = x.copy()
    ns = norm_shape_of(shape, normalized_shape)
    w, b = params(rng, ns, dtype, affine=True)
    g = make(shape, "contiguous", dtype, rng, offset=0.0)
    rtol, atol = tol(dtype)
    for n_threads in (1, 2):
        y, mean, rstd = fastnorm.layer_norm(x, normalized_shape, w, b, return_stats=True, n_threads=n_threads)
        yr, meanr, rstdr = ref.layer_norm(x, normalized_shape, w, b, return_stats=True)
        assert y.dtype == dtype and y.shape == x.shape
        assert mean.shape == rstd.shape == shape[: len(shape) - len(ns)]
        np.testing.assert_allclose(y, yr, rtol=rtol, atol=atol)
        np.testing.assert_allclose(mean, meanr, rtol=rtol, atol=atol)
        np.testing.assert_allclose(rstd, rstdr, rtol=rtol, atol=atol)
        gx, gw, gb = fastnorm.layer_norm_backward(g, x, mean, rstd, w, b, n_threads=n_threads)
        gxr, gwr, gbr = ref.layer_norm_backward(g, x, meanr, rstdr, w, b)
        scale = max(1.0, float(np.abs(gwr).max()) if gwr.size else 1.0)
        np.testing.assert_allclose(gx, gxr, rtol=rtol * 10, atol=atol * 10)
        np.testing.assert_allclose(gw, gwr, rtol=rtol * 10, atol=atol * 10 * scale)
        np.testing.assert_allclose(gb, gbr, rtol=rtol * 10, atol=atol * 10 * scale)
        assert gx.dtype == gw.dtype == gb.dtype == dtype
    np.testing.assert_array_equal(x, x_before)  # inputs never modified


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [False, True])
def test_out_and_in_place(isa, rng, dtype, affine):
    x = make((6, 3, 40), "contiguous", dtype, rng)
    w, b = params(rng, (40,), dtype, affine)
    expected = fastnorm.layer_norm(x, 40, w, b)
    out = np.empty_like(x)
    res = fastnorm.layer_norm(x, 40, w, b, out=out)
    assert res is out
    np.testing.assert_array_equal(out, expected)
    # non-contiguous out
    out_f = np.asfortranarray(np.empty_like(x))
    assert fastnorm.layer_norm(x, 40, w, b, out=out_f) is out_f
    np.testing.assert_array_equal(out_f, expected)
    # in place, also through a strided view
    xi = x.copy()
    assert fastnorm.layer_norm(xi, 40, w, b, out=xi) is xi
    np.testing.assert_array_equal(xi, expected)
    big = np.zeros((12, 3, 40), dtype)
    view = big[::2]
    view[...] = x
    assert fastnorm.layer_norm(view, 40, w, b, out=view) is view
    np.testing.assert_array_equal(view, expected)
    assert not big[1::2].any()
    # out overlapping x without being x: x[1:] -> x[:-1]
    xo = x.reshape(18, 40).copy()
    expected_shift = fastnorm.layer_norm(xo[1:].copy(), 40, w, b)
    fastnorm.layer_norm(xo[1:], 40, w, b, out=xo[:-1])
    np.testing.assert_array_equal(xo[:-1], expected_shift)


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_are_deterministic_and_agree(isa, rng, dtype):
    x = make((300, 515), "contiguous", dtype, rng)
    g = make((300, 515), "contiguous", dtype, rng)
    w, b = params(rng, (515,), dtype, True)
    results = {}
    for n_threads in (1, 2, 3):
        y, m, r = fastnorm.layer_norm(x, 515, w, b, return_stats=True, n_threads=n_threads)
        grads = fastnorm.layer_norm_backward(g, x, m, r, w, b, n_threads=n_threads)
        again = fastnorm.layer_norm_backward(g, x, m, r, w, b, n_threads=n_threads)
        for a, c in zip(grads, again):
            np.testing.assert_array_equal(a, c)  # bitwise repeatable for a thread count
        results[n_threads] = (y, *grads)
    rtol, atol = tol(dtype)
    for n_threads in (2, 3):
        for a, c in zip(results[1], results[n_threads]):
            np.testing.assert_allclose(a, c, rtol=rtol, atol=atol * 10)


@pytest.mark.parametrize("offset,spread", [(1e4, 1.0), (1e5, 0.1), (1e6, 1.0)])
def test_large_offset_rows_float32(isa, rng, offset, spread):
    """float32 rows with a large mean and a small spread (naive E[x^2]-E[x]^2
    and float32 running sums fail here)."""
    x = (offset + spread * rng.standard_normal((8, 4096))).astype(np.float32)
    y, mean, rstd = fastnorm.layer_norm(x, return_stats=True)
    yr, meanr, rstdr = ref.layer_norm(x.astype(np.float64), return_stats=True)
    assert np.abs(y - yr).max() < 1e-4
    np.testing.assert_allclose(rstd, rstdr, rtol=1e-5)
    g = rng.standard_normal(x.shape).astype(np.float32)
    gx, gw, gb = fastnorm.layer_norm_backward(g, x, mean, rstd, np.ones(4096, np.float32), None)
    gxr, gwr, _ = ref.layer_norm_backward(g, x, meanr, rstdr, np.ones(4096), None)
    assert np.abs(gx - gxr).max() < 1e-4 * np.abs(gxr).max()
    assert np.abs(gw - gwr).max() < 1e-4 * np.abs(gwr).max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_wide_row(isa, rng, dtype):
    """One row of 10^6: split across threads (the wide-row path), still accurate."""
    x = (5.0 + 2.0 * rng.standard_normal((1, 1_000_000))).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    w = rng.standard_normal(1_000_000).astype(dtype)
    b = rng.standard_normal(1_000_000).astype(dtype)
    yr, mr, rr = ref.layer_norm(x, None, w, b, return_stats=True)
    gxr, gwr, gbr = ref.layer_norm_backward(g, x, mr, rr, w, b)
    rtol, atol = tol(dtype)
    for n_threads in (1, 2):
        y, m, r = fastnorm.layer_norm(x, None, w, b, return_stats=True, n_threads=n_threads)
        np.testing.assert_allclose(y, yr, rtol=rtol, atol=atol * 5)
        np.testing.assert_allclose(m, mr, rtol=rtol)
        np.testing.assert_allclose(r, rr, rtol=rtol)
        gx, gw, gb = fastnorm.layer_norm_backward(g, x, m, r, w, b, n_threads=n_threads)
        np.testing.assert_allclose(gx, gxr, rtol=rtol * 10, atol=atol * 10)
        np.testing.assert_allclose(gw, gwr, rtol=rtol * 10, atol=atol * 10)
        np.testing.assert_allclose(gb, gbr, rtol=rtol * 10, atol=atol * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_rows_give_bias(isa, dtype):
    x = np.full((3, 100), 7.25, dtype)
    b = np.arange(100, dtype=dtype)
    y, mean, rstd = fastnorm.layer_norm(x, 100, None, b, eps=1e-5, return_stats=True)
    np.testing.assert_array_equal(y, np.broadcast_to(b, x.shape))
    np.testing.assert_array_equal(mean, 7.25)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(1e-5), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_confined_to_their_row(isa, rng, dtype, bad):
    x = rng.standard_normal((6, 300)).astype(dtype)
    x[2, 17] = bad
    y, m, r = fastnorm.layer_norm(x, return_stats=True, n_threads=2)
    assert np.isnan(y[2]).all()
    assert np.isfinite(np.delete(y, 2, axis=0)).all()
    g = np.ones_like(x)
    gx, gw, gb = fastnorm.layer_norm_backward(g, x, m, r, np.ones(300, dtype), np.zeros(300, dtype))
    assert np.isfinite(np.delete(gx, 2, axis=0)).all()


def test_finite_differences_float64(rng):
    """Backward vs a 4th-order central difference of the forward."""
    x = rng.standard_normal((3, 2, 5))
    w = rng.standard_normal((2, 5))
    b = rng.standard_normal((2, 5))
    g = rng.standard_normal(x.shape)
    y, m, r = fastnorm.layer_norm(x, (2, 5), w, b, eps=1e-3, return_stats=True)
    gx, gw, gb = fastnorm.layer_norm_backward(g, x, m, r, w, b)

    def loss(xx, ww, bb):
        return float((fastnorm.layer_norm(xx, (2, 5), ww, bb, eps=1e-3) * g).sum())

    arrays = dict(xx=x, ww=w, bb=b)
    np.testing.assert_allclose(gx, numeric_gradient(loss, arrays, "xx"), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(gw, numeric_gradient(loss, arrays, "ww"), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(gb, numeric_gradient(loss, arrays, "bb"), rtol=1e-7, atol=1e-8)


def test_float16_computed_in_float32(rng):
    x = rng.standard_normal((4, 64)).astype(np.float16)
    w = np.ones(64, np.float16)
    y, m, r = fastnorm.layer_norm(x, 64, w, None, return_stats=True)
    assert y.dtype == np.float16 and m.dtype == np.float32
    np.testing.assert_allclose(y, ref.layer_norm(x.astype(np.float32)), atol=5e-3)
    gx, gw, gb = fastnorm.layer_norm_backward(np.ones_like(x), x, m, r, w)
    assert gx.dtype == gw.dtype == np.float16 and gb is None


def test_empty_inputs():
    x = np.empty((0, 3, 8), np.float32)
    y, m, r = fastnorm.layer_norm(x, 8, np.ones(8, np.float32), np.zeros(8, np.float32), return_stats=True)
    assert y.shape == (0, 3, 8) and m.shape == r.shape == (0, 3)
    gx, gw, gb = fastnorm.layer_norm_backward(x, x, m, r, np.ones(8, np.float32), np.zeros(8, np.float32))
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, 0)
    np.testing.assert_array_equal(gb, 0)
    z = fastnorm.layer_norm(np.empty((4, 0), np.float64), 0)
    assert z.shape == (4, 0)


def test_gradient_none_for_missing_parameters(rng):
    x = rng.standard_normal((3, 8))
    y, m, r = fastnorm.layer_norm(x, return_stats=True)
    gx, gw, gb = fastnorm.layer_norm_backward(np.ones_like(x), x, m, r)
    assert gw is None and gb is None
    gx2, gw2, gb2 = fastnorm.layer_norm_backward(np.ones_like(x), x, m, r, None, np.zeros(8))
    assert gw2 is None and gb2.shape == (8,)
    np.testing.assert_allclose(gx, gx2)


class TestErrors:
    x = np.zeros((4, 6), np.float32)

    def test_normalized_shape_mismatch(self):
        with pytest.raises(ValueError, match="normalized_shape"):
            fastnorm.layer_norm(self.x, 5)
        with pytest.raises(ValueError, match="normalized_shape"):
            fastnorm.layer_norm(self.x, (3, 4, 6))
        with pytest.raises(TypeError, match="normalized_shape"):
            fastnorm.layer_norm(self.x, "6")

    @pytest.mark.parametrize("name", ["weight", "bias"])
    def test_parameter_shape_and_dtype(self, name):
        with pytest.raises(ValueError, match=name):
            fastnorm.layer_norm(self.x, 6, **{name: np.ones(5, np.float32)})
        with pytest.raises(TypeError, match=name):
            fastnorm.layer_norm(self.x, 6, **{name: np.ones(6, np.float64)})

    @pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64, object])
    def test_non_float_x(self, dtype):
        with pytest.raises(TypeError, match="x must be a floating-point array"):
            fastnorm.layer_norm(np.zeros((2, 3), dtype))

    def test_out_errors(self):
        with pytest.raises(ValueError, match="out"):
            fastnorm.layer_norm(self.x, out=np.empty((4, 5), np.float32))
        with pytest.raises(TypeError, match="out"):
            fastnorm.layer_norm(self.x, out=np.empty((4, 6), np.float64))
        with pytest.raises(TypeError, match="out"):
            fastnorm.layer_norm(self.x, out=[[0.0] * 6] * 4)
        ro = np.empty((4, 6), np.float32)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="out is read-only"):
            fastnorm.layer_norm(self.x, out=ro)

    def test_eps_and_threads(self):
        with pytest.raises(ValueError, match="eps"):
            fastnorm.layer_norm(self.x, eps=-1.0)
        with pytest.raises(TypeError, match="eps"):
            fastnorm.layer_norm(self.x, eps="small")
        with pytest.raises(ValueError, match="n_threads"):
            fastnorm.layer_norm(self.x, n_threads=0)
        with pytest.raises(TypeError, match="n_threads"):
            fastnorm.layer_norm(self.x, n_threads=1.5)

    def test_zero_dim_x(self):
        with pytest.raises(ValueError, match="x must have at least 1 dimension"):
            fastnorm.layer_norm(np.float32(3.0))

    def test_backward_stats_mismatch(self):
        y, m, r = fastnorm.layer_norm(self.x, return_stats=True)
        g = np.ones_like(self.x)
        with pytest.raises(ValueError, match="mean"):
            fastnorm.layer_norm_backward(g, self.x, m[:3], r)
        with pytest.raises(ValueError, match="rstd"):
            fastnorm.layer_norm_backward(g, self.x, m, r[:2])
        with pytest.raises(ValueError, match="grad_out"):
            fastnorm.layer_norm_backward(g[:, :5], self.x, m, r)
        with pytest.raises(TypeError, match="grad_out"):
            fastnorm.layer_norm_backward(g.astype(np.float64), self.x, m, r)
        with pytest.raises(TypeError, match="mean"):
            fastnorm.layer_norm_backward(g, self.x, None, r)
        with pytest.raises(ValueError, match="weight"):
            fastnorm.layer_norm_backward(g, self.x, m, r, np.ones(5, np.float32))


def test_large_output_streaming_path(isa, rng):
    """Outputs over 16 MiB are written with streaming stores, rows of any alignment."""
    x = rng.standard_normal((1100, 4097)).astype(np.float32)
    w = rng.standard_normal(4097).astype(np.float32)
    b = rng.standard_normal(4097).astype(np.float32)
    yr = ref.layer_norm(x, None, w, b)
    for n_threads in (1, 2):
        np.testing.assert_allclose(fastnorm.layer_norm(x, None, w, b, n_threads=n_threads), yr,
                                   rtol=2e-5, atol=2e-5)
    out = np.empty((1101, 4097), np.float32)[1:]  # rows start off any vector boundary
    fastnorm.layer_norm(x, None, w, b, out=out)
    np.testing.assert_allclose(out, yr, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("op,affine", [("layer_norm", "wb"), ("layer_norm", "w"), ("layer_norm", "b"),
                                       ("layer_norm", "none"), ("rms_norm", "w"), ("rms_norm", "none")])
def test_streaming_path_gives_identical_results(isa, rng, op, affine):
    """Large outputs take a streaming-store path; forced on for a small input
    (rows of any alignment) it must give bitwise the plain path's results."""
    x = rng.standard_normal((37, 101)).astype(np.float32)
    w = rng.standard_normal(101).astype(np.float32) if "w" in affine else None
    b = rng.standard_normal(101).astype(np.float32) if "b" in affine else None
    if op == "layer_norm":
        call = lambda: fastnorm.layer_norm(x, None, w, b, n_threads=2)
    else:
        call = lambda: fastnorm.rms_norm(x, None, w, n_threads=2)
    previous = _dispatch.kernels.set_stream_threshold(1 << 60)
    try:
        plain = call()
        _dispatch.kernels.set_stream_threshold(0)
        streamed = call()
    finally:
        _dispatch.kernels.set_stream_threshold(previous)
    np.testing.assert_array_equal(plain, streamed)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("affine", ["wb", "w", "b", "none"])
@pytest.mark.parametrize("stream", [False, True])
def test_16bit_rows_grouped_match_rows_alone(isa, rng, dtype, affine, stream):
    """16-bit rows with weight and bias are normalized a few at a time (one
    pass of w, b over a group of rows): every row of a matrix must be bitwise
    the row normalized on its own, whatever the row count, the row stride
    (rows off any vector boundary) and the store path."""
    from fastnorm._dtypes import BF16, F16
    dt = BF16 if dtype == "bfloat16" else F16
    n = 203
    w = (rng.standard_normal(n) + 1).astype(dt) if "w" in affine else None
    b = rng.standard_normal(n).astype(dt) if "b" in affine else None
    previous = _dispatch.kernels.set_stream_threshold(0 if stream else 1 << 60)
    try:
        for M in (1, 3, 4, 5, 9, 13):
            base = (rng.standard_normal((M, n + 3)) * 3 + 1).astype(dt)
            x = base[:, 1:n + 1]  # odd row stride, rows start anywhere
            out = np.empty((M, n + 5), dt)[:, 3:n + 3]
            y, mean, rstd = fastnorm.layer_norm(x, n, w, b, 1e-5, return_stats=True, out=out)
            for r in range(M):
                yr, mr, sr = fastnorm.layer_norm(np.ascontiguousarray(x[r:r + 1]), n, w, b, 1e-5,
                                                 return_stats=True)
                np.testing.assert_array_equal(y[r:r + 1].view(np.uint16), yr.view(np.uint16))
                np.testing.assert_array_equal(mean[r:r + 1], mr)
                np.testing.assert_array_equal(rstd[r:r + 1], sr)
    finally:
        _dispatch.kernels.set_stream_threshold(previous)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("affine", ["wb", "w", "none"])
def test_backward_work_splits_agree(isa, rng, dtype, rms, affine):
    """The row backward's two work splits -- whole rows per thread, or every
    row's columns cut across the threads -- forced on small odd widths
    (partials flushed past 32 rows, 16-bit staging chunks, groups of four
    rows and the rest) both match the float64 reference."""
    from fastnorm._dtypes import BF16, F16
    dt = {"bfloat16": BF16, "float16": F16}.get(dtype, np.dtype(dtype))
    r16 = dtype in ("bfloat16", "float16")
    rtol = {"bfloat16": 1.6e-2, "float16": 2e-3, "float32": 2e-5, "float64": 1e-11}[dtype]
    kernels = _dispatch.kernels
    for M, n in [(1, 37), (3, 203), (7, 5003), (37, 9001), (70, 1500)]:
        x = (rng.standard_normal((M, n)) * 2 + 0.5).astype(dt)
        g = rng.standard_normal((M, n)).astype(dt)
        w = (rng.standard_normal(n) + 1).astype(dt) if affine != "none" else None
        b = rng.standard_normal(n).astype(dt) if affine == "wb" and not rms else None
        if rms:
            _, rstd = fastnorm.rms_norm(x, n, w, 1e-5, return_stats=True)
            wide = lambda a: None if a is None else a.astype(np.float64)
            expected = ref.rms_norm_backward(wide(g), wide(x), rstd.astype(np.float64), wide(w))
        else:
            _, mean, rstd = fastnorm.layer_norm(x, n, w, b, 1e-5, return_stats=True)
            wide = lambda a: None if a is None else a.astype(np.float64)
            expected = ref.layer_norm_backward(wide(g), wide(x), mean.astype(np.float64),
                                               rstd.astype(np.float64), wide(w), wide(b))
        expected = expected if isinstance(expected, tuple) else (expected,)
        results = []
        for setting in ((1 << 40, 0), (1, 1 << 40)):  # rows; columns
            previous = kernels.set_wide_rows(*setting)
            try:
                if rms:
                    got = fastnorm.rms_norm_backward(g, x, rstd, w, n_threads=2)
                else:
                    got = fastnorm.layer_norm_backward(g, x, mean, rstd, w, b, n_threads=2)
            finally:
                kernels.set_wide_rows(*previous)
            got = got if isinstance(got, tuple) else (got,)
            results.append(got)
            for a, e in zip(got, expected):
                assert (a is None) == (e is None)
                if a is None:
                    continue
                assert a.dtype == dt and a.shape == e.shape
                scale = np.abs(e).max()
                np.testing.assert_allclose(a.astype(np.float64), e, rtol=rtol,
                                           atol=rtol * scale * (4 if r16 else 1),
                                           err_msg=f"M={M} n={n} split={setting}")
        if not r16:
            for a, c in zip(*results):
                if a is not None:
                    np.testing.assert_allclose(a, c, rtol=rtol, atol=rtol * np.abs(a).max())


def test_set_wide_rows_checks_its_arguments():
    with pytest.raises(ValueError, match="min_width"):
        _dispatch.kernels.set_wide_rows(0, 4)
