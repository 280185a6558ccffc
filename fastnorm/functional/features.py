"""Feature scaling of a data matrix: standardize (z-score) and min_max_scale.

Every path brings x to a C-contiguous (samples, features) matrix in its
storage dtype and calls the feature kernels (``_feature_kernels.pxi``: the
channel engine's channels-last passes with S = 1); the common calls reach
the same kernels through their C fast entries."""
import math
import numpy as np

from .. import _dispatch
from .._buffers import empty as _empty
from .._args import check_dim
from .._dtypes import cast
from .._validation import (
    as_float_array,
    check_out,
    into_out,
    out_aliases,
    same_shape_input,
)

__all__ = ["standardize", "standardize_backward", "min_max_scale", "min_max_scale_backward"]


def _feature_rows(x, axis, name="x"):
    """x as a C-contiguous (samples, features) matrix: samples along `axis`,
    every other dim a feature; returns (matrix, restore, stats shape)."""
    x, cdt = as_float_array(x, name)
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-d array")
    axis = check_dim(axis, x.ndim, "axis")
    moved = x if axis == 0 else np.moveaxis(x, axis, 0)
    N = moved.shape[0]
    stats_shape = moved.shape[1:]
    F = int(math.prod(stats_shape))
    data = np.ascontiguousarray(moved).reshape(N, F)   # the kernels take the storage dtype

    def restore(m):
        r = m.reshape(moved.shape)
        r = r if axis == 0 else np.moveaxis(r, 0, axis)
        return cast(r, x.dtype)
    return x, cdt, data, restore, stats_shape, N, F


def _feature_grad(grad_out, x, axis, N, F):
    """grad_out (x's shape and dtype) as the (samples, features) matrix of x."""
    grad_out = same_shape_input(grad_out, "grad_out", x)
    moved = np.moveaxis(grad_out, check_dim(axis, x.ndim, "axis"), 0)
    return np.ascontiguousarray(moved).reshape(N, F)


def _check_ddof(ddof):
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative int, got {ddof!r}")
    return int(ddof)


def _check_range(feature_range):
    try:
        lo, hi = (float(v) for v in feature_range)
    except OverflowError:
        raise ValueError(f"feature_range must fit a float64, got {feature_range!r}") from None
    except (TypeError, ValueError):
        raise TypeError(f"feature_range must be a pair of numbers, got {feature_range!r}") from None
    if not lo < hi:
        raise ValueError(f"feature_range must be (min, max) with min < max, got {feature_range!r}")
    return lo, hi


def f64_vector(v):
    """v as an aligned, C-contiguous float64 array, as the kernels take their
    coefficients (a copy only when v is not one already: arrays that arrive
    through pickle protocol 5 buffers, as Dask's workers receive them, can
    be unaligned)."""
    return np.require(v, np.float64, ("C_CONTIGUOUS", "ALIGNED"))


def _feature_stat(v, name, shape):
    v = np.asarray(v)
    if v.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array, got dtype {v.dtype}")
    if v.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (x without the sample axis), got {v.shape}")
    return f64_vector(v).reshape(-1)


def _feature_output(x, data, axis, cdt, out):
    """Where the (samples, features) kernel writes: `out` itself when it has
    the kernel's layout (and is not a partial overlap of x), else a new array."""
    if out is None:
        return _empty(data.shape, x.dtype), False
    check_out(out, x, x.dtype)
    axis = check_dim(axis, x.ndim, "axis")
    moved = out if axis == 0 else np.moveaxis(out, axis, 0)
    if moved.flags.c_contiguous and (out is x or not np.may_share_memory(out, x)):
        return moved.reshape(data.shape), True
    return np.empty(data.shape, x.dtype), False


def _finish_features(x, y_k, restore, out, direct):
    if direct:
        return out
    y = restore(y_k)
    if out is not None:
        np.copyto(out, y)
        return out
    return y


