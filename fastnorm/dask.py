"""fastnorm on Dask arrays: lazy results, fastnorm's kernels in every task.

Two kinds of op:

* **Reductions over the sample axis** (``standardize``, ``min_max_scale``,
  BatchNorm's statistics and its backward's two sums).  Every chunk's
  statistics come from fastnorm's kernels (per-feature count, mean and sum of
  squared deviations about each feature's first value, NaN left out; or min
  and max), and are merged up a ``dask.array.reduction`` tree with Chan,
  Golub and LeVeque's pairwise formula in float64.  The merge works on means
  and variances, so it is accurate for data with a large offset and
  overflows nowhere the result does not (a running sum, or sum of squares,
  would).  The graph has a task per chunk and a tree over them: its
  size grows with the number of chunks, not with their sizes.
* **Blockwise ops** (``layer_norm``, ``rms_norm``, ``normalize``, the fused
  add + norm ops, ``group_norm``, ``instance_norm``, ``filter_response_norm``,
  ``local_response_norm``, the transforms): ``map_blocks`` over the in-memory
  op.  The dims an op normalizes over must lie in one chunk; when they do not,
  x is rechunked to one chunk along them (the other dims chunked as Dask's
  ``"auto"`` picks), which is what Dask itself does for such operations.

Parallelism comes from Dask: every task runs its kernel on ``n_threads``
threads, 1 by default, so that a threaded scheduler or a worker with several
threads is not oversubscribed.  Pass ``n_threads=None`` for fastnorm's default
(all cores) when the scheduler runs one task at a time.

Results equal the in-memory ops' (within float rounding) whatever the
chunking.  ``batch_norm`` in training computes its batch statistics at call
time (one read of x; see its docstring); everything else is lazy.

Out of core: fit, then transform.  ``compute_moments(x)`` (or a scaler's
``fit``) reads x once and keeps only per-feature statistics; a later
``feature_affine`` / ``transform`` streams x again.  ``standardize(x)`` in one
graph is also correct, but its scheduler must hold x's chunks (or reread
them) until the statistics are known.
"""
import functools
import math

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as exc:  # pragma: no cover - exercised only without dask
    raise ImportError("fastnorm.dask needs dask (pip install 'dask[array]')") from exc

from . import functional as _fn
from ._args import check_dim, check_eps, check_momentum
from ._dtypes import as_float_array, compute_dtype
from ._validation import ChannelLayout
from .functional import features as _feat
from . import _dispatch

__all__ = [
    "feature_moments", "compute_moments", "feature_minmax", "compute_minmax", "feature_affine",
    "standardize", "standardize_backward", "min_max_scale", "min_max_scale_backward",
    "batch_norm", "batch_norm_backward",
    "layer_norm", "rms_norm", "normalize", "add_layer_norm", "add_rms_norm",
    "group_norm", "instance_norm", "filter_response_norm", "local_response_norm",
    "dynamic_tanh", "ada_norm", "batch_renorm",
]

# Registry ops without a Dask form, and why (tests/test_dask.py checks that
# every other registry op has one).
NOT_DISTRIBUTED = {
    "weight_norm": "reparametrizes a weight tensor: a parameter, not data split into chunks",
    "weight_standardization": "standardizes a weight tensor: a parameter, not data split into chunks",
    "switchable_norm": "mixes per-sample statistics with batch ones over every chunk; not distributed yet",
    "power_norm": "a training-time normalizer with a stateful approximate backward; not distributed yet",
    "cosine_linear": "a linear layer (a matrix product with a weight): not a data-parallel normalization",
    "batch_layer_norm": "mixes batch statistics with per-sample ones over every chunk; not distributed yet",
    "cluster_norm": "row-wise, but its cluster ids must be chunked with x's rows; not distributed yet",
    "mixture_norm": "row-wise with learned components; not distributed yet",
}


# ---------------------------------------------------------------- plumbing

def _as_dask(x, name="x"):
    if isinstance(x, da.Array):
        return x
    if isinstance(x, np.ndarray):
        return da.from_array(x)
    raise TypeError(f"{name} must be a dask.array.Array (or a numpy.ndarray), got {type(x).__name__}")


def _check_float(x, name="x"):
    if compute_dtype(x.dtype) is None and compute_dtype(x.dtype.newbyteorder("=")) is None:
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")


def _sample_axis(x, axis):
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension, got a 0-d array")
    return check_dim(axis, x.ndim, "axis")


def _whole(x, axes):
    """x with each axis of `axes` in one chunk (rechunked if needed, the other
    axes as Dask's "auto" picks)."""
    axes = sorted({a % x.ndim for a in axes})
    if all(len(x.chunks[a]) == 1 for a in axes):
        return x
    return x.rechunk({a: (-1 if a in axes else "auto") for a in range(x.ndim)})


def _take(stacked, i, axis):
    return stacked[(slice(None),) * axis + (i,)]


def _stat_blocks(v, x, axis, dtype=np.float64):
    """A statistic of x's shape without `axis` (NumPy or Dask) as a Dask array
    with a size-1 `axis`, chunked as x on the other axes: a map_blocks argument
    that broadcasts against x's blocks."""
    shape = x.shape[:axis] + x.shape[axis + 1:]
    if isinstance(v, da.Array):
        v = da.broadcast_to(v.astype(dtype), shape)
    else:
        v = da.from_array(np.broadcast_to(np.asarray(v, dtype), shape))
    v = da.expand_dims(v, axis)
    return v.rechunk(tuple((1,) if i == axis else c for i, c in enumerate(x.chunks)))


