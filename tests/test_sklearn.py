"""fastnorm.sklearn: scikit-learn's own estimator checks; attribute-by-attribute
and output equality with sklearn.preprocessing over shapes, dtypes, NaN
patterns, constant / near-constant / offset features, with_mean / with_std,
sample weights and partial_fit sequences; accuracy where scikit-learn loses
it (large offsets, values near the float64 limit); copy / in-place,
set_output, feature names, error cases; Dask input."""
import warnings
import zlib

import numpy as np
import pytest

import dask
import dask.array as da
import pandas as pd
import scipy.sparse as sp
from sklearn import preprocessing as skp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastnorm import sklearn as fs


# ---------------------------------------------------------------- helpers

SHAPES = [(1, 1), (1, 5), (7, 1), (100, 13), (1000, 64), (3, 300)]
DTYPES = [np.float16, np.float32, np.float64]   # scikit-learn keeps all three
NANS = ["none", "scattered", "nan_column"]
KINDS = ["normal", "constant", "near_constant", "offset"]

# relative tolerance of results computed in each dtype
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-6, np.dtype(np.float16): 4e-3}
# the statistics' relative accuracy: fastnorm's kernels sum a float32 (or
# 16-bit) matrix's deviations from its first row in float32 tiles and accept
# up to 16x cancellation before re-centring, so float32-level to ~1e-5
# (scikit-learn sums float32 data in float64: ~1e-15)
STAT_RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5, np.dtype(np.float16): 2e-5}
# large offsets each dtype can hold with some resolution left
OFFSET = {np.dtype(np.float64): 1e9, np.dtype(np.float32): 1e4, np.dtype(np.float16): 1e2}


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def make_x(shape, dtype, nan="none", kind="normal"):
    """A (samples, features) matrix of `dtype`; kind: normal, constant
    (every other feature constant, one of them 0), near_constant (features
    at a large value plus noise of a few ulps, flagged constant by both
    implementations, and features at it plus noise well above the rounding
    level) or offset (every feature at a large offset)."""
    dtype = np.dtype(dtype)
    n, f = shape
    rng = _rng(shape, dtype.name, nan, kind)
    x = rng.standard_normal(shape) * 3 + 1
    if kind == "constant":
        x[:, ::2] = rng.integers(-5, 6, size=(1, len(range(0, f, 2))))
        x[:, 0] = 0.0
    elif kind == "near_constant":
        base = {np.dtype(np.float64): 1e8, np.dtype(np.float32): 1e4, np.dtype(np.float16): 1e2}[dtype]
        ulp = float(np.spacing(dtype.type(base)))
        x[:, ::2] = base + rng.integers(-2, 3, size=(n, len(range(0, f, 2)))) * ulp
        x[:, 1::2] = base + rng.standard_normal((n, len(range(1, f, 2)))) * 64 * ulp
    elif kind == "offset":
        x += OFFSET[dtype]
    x = x.astype(dtype)
    if nan in ("scattered", "nan_column"):
        x[rng.random(shape) < 0.1] = np.nan
    if nan == "nan_column":
        x[:, -1] = np.nan
    return x


def _magnitude(x):
    """max |x| of every feature (0 for a feature of NaN only), float64."""
    a = np.abs(np.asarray(x, np.float64))
    return np.where(np.isnan(a), 0.0, a).max(axis=0, initial=0.0)


def assert_same_type(ours, ref, name):
    assert type(ours) is type(ref), f"{name}: {type(ours)} vs {type(ref)}"
    if isinstance(ref, (np.ndarray, np.generic)):
        assert ours.dtype == ref.dtype, f"{name}: dtype {ours.dtype} vs {ref.dtype}"
        assert np.shape(ours) == np.shape(ref), f"{name}: shape {np.shape(ours)} vs {np.shape(ref)}"


def assert_close(ours, ref, name, atol=0.0, rtol=0.0):
    """Same type and dtype, NaN at the same places, values within atol (scalar
    or per element) + rtol * |ref|."""
    assert_same_type(ours, ref, name)
    a = np.asarray(ours, np.float64)
    b = np.asarray(ref, np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(b)), f"{name}: NaN positions differ"
    ok = ~np.isnan(b)
    bound = np.broadcast_to(np.asarray(atol, np.float64), b.shape)[ok] + rtol * np.abs(b[ok])
    err = np.abs(a[ok] - b[ok])
    assert np.all(err <= bound), (f"{name}: max excess {np.max(err - bound, initial=0)}, "
                                  f"max err {np.max(err, initial=0)}")


def assert_identical(ours, ref, name):
    assert_same_type(ours, ref, name)
    if isinstance(ref, (np.ndarray, np.generic)):
        assert np.array_equal(ours, ref, equal_nan=ref.dtype.kind == "f"), f"{name}: {ours} vs {ref}"
    else:
        assert ours == ref, f"{name}: {ours} vs {ref}"


def assert_standard_stats(ours, ref, x, dtype, features=None, count_rtol=0.0):
    """mean_, var_, scale_ within the conditioning of the data (rounding the
    deviations of values of magnitude M costs eps * M * std in the variance),
    n_samples_seen_ (up to count_rtol: sums of fractional weights added in
    another order) and n_features_in_ identical.  features: a mask, to
    compare those features' statistics only (and not n_samples_seen_)."""
    rtol = STAT_RTOL[np.dtype(dtype)]
    keep = slice(None) if features is None else features
    M = _magnitude(x)[keep]
    assert ours.n_features_in_ == ref.n_features_in_
    if features is None and count_rtol:
        assert_close(ours.n_samples_seen_, ref.n_samples_seen_, "n_samples_seen_", rtol=count_rtol)
    elif features is None:
        assert_identical(ours.n_samples_seen_, ref.n_samples_seen_, "n_samples_seen_")
    for name in ("mean_", "var_", "scale_"):
        if getattr(ref, name) is None:
            assert getattr(ours, name) is None, name
    if ref.mean_ is not None:
        assert_close(ours.mean_[keep], ref.mean_[keep], "mean_", atol=rtol * M)
    if ref.var_ is not None:
        std = np.sqrt(np.abs(ref.var_[keep]))
        var_tol = rtol * (M * std + M * M * rtol)
        assert_close(ours.var_[keep], ref.var_[keep], "var_", atol=var_tol, rtol=rtol)
        assert_close(ours.scale_[keep], ref.scale_[keep], "scale_", atol=np.sqrt(var_tol), rtol=rtol)