def robust_moments(X, w=None):
    """(count, mean, biased variance) of the columns of a 2-D X in float64,
    NaN left out, with optional sample weights w (count is then the sum of
    the weights): a NumPy corrected two-pass, for the rare columns the kernel
    cannot do (NaN present, or squares beyond the float64 range) and for
    weighted data.  Nothing overflows that the result does not: the mean is a
    convex combination of the samples, and the variance is taken of the
    deviations scaled by a power of two just above their largest magnitude."""
    X = np.asarray(X, np.float64)
    nan = np.isnan(X)
    w = np.ones(X.shape[0]) if w is None else np.asarray(w, np.float64)
    W = np.where(nan, 0.0, w[:, None])
    count = W.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        p = W / count                                # each column's weights, summing to 1
        X0 = np.where(nan, 0.0, X)
        mean = (p * X0).sum(axis=0)
        dev = np.where(W > 0, X0 - mean, 0.0)
        s = np.ldexp(1.0, np.frexp(np.abs(dev).max(axis=0, initial=0.0))[1])
        s = np.where((s > 0) & np.isfinite(s), s, 1.0)
        d = dev / s
        corr = (p * d).sum(axis=0)                   # the mean's rounding error, in units of s
        q = np.maximum((p * d * d).sum(axis=0) - corr * corr, 0.0)
        mean = mean + s * corr
        var = q * s * s
    return count, mean, var


def _redo_moments(data, mean_v, var_v, count):
    """Redo in NumPy the moments of the features whose kernel moments came
    out non-finite although they hold no infinity: NaN in the feature (left
    out), or values whose squares overflow (beyond about 1e154).  Rare, so
    NumPy; a feature with an infinite value keeps its non-finite moments."""
    bad = np.flatnonzero(~(np.isfinite(mean_v) & np.isfinite(var_v)))
    if bad.size == 0:
        return
    sub = data[:, bad].astype(np.float64)
    redo = ~np.isinf(sub).any(axis=0)
    if not redo.any():
        return
    cols = bad[redo]
    count[cols], mean_v[cols], var_v[cols] = robust_moments(sub[:, redo])


def _matrix_moments(data, n_threads):
    """(count, mean, biased variance) in float64 of every feature of a
    C-contiguous (N, F) matrix: NaN left out (count is the non-NaN samples);
    mean and variance NaN where count is 0."""
    N, F = data.shape
    mean_v = np.empty(F, np.float64)
    var_v = np.empty(F, np.float64)
    _dispatch.kernels.feature_moments(data, N, F, mean_v, var_v, n_threads)
    count = np.full(F, float(N))
    _redo_moments(data, mean_v, var_v, count)
    empty = count == 0
    mean_v[empty] = np.nan
    var_v[empty] = np.nan
    return count, mean_v, var_v


def _matrix_minmax(data, n_threads):
    """NaN-ignoring per-feature min and max (float64) of a (N, F) matrix;
    NaN for a feature of NaN only."""
    N, F = data.shape
    mn = np.empty(F, np.float64)
    mx = np.empty(F, np.float64)
    _dispatch.kernels.feature_minmax(data, N, F, mn, mx, n_threads)
    return mn, mx


def _apply_affine(x, data, axis, restore, centre, scale, shift, out, n_threads):
    """(x - centre) * scale + shift per feature, into `out` when given."""
    y_k, direct = _feature_output(x, data, axis, None, out)
    _dispatch.kernels.feature_affine(data, y_k, *data.shape, f64_vector(centre), f64_vector(scale),
                                     f64_vector(shift), n_threads)
    return _finish_features(x, y_k, restore, out, direct)


def feature_moments(x, axis=0, *, n_threads=None):
    """Per-feature (count, mean, var) of x's samples along `axis`, in float64:
    count the samples that are not NaN, var the biased variance (times
    count / (count - ddof) for another ddof).  The pieces that
    `merge_moments` combines: the fit of `standardize` over data that arrives
    in parts (scikit-learn's partial_fit, Dask chunks).  Each has x's shape
    without `axis`."""
    x, cdt, data, restore, sshape, N, F = _feature_rows(x, axis)
    return tuple(v.reshape(sshape) for v in _matrix_moments(data, n_threads))


def merge_moments(a, b):
    """Chan, Golub and LeVeque's pairwise merge of two (count, mean, var)
    triples (float64 arrays of one shape) into the triple of the union.

    A side with count 0 contributes nothing (its mean and var are not read).
    The update works on means and variances, not on sums or sums of squares,
    so nothing overflows that the result does not."""
    na, ma, va = (np.asarray(v, np.float64) for v in a)
    nb, mb, vb = (np.asarray(v, np.float64) for v in b)
    n = na + nb
    has_a, has_b = na > 0, nb > 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        wa = np.where(n > 0, na / n, 0.0)
        wb = np.where(n > 0, nb / n, 0.0)
        both = has_a & has_b
        delta = np.where(both, mb - ma, 0.0)
        mean = np.where(has_a, ma + delta * wb, mb)
        var = (np.where(has_a, wa * va, 0.0) + np.where(has_b, wb * vb, 0.0)
               + np.where(both, np.square(delta * np.sqrt(wa * wb)), 0.0))
    empty = n == 0
    return n, np.where(empty, np.nan, mean), np.where(empty, np.nan, var)