def _squeeze(b, axis):
    return np.squeeze(b, axis)


def _merge_tree(x, axis, k, chunk_fn, merge_fn, split_every):
    """A tree reduction over `axis` whose chunk function turns a block into k
    stacked statistics (along `axis`) and whose merge folds a concatenation of
    several such stacks into one: float64, shape x's with `axis` of size k."""

    def chunk(b, axis, keepdims, computing_meta=False):
        if computing_meta:
            return np.empty((0,) * b.ndim, np.float64)
        return chunk_fn(b, axis[0])

    def merge(b, axis, keepdims, computing_meta=False):
        if computing_meta:
            return np.empty((0,) * b.ndim, np.float64)
        a = axis[0]
        parts = np.moveaxis(b, a, 0)
        parts = parts.reshape((-1, k) + parts.shape[1:])
        return np.moveaxis(merge_fn(parts), 0, a)

    return da.reduction(x, chunk, merge, combine=merge, axis=axis, keepdims=True, output_size=k,
                        dtype=np.float64, split_every=split_every, concatenate=True,
                        name="fastnorm-" + chunk_fn.__name__.strip("_"))


def _fold_moments(parts):
    """(m, 3, ...) stacked (count, mean, var) triples -> their (3, ...) merge."""
    acc = tuple(parts[0])
    for p in parts[1:]:
        acc = _feat.merge_moments(acc, tuple(p))
    return np.stack(acc)


def _fold_minmax(parts):
    return np.stack([np.fmin.reduce(parts[:, 0], axis=0), np.fmax.reduce(parts[:, 1], axis=0)])


def _fold_sums(parts):
    return parts.sum(axis=0)


# ---------------------------------------------------------------- feature statistics

def _moments_chunk(n_threads, b, axis):
    return np.stack(_feat.feature_moments(b, axis, n_threads=n_threads), axis=axis)


def _minmax_chunk(n_threads, b, axis):
    return np.stack(_feat.feature_minmax(b, axis, n_threads=n_threads), axis=axis)


def _feature_reduction(x, axis, chunk, name, k, fold, split_every, n_threads):
    """k per-feature statistics of x's samples along `axis`: chunk(n_threads,
    block, axis) per chunk, folded up the tree; a tuple of k lazy arrays."""
    x = _as_dask(x)
    _check_float(x)
    axis = _sample_axis(x, axis)
    fn = functools.partial(chunk, n_threads)
    fn.__name__ = name
    res = _merge_tree(x, axis, k, fn, fold, split_every)
    return tuple(_take(res, i, axis) for i in range(k))


def feature_moments(x, axis=0, *, split_every=None, n_threads=1):
    """Lazy per-feature (count, mean, var) of x's samples along `axis`, float64
    (var the biased variance), NaN left out: `fastnorm.functional.features.feature_moments` of the whole
    array, from per-chunk moments merged up a tree (Chan's formula)."""
    return _feature_reduction(x, axis, _moments_chunk, "moments", 3, _fold_moments, split_every, n_threads)


def compute_moments(x, axis=0, *, split_every=None, n_threads=1):
    """`feature_moments`, computed: three NumPy float64 arrays."""
    return tuple(dask.compute(*feature_moments(x, axis, split_every=split_every, n_threads=n_threads)))


def feature_minmax(x, axis=0, *, split_every=None, n_threads=1):
    """Lazy per-feature (min, max) of x's samples along `axis` in float64, NaN
    ignored (NaN for a feature of NaN only)."""
    return _feature_reduction(x, axis, _minmax_chunk, "minmax", 2, _fold_minmax, split_every, n_threads)


def compute_minmax(x, axis=0, *, split_every=None, n_threads=1):
    """`feature_minmax`, computed: two NumPy float64 arrays."""
    return tuple(dask.compute(*feature_minmax(x, axis, split_every=split_every, n_threads=n_threads)))


def _affine_block(axis, n_threads, b, c, s, t):
    return _feat.feature_affine(b, _squeeze(c, axis), _squeeze(s, axis), _squeeze(t, axis), axis,
                                n_threads=n_threads)


def feature_affine(x, centre, scale, shift=0.0, axis=0, *, n_threads=1):
    """Lazy y = (x - centre) * scale + shift per feature: one kernel pass per
    chunk.  centre, scale, shift: x's shape without `axis` (NumPy or Dask
    arrays) or scalars."""
    x = _as_dask(x)
    _check_float(x)
    axis = _sample_axis(x, axis)
    coef = [_stat_blocks(v, x, axis) for v in (centre, scale, shift)]
    return da.map_blocks(functools.partial(_affine_block, axis, n_threads), x, *coef, dtype=x.dtype,
                         token="fastnorm-affine", meta=np.empty((0,) * x.ndim, x.dtype))


# ---------------------------------------------------------------- standardize / min_max_scale

def _std_scale(std, with_std):
    if not with_std:
        return 1.0
    return 1.0 / da.where(std == 0, 1.0, std)