def assert_affine_output(ours, ref, x, centre, scale, shift, dtype, name, extra=0.0):
    """y = (x - centre) * scale + shift from two implementations: within
    rtol times the magnitudes the rounding works on, plus `extra` (what the
    two implementations' statistics may differ by moves y by)."""
    rtol = RTOL[np.dtype(dtype)]
    xa = np.abs(np.asarray(x, np.float64))
    s = np.abs(np.asarray(scale, np.float64))
    bound = rtol * (xa * s + np.abs(np.asarray(centre, np.float64)) * s
                    + np.abs(np.asarray(shift, np.float64)) + np.abs(np.asarray(ref, np.float64))) + extra
    bound = np.where(np.isnan(bound), 0.0, bound)
    assert_close(ours, ref, name, atol=bound)


def standard_slack(ref, x, dtype):
    """(transform slack, inverse_transform slack) as functions of z: what
    statistics within assert_standard_stats' tolerances move the outputs by
    (a centre off by rtol * M, a scale off by rtol * (1 + M / scale))."""
    rtol = STAT_RTOL[np.dtype(dtype)]
    M = _magnitude(x)
    sigma = ref.scale_ if ref.with_std else np.ones(ref.n_features_in_)
    rel_scale = rtol * (1 + M / sigma) if ref.with_std else 0.0
    d_centre = rtol * M if ref.with_mean else 0.0

    def forward(z):
        return d_centre / sigma + np.abs(z) * rel_scale

    def inverse(z):
        return np.abs(z) * sigma * rel_scale + d_centre
    return forward, inverse


def standard_coefficients(est):
    F = est.n_features_in_
    centre = est.mean_ if est.with_mean else np.zeros(F)
    scale = 1.0 / est.scale_ if est.with_std else np.ones(F)
    return centre, scale


def check_standard(ours, ref, x, dtype, fit_transformed=None):
    """Transform and inverse_transform (and fit_transform's result, given)
    of fitted StandardScalers ours / ref on x."""
    centre, scale = standard_coefficients(ref)
    forward, inverse = standard_slack(ref, x, dtype)
    z_ref = ref.transform(x)
    assert_affine_output(ours.transform(x), z_ref, x, centre, scale, 0.0, dtype, "transform", forward(z_ref))
    if fit_transformed is not None:
        assert_affine_output(fit_transformed, z_ref, x, centre, scale, 0.0, dtype, "fit_transform",
                             forward(z_ref))
    back_ours, back_ref = ours.inverse_transform(z_ref), ref.inverse_transform(z_ref)
    assert_affine_output(back_ours, back_ref, z_ref, 0.0, 1.0 / scale, centre, dtype, "inverse_transform",
                         inverse(z_ref))


