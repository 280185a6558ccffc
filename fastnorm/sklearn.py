"""scikit-learn drop-ins: StandardScaler, MinMaxScaler and Normalizer on
fastnorm's kernels.

The estimators take scikit-learn's constructor arguments (plus ``n_threads``),
set the same fitted attributes with the same dtypes, and pass scikit-learn's
own estimator checks (``tests/test_sklearn.py``).  What differs is how the
work is done:

* ``fit`` reads X once or twice (fastnorm's per-feature moments about each
  feature's first value, NaN left out) instead of scikit-learn's five passes
  with temporaries; ``transform`` is one pass (x - centre) * scale + shift
  into a new array (``copy=True``) or into X itself (``copy=False``).
* ``partial_fit`` merges the batch's (count, mean, variance) into the running
  ones with Chan, Golub and LeVeque's pairwise formula on means and
  variances, so it neither loses float32 precision nor overflows where the
  running *sum* (scikit-learn's incremental update carries ``mean * n``) or
  the sum of squared deviations (``var * n``) would.  A feature whose kernel
  moments overflow (values beyond about 1e154) is redone in NumPy, scaled
  (``fastnorm.functional.features.robust_moments``).
* Given a Dask array, ``fit`` / ``partial_fit`` reduce it through
  ``fastnorm.dask`` (the statistics are computed; the array is read once) and
  ``transform`` returns a lazy Dask array.

Deliberate differences from scikit-learn.  The documented NaN-as-missing rule
is applied through: ``MinMaxScaler.partial_fit`` merges minima and maxima
ignoring NaN (scikit-learn keeps a feature NaN forever once one batch had only
NaN in it), and ``StandardScaler.partial_fit`` merges every feature's moments
over its non-NaN samples whatever the batches (scikit-learn keeps ``mean_``
NaN for good when the first batches of a feature held only NaN, and ``var_``
NaN for good after any later batch of only NaN in it).  ``n_samples_seen_`` is
the sum of the sample weights whenever ``sample_weight`` is given
(scikit-learn's documented meaning; with ``with_mean=with_std=False``
scikit-learn counts samples instead, and an unweighted ``partial_fit`` after a
weighted one truncates its weight sums to integers), kept in float64 between
weighted ``partial_fit`` calls (scikit-learn rounds the running sums to X's
dtype, float32 or float16).  Sparse input raises a TypeError that says so
(use ``.toarray()`` or scikit-learn's own scaler).  ``sample_weight`` goes
through a NumPy float64 pass (fastnorm has no weighted-moment kernel).
"""
import functools

import numpy as np

try:
    from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
    from sklearn.utils._param_validation import StrOptions
    from sklearn.utils.validation import _check_sample_weight, check_array, check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("fastnorm.sklearn needs scikit-learn >= 1.6 (pip install 'scikit-learn>=1.6')") from exc

from .functional.features import feature_affine, feature_minmax, feature_moments, merge_moments, robust_moments
from .functional.lp import normalize as _normalize

__all__ = ["StandardScaler", "MinMaxScaler", "Normalizer"]

# The float dtypes scikit-learn's scalers keep (others are converted to the first).
_FLOATS = (np.float64, np.float32, np.float16)
_EPS64 = np.finfo(np.float64).eps


def _is_dask(X):
    return type(X).__module__.split(".")[0] == "dask" and hasattr(X, "dask")


def _dask():
    from . import dask as fdask
    return fdask


def _check_dask(est, X):
    if X.ndim != 2:
        raise ValueError(f"Expected a 2-D Dask array, got {X.ndim} dimensions")
    if X.dtype.kind != "f":
        raise TypeError(f"{type(est).__name__} takes a floating-point Dask array, got dtype {X.dtype}")


def _dask_fitted_features(est, X, reset):
    """n_features_in_ for a Dask array (validate_data does not take one)."""
    _check_dask(est, X)
    if reset:
        est.n_features_in_ = X.shape[1]
        est.__dict__.pop("feature_names_in_", None)  # a Dask array has no column names
    elif X.shape[1] != est.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, but {type(est).__name__} is expecting "
                         f"{est.n_features_in_} features as input.")