def standardize(x, axis=0, ddof=0, *, mean=None, std=None, with_mean=True, with_std=True,
                return_stats=False, split_every=None, n_threads=1):
    """`fastnorm.standardize` of a Dask array, lazily: the statistics as a
    tree reduction (unless `mean` and `std` are given), the transform
    blockwise.  Returns z, or (z, mean, std) with return_stats (lazy)."""
    x = _as_dask(x)
    _check_float(x)
    axis = _sample_axis(x, axis)
    ddof = _feat._check_ddof(ddof)
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together (or neither)")
    sshape = x.shape[:axis] + x.shape[axis + 1:]
    if mean is None:
        N = x.shape[axis]
        if N - ddof <= 0:
            raise ValueError(f"need more than ddof={ddof} samples along axis, got {N}")
        count, mean, var = feature_moments(x, axis, split_every=split_every, n_threads=n_threads)
        std = da.where(count - ddof > 0, da.sqrt(var * (count / da.maximum(count - ddof, 1))), np.nan)
    else:
        mean, std = (_given_stat(v, name, sshape) for v, name in ((mean, "mean"), (std, "std")))
    z = feature_affine(x, mean if with_mean else 0.0, _std_scale(std, with_std), 0.0, axis,
                       n_threads=n_threads)
    return (z, mean, std) if return_stats else z


def _given_stat(v, name, shape):
    if isinstance(v, da.Array):
        if v.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (x without the sample axis), got {v.shape}")
        return v.astype(np.float64)
    return _feat._feature_stat(v, name, shape).reshape(shape)


def _grad_sums_block(axis, n_threads, g, x, c):
    """(sum g * (x - c), sum g) of one block, float64, stacked along axis."""
    xr, cdt, data, restore, sshape, N, F = _feat._feature_rows(x, axis)
    gm = _feat._feature_grad(g, xr, axis, N, F)
    centre = _feat.f64_vector(_squeeze(c, axis).reshape(F))
    s_gt = np.empty(F, np.float64)
    s_g = np.empty(F, np.float64)
    _dispatch.kernels.feature_column_sums(gm, data, N, F, centre, s_gt, s_g, n_threads)
    return np.stack([s_gt.reshape(sshape), s_g.reshape(sshape)], axis=axis)


def _grad_sums(g, x, centre, axis, split_every, n_threads):
    """Lazy per-feature (sum g * (x - centre), sum g) over `axis`."""
    c = _stat_blocks(centre, x, axis)
    parts = da.map_blocks(functools.partial(_grad_sums_block, axis, n_threads), g, x, c,
                          dtype=np.float64, chunks=tuple((2,) * len(ch) if i == axis else ch
                                                         for i, ch in enumerate(x.chunks)),
                          token="fastnorm-grad-sums", meta=np.empty((0,) * x.ndim, np.float64))
    res = _merge_tree(parts, axis, 2, _identity_chunk, _fold_sums, split_every)
    return _take(res, 0, axis), _take(res, 1, axis)


def _identity_chunk(b, axis):
    return b


def _apply_block(axis, n_threads, g, x, hi, alpha, beta, gamma):
    xr, cdt, data, restore, sshape, N, F = _feat._feature_rows(x, axis)
    gm = _feat._feature_grad(g, xr, axis, N, F)
    coef = [_feat.f64_vector(np.broadcast_to(_squeeze(v, axis), sshape).reshape(F))
            for v in (hi, alpha, beta, gamma)]
    dx = np.empty_like(data)
    _dispatch.kernels.feature_grad_apply(gm, data, dx, N, F, *coef, n_threads)
    return restore(dx)


def _grad_apply(g, x, axis, hi, alpha, beta, gamma, n_threads):
    coef = [_stat_blocks(v, x, axis) for v in (hi, alpha, beta, gamma)]
    return da.map_blocks(functools.partial(_apply_block, axis, n_threads), g, x, *coef, dtype=x.dtype,
                         token="fastnorm-grad-apply", meta=np.empty((0,) * x.ndim, x.dtype))


def _grad_operands(grad_out, x, axis):
    x = _as_dask(x)
    _check_float(x)
    axis = _sample_axis(x, axis)
    g = _as_dask(grad_out, "grad_out")
    if g.shape != x.shape:
        raise ValueError(f"grad_out must have x's shape {x.shape}, got {g.shape}")
    if g.dtype != x.dtype:
        raise TypeError(f"grad_out must have x's dtype {x.dtype}, got {g.dtype}")
    return g.rechunk(x.chunks), x, axis