def feature_minmax(x, axis=0, *, n_threads=None):
    """Per-feature (min, max) of x's samples along `axis` in float64, NaN
    ignored (NaN for a feature of NaN only); each has x's shape without `axis`."""
    x, cdt, data, restore, sshape, N, F = _feature_rows(x, axis)
    return tuple(v.reshape(sshape) for v in _matrix_minmax(data, n_threads))


def feature_affine(x, centre, scale, shift=0.0, axis=0, *, out=None, n_threads=None):
    """y = (x - centre) * scale + shift per feature (centre, scale, shift: x's
    shape without `axis`, or scalars), in one pass in x's dtype, into `out`
    when given: the transform half of the scalers, with their statistics
    already turned into coefficients."""
    x, cdt, data, restore, sshape, N, F = _feature_rows(x, axis)
    coef = [np.broadcast_to(np.asarray(v, np.float64), sshape).reshape(F)
            for v in (centre, scale, shift)]
    return _apply_affine(x, data, axis, restore, *coef, out, n_threads)


def standardize(x, axis=0, ddof=0, *, mean=None, std=None, with_mean=True, with_std=True,
                out=None, n_threads=None, return_stats=False):
    """Z-score every feature: z = (x - mean) / std over the samples along `axis`.

    As scikit-learn's StandardScaler: the standard deviation uses `ddof`
    (default 0, the biased one); a feature whose std is 0 (constant) is scaled
    by 1, so it comes out as 0 (or as x - mean); NaN is a missing value,
    left out of its feature's statistics and kept as NaN in z (an infinite
    value makes its feature's statistics NaN).  Given `mean` and `std` (from
    an earlier call with return_stats=True), they are applied instead of
    computed: the fit / transform split.  Statistics are accurate for features
    with a large offset (moments about each feature's first value, merged with
    Chan's formula).

    Returns z, or (z, mean, std) with return_stats; mean and std have x's
    shape without `axis`.

    Examples
    --------
    >>> standardize(np.array([[1.0, 5.0], [3.0, 5.0]]))
    array([[-1.,  0.],
           [ 1.,  0.]])
    """
    fast = _dispatch.kernels.standardize_fast(x, axis, ddof, mean, std, with_mean, with_std, out,
                                              n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    if out_aliases(out, (mean, std)):
        return into_out(out, standardize(x, axis, ddof, mean=mean, std=std, with_mean=with_mean,
                                         with_std=with_std, n_threads=n_threads, return_stats=return_stats))
    x, cdt, data, restore, sshape, N, F = _feature_rows(x, axis)
    ddof = _check_ddof(ddof)
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together (or neither)")
    if mean is None:
        if N - ddof <= 0:
            raise ValueError(f"need more than ddof={ddof} samples along axis, got {N}")
        count, mean_v, var_v = _matrix_moments(data, n_threads)
        with np.errstate(invalid="ignore", divide="ignore"):
            std_v = np.sqrt(var_v * (count / (count - ddof)))
        std_v[count - ddof <= 0] = np.nan
    else:
        mean_v = _feature_stat(mean, "mean", sshape)
        std_v = _feature_stat(std, "std", sshape)
    centre = mean_v if with_mean else np.zeros(F)
    scale = 1.0 / np.where(std_v == 0, 1.0, std_v) if with_std else np.ones(F)
    z = _apply_affine(x, data, axis, restore, centre, scale, np.zeros(F), out, n_threads)
    if not return_stats:
        return z
    return z, mean_v.reshape(sshape), std_v.reshape(sshape)


def standardize_backward(grad_out, x, mean, std, axis=0, ddof=0, *, with_mean=True, with_std=True,
                         fitted=True, n_threads=None):
    """Gradient of `standardize` w.r.t. x.

    fitted=True (the statistics were computed from x): with z = (x - mean) / std
    and N samples, grad = (g - mean(g)) / std - z / std * sum(g * z) / (N - ddof);
    a feature with std 0 (scaled by 1) gets g - mean(g); a feature holding NaN
    gets NaN (its statistics depend on the NaN entries' z).  fitted=False (mean
    and std were given): they are constants and grad = g / std.
    """
    fast = _dispatch.kernels.standardize_backward_fast(grad_out, x, mean, std, axis, ddof, with_mean,
                                                       with_std, fitted, n_threads)
    if fast is not NotImplemented:
        return fast
    x, cdt, data, restore, sshape, N, F = _feature_rows(x, axis)
    g = _feature_grad(grad_out, x, axis, N, F)
    ddof = _check_ddof(ddof)
    mean_v = _feature_stat(mean, "mean", sshape)
    std_v = _feature_stat(std, "std", sshape)
    if fitted and with_mean and with_std and N - ddof <= 0:
        raise ValueError(f"need more than ddof={ddof} samples along axis, got {N}")
    return restore(_dispatch.kernels.standardize_grad(g, data, mean_v, std_v, ddof, bool(with_mean),
                                                      bool(with_std), bool(fitted), n_threads))


def min_max_scale(x, axis=0, feature_range=(0.0, 1.0), *, data_min=None, data_max=None,
                  out=None, n_threads=None, return_stats=False):
    """Scale every feature to `feature_range`: y = (x - min) / (max - min) * (hi - lo) + lo.

    As scikit-learn's MinMaxScaler: NaN is ignored when finding min and max
    (and stays NaN); a constant feature (max == min) is divided by 1, so it
    comes out as `lo`.  Given data_min and data_max they are applied instead of
    computed (fit / transform).

    Returns y, or (y, data_min, data_max) with return_stats.
    """
    fast = _dispatch.kernels.min_max_scale_fast(x, axis, feature_range, data_min, data_max, out,
                                                n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    if out_aliases(out, (data_min, data_max)):
        return into_out(out, min_max_scale(x, axis, feature_range, data_min=data_min, data_max=data_max,
                                           n_threads=n_threads, return_stats=return_stats))
    x, cdt, data, restore, sshape, N, F = _feature_rows(x, axis)
    lo, hi = _check_range(feature_range)
    if (data_min is None) != (data_max is None):
        raise ValueError("data_min and data_max must be given together (or neither)")
    if data_min is None:
        if N == 0:
            raise ValueError("need at least one sample along axis to find min and max")
        mn, mx = _matrix_minmax(data, n_threads)
    else:
        mn = _feature_stat(data_min, "data_min", sshape)
        mx = _feature_stat(data_max, "data_max", sshape)
    span = mx - mn
    scale = (hi - lo) / np.where(span == 0, 1.0, span)
    y = _apply_affine(x, data, axis, restore, mn, scale, np.full(F, lo), out, n_threads)
    if not return_stats:
        return y
    return y, mn.reshape(sshape), mx.reshape(sshape)


def min_max_scale_backward(grad_out, x, data_min, data_max, axis=0, feature_range=(0.0, 1.0), *,
                           fitted=True, n_threads=None):
    """Gradient of `min_max_scale` w.r.t. x.

    Every element gets g * scale, scale = (hi - lo) / (max - min).  fitted=True
    (min and max came from x) adds, at each feature's first minimum,
    sum_j g_j * ((y_j - lo) / (max - min) - scale) and, at its first maximum,
    -sum_j g_j (y_j - lo) / (max - min).  A constant feature (max == min) is
    treated as scaled by the constant hi - lo; a feature holding NaN gets NaN
    there, as the loss is NaN.
    """
    fast = _dispatch.kernels.min_max_scale_backward_fast(grad_out, x, data_min, data_max, axis,
                                                         feature_range, fitted, n_threads)
    if fast is not NotImplemented:
        return fast
    x, cdt, data, restore, sshape, N, F = _feature_rows(x, axis)
    g = _feature_grad(grad_out, x, axis, N, F)
    lo, hi = _check_range(feature_range)
    mn = _feature_stat(data_min, "data_min", sshape)
    mx = _feature_stat(data_max, "data_max", sshape)
    return restore(_dispatch.kernels.min_max_scale_grad(g, data, mn, mx, lo, hi, bool(fitted), n_threads))
