"""Data standardization: z-score and min-max scaling vs the reference twins
and scikit-learn's StandardScaler / MinMaxScaler."""
import warnings

import numpy as np
import pytest
from sklearn.preprocessing import MinMaxScaler, StandardScaler

import fastnorm
from fastnorm import reference as ref

SHAPES = [((50, 3), 0), ((7, 40), 0), ((40, 7), 1), ((6, 5, 4), 0), ((6, 5, 4), 2), ((1, 9), 0), ((300, 1), 0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "fortran", "strided"])
@pytest.mark.parametrize("shape,axis", SHAPES)
def test_match_reference(isa, rng, shape, axis, layout, dtype):
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    if layout == "fortran":
        x = np.asfortranarray(x)
    elif layout == "strided":
        big = np.zeros((2 * shape[0],) + shape[1:], dtype)
        big[::2] = x
        x = big[::2]
    before = x.copy()
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    for n_threads in (1, 2):
        ddof = 0 if x.shape[axis] < 2 else 1
        z, m, s = fastnorm.standardize(x, axis, ddof, return_stats=True, n_threads=n_threads)
        zr, mr, sr = ref.standardize(x, axis, ddof, return_stats=True)
        assert z.dtype == dtype and z.shape == x.shape
        np.testing.assert_allclose(z, zr, **tol)
        np.testing.assert_allclose(m, mr, **tol)
        np.testing.assert_allclose(s, sr, **tol)
        y, mn, mx = fastnorm.min_max_scale(x, axis, (-1, 2), return_stats=True, n_threads=n_threads)
        yr, mnr, mxr = ref.min_max_scale(x, axis, (-1, 2), return_stats=True)
        np.testing.assert_allclose(y, yr, **tol)
        np.testing.assert_array_equal(mn, mnr)
        np.testing.assert_array_equal(mx, mxr)
    np.testing.assert_array_equal(x, before)