def standardize_backward(grad_out, x, mean, std, axis=0, ddof=0, *, with_mean=True, with_std=True,
                         fitted=True, split_every=None, n_threads=1):
    """`fastnorm.standardize_backward` of Dask arrays, lazily: the two column
    sums a fitted gradient needs as a tree reduction, then one blockwise pass
    dx = alpha * g + beta * (x - hi) + gamma."""
    g, x, axis = _grad_operands(grad_out, x, axis)
    ddof = _feat._check_ddof(ddof)
    sshape = x.shape[:axis] + x.shape[axis + 1:]
    mean = _given_stat(mean, "mean", sshape)
    std = _given_stat(std, "std", sshape)
    N = x.shape[axis]
    scale = _std_scale(std, with_std) * da.ones(sshape) if with_std else da.ones(sshape)
    zero = da.zeros(sshape)
    hi, alpha, beta, gamma = zero, scale, zero, zero
    if fitted and with_mean and with_std:
        if N - ddof <= 0:
            raise ValueError(f"need more than ddof={ddof} samples along axis, got {N}")
        s_gt, s_g = _grad_sums(g, x, mean, axis, split_every, n_threads)
        hi, beta, gamma = mean, -scale ** 3 * s_gt / (N - ddof), -scale * s_g / N
    elif fitted and with_mean:  # z = x - mean: g - mean(g)
        s_gt, s_g = _grad_sums(g, x, 0.0, axis, split_every, n_threads)
        alpha, gamma = da.ones(sshape), -s_g / N
    elif fitted and with_std:  # z = x / std, std about the mean
        s_gt, s_g = _grad_sums(g, x, 0.0, axis, split_every, n_threads)
        const = std == 0
        hi = da.where(const, 0.0, mean)
        alpha = da.where(const, 1.0, scale)
        beta = da.where(const, 0.0, -s_gt * scale ** 3 / max(N - ddof, 1))
    elif fitted:
        alpha = da.ones(sshape)
    return _grad_apply(g, x, axis, hi, alpha, beta, gamma, n_threads)


def min_max_scale(x, axis=0, feature_range=(0.0, 1.0), *, data_min=None, data_max=None,
                  return_stats=False, split_every=None, n_threads=1):
    """`fastnorm.min_max_scale` of a Dask array, lazily (min and max as a tree
    reduction unless given).  Returns y, or (y, data_min, data_max)."""
    x = _as_dask(x)
    _check_float(x)
    axis = _sample_axis(x, axis)
    lo, hi = _feat._check_range(feature_range)
    if (data_min is None) != (data_max is None):
        raise ValueError("data_min and data_max must be given together (or neither)")
    sshape = x.shape[:axis] + x.shape[axis + 1:]
    if data_min is None:
        if x.shape[axis] == 0:
            raise ValueError("need at least one sample along axis to find min and max")
        mn, mx = feature_minmax(x, axis, split_every=split_every, n_threads=n_threads)
    else:
        mn = _given_stat(data_min, "data_min", sshape)
        mx = _given_stat(data_max, "data_max", sshape)
    span = mx - mn
    y = feature_affine(x, mn, (hi - lo) / da.where(span == 0, 1.0, span), lo, axis, n_threads=n_threads)
    return (y, mn, mx) if return_stats else y


def _arg_extremes_block(axis, b, block_info=None):
    """(min, first row of it, max, first row of it) per feature of one block,
    NaN ignored (as +inf / -inf), rows counted in the whole array."""
    start = block_info[0]["array-location"][axis][0]
    m = np.moveaxis(b, axis, 0).astype(np.float64)
    lo = np.where(np.isnan(m), np.inf, m)
    hi = np.where(np.isnan(m), -np.inf, m)
    if m.shape[0] == 0:
        shape = m.shape[1:]
        out = [np.full(shape, np.inf), np.full(shape, np.inf), np.full(shape, -np.inf), np.full(shape, np.inf)]
    else:
        out = [lo.min(0), lo.argmin(0) + start, hi.max(0), hi.argmax(0) + start]
    return np.stack([np.asarray(v, np.float64) for v in out], axis=axis)


def _fold_arg_extremes(parts):
    """Merge (min, arg, max, arg) stacks in row order: a later part wins only
    with a strictly smaller / larger value (the first row holding it)."""
    vmin, amin, vmax, amax = (parts[0, i].copy() for i in range(4))
    for p in parts[1:]:
        take = (p[0] < vmin) | ((p[0] == vmin) & (p[1] < amin))
        vmin, amin = np.where(take, p[0], vmin), np.where(take, p[1], amin)
        take = (p[2] > vmax) | ((p[2] == vmax) & (p[3] < amax))
        vmax, amax = np.where(take, p[2], vmax), np.where(take, p[3], amax)
    return np.stack([vmin, amin, vmax, amax])


def _min_max_fix_block(axis, dx, amin, amax, dmin, dmax, block_info=None):
    """Add the min / max terms of the gradient at their rows in this block."""
    start, stop = block_info[0]["array-location"][axis]
    out = np.moveaxis(dx.copy(), axis, 0)
    amin, amax, dmin, dmax = (np.squeeze(v, axis).reshape(-1) for v in (amin, amax, dmin, dmax))
    flat = out.reshape(out.shape[0], -1)
    cols = np.arange(flat.shape[1])
    for rows, delta in ((amin, dmin), (amax, dmax)):
        hit = (rows >= start) & (rows < stop) & (delta != 0)
        if hit.any():
            r = rows[hit].astype(np.intp) - start
            flat[r, cols[hit]] = (flat[r, cols[hit]].astype(np.float64) + delta[hit]).astype(out.dtype)
    return np.moveaxis(out, 0, axis)