@functools.lru_cache(maxsize=None)
def _sklearn_count_dtype():
    """The dtype of scikit-learn's unweighted StandardScaler.n_samples_seen_
    when it updates moments: int64 in older releases, float64 where its
    incremental update casts the counts to float64 (1.9).  Asked of that
    update itself, once, on a 1x1 array."""
    try:
        from sklearn.utils.extmath import _incremental_mean_and_var
        out = _incremental_mean_and_var(np.zeros((1, 1)), 0.0, 0.0, np.zeros(1, np.int64))
        return np.asarray(out[2]).dtype
    except Exception:  # pragma: no cover - a scikit-learn without that helper
        return np.dtype(np.float64)



def _finite_sum(X, n_threads):
    """Whether X holds no NaN or inf, tested as scikit-learn does, by the
    finiteness of a reduction, but on fastnorm's threads: the per-feature
    means of fastnorm's moments kernel (one pass; NumPy's sum takes about
    twice as long here and does not scale with threads).  A non-finite
    result may also be finite values whose shifted sum overflowed; the
    caller then asks scikit-learn's element-wise check."""
    from . import _dispatch
    if X.flags.c_contiguous and X.flags.aligned and X.dtype.isnative and X.size >= 64:
        # the buffer as rows of 64 (whatever X's width: the kernel is fastest
        # on narrow rows, e.g. 30 ms for a 20000 x 4096 float32 X seen as
        # (1280000, 64) against 54 ms as it is and 44 ms for np.sum)
        flat = X.reshape(-1)
        k = flat.size // 64 * 64
        mean, var = np.empty(64), np.empty(64)
        _dispatch.kernels.feature_moments(flat[:k].reshape(-1, 64), k // 64, 64, mean, var, n_threads)
        return bool(np.isfinite(mean).all()) and _finite_sum(flat[k:], n_threads)
    return bool(np.isfinite(np.sum(X, dtype=np.float32 if X.dtype == np.float16 else None)))


def _validate(est, X, allow_nan=False, **kw):
    """scikit-learn's validate_data, with its finite check done by
    `_finite_sum` on fastnorm's threads; when that sum is not finite
    (a NaN, an inf, or finite values whose sum overflows), scikit-learn's own
    element-wise check decides and words the error."""
    X = validate_data(est, X, ensure_all_finite=False, **kw)
    if X.dtype.kind == "f" and not _finite_sum(X, getattr(est, "n_threads", None)):
        check_array(X, accept_sparse=False, dtype=None, copy=False, ensure_min_samples=0,
                    ensure_min_features=0, ensure_all_finite="allow-nan" if allow_nan else True,
                    estimator=est, input_name="X")
    return X

def _zero_scale_to_one(scale, constant):
    scale = np.array(scale, copy=True)
    scale[constant] = 1.0
    return scale


class _ScalerTags:
    """The tags the two scalers share: NaN taken (a missing value), sparse
    input refused, float32 and float64 kept."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.sparse = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class StandardScaler(_ScalerTags, OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Standardize features by removing the mean and scaling to unit variance.

    A drop-in for ``sklearn.preprocessing.StandardScaler`` (same arguments and
    fitted attributes ``mean_``, ``var_``, ``scale_``, ``n_samples_seen_``,
    ``n_features_in_``, ``feature_names_in_``); NaN is a missing value.
    ``n_threads``: fastnorm's kernel threads (None: all cores).
    """

    _parameter_constraints: dict = {"copy": ["boolean"], "with_mean": ["boolean"],
                                    "with_std": ["boolean"], "n_threads": [None, int]}

    def __init__(self, *, copy=True, with_mean=True, with_std=True, n_threads=None):
        self.copy = copy
        self.with_mean = with_mean
        self.with_std = with_std
        self.n_threads = n_threads

    def _reset(self):
        for name in ("scale_", "n_samples_seen_", "mean_", "var_"):
            self.__dict__.pop(name, None)

    def fit(self, X, y=None, sample_weight=None):
        """Compute the mean and standard deviation of every feature of X."""
        self._reset()
        return self.partial_fit(X, y, sample_weight)

    def partial_fit(self, X, y=None, sample_weight=None):
        """Merge X's statistics into those seen so far (Chan's pairwise formula)."""
        self._validate_params()
        first = not hasattr(self, "n_samples_seen_")
        if _is_dask(X):
            if sample_weight is not None:
                raise TypeError("sample_weight is not supported with a Dask array")
            _dask_fitted_features(self, X, first)
            batch = _dask().compute_moments(X, n_threads=self.n_threads)
            weighted = False
        else:
            X = _validate(self, X, allow_nan=True, accept_sparse=False, dtype=_FLOATS, reset=first)
            weighted = sample_weight is not None
            if weighted:
                w = _check_sample_weight(sample_weight, X, dtype=X.dtype)
                batch = robust_moments(X, w)
            else:
                batch = feature_moments(X, 0, n_threads=self.n_threads)
        F = self.n_features_in_
        if first:
            seen = (np.zeros(F), np.full(F, np.nan), np.full(F, np.nan))
        else:
            n0 = np.broadcast_to(np.asarray(self.n_samples_seen_, np.float64), (F,))
            m0 = self.mean_ if self.mean_ is not None else np.zeros(F)
            v0 = self.var_ if self.var_ is not None else np.zeros(F)
            seen = (n0, np.asarray(m0, np.float64), np.asarray(v0, np.float64))
        count, mean, var = merge_moments(seen, batch)
        if self.with_mean or self.with_std:
            # as scikit-learn's incremental update leaves them (weight sums: float64)
            count_dtype = np.float64 if weighted else _sklearn_count_dtype()
        else:
            count_dtype = X.dtype if weighted else np.int64
            if not first and np.asarray(self.n_samples_seen_).dtype.kind == "f":
                count_dtype = np.asarray(self.n_samples_seen_).dtype
        n_seen = count.astype(count_dtype)
        self.n_samples_seen_ = n_seen[0] if n_seen.size and n_seen.max() == n_seen.min() else n_seen
        if self.with_mean or self.with_std:
            self.mean_ = mean
            self.var_ = var if self.with_std else None
        else:
            self.mean_ = self.var_ = None
        if self.with_std:
            n = np.asarray(self.n_samples_seen_, np.float64)
            # near-constant: the variance is within the rounding error bound of a
            # two-pass computation (Chan, Golub & LeVeque), as scikit-learn decides it
            with np.errstate(invalid="ignore", over="ignore"):
                constant = var <= n * _EPS64 * var + (n * mean * _EPS64) ** 2
            self.scale_ = _zero_scale_to_one(np.sqrt(var), constant)
        else:
            self.scale_ = None
        return self

    def _coefficients(self):
        F = self.n_features_in_
        centre = self.mean_ if self.with_mean else np.zeros(F)
        scale = 1.0 / self.scale_ if self.with_std else np.ones(F)
        return centre, scale

    def transform(self, X, copy=None):
        """z = (X - mean_) / scale_, in one pass (into X itself when copy=False)."""
        check_is_fitted(self)
        centre, scale = self._coefficients()
        if _is_dask(X):
            _dask_fitted_features(self, X, False)
            return _dask().feature_affine(X, centre, scale, n_threads=self.n_threads)
        copy = self.copy if copy is None else copy
        X = _validate(self, X, allow_nan=True, reset=False, accept_sparse=False, dtype=_FLOATS, copy=False,
                      force_writeable=not copy)
        return feature_affine(X, centre, scale, out=None if copy else X, n_threads=self.n_threads)

    def inverse_transform(self, X, copy=None):
        """X * scale_ + mean_."""
        check_is_fitted(self)
        F = self.n_features_in_
        scale = self.scale_ if self.with_std else np.ones(F)
        shift = self.mean_ if self.with_mean else np.zeros(F)
        if _is_dask(X):
            _dask_fitted_features(self, X, False)
            return _dask().feature_affine(X, 0.0, scale, shift, n_threads=self.n_threads)
        copy = self.copy if copy is None else copy
        X = check_array(X, accept_sparse=False, dtype=_FLOATS, ensure_all_finite="allow-nan",
                        copy=False, force_writeable=not copy)
        return feature_affine(X, 0.0, scale, shift, out=None if copy else X, n_threads=self.n_threads)


class MinMaxScaler(_ScalerTags, OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Scale every feature to `feature_range` from its minimum and maximum.

    A drop-in for ``sklearn.preprocessing.MinMaxScaler`` (attributes
    ``min_``, ``scale_``, ``data_min_``, ``data_max_``, ``data_range_``,
    ``n_samples_seen_``, ...); NaN is ignored when finding min and max.
    """

    _parameter_constraints: dict = {"feature_range": [tuple], "copy": ["boolean"],
                                    "clip": ["boolean"], "n_threads": [None, int]}

    def __init__(self, feature_range=(0, 1), *, copy=True, clip=False, n_threads=None):
        self.feature_range = feature_range
        self.copy = copy
        self.clip = clip
        self.n_threads = n_threads

    def _reset(self):
        for name in ("scale_", "min_", "n_samples_seen_", "data_min_", "data_max_", "data_range_"):
            self.__dict__.pop(name, None)

    def fit(self, X, y=None):
        """Find the minimum and maximum of every feature of X."""
        self._reset()
        return self.partial_fit(X, y)

    def partial_fit(self, X, y=None):
        """Merge X's minima and maxima into those seen so far (NaN ignored)."""
        self._validate_params()
        lo, hi = self.feature_range
        if lo >= hi:
            raise ValueError("Minimum of desired feature range must be smaller than maximum. "
                             f"Got {self.feature_range}.")
        first = not hasattr(self, "n_samples_seen_")
        if _is_dask(X):
            _dask_fitted_features(self, X, first)
            mn, mx = _dask().compute_minmax(X, n_threads=self.n_threads)
            dtype = X.dtype
        else:
            X = _validate(self, X, allow_nan=True, accept_sparse=False, dtype=_FLOATS, reset=first)
            mn, mx = feature_minmax(X, 0, n_threads=self.n_threads)
            dtype = X.dtype
        # a min / max of X's values is one of them: exact in X's dtype
        mn, mx = mn.astype(dtype), mx.astype(dtype)
        if first:
            self.n_samples_seen_ = X.shape[0]
        else:
            mn = np.fmin(self.data_min_, mn)
            mx = np.fmax(self.data_max_, mx)
            self.n_samples_seen_ += X.shape[0]
        span = mx - mn
        lo_t, hi_t = dtype.type(lo), dtype.type(hi)
        with np.errstate(invalid="ignore"):
            tiny = span < 10 * np.finfo(span.dtype).eps
        self.scale_ = (hi_t - lo_t) / _zero_scale_to_one(span, tiny)
        self.min_ = lo_t - mn * self.scale_
        self.data_min_ = mn
        self.data_max_ = mx
        self.data_range_ = span
        return self

    def transform(self, X):
        """X * scale_ + min_ (and clipped to feature_range when clip=True)."""
        check_is_fitted(self)
        lo, hi = self.feature_range
        if _is_dask(X):
            _dask_fitted_features(self, X, False)
            y = _dask().feature_affine(X, 0.0, self.scale_, self.min_, n_threads=self.n_threads)
            return y.clip(lo, hi) if self.clip else y
        X = _validate(self, X, allow_nan=True, reset=False, accept_sparse=False, dtype=_FLOATS, copy=False,
                      force_writeable=not self.copy)
        y = feature_affine(X, 0.0, self.scale_, self.min_, out=None if self.copy else X,
                           n_threads=self.n_threads)
        if self.clip:
            np.clip(y, lo, hi, out=y)
        return y

    def inverse_transform(self, X):
        """(X - min_) / scale_."""
        check_is_fitted(self)
        if _is_dask(X):
            _dask_fitted_features(self, X, False)
            return _dask().feature_affine(X, self.min_, 1.0 / self.scale_, n_threads=self.n_threads)
        X = check_array(X, accept_sparse=False, dtype=_FLOATS, ensure_all_finite="allow-nan",
                        copy=False, force_writeable=not self.copy)
        return feature_affine(X, self.min_, 1.0 / self.scale_, out=None if self.copy else X,
                              n_threads=self.n_threads)


_NORMS = {"l1": 1.0, "l2": 2.0, "max": np.inf}


class Normalizer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Scale every sample (row) to unit l1, l2 or max norm.

    A drop-in for ``sklearn.preprocessing.Normalizer``: a row whose norm is
    below 10 * machine epsilon of its dtype (a zero row, say) is left as it is.
    """

    _parameter_constraints: dict = {"norm": [StrOptions({"l1", "l2", "max"})], "copy": ["boolean"],
                                    "n_threads": [None, int]}

    def __init__(self, norm="l2", *, copy=True, n_threads=None):
        self.norm = norm
        self.copy = copy
        self.n_threads = n_threads

    def fit(self, X, y=None):
        """Only validates the parameters and X (the transform is stateless)."""
        self._validate_params()
        if _is_dask(X):
            _dask_fitted_features(self, X, True)
        else:
            _validate(self, X, accept_sparse=False)
        return self

    def transform(self, X, copy=None):
        """Every row of X divided by its norm."""
        self._validate_params()
        p = _NORMS[self.norm]
        if _is_dask(X):
            import dask.array as da
            if hasattr(self, "n_features_in_"):
                _dask_fitted_features(self, X, False)
            else:
                _check_dask(self, X)
            rows = X if len(X.chunks[1]) == 1 else X.rechunk({1: -1})   # whole rows in a block
            # keys named from a hash (fastnorm.dask's blockwise ops name theirs by the op alone)
            return da.map_blocks(_normalize_block, rows, p=p, n_threads=self.n_threads, dtype=X.dtype,
                                 meta=np.empty((0, 0), X.dtype), token="fastnorm-normalizer")
        copy = self.copy if copy is None else copy
        X = _validate(self, X, reset=False, accept_sparse=False, dtype=_FLOATS, copy=False,
                      force_writeable=not copy)
        return sklearn_normalize_rows(X, p, None if copy else X, self.n_threads)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.requires_fit = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _normalize_block(X, p, n_threads):
    return sklearn_normalize_rows(X, p, None, n_threads)


def sklearn_normalize_rows(X, p, out, n_threads):
    """Rows of a 2-D X to unit Lp norm with scikit-learn's rule for tiny norms:
    a row with norm < 10 * eps(dtype) is divided by 1 (left exactly as it is).

    One kernel pass, y = x / max(||x||, e) with e the power of two just above
    10 * eps: a row with norm under e comes out as x * 2**k exactly (also in
    place, and also where its squares underflow and the norm reads 0), so it
    is scaled back to x exactly; those of them with norm >= 10 * eps are then
    divided by their norm."""
    floor = 10 * np.finfo(X.dtype).eps
    e = float(2.0 ** np.ceil(np.log2(floor)))
    y, norms = _normalize(X, p=p, dim=1, eps=e, out=out, n_threads=n_threads, return_stats=True)
    low = np.flatnonzero(norms < e)
    if low.size:
        rows = y[low] * y.dtype.type(e)              # the rows of X, exactly
        divide = np.flatnonzero(norms[low] >= floor)
        rows[divide] /= norms[low][divide, None].astype(y.dtype)
        y[low] = rows
    return y