def test_match_scikit_learn_fit_and_transform(rng):
    X = rng.standard_normal((500, 6)) * [1, 10, 100, 0.1, 1, 5] + [0, 5, -3, 1e4, 2, 0]
    X[:, 4] = 7.0  # a constant feature
    new = rng.standard_normal((20, 6))
    sc = StandardScaler().fit(X)
    z, m, s = fastnorm.standardize(X, return_stats=True)
    np.testing.assert_allclose(z, sc.transform(X), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fastnorm.standardize(new, mean=m, std=s), sc.transform(new),
                               rtol=1e-10, atol=1e-10)
    mm = MinMaxScaler((-1, 1)).fit(X)
    y, lo, hi = fastnorm.min_max_scale(X, feature_range=(-1, 1), return_stats=True)
    np.testing.assert_allclose(y, mm.transform(X), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fastnorm.min_max_scale(new, feature_range=(-1, 1), data_min=lo, data_max=hi),
                               mm.transform(new), rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(z[:, 4], 0)  # constant feature: 0, no division by zero
    np.testing.assert_array_equal(y[:, 4], -1)  # constant feature: the range's low end


def test_large_offset_columns_float32(rng):
    X = (1e5 + 0.1 * rng.standard_normal((100_000, 8))).astype(np.float32)
    z = fastnorm.standardize(X)
    X64 = X.astype(np.float64)
    assert np.abs(z - (X64 - X64.mean(0)) / X64.std(0)).max() < 1e-5
    y = fastnorm.min_max_scale(X)
    assert np.abs(y - ref.min_max_scale(X64)).max() < 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_is_missing_as_scikit_learn(isa, rng, dtype):
    """NaN is left out of its feature's statistics and stays NaN in the
    output (scikit-learn's scalers); an all-NaN feature gets NaN statistics;
    an inf makes its feature's statistics NaN; other features are untouched."""
    X = (rng.standard_normal((300, 5)) * 3 + 1e3).astype(dtype)
    X[5, 1] = X[17, 1] = np.nan
    X[:, 3] = np.nan
    X[9, 4] = np.inf
    z, m, s = fastnorm.standardize(X, return_stats=True)
    finite = X[:, :3]
    sc = StandardScaler().fit(finite)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(m[:3], sc.mean_, rtol=1e-7)
    np.testing.assert_allclose(s[:3], sc.scale_, rtol=tol)
    np.testing.assert_allclose(z[:, :3], sc.transform(finite), rtol=tol, atol=tol, equal_nan=True)
    assert np.isnan(z[[5, 17], 1]).all() and np.isfinite(np.delete(z[:, 1], [5, 17])).all()
    assert np.isnan(m[3]) and np.isnan(s[3]) and np.isnan(z[:, 3]).all()
    assert np.isnan(s[4]) and np.isnan(z[:, 4]).all()
    z2 = fastnorm.standardize(X, mean=m, std=s)  # transform with the fitted statistics
    np.testing.assert_array_equal(z2, z)


def test_nan_confined_to_its_feature(rng):
    X = rng.standard_normal((40, 3))
    X[5, 1] = np.nan
    y = fastnorm.min_max_scale(X)  # min-max ignores NaN when fitting, as scikit-learn
    mm = MinMaxScaler().fit(X)
    np.testing.assert_allclose(y, mm.transform(X), rtol=1e-12, equal_nan=True)
    assert np.isnan(y[5, 1]) and np.isfinite(np.delete(y[:, 1], 5)).all()


def test_with_mean_with_std_and_out(rng):
    X = rng.standard_normal((30, 4)) + 3
    np.testing.assert_allclose(fastnorm.standardize(X, with_std=False), X - X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(fastnorm.standardize(X, with_mean=False), X / X.std(0), rtol=1e-12)
    out = np.empty_like(X)
    assert fastnorm.standardize(X, out=out) is out
    np.testing.assert_allclose(out, ref.standardize(X), rtol=1e-12)


class TestErrors:
    X = np.ones((5, 3))

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="axis=2 is out of range"):
            fastnorm.standardize(self.X, axis=2)
        with pytest.raises(ValueError, match="ddof"):
            fastnorm.standardize(self.X, ddof=-1)
        with pytest.raises(ValueError, match="need more than ddof"):
            fastnorm.standardize(self.X[:1], ddof=1)
        with pytest.raises(ValueError, match="mean and std must be given together"):
            fastnorm.standardize(self.X, mean=np.zeros(3))
        with pytest.raises(ValueError, match="mean must have shape"):
            fastnorm.standardize(self.X, mean=np.zeros(4), std=np.ones(4))
        with pytest.raises(ValueError, match="feature_range"):
            fastnorm.min_max_scale(self.X, feature_range=(1, 0))
        with pytest.raises(TypeError, match="feature_range"):
            fastnorm.min_max_scale(self.X, feature_range="ab")
        with pytest.raises(TypeError, match="x must be a floating-point array"):
            fastnorm.standardize(np.ones((3, 2), np.int64))
        with pytest.raises(ValueError, match="at least one sample"):
            fastnorm.min_max_scale(np.ones((0, 3)))


@pytest.mark.parametrize("axis", [0, 1])
def test_out_layouts_and_in_place(rng, axis):
    X = rng.standard_normal((30, 4)) + 3
    expected = ref.standardize(X, axis)
    for out in (np.empty_like(X), np.asfortranarray(np.empty_like(X))):
        assert fastnorm.standardize(X, axis, out=out) is out
        np.testing.assert_allclose(out, expected, rtol=1e-12)
    Xi = X.copy()
    assert fastnorm.min_max_scale(Xi, axis, out=Xi) is Xi
    np.testing.assert_allclose(Xi, ref.min_max_scale(X, axis), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("with_mean,with_std", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("shape,axis", [((40, 5), 0), ((5, 40), 1), ((6, 4, 3), 0)])
def test_backward_matches_reference(isa, rng, shape, axis, with_mean, with_std, ddof, dtype):
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    x_t = np.moveaxis(x, axis, 0)
    x_t[:, 0] = 3.0  # a constant feature
    g = rng.standard_normal(shape).astype(dtype)
    z, m, s = fastnorm.standardize(x, axis, ddof, with_mean=with_mean, with_std=with_std, return_stats=True)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for fitted in (True, False):
        gx = fastnorm.standardize_backward(g, x, m, s, axis, ddof, with_mean=with_mean, with_std=with_std,
                                           fitted=fitted)
        np.testing.assert_allclose(gx, ref.standardize_backward(g, x, m, s, axis, ddof, with_mean=with_mean,
                                                                with_std=with_std, fitted=fitted), **tol)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("with_mean", [True, False])
def test_backward_finite_differences(rng, ddof, with_mean):
    from conftest import numeric_gradient
    x = rng.standard_normal((7, 3)) + 0.5
    g = rng.standard_normal(x.shape)
    z, m, s = fastnorm.standardize(x, 0, ddof, with_mean=with_mean, return_stats=True)
    gx = fastnorm.standardize_backward(g, x, m, s, 0, ddof, with_mean=with_mean)

    def loss(xx):
        return float((fastnorm.standardize(xx, 0, ddof, with_mean=with_mean) * g).sum())

    np.testing.assert_allclose(gx, numeric_gradient(loss, dict(xx=x), "xx", h=1e-5), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((40, 5), 0), ((5, 40), 1), ((6, 4, 3), 0)])
def test_min_max_backward_matches_reference_and_torch(isa, rng, shape, axis, dtype):
    import torch
    x = rng.standard_normal(shape).astype(dtype)
    np.moveaxis(x, axis, 0)[:, 0] = 2.0  # a constant feature
    g = rng.standard_normal(shape).astype(dtype)
    y, mn, mx = fastnorm.min_max_scale(x, axis, (-1, 3), return_stats=True)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for fitted in (True, False):
        gx = fastnorm.min_max_scale_backward(g, x, mn, mx, axis, (-1, 3), fitted=fitted)
        np.testing.assert_allclose(gx, ref.min_max_scale_backward(g, x, mn, mx, axis, (-1, 3), fitted=fitted),
                                   **tol)
    if dtype == np.float64:
        tx = torch.tensor(np.moveaxis(x, axis, 0), requires_grad=True)
        tmin, tmax = tx.min(0).values, tx.max(0).values
        span = torch.where(tmax - tmin == 0, torch.ones_like(tmin), tmax - tmin)
        ((tx - tmin) * (4 / span) - 1).backward(torch.tensor(np.moveaxis(g, axis, 0).copy()))
        expected = np.moveaxis(tx.grad.numpy(), 0, axis)
        # torch routes the constant feature's min/max terms too; compare the varying features
        gx = fastnorm.min_max_scale_backward(g, x, mn, mx, axis, (-1, 3))
        np.testing.assert_allclose(np.moveaxis(gx, axis, 0)[:, 1:], np.moveaxis(expected, axis, 0)[:, 1:],
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("F", [3, 16, 40, 64, 100, 257])
def test_min_max_widths_as_scikit_learn(isa, rng, F, dtype):
    """Column min / max over register panels (rows up to 1 KiB: whole panels,
    single vectors, single values) and flat rows beyond, NaN ignored, for every
    width; rows span several 64-row blocks and both threads."""
    X = (rng.standard_normal((301, F)) * 5).astype(dtype)
    X[rng.integers(0, 301, 40), rng.integers(0, F, 40)] = np.nan
    X[:, 0] = np.nan  # an all-NaN feature
    y, mn, mx = fastnorm.min_max_scale(X, return_stats=True, n_threads=2)
    with warnings.catch_warnings():  # scikit-learn warns of the all-NaN feature
        warnings.simplefilter("ignore", RuntimeWarning)
        mm = MinMaxScaler().fit(X)
    np.testing.assert_array_equal(mn[1:], mm.data_min_[1:].astype(dtype))
    np.testing.assert_array_equal(mx[1:], mm.data_max_[1:].astype(dtype))
    assert np.isnan(mn[0]) and np.isnan(mx[0])
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(y, mm.transform(X), rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_min_max_backward_ties_nan_and_threads(rng, dtype):
    """The min / max terms go to each feature's first minimum / maximum (NaN
    ignored), whatever the number of threads that searched the rows."""
    N = 30001
    x = rng.integers(-3, 4, size=(N, 4)).astype(dtype)  # many tied minima and maxima per feature
    x[:5, 1] = np.nan
    x[N // 2 + 1:, 2] = -3.0   # the first minimum is in the first half, copies in the second
    x[:N // 2 + 7, 3] = 0.0
    x[N - 3, 3] = 9.0          # the maximum only in the last part
    g = rng.standard_normal(x.shape).astype(dtype)
    y, mn, mx = fastnorm.min_max_scale(x, return_stats=True)
    expected = ref.min_max_scale_backward(g, x, mn, mx)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    results = [fastnorm.min_max_scale_backward(g, x, mn, mx, n_threads=t) for t in (1, 2, 3)]
    for r in results:
        # feature 1 holds NaN: its loss is NaN, and so are its min / max terms
        # (fastnorm puts them at the first non-NaN extremes, the twin at the first NaN)
        np.testing.assert_allclose(r[:, [0, 2, 3]], expected[:, [0, 2, 3]], **tol)
        first_min = np.nanargmin(x[:, 1])
        assert np.isnan(r[first_min, 1]) and np.isfinite(np.delete(r[:, 1], [first_min, np.nanargmax(x[:, 1])])).all()
        # the column sums' order depends on the thread count, the positions do not
        np.testing.assert_allclose(r, results[0], **tol)


def test_statistics_of_values_whose_squares_overflow():
    """Beyond about 1e154 the kernel's squares overflow: those features are
    redone (scaled) and come out finite and right, in memory as in chunks."""
    rng = np.random.default_rng(3)
    scale, offset = np.array([1.0, 1e153, 1e152]), np.array([0.0, 1e160, -1e156])
    x = rng.standard_normal((500, 3)) * scale + offset
    x[7, 2] = np.nan   # NaN and huge values in one feature
    const = np.full((5, 1), 1e200)
    z, mean, std = fastnorm.standardize(x, return_stats=True)
    unit = (x - offset) / scale
    np.testing.assert_allclose(std / scale, np.nanstd(unit, axis=0), rtol=1e-6)
    np.testing.assert_allclose((mean - offset) / scale, np.nanmean(unit, axis=0), atol=1e-6)
    want = (unit - np.nanmean(unit, 0)) / np.nanstd(unit, 0)
    assert np.array_equal(np.isnan(z), np.isnan(x))
    np.testing.assert_allclose(z[~np.isnan(x)], want[~np.isnan(x)], atol=1e-6)
    zc, mc, sc = fastnorm.standardize(const, return_stats=True)
    assert mc[0] == 1e200 and sc[0] == 0.0 and np.array_equal(zc, np.zeros((5, 1)))


def _unaligned_copy(v):
    """v's values in an unaligned float64 buffer (as pickle protocol 5 can
    deliver arrays to a Dask worker)."""
    v = np.asarray(v, np.float64)
    buf = np.zeros(v.nbytes + 1, np.uint8)[1:].view(np.float64).reshape(v.shape)
    buf[...] = v
    assert not buf.flags.aligned
    return buf


def test_unaligned_statistics_are_taken():
    from fastnorm.functional import features
    rng = np.random.default_rng(9)
    x = rng.standard_normal((40, 5))
    g = rng.standard_normal((40, 5))
    _, m, s = fastnorm.standardize(x, return_stats=True)
    _, lo, hi = fastnorm.min_max_scale(x, return_stats=True)
    um, us, ulo, uhi = (_unaligned_copy(v) for v in (m, s, lo, hi))
    assert np.array_equal(fastnorm.standardize(x, mean=um, std=us), fastnorm.standardize(x, mean=m, std=s))
    assert np.array_equal(fastnorm.standardize_backward(g, x, um, us), fastnorm.standardize_backward(g, x, m, s))
    assert np.array_equal(fastnorm.min_max_scale(x, data_min=ulo, data_max=uhi),
                          fastnorm.min_max_scale(x, data_min=lo, data_max=hi))
    assert np.array_equal(fastnorm.min_max_scale_backward(g, x, ulo, uhi),
                          fastnorm.min_max_scale_backward(g, x, lo, hi))
    assert np.array_equal(features.feature_affine(x, um, us, ulo), features.feature_affine(x, m, s, lo))