def min_max_scale_backward(grad_out, x, data_min, data_max, axis=0, feature_range=(0.0, 1.0), *,
                           fitted=True, split_every=None, n_threads=1):
    """`fastnorm.min_max_scale_backward` of Dask arrays, lazily: g * scale
    blockwise, and, when fitted, each feature's min / max terms (two column
    sums and the first rows holding min and max, as tree reductions) added
    at those rows."""
    g, x, axis = _grad_operands(grad_out, x, axis)
    lo, hi = _feat._check_range(feature_range)
    sshape = x.shape[:axis] + x.shape[axis + 1:]
    mn = _given_stat(data_min, "data_min", sshape)
    mx = _given_stat(data_max, "data_max", sshape)
    span = mx - mn
    scale = (hi - lo) / da.where(span == 0, 1.0, span)
    zero = da.zeros(sshape)
    dx = _grad_apply(g, x, axis, zero, scale, zero, zero, n_threads)
    if not fitted or x.shape[axis] == 0:
        return dx
    centre = da.where(da.isnan(mn), 0.0, da.clip(mn, -np.finfo(np.float64).max, np.finfo(np.float64).max))
    s_gx, s_g = _grad_sums(g, x, centre, axis, split_every, n_threads)
    parts = da.map_blocks(functools.partial(_arg_extremes_block, axis), x, dtype=np.float64,
                          chunks=tuple((4,) * len(ch) if i == axis else ch for i, ch in enumerate(x.chunks)),
                          token="fastnorm-arg-extremes", meta=np.empty((0,) * x.ndim, np.float64))
    ext = _merge_tree(parts, axis, 4, _identity_chunk, _fold_arg_extremes, split_every)
    amin, amax = _take(ext, 1, axis), _take(ext, 3, axis)
    ok = (span != 0) & da.isfinite(span)
    ratio = scale / da.where(ok, span, 1.0)
    live = ok & da.isfinite(mn)
    dmin = da.where(live, s_gx * ratio - scale * s_g, 0.0)
    dmax = da.where(live, -s_gx * ratio, 0.0)
    # where one row holds both the min and the max, both terms land on it
    args = [_stat_blocks(v, x, axis) for v in (amin, amax, dmin, dmax)]
    return da.map_blocks(functools.partial(_min_max_fix_block, axis), dx, *args, dtype=x.dtype,
                         token="fastnorm-min-max-fix", meta=np.empty((0,) * x.ndim, x.dtype))


# ---------------------------------------------------------------- BatchNorm

def _channel_axis(x, channel_axis):
    if isinstance(channel_axis, bool) or channel_axis not in (1, -1, x.ndim - 1):
        raise ValueError(f"channel_axis must be 1 (channels-first) or -1 (channels-last), got {channel_axis!r}")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
    return 1 if channel_axis == 1 else x.ndim - 1


def _bn_operand(x, channel_axis):
    """x with every axis but the sample and channel axes in one chunk."""
    x = _as_dask(x)
    _check_float(x)
    cax = _channel_axis(x, channel_axis)
    return _whole(x, [a for a in range(1, x.ndim) if a != cax]), cax


def _bn_moments_block(cax, n_threads, b):
    b, _ = as_float_array(b, "x")   # (in a worker process too: bfloat16 adopted on first sight)
    lay = ChannelLayout(b, cax)
    C = lay.C
    mean, m2, count = np.empty(C), np.empty(C), np.empty(C)
    _dispatch.kernels.channel_moments(lay.data, lay.cl, lay.N, C, lay.S, mean, m2, count, n_threads)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([count, mean, m2 / count])  # (count, mean, var), as the feature moments


def _channel_parts(x, cax, fn, k):
    """fn(block) -> (k, C_block) per block, as a (k * blocks, C) Dask array."""
    chunks = ((k,) * len(x.chunks[0]), x.chunks[cax])
    drop = [a for a in range(1, x.ndim) if a != cax]
    return da.map_blocks(fn, x, dtype=np.float64, chunks=chunks, drop_axis=drop,
                         meta=np.empty((0, 0), np.float64), token="fastnorm-bn-parts")


def _batch_moments(x, cax, split_every, n_threads):
    """The per-channel (mean, biased var) of x, computed now (a tree reduction),
    for a training-mode call: more than one value per channel required."""
    C = x.shape[cax]
    if (math.prod(x.shape) // C if C else 0) <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    parts = _channel_parts(x, cax, functools.partial(_bn_moments_block, cax, n_threads), 3)
    res = _merge_tree(parts, 0, 3, _identity_chunk, _fold_moments, split_every).compute()
    return res[1], res[2]


def _running_buffers(C, running_mean, running_var):
    for name, buf in (("running_mean", running_mean), ("running_var", running_var)):
        if buf is not None and (not isinstance(buf, np.ndarray) or buf.shape != (C,)):
            raise ValueError(f"{name} must be a NumPy array of shape ({C},), got {buf!r:.60}")


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, channel_axis=1, return_stats=False, split_every=None,
               n_threads=1):
    """`fastnorm.batch_norm` of a Dask array (chunked along the sample axis,
    and the channel axis if you like; the other axes are brought to one chunk).

    Training: the per-channel batch statistics are a tree reduction of
    per-chunk moments, *computed at call time* (one read of x), so that
    running_mean / running_var (NumPy arrays) are updated in place exactly
    once, as in memory; y is then a lazy blockwise normalization with those
    statistics.  Eval: lazy, with the running statistics.  With return_stats
    also returns (mean, invstd) as NumPy arrays (for `batch_norm_backward`).
    """
    x, cax = _bn_operand(x, channel_axis)
    C = x.shape[cax]
    eps = check_eps(eps)
    _running_buffers(C, running_mean, running_var)
    cdt = np.float64 if x.dtype == np.float64 else np.float32
    if training:
        mean, var = _batch_moments(x, cax, split_every, n_threads)   # checks count > 1 first
        count = math.prod(x.shape) // C
        momentum = check_momentum(momentum)
        if running_mean is not None:
            running_mean *= 1.0 - momentum
            running_mean += (momentum * mean).astype(running_mean.dtype)
        if running_var is not None:
            running_var *= 1.0 - momentum
            running_var += (momentum * var * (count / (count - 1))).astype(running_var.dtype)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when training=False")
        mean, var = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
    y = _bn_apply(x, cax, mean, var, weight, bias, eps, n_threads)
    if not return_stats:
        return y
    return y, mean.astype(cdt), (1.0 / np.sqrt(var + eps)).astype(cdt)