def batches(n):
    """Split points of n samples into batches of different sizes (one of a
    single sample when n allows)."""
    cuts = sorted({0, 1, max(1, n // 10), max(1, n // 2), n})
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def clean_features(x, parts):
    """Features with a non-NaN value in every batch, or NaN in every batch:
    those where scikit-learn's partial_fit keeps the NaN-as-missing rule."""
    present = np.array([(~np.isnan(np.asarray(x[s], np.float64))).any(axis=0) for s in parts])
    return present.all(axis=0) | ~present.any(axis=0)


@pytest.fixture(autouse=True)
def _quiet():
    # scikit-learn's reference computations warn on all-NaN features and 0/0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# ---------------------------------------------------------------- 1. scikit-learn's estimator checks

ESTIMATORS = [fs.StandardScaler(), fs.StandardScaler(with_mean=False), fs.StandardScaler(with_std=False),
              fs.MinMaxScaler(), fs.MinMaxScaler(feature_range=(-2, 3), clip=True),
              fs.Normalizer(), fs.Normalizer("l1"), fs.Normalizer("max")]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_estimator_checks(estimator, check, monkeypatch):
    # check_array_api_input runs with NumPy as the namespace only when
    # SCIPY_ARRAY_API is set (else it skips): set it for the check, so it runs
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    check(estimator)


def test_estimator_checks_cover_every_estimator():
    tags = [e.__sklearn_tags__() for e in ESTIMATORS]
    assert all(t.input_tags.allow_nan for t in tags[:5])
    assert all(t.transformer_tags.preserves_dtype == ["float64", "float32"] for t in tags)
    assert all(not t.input_tags.sparse for t in tags)


# ---------------------------------------------------------------- 2. equality with scikit-learn

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nan", NANS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_standard_scaler_matches_sklearn(shape, dtype, nan, kind):
    x = make_x(shape, dtype, nan, kind)
    ours, ref = fs.StandardScaler().fit(x), skp.StandardScaler().fit(x)
    assert_standard_stats(ours, ref, x, dtype)
    check_standard(ours, ref, x, dtype, fs.StandardScaler().fit_transform(x))


@pytest.mark.parametrize("with_mean, with_std", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("kind", ["normal", "offset"])
@pytest.mark.parametrize("nan", ["none", "nan_column"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (100, 13), (3, 300)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_standard_scaler_with_mean_with_std(shape, dtype, nan, kind, with_mean, with_std):
    x = make_x(shape, dtype, nan, kind)
    kw = dict(with_mean=with_mean, with_std=with_std)
    ours, ref = fs.StandardScaler(**kw).fit(x), skp.StandardScaler(**kw).fit(x)
    assert_standard_stats(ours, ref, x, dtype)
    check_standard(ours, ref, x, dtype)
    if not with_std and not with_mean:
        assert ours.mean_ is None and ours.var_ is None and ours.scale_ is None
        assert_identical(ours.transform(x), x, "identity transform")


@pytest.mark.parametrize("with_mean", [True, False])
@pytest.mark.parametrize("nan", NANS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(7, 1), (100, 13), (1000, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_standard_scaler_partial_fit_matches_sklearn(shape, dtype, nan, with_mean):
    x = make_x(shape, dtype, nan, "offset")
    parts = batches(shape[0])
    assert len(parts) >= 3
    ours, ref = fs.StandardScaler(with_mean=with_mean), skp.StandardScaler(with_mean=with_mean)
    for s in parts:
        assert ours.partial_fit(x[s]) is ours
        ref.partial_fit(x[s])
    # scikit-learn's own partial_fit, on the features where it ignores NaN
    clean = clean_features(x, parts)
    assert_identical(np.broadcast_to(ours.n_samples_seen_, clean.shape)[clean],
                     np.broadcast_to(ref.n_samples_seen_, clean.shape)[clean], "n_samples_seen_")
    assert_standard_stats(ours, ref, x, dtype, features=clean)
    # every feature: the statistics of one fit of all the data
    assert_standard_stats(ours, skp.StandardScaler(with_mean=with_mean).fit(x), x, dtype)
    check_standard(ours, skp.StandardScaler(with_mean=with_mean).fit(x), x, dtype)


@pytest.mark.parametrize("weights", ["float", "integer", "with_zeros"])
@pytest.mark.parametrize("nan", ["none", "scattered"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(7, 1), (100, 13), (1000, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_standard_scaler_sample_weight_matches_sklearn(shape, dtype, nan, weights):
    x = make_x(shape, dtype, nan, "offset")
    rng = _rng("w", shape, weights)
    n = shape[0]
    w = {"float": rng.random(n) * 2 + 0.1, "integer": rng.integers(1, 4, n),
         "with_zeros": rng.integers(0, 3, n).astype(np.float64)}[weights]
    w[0] = max(w[0], 1)                      # at least one non-zero weight
    ours = fs.StandardScaler().fit(x, sample_weight=w)
    ref = skp.StandardScaler().fit(x, sample_weight=w)
    assert_standard_stats(ours, ref, x, dtype)
    check_standard(ours, ref, x, dtype, fs.StandardScaler().fit_transform(x, sample_weight=w))
    # weighted partial_fit over batches
    ours, ref = fs.StandardScaler(), skp.StandardScaler()
    parts = [s for s in batches(n) if np.any(w[s] != 0)]   # scikit-learn refuses an all-zero batch
    for s in parts:
        ours.partial_fit(x[s], sample_weight=w[s])
        ref.partial_fit(x[s], sample_weight=w[s])
    seen = np.concatenate([x[s] for s in parts])
    full = skp.StandardScaler().fit(seen, sample_weight=np.concatenate([w[s] for s in parts]))
    assert_standard_stats(ours, full, seen, dtype, count_rtol=1e-14)
    if np.dtype(dtype) == np.float64 or weights != "float":
        # scikit-learn's own partial_fit (which rounds its running weight sum to
        # X's dtype between calls: equal where that rounding is exact)
        clean = clean_features(x, parts)
        assert_standard_stats(ours, ref, seen, dtype, features=clean)
        if clean.all():
            assert_identical(ours.n_samples_seen_, ref.n_samples_seen_, "n_samples_seen_")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_integer_weights_equal_repeated_samples(dtype):
    x = make_x((60, 5), dtype, "scattered")
    w = _rng("rep").integers(0, 4, 60)
    w[0] = 1
    weighted = fs.StandardScaler().fit(x, sample_weight=w)
    repeated = fs.StandardScaler().fit(np.repeat(x, w, axis=0))
    assert_close(weighted.mean_, repeated.mean_, "mean_", rtol=1e-6)
    assert_close(weighted.var_, repeated.var_, "var_", rtol=1e-5)
    assert_identical(weighted.n_samples_seen_, repeated.n_samples_seen_, "n_samples_seen_")


def test_sample_weight_all_zero_raises_and_zero_weight_feature_is_nan():
    x = np.array([[1.0, np.nan], [2.0, 5.0], [4.0, np.nan]])
    with pytest.raises(ValueError, match="non-zero"):
        fs.StandardScaler().fit(x, sample_weight=np.zeros(3))
    w = np.array([1.0, 0.0, 2.0])            # feature 1's only value weighs 0
    ours, ref = fs.StandardScaler().fit(x, sample_weight=w), skp.StandardScaler().fit(x, sample_weight=w)
    assert np.isnan(ours.mean_[1]) and ours.n_samples_seen_[1] == 0
    assert_standard_stats(ours, ref, x, np.float64)


def test_sample_weight_without_mean_and_std_counts_weights():
    # documented: n_samples_seen_ is the sum of the weights (scikit-learn's
    # with_mean=with_std=False path counts samples instead)
    x = make_x((30, 4), np.float64, "scattered")
    w = _rng("sum").random(30) * 3
    ours = fs.StandardScaler(with_mean=False, with_std=False).fit(x, sample_weight=w)
    expected = w @ (~np.isnan(x))
    assert_close(np.asarray(ours.n_samples_seen_), expected, "n_samples_seen_", rtol=1e-14)
    both = fs.StandardScaler().fit(x, sample_weight=w)
    assert_identical(ours.n_samples_seen_, both.n_samples_seen_, "n_samples_seen_")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nan", NANS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_minmax_scaler_matches_sklearn(shape, dtype, nan, kind):
    x = make_x(shape, dtype, nan, kind)
    for kw in ({}, {"feature_range": (-2, 3), "clip": True}, {"feature_range": (0.1, 0.7)}):
        ours, ref = fs.MinMaxScaler(**kw).fit(x), skp.MinMaxScaler(**kw).fit(x)
        # min and max are data values and the coefficients the same roundings: identical
        for name in ("data_min_", "data_max_", "data_range_", "scale_", "min_", "n_samples_seen_"):
            assert_identical(getattr(ours, name), getattr(ref, name), name)
        assert ours.n_features_in_ == ref.n_features_in_
        # transform data beyond the fitted range too (clip=True matters there)
        wide = (x.astype(np.float64) * 1.5).astype(dtype)
        for data in (x, wide):
            y_ours, y_ref = ours.transform(data), ref.transform(data)
            assert_affine_output(y_ours, y_ref, data, 0.0, ref.scale_, ref.min_, dtype, "transform")
            if kw.get("clip"):
                ok = ~np.isnan(y_ours)
                assert np.all((y_ours[ok] >= -2) & (y_ours[ok] <= 3))
        back_ours, back_ref = ours.inverse_transform(y_ref), ref.inverse_transform(y_ref)
        assert_affine_output(back_ours, back_ref, y_ref, ref.min_, 1.0 / ref.scale_, 0.0, dtype,
                             "inverse_transform")
        assert_affine_output(fs.MinMaxScaler(**kw).fit_transform(x), skp.MinMaxScaler(**kw).fit_transform(x),
                             x, 0.0, ref.scale_, ref.min_, dtype, "fit_transform")


@pytest.mark.parametrize("nan", NANS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(7, 1), (100, 13), (1000, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_minmax_scaler_partial_fit_matches_sklearn(shape, dtype, nan):
    x = make_x(shape, dtype, nan, "offset")
    parts = batches(shape[0])
    ours, ref = fs.MinMaxScaler(), skp.MinMaxScaler()
    for s in parts:
        assert ours.partial_fit(x[s]) is ours
        ref.partial_fit(x[s])
    clean = clean_features(x, parts)
    for name in ("data_min_", "data_max_", "data_range_", "scale_", "min_"):
        assert_identical(getattr(ours, name)[clean], getattr(ref, name)[clean], name)
    assert_identical(ours.n_samples_seen_, ref.n_samples_seen_, "n_samples_seen_")
    # every feature: the one fit of all the data (NaN ignored whatever the batches)
    full = skp.MinMaxScaler().fit(x)
    for name in ("data_min_", "data_max_", "data_range_", "scale_", "min_", "n_samples_seen_"):
        assert_identical(getattr(ours, name), getattr(full, name), name)


def test_minmax_partial_fit_ignores_nan_batches_unlike_sklearn():
    # the documented deliberate difference: a batch with only NaN in a feature
    x = np.array([[np.nan, 1.0], [np.nan, 2.0], [3.0, 0.5], [-1.0, 4.0], [np.nan, 3.0]])
    ours, ref = fs.MinMaxScaler(), skp.MinMaxScaler()
    for s in (slice(0, 2), slice(2, 4), slice(4, 5)):
        ours.partial_fit(x[s])
        ref.partial_fit(x[s])
    assert np.isnan(ref.data_min_[0]) and np.isnan(ref.scale_[0])    # scikit-learn: NaN for good
    assert ours.data_min_[0] == -1.0 and ours.data_max_[0] == 3.0
    full = skp.MinMaxScaler().fit(x)
    for name in ("data_min_", "data_max_", "data_range_", "scale_", "min_"):
        assert_identical(getattr(ours, name), getattr(full, name), name)
    assert_identical(ours.transform(x), full.transform(x), "transform")


def test_standard_partial_fit_ignores_nan_batches_unlike_sklearn():
    x = np.array([[np.nan, 1.0], [np.nan, 2.0], [3.0, 0.5], [-1.0, 4.0], [np.nan, 3.0], [5.0, 7.0]])
    parts = (slice(0, 2), slice(2, 4), slice(4, 5), slice(5, 6))
    ours, ref = fs.StandardScaler(), skp.StandardScaler()
    for s in parts:
        ours.partial_fit(x[s])
        ref.partial_fit(x[s])
    assert np.isnan(ref.mean_[0]) and np.isnan(ref.var_[0])           # scikit-learn: NaN for good
    full = skp.StandardScaler().fit(x)
    assert_standard_stats(ours, full, x, np.float64)
    assert ours.mean_[0] == pytest.approx(np.nanmean(x[:, 0]), rel=1e-15)
    assert ours.var_[0] == pytest.approx(np.nanvar(x[:, 0]), rel=1e-14)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_normalizer_matches_sklearn(shape, dtype, norm):
    x = make_x(shape, dtype, "none", "normal")
    x[0] = 0                                         # a zero row stays zero
    rtol = RTOL[np.dtype(dtype)]
    ours, ref = fs.Normalizer(norm).fit(x), skp.Normalizer(norm).fit(x)
    assert ours.n_features_in_ == ref.n_features_in_
    y_ours, y_ref = ours.transform(x), ref.transform(x)
    assert_close(y_ours, y_ref, "transform", atol=rtol, rtol=rtol)
    assert np.all(y_ours[0] == 0)
    assert_close(fs.Normalizer(norm).fit_transform(x), skp.Normalizer(norm).fit_transform(x),
                 "fit_transform", atol=rtol, rtol=rtol)
    if shape[1] > 1 and shape[0] > 1:
        p = {"l1": 1, "l2": 2, "max": np.inf}[norm]
        norms = np.linalg.norm(y_ours[1:].astype(np.float64), ord=p, axis=1)
        np.testing.assert_allclose(norms, 1.0, rtol=10 * rtol)


@pytest.mark.parametrize("copy", [True, False])
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_normalizer_tiny_rows_left_exactly(dtype, norm, copy):
    # scikit-learn divides a row with norm < 10 * eps by 1: it comes back
    # bit for bit, also in place and where the squares underflow
    info = np.finfo(dtype)
    floor = 10 * float(info.eps)
    rows = [[0.0, 0.0, 0.0], [float(info.smallest_subnormal), 0.0, 0.0],
            [float(info.tiny), float(info.tiny) * 3, 0.0], [floor / 4, floor / 5, -floor / 6],
            [floor * 1.2, floor * 0.1, 0.0], [3.0, -4.0, 12.0]]
    x = np.array(rows, dtype)
    ref = skp.Normalizer(norm).transform(x.copy())
    given = x.copy()
    y = fs.Normalizer(norm, copy=copy).transform(given)
    assert (y is given) == (not copy)
    assert_identical(y[:4], ref[:4], "tiny rows")
    assert_identical(y[:4], x[:4], "tiny rows unchanged")
    assert_close(y[4:], ref[4:], "other rows", rtol=RTOL[np.dtype(dtype)])


def test_feature_names_with_dataframe():
    x = make_x((40, 4), np.float64, "scattered")
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    for ours, ref in ((fs.StandardScaler(), skp.StandardScaler()), (fs.MinMaxScaler(), skp.MinMaxScaler()),
                      (fs.Normalizer(), skp.Normalizer())):
        data = frame.fillna(0.5) if isinstance(ours, fs.Normalizer) else frame
        ours.fit(data)
        ref.fit(data)
        assert_identical(ours.feature_names_in_, ref.feature_names_in_, "feature_names_in_")
        assert list(ours.get_feature_names_out()) == ["a", "b", "c", "d"]
        assert_identical(ours.get_feature_names_out(), ref.get_feature_names_out(), "names out")
        np.testing.assert_allclose(ours.transform(data), ref.transform(data), rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError):
            ours.get_feature_names_out(["a", "b", "x", "d"])
        renamed = data.rename(columns={"a": "z"})
        with pytest.raises(ValueError, match="feature names"):
            ours.transform(renamed)
        with pytest.raises(ValueError, match="feature names"):
            ref.transform(renamed)
        # a plain array after fitting on names: both warn the same way
        with pytest.warns(UserWarning, match="feature names"):
            ours.transform(data.to_numpy())


def test_get_feature_names_out_without_names():
    x = make_x((10, 3), np.float64)
    for ours, ref in ((fs.StandardScaler(), skp.StandardScaler()), (fs.MinMaxScaler(), skp.MinMaxScaler()),
                      (fs.Normalizer(), skp.Normalizer())):
        ours.fit(x)
        ref.fit(x)
        assert not hasattr(ours, "feature_names_in_")
        assert_identical(ours.get_feature_names_out(), ref.get_feature_names_out(), "names out")
        assert list(ours.get_feature_names_out()) == ["x0", "x1", "x2"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_no_runtime_warnings_on_nan_and_constant_features(dtype):
    # scikit-learn warns on all-NaN features (nanmin, 0/0); fastnorm does not
    for shape in ((1, 1), (7, 1), (100, 13)):
        x = make_x(shape, dtype, "nan_column", "constant")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for est in (fs.StandardScaler(), fs.StandardScaler(with_mean=False), fs.MinMaxScaler()):
                est.inverse_transform(est.fit(x).transform(x))
                for s in batches(shape[0]):
                    est.partial_fit(x[s])
            fs.StandardScaler().fit(x, sample_weight=np.ones(shape[0])).transform(x)
            fs.Normalizer().fit_transform(np.nan_to_num(x))
        assert np.isnan(fs.StandardScaler().fit(x).mean_[-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_n_threads(dtype):
    x = make_x((1000, 64), dtype, "scattered", "offset")
    one, two = fs.StandardScaler(n_threads=1).fit(x), fs.StandardScaler(n_threads=2).fit(x)
    assert_standard_stats(two, one, x, dtype)
    check_standard(two, one, x, dtype)
    a, b = fs.MinMaxScaler(n_threads=1).fit(x), fs.MinMaxScaler(n_threads=2).fit(x)
    for name in ("data_min_", "data_max_", "scale_", "min_"):
        assert_identical(getattr(a, name), getattr(b, name), name)
    xn = np.nan_to_num(x, nan=1.0)
    assert_close(fs.Normalizer(n_threads=2).transform(xn), fs.Normalizer(n_threads=1).transform(xn),
                 "normalize", rtol=RTOL[np.dtype(dtype)], atol=RTOL[np.dtype(dtype)])
    with pytest.raises(ValueError, match="n_threads"):
        fs.StandardScaler(n_threads="all").fit(x)


# ---------------------------------------------------------------- 3. accuracy beyond scikit-learn

def test_float32_large_offset_many_batches():
    rng = _rng("f32-offset")
    x = (3e4 + rng.standard_normal((20000, 8)) * 2).astype(np.float32)
    sizes = rng.integers(1, 400, size=400)
    cuts = np.unique(np.r_[0, np.cumsum(sizes)[np.cumsum(sizes) < len(x)], len(x)])
    assert len(cuts) > 80
    ours = fs.StandardScaler()
    for a, b in zip(cuts[:-1], cuts[1:]):
        ours.partial_fit(x[a:b])
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=0), np.var(x64, axis=0)
    assert ours.n_samples_seen_ == len(x)
    assert np.all(np.abs(ours.mean_ - mean) <= 1e-6 * np.sqrt(var))
    np.testing.assert_allclose(ours.var_, var, rtol=2e-6)
    # the transform of float32 data at that offset: x - mean exact, not x - float32(mean)
    z = ours.transform(x[:500])
    ref = ((x64[:500] - mean) / np.sqrt(var)).astype(np.float32)
    np.testing.assert_allclose(z, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype, base, noise, bound", [(np.float64, 1e8, 1e-3, 1e-5),
                                                     (np.float32, 1e4, 0.05, 2e-6)])
def test_near_constant_more_accurate_than_sklearn(dtype, base, noise, bound):
    # features of base + small noise: x - mean is exact in fastnorm's transform
    # (scikit-learn subtracts mean_ rounded to X's dtype); in float64 the bound
    # is mean_'s own rounding, ulp(base) / 2 / std
    x = (base + _rng("near", base).standard_normal((2000, 3)) * noise).astype(dtype)
    dev = x.astype(np.float64) - base               # exact (Sterbenz)
    mean_dev, var = dev.mean(axis=0), np.var(dev, axis=0)
    ours, ref = fs.StandardScaler().fit(x), skp.StandardScaler().fit(x)
    np.testing.assert_allclose(ours.var_, var, rtol=1e-10)
    assert np.all(np.abs(ours.mean_ - (base + mean_dev)) <= np.spacing(base + mean_dev))
    exact = (dev - mean_dev) / np.sqrt(var)
    err_ours = np.abs(ours.transform(x) - exact).max()
    err_ref = np.abs(ref.transform(x) - exact).max()
    assert err_ours < bound
    assert err_ours <= err_ref


def test_values_near_float64_limit_partial_fit():
    # constant features at 1e306: the running sum of 600-sample batches
    # overflows scikit-learn's update; ours stays exact
    x = np.empty((3000, 3))
    x[:, 0], x[:, 1], x[:, 2] = 1.2e306, -1.7e306, 3e305
    ours, ref = fs.StandardScaler(), skp.StandardScaler()
    for part in np.array_split(x, 5):
        ours.partial_fit(part)
        ref.partial_fit(part)
    assert np.array_equal(ours.mean_, x[0])
    assert np.array_equal(ours.var_, np.zeros(3))
    assert np.array_equal(ours.scale_, np.ones(3))
    assert np.array_equal(ours.transform(x[:5]), np.zeros((5, 3)))
    assert np.array_equal(ours.inverse_transform(np.zeros((2, 3))), x[:2])
    assert not np.all(np.isfinite(ref.mean_))          # scikit-learn's mean * n overflowed
    # one fit of it too (fastnorm's kernel squares overflow there; redone in NumPy)
    single = fs.StandardScaler().fit(x)
    assert np.array_equal(single.mean_, x[0]) and np.array_equal(single.var_, np.zeros(3))


def test_variance_times_count_overflow_partial_fit():
    # var ~ 5e304 is finite, but n * var (the sum of squared deviations) and
    # scikit-learn's incremental terms are not
    rng = _rng("n-var")
    s = 1e152
    x = rng.standard_normal((4000, 3)) * s / 10 + s * np.repeat(np.arange(8), 500)[:, None]
    ours, ref = fs.StandardScaler(), skp.StandardScaler()
    for part in np.array_split(x, 8):
        ours.partial_fit(part)
        ref.partial_fit(part)
    xs = x / s
    np.testing.assert_allclose(ours.mean_, xs.mean(axis=0) * s, rtol=1e-13)
    np.testing.assert_allclose(ours.var_ / s / s, np.var(xs, axis=0), rtol=1e-12)
    assert np.all(np.isfinite(ours.scale_))
    np.testing.assert_allclose(ours.transform(x), (xs - xs.mean(0)) / xs.std(0), rtol=1e-10, atol=1e-10)
    assert not np.all(np.isfinite(ref.var_))           # scikit-learn's update overflowed
    single = fs.StandardScaler().fit(x)
    np.testing.assert_allclose(single.var_ / s / s, np.var(xs, axis=0), rtol=1e-12)


def test_weighted_values_near_float64_limit():
    x = np.array([[1.5e308, -1.0], [1.5e308, 1.0], [1.5e308, 3.0]])
    w = np.array([2.0, 1.0, 3.0])
    ours = fs.StandardScaler().fit(x, sample_weight=w)
    assert ours.mean_[0] == 1.5e308 and ours.var_[0] == 0.0
    assert ours.mean_[1] == pytest.approx((w @ x[:, 1]) / w.sum(), rel=1e-15)


# ---------------------------------------------------------------- 4. copy, output, errors

def _fitted(cls, x, **kw):
    return cls(**kw).fit(x)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("order", ["C", "F"])
def test_copy_false_transforms_in_place(dtype, order):
    x = make_x((50, 6), dtype, "none", "normal")
    for cls in (fs.StandardScaler, fs.MinMaxScaler, fs.Normalizer):
        est = cls(copy=False).fit(x)
        expected = cls(copy=True).fit(x).transform(x)
        given = np.array(x, order=order)
        y = est.transform(given)
        assert y is given, cls.__name__
        assert_identical(given, expected, f"{cls.__name__} in place")
        if cls is not fs.Normalizer:
            back = est.inverse_transform(y)
            assert back is given
            assert_close(back, x, "inverse in place", atol=RTOL[np.dtype(dtype)] * 40 * _magnitude(x))
    # StandardScaler's copy argument overrides the constructor's
    est = fs.StandardScaler().fit(x)
    given = x.copy()
    assert est.transform(given, copy=False) is given
    assert est.inverse_transform(given, copy=False) is given


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_copy_true_leaves_input(dtype):
    x = make_x((50, 6), dtype, "scattered", "offset")
    xn = np.nan_to_num(x, nan=1.0)
    for est, data in ((fs.StandardScaler(), x), (fs.MinMaxScaler(), x), (fs.Normalizer(), xn)):
        saved = data.copy()
        est.fit(data)
        for fn in (est.transform, getattr(est, "inverse_transform", est.transform), est.fit_transform):
            y = fn(data)
            assert y is not data and not np.shares_memory(y, data)
            assert y.dtype == data.dtype
            assert_identical(data, saved, "input")
    # copy=False with a dtype that is not kept: a new float64 array, input untouched
    ints = np.arange(12).reshape(4, 3)
    for cls in (fs.StandardScaler, fs.MinMaxScaler, fs.Normalizer):
        y = cls(copy=False).fit(ints).transform(ints)
        assert y.dtype == np.float64 and np.array_equal(ints, np.arange(12).reshape(4, 3))
        np.testing.assert_allclose(y, getattr(skp, cls.__name__)().fit(ints).transform(ints), rtol=1e-12)


def test_read_only_input_copy_false():
    x = make_x((20, 3), np.float64)
    x.setflags(write=False)
    for cls in (fs.StandardScaler, fs.MinMaxScaler, fs.Normalizer):
        y = cls(copy=False).fit(x).transform(x)
        assert y is not x and y.flags.writeable
        np.testing.assert_allclose(y, getattr(skp, cls.__name__)().fit(x).transform(x), rtol=1e-12, atol=1e-12)


def test_set_output_pandas():
    x = make_x((30, 3), np.float32, "scattered")
    frame = pd.DataFrame(x, columns=["u", "v", "w"])
    for ours, ref in ((fs.StandardScaler(), skp.StandardScaler()), (fs.MinMaxScaler(), skp.MinMaxScaler()),
                      (fs.Normalizer(), skp.Normalizer())):
        data = frame.fillna(1.0) if isinstance(ours, fs.Normalizer) else frame
        ours.set_output(transform="pandas")
        ref.set_output(transform="pandas")
        out = ours.fit_transform(data)
        assert isinstance(out, pd.DataFrame)
        assert list(out.columns) == ["u", "v", "w"]
        assert list(out.index) == list(data.index)
        assert (out.dtypes == np.float32).all()
        np.testing.assert_allclose(out.to_numpy(), ref.fit_transform(data).to_numpy(), rtol=1e-6, atol=1e-6)
        plain = ours.fit(data.to_numpy()).transform(data.to_numpy())
        assert list(plain.columns) == ["x0", "x1", "x2"]
        ours.set_output(transform="default")
        assert isinstance(ours.transform(data.to_numpy()), np.ndarray)


def test_sparse_input_raises():
    x = make_x((10, 4), np.float64)
    x[x < 0] = 0
    s = sp.csr_matrix(x)
    for cls in (fs.StandardScaler, fs.MinMaxScaler, fs.Normalizer):
        with pytest.raises(TypeError, match="(?i)sparse"):
            cls().fit(s)
        fitted = cls().fit(x)
        with pytest.raises(TypeError, match="(?i)sparse"):
            fitted.transform(s)
        if cls is not fs.Normalizer:
            with pytest.raises(TypeError, match="(?i)sparse"):
                cls().partial_fit(s)
            with pytest.raises(TypeError, match="(?i)sparse"):
                fitted.inverse_transform(s)
    with pytest.raises(TypeError, match="(?i)sparse"):
        fs.StandardScaler(with_mean=False).fit(sp.csc_matrix(x))


def test_wrong_number_of_features_raises():
    x = make_x((10, 4), np.float64)
    for cls in (fs.StandardScaler, fs.MinMaxScaler, fs.Normalizer):
        est = cls().fit(x)
        with pytest.raises(ValueError, match="4 features"):
            est.transform(x[:, :3])
        with pytest.raises(ValueError, match="4 features"):
            est.transform(np.hstack([x, x]))
        if cls is not fs.Normalizer:
            with pytest.raises(ValueError, match="4 features"):
                est.partial_fit(x[:, :3])


def test_minmax_bad_feature_range_raises():
    x = make_x((10, 4), np.float64)
    for bad in ((2, 1), (1, 1)):
        with pytest.raises(ValueError, match="feature range"):
            fs.MinMaxScaler(feature_range=bad).fit(x)
        with pytest.raises(ValueError, match="feature range"):
            fs.MinMaxScaler(feature_range=bad).partial_fit(x)
    with pytest.raises(ValueError):
        fs.MinMaxScaler(feature_range=[0, 1]).fit(x)       # scikit-learn's constraint: a tuple
    with pytest.raises(ValueError):
        fs.Normalizer("l3").transform(x)


def test_not_fitted_and_refit_resets():
    x = make_x((10, 4), np.float64)
    for cls in (fs.StandardScaler, fs.MinMaxScaler):
        with pytest.raises(NotFittedError):
            cls().transform(x)
        est = cls().fit(x)
        est.fit(x[:, :2] * 3)                    # fit starts over, partial_fit would refuse
        ref = getattr(skp, cls.__name__)().fit(x[:, :2] * 3)
        assert est.n_features_in_ == 2
        assert_identical(est.n_samples_seen_, ref.n_samples_seen_, "n_samples_seen_")
        np.testing.assert_allclose(est.transform(x[:, :2]), ref.transform(x[:, :2]), rtol=1e-12, atol=1e-12)
    assert fs.Normalizer().transform(x).shape == x.shape   # stateless, needs no fit


# ---------------------------------------------------------------- 5. Dask input

@pytest.fixture
def sync_scheduler():
    with dask.config.set(scheduler="synchronous"):
        yield


class DaskIn:
    """A Dask-fitted estimator seen through NumPy: transform /
    inverse_transform take a NumPy array, hand the estimator a chunked Dask
    array, check a Dask array comes back and compute it."""

    def __init__(self, est, chunks=(37, 5)):
        self.est, self.chunks = est, chunks

    def _call(self, method, x):
        y = getattr(self.est, method)(da.from_array(x, chunks=self.chunks))
        assert isinstance(y, da.Array) and y.dtype == x.dtype and y.shape == x.shape
        return y.compute()

    def transform(self, x):
        return self._call("transform", x)

    def inverse_transform(self, x):
        return self._call("inverse_transform", x)


@pytest.mark.usefixtures("sync_scheduler")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [{}, {"with_mean": False}, {"with_std": False}])
def test_dask_standard_scaler(dtype, kw):
    x = make_x((200, 13), dtype, "nan_column", "offset")
    X = da.from_array(x, chunks=(37, 5))
    ours, ref = fs.StandardScaler(**kw).fit(X), fs.StandardScaler(**kw).fit(x)
    assert_standard_stats(ours, ref, x, dtype)
    assert_standard_stats(ours, skp.StandardScaler(**kw).fit(x), x, dtype)
    ft = fs.StandardScaler(**kw).fit_transform(X)
    assert isinstance(ft, da.Array)
    check_standard(DaskIn(ours), ref, x, dtype, ft.compute())


@pytest.mark.usefixtures("sync_scheduler")
def test_dask_standard_scaler_partial_fit_and_errors():
    x = make_x((300, 13), np.float64, "scattered", "offset")
    ours, ref = fs.StandardScaler(), fs.StandardScaler()
    for s in batches(300):
        ours.partial_fit(da.from_array(x[s], chunks=(37, 5)))
        ref.partial_fit(x[s])
    assert_standard_stats(ours, ref, x, np.float64)
    X = da.from_array(x, chunks=(37, 5))
    with pytest.raises(TypeError, match="sample_weight"):
        fs.StandardScaler().fit(X, sample_weight=np.ones(300))
    with pytest.raises(ValueError, match="13 features"):
        ours.transform(X[:, :4])
    with pytest.raises(TypeError, match="floating"):
        fs.StandardScaler().fit(da.from_array(np.arange(20).reshape(10, 2)))
    with pytest.raises(ValueError, match="2-D"):
        fs.StandardScaler().fit(X[:, 0])


@pytest.mark.usefixtures("sync_scheduler")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [{}, {"feature_range": (-2, 3), "clip": True}])
def test_dask_minmax_scaler(dtype, kw):
    x = make_x((200, 13), dtype, "nan_column", "normal")
    X = da.from_array(x, chunks=(37, 5))
    ours, ref = fs.MinMaxScaler(**kw).fit(X), skp.MinMaxScaler(**kw).fit(x)
    for name in ("data_min_", "data_max_", "data_range_", "scale_", "min_", "n_samples_seen_"):
        assert_identical(getattr(ours, name), getattr(ref, name), name)
    assert ours.n_features_in_ == 13
    wide = (x * 1.5).astype(dtype)
    y = ours.transform(da.from_array(wide, chunks=(37, 5)))
    assert isinstance(y, da.Array) and y.dtype == x.dtype
    assert_affine_output(y.compute(), ref.transform(wide), wide, 0.0, ref.scale_, ref.min_, dtype,
                         "dask transform")
    back = ours.inverse_transform(y)
    assert isinstance(back, da.Array)
    assert_affine_output(back.compute(), ref.inverse_transform(ref.transform(wide)), ref.transform(wide),
                         ref.min_, 1.0 / ref.scale_, 0.0, dtype, "dask inverse_transform")
    part = fs.MinMaxScaler(**kw)
    for s in batches(200):
        part.partial_fit(da.from_array(x[s], chunks=(37, 5)))
    full = fs.MinMaxScaler(**kw).fit(x)
    for name in ("data_min_", "data_max_", "scale_", "min_", "n_samples_seen_"):
        assert_identical(getattr(part, name), getattr(full, name), name)


@pytest.mark.usefixtures("sync_scheduler")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_dask_normalizer(dtype, norm):
    x = make_x((200, 13), dtype, "none", "normal")
    x[3] = 0
    X = da.from_array(x, chunks=(37, 5))
    ours = fs.Normalizer(norm).fit(X)
    assert ours.n_features_in_ == 13
    y = ours.transform(X)
    assert isinstance(y, da.Array) and y.dtype == x.dtype
    rtol = RTOL[np.dtype(dtype)]
    assert_close(y.compute(), fs.Normalizer(norm).transform(x), "dask transform", atol=rtol, rtol=rtol)
    assert_close(y.compute(), skp.Normalizer(norm).transform(x), "vs sklearn", atol=rtol, rtol=rtol)
    with pytest.raises(ValueError, match="13 features"):
        ours.transform(X[:, :5])


@pytest.mark.usefixtures("sync_scheduler")
def test_dask_fit_after_dataframe_forgets_feature_names():
    x = make_x((50, 3), np.float64)
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    for cls in (fs.StandardScaler, fs.MinMaxScaler, fs.Normalizer):
        est = cls().fit(frame)
        assert list(est.feature_names_in_) == ["a", "b", "c"]
        est.fit(da.from_array(x, chunks=(20, 2)))
        assert not hasattr(est, "feature_names_in_")
        with warnings.catch_warnings():
            warnings.simplefilter("error")                  # no "fitted with feature names" warning
            est.transform(x)
        assert list(est.get_feature_names_out()) == ["x0", "x1", "x2"]


def test_dask_threaded_scheduler():
    x = make_x((500, 20), np.float32, "scattered", "offset")
    X = da.from_array(x, chunks=(37, 5))
    ref = fs.StandardScaler().fit(x)
    with dask.config.set(scheduler="threads"):
        ours = fs.StandardScaler().fit(X)
        assert_standard_stats(ours, ref, x, np.float32)
        check_standard(DaskIn(ours), ref, x, np.float32)


@pytest.mark.parametrize("est", [fs.StandardScaler(), fs.MinMaxScaler(), fs.Normalizer()], ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("rows", [10, 300_001])   # np.sum; the kernel check, with a tail of 37
def test_finite_check_words_errors_as_sklearn(est, rows):
    x = np.ones((rows, 5))
    big = x * 1e308                     # finite, but its sum overflows: accepted
    assert np.isfinite(clone(est).fit_transform(big)).all()
    bad = x.copy()
    bad[rows // 2, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        clone(est).fit(bad)
    nan = x.copy()
    nan[rows - 1, 4] = np.nan          # the last element: in the tail past the rows of 64
    if isinstance(est, fs.Normalizer):
        with pytest.raises(ValueError, match="NaN"):
            clone(est).fit(nan)
    else:                               # missing values are taken
        assert np.isnan(clone(est).fit_transform(nan)[rows - 1, 4])