def _channel_slices(v, x, cax, dtype):
    """A per-channel (C,) vector as a Dask array of x's ndim, size 1 but on the
    channel axis, chunked as x's channels (None stays None)."""
    if v is None:
        return None
    shape = [1] * x.ndim
    shape[cax] = x.shape[cax]
    a = da.from_array(np.asarray(v, dtype).reshape(shape))
    return a.rechunk(tuple(x.chunks[cax] if i == cax else (1,) for i in range(x.ndim)))


def _bn_apply_block(cax, eps, n_threads, has_w, has_b, b, mean, var, *wb):
    wb = list(wb)
    w = np.ravel(wb.pop(0)) if has_w else None
    bias = np.ravel(wb.pop(0)) if has_b else None
    return _fn.batch_norm(b, np.ravel(mean), np.ravel(var), w, bias, training=False, eps=eps,
                          channel_axis=cax if cax == 1 else -1, n_threads=n_threads)


def _bn_apply(x, cax, mean, var, weight, bias, eps, n_threads, param_dtype=None):
    stat = np.float64 if x.dtype == np.float64 else np.float32
    args = [_channel_slices(mean, x, cax, stat), _channel_slices(var, x, cax, stat)]
    extra = [_channel_slices(v, x, cax, param_dtype or x.dtype) for v in (weight, bias) if v is not None]
    fn = functools.partial(_bn_apply_block, cax, eps, n_threads, weight is not None, bias is not None)
    return da.map_blocks(fn, x, *args, *extra, dtype=x.dtype, token="fastnorm-batch-norm",
                         meta=np.empty((0,) * x.ndim, x.dtype))


def _bn_sums_block(cax, n_threads, g, x, mean, invstd):
    C = x.shape[cax]
    ones = np.ones(C, x.dtype)
    _, gw, gb = _fn.batch_norm_backward(g, x, np.ravel(mean), np.ravel(invstd), ones, np.zeros(C, x.dtype),
                                        training=False, channel_axis=cax if cax == 1 else -1,
                                        n_threads=n_threads)
    return np.stack([np.asarray(gw, np.float64), np.asarray(gb, np.float64)])


def _bn_grad_block(cax, g, x, k, mean, b, c):
    cdt = np.float64 if x.dtype == np.float64 else np.float32
    dx = k * g.astype(cdt) + b * (x.astype(cdt) - mean) + c
    return dx.astype(x.dtype)


def batch_norm_backward(grad_out, x, mean, invstd, weight=None, bias=None, training=True, *,
                        channel_axis=1, split_every=None, n_threads=1):
    """`fastnorm.batch_norm_backward` of Dask arrays: (grad_x, grad_weight,
    grad_bias), all lazy (None for a parameter that was None).

    grad_weight = sum g * xhat and grad_bias = sum g per channel are tree
    reductions of per-chunk sums (fastnorm's kernel); grad_x is blockwise,
    invstd * w * (g - mean(g) - xhat * mean(g * xhat)) in training (the
    elementwise pass in NumPy), g * w * invstd in eval."""
    x, cax = _bn_operand(x, channel_axis)
    g = _as_dask(grad_out, "grad_out")
    if g.shape != x.shape or g.dtype != x.dtype:
        raise ValueError(f"grad_out must have x's shape {x.shape} and dtype {x.dtype}, got "
                         f"{g.shape} {g.dtype}")
    g = g.rechunk(x.chunks)
    C = x.shape[cax]
    cdt = np.float64 if x.dtype == np.float64 else np.float32
    mean = np.asarray(mean, np.float64).reshape(C)
    invstd = np.asarray(invstd, np.float64).reshape(C)
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64).reshape(C)
    parts = da.map_blocks(functools.partial(_bn_sums_block, cax, n_threads), g, x,
                          _channel_slices(mean, x, cax, cdt), _channel_slices(invstd, x, cax, cdt),
                          dtype=np.float64, chunks=((2,) * len(x.chunks[0]), x.chunks[cax]),
                          drop_axis=[a for a in range(1, x.ndim) if a != cax],
                          meta=np.empty((0, 0), np.float64), token="fastnorm-bn-grad-sums")
    sums = _merge_tree(parts, 0, 2, _identity_chunk, _fold_sums, split_every)
    s_gxhat, s_g = sums[0], sums[1]
    k = invstd * w
    if training:
        m = math.prod(x.shape) // C
        b = -k * invstd * s_gxhat / m
        c = -k * s_g / m
    else:
        b = c = da.zeros(C)
    bshape = [1] * x.ndim
    bshape[cax] = C

    def bc(v):
        v = v if isinstance(v, da.Array) else da.from_array(np.asarray(v, np.float64))
        v = v.astype(cdt).reshape(bshape)
        return v.rechunk(tuple(x.chunks[cax] if i == cax else (1,) for i in range(x.ndim)))

    dx = da.map_blocks(functools.partial(_bn_grad_block, cax), g, x, bc(k), bc(mean), bc(b), bc(c),
                       dtype=x.dtype, token="fastnorm-bn-grad", meta=np.empty((0,) * x.ndim, x.dtype))
    gw = (s_gxhat.astype(cdt) if weight is not None else None)
    gb = (s_g.astype(cdt) if bias is not None else None)
    return dx, gw, gb


# ---------------------------------------------------------------- blockwise ops

def _blockwise(x, whole_axes, fn, *others):
    """fn(block, *other_blocks) over x's blocks, the axes `whole_axes` in one
    chunk; `others` are arrays of x's shape, chunked as x."""
    x = _as_dask(x)
    _check_float(x)
    x = _whole(x, whole_axes)
    others = [_as_dask(o, "residual").rechunk(x.chunks) for o in others]
    return da.map_blocks(fn, x, *others, dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype),
                         token="fastnorm-" + getattr(fn, "__name__", "op"))


def _row_axes(x, normalized_shape):
    if normalized_shape is None:
        k = 1
    elif isinstance(normalized_shape, (int, np.integer)):
        k = 1
    else:
        k = len(tuple(normalized_shape))
    return list(range(x.ndim - k, x.ndim))


def _named(fn, name):
    fn.__name__ = name
    return fn


def layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5, *, n_threads=1):
    """`fastnorm.layer_norm` of a Dask array, blockwise (the normalized dims in one chunk)."""
    x = _as_dask(x)
    fn = functools.partial(_fn.layer_norm, normalized_shape=normalized_shape, weight=weight, bias=bias,
                           eps=eps, n_threads=n_threads)
    return _blockwise(x, _row_axes(x, normalized_shape), _named(fn, "layer-norm"))


def rms_norm(x, normalized_shape=None, weight=None, eps=None, *, n_threads=1):
    """`fastnorm.rms_norm` of a Dask array, blockwise."""
    x = _as_dask(x)
    fn = functools.partial(_fn.rms_norm, normalized_shape=normalized_shape, weight=weight, eps=eps,
                           n_threads=n_threads)
    return _blockwise(x, _row_axes(x, normalized_shape), _named(fn, "rms-norm"))


def normalize(x, p=2.0, dim=1, eps=1e-12, *, n_threads=1):
    """`fastnorm.normalize` of a Dask array, blockwise (`dim` in one chunk)."""
    x = _as_dask(x)
    d = check_dim(dim, x.ndim)
    fn = functools.partial(_fn.normalize, p=p, dim=d, eps=eps, n_threads=n_threads)
    return _blockwise(x, [d], _named(fn, "normalize"))


def _add_norm_block(op, kw, h_only, x, r):
    y, h = op(x, r, **kw)
    return h if h_only else y


def _add_norm(op, x, residual, normalized_shape, kw):
    x = _as_dask(x)
    r = _as_dask(residual, "residual")
    if r.shape != x.shape or r.dtype != x.dtype:
        raise ValueError(f"residual must have x's shape {x.shape} and dtype {x.dtype}, got {r.shape} {r.dtype}")
    axes = _row_axes(x, normalized_shape)
    kw = dict(kw, normalized_shape=normalized_shape)
    y = _blockwise(x, axes, _named(functools.partial(_add_norm_block, op, kw, False), "add-norm"), r)
    h = _blockwise(x, axes, _named(functools.partial(_add_norm_block, op, kw, True), "add-norm-h"), r)
    return y, h


def add_layer_norm(x, residual, normalized_shape=None, weight=None, bias=None, eps=1e-5, *, n_threads=1):
    """`fastnorm.add_layer_norm` of Dask arrays: (y, h), blockwise."""
    return _add_norm(_fn.add_layer_norm, x, residual, normalized_shape,
                     dict(weight=weight, bias=bias, eps=eps, n_threads=n_threads))


def add_rms_norm(x, residual, normalized_shape=None, weight=None, eps=None, *, n_threads=1):
    """`fastnorm.add_rms_norm` of Dask arrays: (y, h), blockwise."""
    return _add_norm(_fn.add_rms_norm, x, residual, normalized_shape,
                     dict(weight=weight, eps=eps, n_threads=n_threads))


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, n_threads=1):
    """`fastnorm.group_norm` of a Dask array, blockwise per sample (every
    axis but the sample axis in one chunk)."""
    x = _as_dask(x)
    fn = functools.partial(_fn.group_norm, num_groups=num_groups, weight=weight, bias=bias, eps=eps,
                           channel_axis=channel_axis, n_threads=n_threads)
    return _blockwise(x, list(range(1, x.ndim)), _named(fn, "group-norm"))


def _channel_op_block(op, cax, kw, params, b, *pblocks):
    kw = dict(kw)
    for name, blk in zip(params, pblocks):
        kw[name] = np.ravel(blk)
    return op(b, channel_axis=cax if cax == 1 else -1, **kw)


def _per_channel(op, name, x, channel_axis, params, whole_channels, **kw):
    """A per-(sample, channel) op blockwise: the spatial axes (and, when
    `whole_channels`, the channel axis) in one chunk; per-channel parameters
    split with x's channel chunks."""
    x = _as_dask(x)
    _check_float(x)
    cax = _channel_axis(x, channel_axis)
    whole = [a for a in range(1, x.ndim) if a != cax or whole_channels]
    x = _whole(x, whole)
    given = {k: v for k, v in params.items() if v is not None}
    blocks = [_channel_slices(v, x, cax, x.dtype if np.asarray(v).dtype.kind == "f" else np.float32)
              for v in given.values()]
    fn = functools.partial(_channel_op_block, op, cax, kw, tuple(given))
    return da.map_blocks(_named(fn, name), x, *blocks, dtype=x.dtype, token="fastnorm-" + name,
                         meta=np.empty((0,) * x.ndim, x.dtype))


def instance_norm(x, weight=None, bias=None, eps=1e-5, *, channel_axis=1, n_threads=1):
    """`fastnorm.instance_norm` (with the input's statistics) of a Dask array,
    blockwise (the spatial axes in one chunk; samples and channels chunked freely)."""
    return _per_channel(_fn.instance_norm, "instance-norm", x, channel_axis,
                        {"weight": weight, "bias": bias}, False, eps=eps, n_threads=n_threads)


def filter_response_norm(x, weight, bias, tau=None, eps=1e-6, *, channel_axis=1, n_threads=1):
    """`fastnorm.filter_response_norm` of a Dask array, blockwise (the spatial
    axes in one chunk)."""
    return _per_channel(_fn.filter_response_norm, "frn", x, channel_axis,
                        {"weight": weight, "bias": bias, "tau": tau}, False, eps=eps, n_threads=n_threads)


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0, *, channel_axis=1, n_threads=1):
    """`fastnorm.local_response_norm` of a Dask array, blockwise (the channel
    axis in one chunk: the window runs across channels)."""
    return _per_channel(_fn.local_response_norm, "lrn", x, channel_axis, {}, True, size=size,
                        alpha=alpha, beta=beta, k=k, n_threads=n_threads)


def dynamic_tanh(x, alpha, weight=None, bias=None, *, channel_axis=-1, n_threads=1):
    """`fastnorm.dynamic_tanh` of a Dask array, blockwise (elementwise: only
    the channel axis is brought to one chunk, for the per-channel parameters)."""
    x = _as_dask(x)
    cax = x.ndim - 1 if channel_axis == -1 or x.ndim == 1 else _channel_axis(x, channel_axis)
    fn = functools.partial(_fn.dynamic_tanh, alpha=alpha, weight=weight, bias=bias,
                           channel_axis=-1 if cax == x.ndim - 1 else 1, n_threads=n_threads)
    return _blockwise(x, [cax], _named(fn, "dynamic-tanh"))


def ada_norm(x, normalized_shape=None, scale=1.0, k=0.1, eps=1e-5, *, n_threads=1):
    """`fastnorm.ada_norm` of a Dask array, blockwise (the normalized dims in one chunk)."""
    x = _as_dask(x)
    fn = functools.partial(_fn.ada_norm, normalized_shape=normalized_shape, scale=scale, k=k, eps=eps,
                           n_threads=n_threads)
    return _blockwise(x, _row_axes(x, normalized_shape), _named(fn, "ada-norm"))


def batch_renorm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                 eps=1e-5, r_max=3.0, d_max=5.0, *, channel_axis=1, return_stats=False, split_every=None,
                 n_threads=1):
    """`fastnorm.batch_renorm` of a Dask array, as `batch_norm` here: in
    training the batch statistics are computed at call time (one read of x)
    and the running statistics updated once; y is lazy, BatchNorm's
    blockwise pass with the weight w * r and the bias w * d + b."""
    from .functional.channels import renorm_factors, renorm_scalars, renorm_update
    x, cax = _bn_operand(x, channel_axis)
    C = x.shape[cax]
    eps, momentum, r_max, d_max = renorm_scalars(eps, momentum, r_max, d_max, running_mean, running_var)
    _running_buffers(C, running_mean, running_var)
    cdt = np.float64 if x.dtype == np.float64 else np.float32
    if training:
        mean, var = _batch_moments(x, cax, split_every, n_threads)
        r, d = renorm_factors(mean, var, running_mean, running_var, eps, r_max, d_max)
        renorm_update(running_mean, running_var, mean, var, momentum, eps)
    else:
        mean, var = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
        r, d = np.ones(C), np.zeros(C)
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    b = np.zeros(C) if bias is None else np.asarray(bias, np.float64)
    y = _bn_apply(x, cax, mean, var, w * r, w * d + b, eps, n_threads, param_dtype=cdt)
    if not return_stats:
        return y
    return (y, mean.astype(cdt), (1.0 / np.sqrt(var + eps)).astype(cdt), r.astype(cdt), d.astype(cdt))
