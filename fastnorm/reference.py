"""Plain-NumPy float64 reference twins of every fastnorm op.

Same signatures as fastnorm.functional (minus out= and n_threads=); each
computes in float64 with the textbook formula and returns float64.  They are
the slow ground truth the fast kernels are tested against.
"""
import numpy as np

from ._dtypes import compute_dtype, machine_eps

__all__ = [
    "layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward",
    "add_layer_norm", "add_rms_norm", "batch_norm", "batch_norm_backward", "group_norm", "group_norm_backward",
    "instance_norm", "instance_norm_backward", "normalize", "normalize_backward",
    "standardize", "standardize_backward", "min_max_scale", "min_max_scale_backward", "weight_norm",
    "weight_norm_backward",
    "filter_response_norm", "filter_response_norm_backward",
    "local_response_norm", "local_response_norm_backward",
    "dynamic_tanh", "dynamic_tanh_backward", "ada_norm", "ada_norm_backward",
    "weight_standardization", "weight_standardization_backward", "batch_renorm", "batch_renorm_backward",
    "switchable_norm", "switchable_norm_backward", "power_norm", "power_norm_backward",
    "cosine_linear", "cosine_linear_backward", "batch_layer_norm", "batch_layer_norm_backward",
    "cluster_norm", "cluster_norm_backward", "mixture_norm", "mixture_norm_backward",
]


def _axes(x, normalized_shape):
    if normalized_shape is None:
        nd = 1
    elif np.ndim(normalized_shape) == 0:
        nd = 1
    else:
        nd = len(normalized_shape)
    return tuple(range(x.ndim - nd, x.ndim))


def layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5, *, return_stats=False):
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing dims, in float64."""
    x = np.asarray(x, dtype=np.float64)
    axes = _axes(x, normalized_shape)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd
    if weight is not None:
        y = y * np.asarray(weight, dtype=np.float64)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    if return_stats:
        lead = x.shape[: x.ndim - len(axes)]
        return y, mean.reshape(lead), rstd.reshape(lead)
    return y


def layer_norm_backward(grad_out, x, mean, rstd, weight=None, bias=None):
    """(grad_x, grad_weight, grad_bias) of layer_norm, in float64."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(grad_out, dtype=np.float64)
    nd = np.ndim(weight) if weight is not None else (
        np.ndim(bias) if bias is not None else x.ndim - np.ndim(mean))
    axes = tuple(range(x.ndim - nd, x.ndim))
    lead_axes = tuple(range(x.ndim - nd))
    expand = (Ellipsis,) + (None,) * nd
    mean = np.asarray(mean, dtype=np.float64).reshape(x.shape[: x.ndim - nd])[expand]
    rstd = np.asarray(rstd, dtype=np.float64).reshape(x.shape[: x.ndim - nd])[expand]
    xhat = (x - mean) * rstd
    gw = g * np.asarray(weight, dtype=np.float64) if weight is not None else g
    grad_x = rstd * (gw - gw.mean(axis=axes, keepdims=True)
                     - xhat * (gw * xhat).mean(axis=axes, keepdims=True))
    grad_weight = (g * xhat).sum(axis=lead_axes) if weight is not None else None
    grad_bias = g.sum(axis=lead_axes) if bias is not None else None
    return grad_x, grad_weight, grad_bias


def rms_norm(x, normalized_shape=None, weight=None, eps=None, *, return_stats=False):
    """x / sqrt(mean(x^2) + eps) * weight over the trailing dims, in float64
    (eps=None: the machine epsilon of x's dtype, as torch)."""
    x_in = np.asarray(x)
    if eps is None:
        eps = machine_eps(x_in.dtype) if compute_dtype(x_in.dtype) is not None else float(np.finfo(np.float64).eps)
    x = x_in.astype(np.float64)
    axes = _axes(x, normalized_shape)
    rstd = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    y = x * rstd
    if weight is not None:
        y = y * np.asarray(weight, dtype=np.float64)
    if return_stats:
        return y, rstd.reshape(x.shape[: x.ndim - len(axes)])
    return y


def rms_norm_backward(grad_out, x, rstd, weight=None):
    """(grad_x, grad_weight) of rms_norm, in float64."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(grad_out, dtype=np.float64)
    nd = np.ndim(weight) if weight is not None else x.ndim - np.ndim(rstd)
    axes = tuple(range(x.ndim - nd, x.ndim))
    lead_axes = tuple(range(x.ndim - nd))
    rstd = np.asarray(rstd, dtype=np.float64).reshape(x.shape[: x.ndim - nd])[(Ellipsis,) + (None,) * nd]
    gw = g * np.asarray(weight, dtype=np.float64) if weight is not None else g
    xhat = x * rstd  # in normalized units: rstd^3 would leave float64's range for |x| > 2^340
    grad_x = rstd * (gw - xhat * (gw * xhat).mean(axis=axes, keepdims=True))
    grad_weight = (g * x * rstd).sum(axis=lead_axes) if weight is not None else None
    return grad_x, grad_weight


def add_layer_norm(x, residual, normalized_shape=None, weight=None, bias=None, eps=1e-5, *,
                   return_stats=False):
    """(layer_norm(h), h) with h = x + residual, in float64."""
    h = np.asarray(x, dtype=np.float64) + np.asarray(residual, dtype=np.float64)
    res = layer_norm(h, normalized_shape, weight, bias, eps, return_stats=return_stats)
    return (res[0], h) + tuple(res[1:]) if return_stats else (res, h)


def add_rms_norm(x, residual, normalized_shape=None, weight=None, eps=None, *, return_stats=False):
    """(rms_norm(h), h) with h = x + residual, in float64."""
    h = np.asarray(x, dtype=np.float64) + np.asarray(residual, dtype=np.float64)
    res = rms_norm(h, normalized_shape, weight, eps, return_stats=return_stats)
    return (res[0], h) + tuple(res[1:]) if return_stats else (res, h)


# ---------------------------------------------------------------- channel normalizations

def _to_ncs(x, channel_axis):
    """float64 (N, C, S) copy of x and a function mapping (N, C, S) back."""
    x = np.asarray(x, dtype=np.float64)
    axis = 1 if channel_axis == 1 else x.ndim - 1
    moved = np.moveaxis(x, axis, 1)
    shape = moved.shape
    ncs = moved.reshape(shape[0], shape[1], -1)
    return ncs, (lambda a: np.moveaxis(a.reshape(shape), 1, axis))


def _affine(xhat, weight, bias):
    if weight is not None:
        xhat = xhat * np.asarray(weight, np.float64)[None, :, None]
    if bias is not None:
        xhat = xhat + np.asarray(bias, np.float64)[None, :, None]
    return xhat


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, channel_axis=1, return_stats=False):
    """Batch normalization in float64; updates running_mean/var in place when training."""
    v, back = _to_ncs(x, channel_axis)
    if training:
        mean = v.mean(axis=(0, 2))
        var = v.var(axis=(0, 2))
        n = v.shape[0] * v.shape[2]
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        if running_var is not None:
            running_var[...] = (1 - momentum) * running_var + momentum * var * n / (n - 1)
    else:
        mean = np.asarray(running_mean, np.float64)
        var = np.asarray(running_var, np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    y = back(_affine((v - mean[None, :, None]) * invstd[None, :, None], weight, bias))
    return (y, mean, invstd) if return_stats else y


def _channel_backward(g, v, mean, rstd, weight, bias, reduce_axes, batch_stats, back):
    """Generic backward with mean/rstd broadcastable to (N, C, S) and the
    statistics pooled over reduce_axes (of the grouped view)."""
    xhat = (v - mean) * rstd
    w = np.ones(v.shape[1]) if weight is None else np.asarray(weight, np.float64)
    gw = g * w[None, :, None]
    if batch_stats:
        grad_x = rstd * (gw - gw.mean(axis=reduce_axes, keepdims=True)
                         - xhat * (gw * xhat).mean(axis=reduce_axes, keepdims=True))
    else:
        grad_x = gw * rstd
    grad_weight = (g * xhat).sum(axis=(0, 2)) if weight is not None else None
    grad_bias = g.sum(axis=(0, 2)) if bias is not None else None
    return back(grad_x), grad_weight, grad_bias


def batch_norm_backward(grad_out, x, mean, invstd, weight=None, bias=None, training=True, *,
                        channel_axis=1):
    """(grad_x, grad_weight, grad_bias) of batch_norm, in float64."""
    v, back = _to_ncs(x, channel_axis)
    g, _ = _to_ncs(grad_out, channel_axis)
    mean = np.asarray(mean, np.float64)[None, :, None]
    invstd = np.asarray(invstd, np.float64)[None, :, None]
    return _channel_backward(g, v, mean, invstd, weight, bias, (0, 2), training, back)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, return_stats=False):
    """Group normalization in float64; stats of shape (N, num_groups)."""
    v, back = _to_ncs(x, channel_axis)
    N, C, S = v.shape
    grouped = v.reshape(N, num_groups, -1)
    mean = grouped.mean(axis=2)
    rstd = 1.0 / np.sqrt(grouped.var(axis=2) + eps)
    xhat = ((grouped - mean[:, :, None]) * rstd[:, :, None]).reshape(N, C, S)
    y = back(_affine(xhat, weight, bias))
    return (y, mean, rstd) if return_stats else y


def group_norm_backward(grad_out, x, num_groups, mean, rstd, weight=None, bias=None, *, channel_axis=1):
    """(grad_x, grad_weight, grad_bias) of group_norm, in float64."""
    v, back = _to_ncs(x, channel_axis)
    g, _ = _to_ncs(grad_out, channel_axis)
    N, C, S = v.shape
    cpg = C // num_groups
    expand = lambda s: np.repeat(np.asarray(s, np.float64).reshape(N, num_groups), cpg, axis=1)[:, :, None]
    m, r = expand(mean), expand(rstd)
    xhat = (v - m) * r
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    gw = (g * w[None, :, None]).reshape(N, num_groups, -1)
    xh = xhat.reshape(N, num_groups, -1)
    r_group = np.asarray(rstd, np.float64).reshape(N, num_groups, 1)
    grad_x = r_group * (gw - gw.mean(axis=2, keepdims=True) - xh * (gw * xh).mean(axis=2, keepdims=True))
    grad_x = grad_x.reshape(N, C, S)
    grad_weight = (g * xhat).sum(axis=(0, 2)) if weight is not None else None
    grad_bias = g.sum(axis=(0, 2)) if bias is not None else None
    return back(grad_x), grad_weight, grad_bias


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5, *, channel_axis=1, return_stats=False):
    """Instance normalization in float64; stats of shape (N, C)."""
    v, back = _to_ncs(x, channel_axis)
    N, C, S = v.shape
    if use_input_stats:
        mean = v.mean(axis=2)
        var = v.var(axis=2)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean.mean(axis=0)
        if running_var is not None:
            running_var[...] = (1 - momentum) * running_var + momentum * (var * S / (S - 1)).mean(axis=0)
    else:
        mean = np.tile(np.asarray(running_mean, np.float64), (N, 1))
        var = np.tile(np.asarray(running_var, np.float64), (N, 1))
    rstd = 1.0 / np.sqrt(var + eps)
    y = back(_affine((v - mean[:, :, None]) * rstd[:, :, None], weight, bias))
    return (y, mean, rstd) if return_stats else y


def instance_norm_backward(grad_out, x, mean, rstd, weight=None, bias=None, use_input_stats=True, *,
                           channel_axis=1):
    """(grad_x, grad_weight, grad_bias) of instance_norm, in float64."""
    v, back = _to_ncs(x, channel_axis)
    g, _ = _to_ncs(grad_out, channel_axis)
    m = np.asarray(mean, np.float64)[:, :, None]
    r = np.asarray(rstd, np.float64)[:, :, None]
    return _channel_backward(g, v, m, r, weight, bias, (2,), use_input_stats, back)


# ---------------------------------------------------------------- Lp normalization

def normalize(x, p=2.0, dim=1, eps=1e-12, *, return_stats=False):
    """x / max(||x||_p, eps) along dim, in float64."""
    x = np.asarray(x, dtype=np.float64)
    if np.isinf(p):
        norm = np.abs(x).max(axis=dim, keepdims=True, initial=0.0)
    else:
        norm = (np.abs(x) ** p).sum(axis=dim, keepdims=True) ** (1.0 / p)
    y = x / np.maximum(norm, eps)
    return (y, np.squeeze(norm, axis=dim)) if return_stats else y


def normalize_backward(grad_out, x, norm, p=2.0, dim=1, eps=1e-12):
    """Gradient of normalize w.r.t. x, in float64."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(grad_out, dtype=np.float64)
    n = np.expand_dims(np.asarray(norm, dtype=np.float64), dim)
    dot = (g * x).sum(axis=dim, keepdims=True)
    clamped = n < eps
    nn = np.where(clamped, 1.0, n)
    if np.isinf(p):  # d max|x| / dx: sign(x) at the maxima, split evenly between ties
        at_max = np.abs(x) == nn
        dnorm = np.sign(x) * at_max / np.maximum(at_max.sum(axis=dim, keepdims=True), 1)
        big = g / nn - dot / nn ** 2 * dnorm
    else:
        with np.errstate(divide="ignore"):  # |x|^(p-1) at x = 0, p < 1: the term is 0
            dnorm = np.where(x == 0, 0.0, np.sign(x) * np.abs(x) ** (p - 1))
        big = g / nn - dot / nn ** (p + 1) * dnorm
    return np.where(clamped, g / eps, big)


# ---------------------------------------------------------------- data standardization

def standardize(x, axis=0, ddof=0, *, mean=None, std=None, with_mean=True, with_std=True,
                return_stats=False):
    """(x - mean) / std per feature over `axis` in float64 (std 0 -> scale 1;
    NaN left out of the statistics and kept in z; an inf makes them NaN)."""
    x = np.asarray(x, dtype=np.float64)
    if mean is None:
        nan = np.isnan(x)
        count = (~nan).sum(axis=axis)
        with np.errstate(all="ignore"):
            mean = np.where(nan, 0.0, x).sum(axis=axis) / count
            dev = np.where(nan, 0.0, x - np.expand_dims(mean, axis))
            std = np.sqrt((dev * dev).sum(axis=axis) / (count - ddof))
        bad = np.isinf(x).any(axis=axis) | (count == 0)
        mean = np.where(bad, np.nan, mean)
        std = np.where(bad | (count - ddof <= 0), np.nan, std)
    mean_b = np.expand_dims(np.asarray(mean, np.float64), axis)
    std_b = np.expand_dims(np.asarray(std, np.float64), axis)
    z = x - mean_b if with_mean else x
    if with_std:
        z = z / np.where(std_b == 0, 1.0, std_b)
    return (z, np.asarray(mean), np.asarray(std)) if return_stats else z


def min_max_scale(x, axis=0, feature_range=(0.0, 1.0), *, data_min=None, data_max=None,
                  return_stats=False):
    """(x - min) / (max - min) * (hi - lo) + lo per feature in float64 (NaN ignored)."""
    x = np.asarray(x, dtype=np.float64)
    if data_min is None:
        with np.errstate(all="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                data_min = np.nanmin(x, axis=axis)
                data_max = np.nanmax(x, axis=axis)
    lo, hi = feature_range
    mn = np.expand_dims(np.asarray(data_min, np.float64), axis)
    mx = np.expand_dims(np.asarray(data_max, np.float64), axis)
    span = mx - mn
    y = (x - mn) * ((hi - lo) / np.where(span == 0, 1.0, span)) + lo
    return (y, np.asarray(data_min), np.asarray(data_max)) if return_stats else y


# ---------------------------------------------------------------- weight normalization

def _wn_axes(v, dim):
    return tuple(range(v.ndim)) if dim is None else tuple(i for i in range(v.ndim) if i != dim % v.ndim)


def weight_norm(v, g, dim=0, *, centered=False, return_stats=False):
    """g * v / ||v|| (norm over every dim but `dim`; dim=None: all), in float64."""
    v = np.asarray(v, dtype=np.float64)
    axes = _wn_axes(v, dim)
    u = v - v.mean(axis=axes, keepdims=True) if centered else v
    norm = np.sqrt((u * u).sum(axis=axes, keepdims=True))
    g = np.asarray(g, dtype=np.float64).reshape(norm.shape)
    w = g * u / norm
    return (w, norm.reshape(()) if dim is None else norm) if return_stats else w


def weight_norm_backward(grad_w, v, g, norm, dim=0, *, centered=False):
    """(grad_v, grad_g) of weight_norm, in float64."""
    v = np.asarray(v, dtype=np.float64)
    gw = np.asarray(grad_w, dtype=np.float64)
    axes = _wn_axes(v, dim)
    u = v - v.mean(axis=axes, keepdims=True) if centered else v
    n = np.sqrt((u * u).sum(axis=axes, keepdims=True))
    gshape = np.shape(g)
    g = np.asarray(g, dtype=np.float64).reshape(n.shape)
    d = (gw * u).sum(axis=axes, keepdims=True)
    grad_u = g / n * (gw - u * d / n ** 2)
    grad_v = grad_u - grad_u.mean(axis=axes, keepdims=True) if centered else grad_u
    return grad_v, (d / n).reshape(gshape)


# ---------------------------------------------------------------- Filter Response Normalization

def filter_response_norm(x, weight, bias, tau=None, eps=1e-6, *, channel_axis=1, return_stats=False):
    """max(w * x / sqrt(mean(x^2 over spatial) + eps) + b, tau) per (sample, channel), float64."""
    v, back = _to_ncs(x, channel_axis)
    C = v.shape[1]
    rstd = 1.0 / np.sqrt((v * v).mean(axis=2) + eps)
    z = np.asarray(weight, np.float64).reshape(1, C, 1) * v * rstd[:, :, None] \
        + np.asarray(bias, np.float64).reshape(1, C, 1)
    if tau is not None:
        z = np.maximum(z, np.asarray(tau, np.float64).reshape(1, C, 1))
    return (back(z), rstd) if return_stats else back(z)


def filter_response_norm_backward(grad_out, x, rstd, weight, bias, tau=None, *, channel_axis=1):
    """(grad_x, grad_weight, grad_bias, grad_tau) of filter_response_norm, float64."""
    v, back = _to_ncs(x, channel_axis)
    g, _ = _to_ncs(grad_out, channel_axis)
    N, C, S = v.shape
    w = np.asarray(weight, np.float64).reshape(1, C, 1)
    b = np.asarray(bias, np.float64).reshape(1, C, 1)
    r = np.asarray(rstd, np.float64).reshape(N, C, 1)
    xhat = v * r
    z = w * xhat + b
    if tau is None:
        gz = g
    else:
        t = np.asarray(tau, np.float64).reshape(1, C, 1)
        # torch.maximum's backward: a tie splits g; with a NaN both get all of g
        gz = np.where(z == t, g / 2, np.where(z < t, 0.0, g))
        gt = np.where(z == t, g / 2, np.where(z > t, 0.0, g))
    gxhat = gz * w
    grad_x = r * (gxhat - xhat * (gxhat * xhat).mean(axis=2, keepdims=True))
    return (back(grad_x), (gz * xhat).sum(axis=(0, 2)).reshape(np.shape(weight)),
            gz.sum(axis=(0, 2)).reshape(np.shape(bias)),
            None if tau is None else gt.sum(axis=(0, 2)).reshape(np.shape(tau)))


# ---------------------------------------------------------------- Local Response Normalization

def _lrn_windows(sq, before, after):
    """Window sums over axis 1 of sq (N, C, S): for each channel c, the sum of
    channels [c - before, c + after] clipped to [0, C) (zero padding)."""
    C = sq.shape[1]
    out = np.empty_like(sq)
    for c in range(C):
        out[:, c] = sq[:, max(0, c - before):min(C, c + after + 1)].sum(axis=1)
    return out


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0, *, channel_axis=1, return_stats=False):
    """x * (k + alpha/size * window sum of x^2)^-beta over channels, float64."""
    v, back = _to_ncs(x, channel_axis)
    scale = k + alpha / size * _lrn_windows(v * v, size // 2, (size - 1) // 2)
    y = v * scale ** -beta
    return (back(y), back(scale)) if return_stats else back(y)


def local_response_norm_backward(grad_out, x, scale, size, alpha=1e-4, beta=0.75, k=1.0, *,
                                 channel_axis=1):
    """Gradient of local_response_norm w.r.t. x, float64."""
    v, back = _to_ncs(x, channel_axis)
    g, _ = _to_ncs(grad_out, channel_axis)
    s, _ = _to_ncs(scale, channel_axis)
    t = g * v * s ** (-beta - 1)
    # channels c whose window holds i: c in [i - (size-1)//2, i + size//2] (the mirrored window)
    back_sum = _lrn_windows(t, (size - 1) // 2, size // 2)
    return back(g * s ** -beta - 2 * alpha * beta / size * v * back_sum)


def standardize_backward(grad_out, x, mean, std, axis=0, ddof=0, *, with_mean=True, with_std=True,
                         fitted=True):
    """Gradient of standardize w.r.t. x, in float64 (see fastnorm.standardize_backward)."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    g = np.moveaxis(np.asarray(grad_out, dtype=np.float64), axis, 0)
    N = x.shape[0]
    m = np.asarray(mean, np.float64)
    sd = np.asarray(std, np.float64)
    s = np.where(sd == 0, 1.0, sd) if with_std else np.ones_like(sd)
    if not fitted:
        grad = g / s
    elif not with_std:
        grad = g - g.mean(axis=0) if with_mean else g
    elif not with_mean:
        grad = g / s - (x - m) * ((g * x).sum(axis=0) / s ** 3 / (N - ddof))
        grad = np.where(sd == 0, g, grad)
    else:
        z = (x - m) / s
        grad = (g - g.mean(axis=0)) / s - z / s * ((g * z).sum(axis=0) / (N - ddof))
        grad = np.where(sd == 0, g - g.mean(axis=0), grad)
    if fitted and (with_mean or with_std):  # the statistics skipped a NaN whose z is in the loss
        grad = np.where(np.isnan(x).any(axis=0), np.nan, grad)
    return np.moveaxis(grad, 0, axis)


def min_max_scale_backward(grad_out, x, data_min, data_max, axis=0, feature_range=(0.0, 1.0), *,
                           fitted=True):
    """Gradient of min_max_scale w.r.t. x, in float64 (first min / max take the statistics' part)."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    g = np.moveaxis(np.asarray(grad_out, dtype=np.float64), axis, 0)
    lo, hi = feature_range
    mn, mx = np.asarray(data_min, np.float64), np.asarray(data_max, np.float64)
    span = mx - mn
    scale = (hi - lo) / np.where(span == 0, 1.0, span)
    grad = g * scale
    if fitted:
        flat_x, flat_g, flat = x.reshape(len(x), -1), g.reshape(len(g), -1), grad.reshape(len(grad), -1)
        for f in range(flat_x.shape[1]):
            s_ = span.reshape(-1)[f]
            if s_ == 0 or not np.isfinite(s_):
                continue
            sc = scale.reshape(-1)[f]
            sum_g = flat_g[:, f].sum()
            sum_gx = (flat_g[:, f] * (flat_x[:, f] - mn.reshape(-1)[f])).sum()
            # the statistics skip NaN: their part goes to the first minimum and maximum of the rest
            flat[np.nanargmin(flat_x[:, f]), f] += sum_gx * sc / s_ - sc * sum_g
            flat[np.nanargmax(flat_x[:, f]), f] += -sum_gx * sc / s_
        grad = flat.reshape(grad.shape)
    return np.moveaxis(grad, 0, axis)


# ---------------------------------------------------------------- the newer members

def _dyt_shape(x, channel_axis):
    """The shape a (C,) parameter broadcasts to over x's channel axis."""
    axis = x.ndim - 1 if channel_axis == -1 or x.ndim == 1 else 1
    return tuple(x.shape[axis] if i == axis else 1 for i in range(x.ndim)), \
        tuple(i for i in range(x.ndim) if i != axis)


def _scalar64(a):
    return float(np.asarray(a, np.float64).reshape(()))


def dynamic_tanh(x, alpha, weight=None, bias=None, *, channel_axis=-1, return_stats=False):
    """weight * tanh(alpha * x) + bias in float64."""
    x = np.asarray(x, np.float64)
    shape, _ = _dyt_shape(x, channel_axis)
    y = np.tanh(_scalar64(alpha) * x)
    if weight is not None:
        y = y * np.asarray(weight, np.float64).reshape(shape)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(shape)
    return (y,) if return_stats else y


def dynamic_tanh_backward(grad_out, x, alpha, weight=None, bias=None, *, channel_axis=-1):
    x = np.asarray(x, np.float64)
    g = np.asarray(grad_out, np.float64)
    shape, axes = _dyt_shape(x, channel_axis)
    a = _scalar64(alpha)
    t = np.tanh(a * x)
    w = np.ones(shape) if weight is None else np.asarray(weight, np.float64).reshape(shape)
    gs = g * w * (1 - t * t)
    ga = (gs * x).sum()
    grad_alpha = np.full(np.shape(alpha), ga) if isinstance(alpha, np.ndarray) else ga
    return (gs * a, grad_alpha, None if weight is None else (g * t).sum(axis=axes),
            None if bias is None else g.sum(axis=axes))


def _std_rows(x, nd, scale, k, eps):
    axes = tuple(range(x.ndim - nd, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, ddof=1, keepdims=True) if np.prod(x.shape[x.ndim - nd:]) > 1 \
        else np.full(mean.shape, np.nan)
    z = (x - mean) / (std + eps)
    return scale * z * (1 - k * z), mean, std, axes


def _std_rows_backward(g, x, mean, std, nd, scale, k, eps):
    axes = tuple(range(x.ndim - nd, x.ndim))
    mean = np.asarray(mean, np.float64).reshape(x.shape[:x.ndim - nd] + (1,) * nd)
    std = np.asarray(std, np.float64).reshape(mean.shape)
    n = int(np.prod(x.shape[x.ndim - nd:]))
    xc = x - mean
    inv = 1.0 / (std + eps)
    u = g * scale * (1 - k * xc * inv)
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = np.where(std > 0, inv * inv / ((n - 1) * std), 0.0)
    return inv * (u - u.mean(axis=axes, keepdims=True)) - xc * coef * (u * xc).sum(axis=axes, keepdims=True)


def ada_norm(x, normalized_shape=None, scale=1.0, k=0.1, eps=1e-5, *, return_stats=False):
    """AdaNorm in float64: z = (x - mean) / (unbiased std + eps), y = scale * z * (1 - k z)."""
    x = np.asarray(x, np.float64)
    nd = len(_axes(x, normalized_shape))
    y, mean, std, axes = _std_rows(x, nd, scale, k, eps)
    return (y, mean.reshape(x.shape[:x.ndim - nd]), std.reshape(x.shape[:x.ndim - nd])) if return_stats else y


def ada_norm_backward(grad_out, x, mean, std, scale=1.0, k=0.1, eps=1e-5):
    x = np.asarray(x, np.float64)
    return _std_rows_backward(np.asarray(grad_out, np.float64), x, mean, std, x.ndim - np.ndim(mean), scale, k, eps)


def weight_standardization(weight, eps=1e-5, *, return_stats=False):
    """(w - mean) / (unbiased std + eps) per output channel, in float64."""
    w = np.asarray(weight, np.float64)
    y, mean, std, _ = _std_rows(w, w.ndim - 1, 1.0, 0.0, eps)
    return (y, mean.reshape(-1), std.reshape(-1)) if return_stats else y


def weight_standardization_backward(grad_out, weight, mean, std, eps=1e-5):
    w = np.asarray(weight, np.float64)
    return _std_rows_backward(np.asarray(grad_out, np.float64), w, mean, std, w.ndim - 1, 1.0, 0.0, eps)


def batch_renorm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                 eps=1e-5, r_max=3.0, d_max=5.0, *, channel_axis=1, return_stats=False):
    """Batch Renormalization in float64 (the paper's Algorithm 1); updates
    the running statistics in place when training."""
    v, back = _to_ncs(x, channel_axis)
    C = v.shape[1]
    rm = np.asarray(running_mean, np.float64)
    sigma = np.sqrt(np.asarray(running_var, np.float64) + eps)
    if training:
        mean = v.mean(axis=(0, 2))
        var = v.var(axis=(0, 2))
        sigma_b = np.sqrt(var + eps)
        r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
        d = np.clip((mean - rm) / sigma, -d_max, d_max)
        new_sigma = sigma + momentum * (sigma_b - sigma)
        running_mean[...] = rm + momentum * (mean - rm)
        running_var[...] = np.maximum(new_sigma ** 2 - eps, 0)
    else:
        mean, var = rm, np.asarray(running_var, np.float64)
        r, d = np.ones(C), np.zeros(C)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (v - mean[None, :, None]) * invstd[None, :, None] * r[None, :, None] + d[None, :, None]
    y = back(_affine(xhat, weight, bias))
    return (y, mean, invstd, r, d) if return_stats else y


def batch_renorm_backward(grad_out, x, mean, invstd, r, d, weight=None, bias=None, training=True, *,
                          channel_axis=1):
    v, back = _to_ncs(x, channel_axis)
    g, _ = _to_ncs(grad_out, channel_axis)
    r = np.asarray(r, np.float64)
    d = np.asarray(d, np.float64)
    w = np.ones(v.shape[1]) if weight is None else np.asarray(weight, np.float64)
    m = np.asarray(mean, np.float64)[None, :, None]
    rs = np.asarray(invstd, np.float64)[None, :, None]
    xhat = (v - m) * rs
    gw = g * (w * r)[None, :, None]
    if training:
        grad_x = rs * (gw - gw.mean(axis=(0, 2), keepdims=True)
                       - xhat * (gw * xhat).mean(axis=(0, 2), keepdims=True))
    else:
        grad_x = gw * rs
    grad_weight = (g * (xhat * r[None, :, None] + d[None, :, None])).sum(axis=(0, 2)) if weight is not None else None
    grad_bias = g.sum(axis=(0, 2)) if bias is not None else None
    return back(grad_x), grad_weight, grad_bias


def _sn_softmax(v):
    if v is None:
        return np.full(3, 1 / 3)
    e = np.exp(np.asarray(v, np.float64) - np.max(np.asarray(v, np.float64)))
    return e / e.sum()


def switchable_norm(x, running_mean, running_var, weight=None, bias=None, mean_weight=None, var_weight=None,
                    training=False, momentum=0.1, eps=1e-5, *, channel_axis=1, return_stats=False):
    """Switchable Normalization in float64 (the reference SwitchNorm2d's
    statistics); updates the running statistics in place when training."""
    v, back = _to_ncs(x, channel_axis)
    mean_in = v.mean(2)
    var_in = v.var(2, ddof=1)
    if training:
        mean_bn = mean_in.mean(0)
        var_bn = (var_in + mean_in ** 2).mean(0) - mean_bn ** 2
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean_bn
        if running_var is not None:
            running_var[...] = (1 - momentum) * running_var + momentum * var_bn
    else:
        mean_bn, var_bn = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
    mean_ln = mean_in.mean(1, keepdims=True)
    var_ln = (var_in + mean_in ** 2).mean(1, keepdims=True) - mean_ln ** 2
    mw, vw = _sn_softmax(mean_weight), _sn_softmax(var_weight)
    mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn[None, :]
    var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn[None, :]
    y = back(_affine((v - mean[..., None]) / np.sqrt(var[..., None] + eps), weight, bias))
    return (y, mean_in, var_in, mean_bn, var_bn) if return_stats else y


def switchable_norm_backward(grad_out, x, mean_in, var_in, mean_bn, var_bn, weight=None, bias=None,
                             mean_weight=None, var_weight=None, training=True, eps=1e-5, *, channel_axis=1):
    """The gradients of switchable_norm in float64, by the chain rule on full arrays."""
    v, back = _to_ncs(x, channel_axis)
    g, _ = _to_ncs(grad_out, channel_axis)
    N, C, S = v.shape
    mean_in = np.asarray(mean_in, np.float64)
    var_in = np.asarray(var_in, np.float64)
    mean_bn = np.asarray(mean_bn, np.float64)
    var_bn = np.asarray(var_bn, np.float64)
    mw, vw = _sn_softmax(mean_weight), _sn_softmax(var_weight)
    mean_ln = mean_in.mean(1, keepdims=True)
    var_ln = (var_in + mean_in ** 2).mean(1, keepdims=True) - mean_ln ** 2
    m = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn[None, :]
    var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn[None, :]
    rs = 1 / np.sqrt(var + eps)
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    xhat = (v - m[..., None]) * rs[..., None]
    gy = g * w[None, :, None]
    dm = -(gy * rs[..., None]).sum(2)
    dv = -0.5 * (gy * xhat).sum(2) * rs ** 2
    # the mixed statistics' gradients, spread to the instance ones
    dmi = mw[0] * dm + mw[1] * np.repeat(dm.mean(1, keepdims=True), C, 1)
    dvi = vw[0] * dv + vw[1] * np.repeat(dv.mean(1, keepdims=True), C, 1)
    dmi += vw[1] * dv.sum(1, keepdims=True) * 2 * (mean_in - mean_ln) / C
    if training:
        dmi += mw[2] * dm.mean(0, keepdims=True) + vw[2] * dv.sum(0, keepdims=True) * 2 * (mean_in - mean_bn) / N
        dvi += vw[2] * dv.mean(0, keepdims=True)
    grad_x = gy * rs[..., None] + dmi[..., None] / S + dvi[..., None] * 2 * (v - mean_in[..., None]) / (S - 1)
    mstats = np.stack([mean_in, np.broadcast_to(mean_ln, (N, C)), np.broadcast_to(mean_bn, (N, C))])
    vstats = np.stack([var_in, np.broadcast_to(var_ln, (N, C)), np.broadcast_to(var_bn, (N, C))])
    d_mw = (dm[None] * mstats).sum((1, 2))
    d_vw = (dv[None] * vstats).sum((1, 2))
    return (back(grad_x), (g * xhat).sum((0, 2)) if weight is not None else None,
            g.sum((0, 2)) if bias is not None else None,
            mw * (d_mw - mw @ d_mw) if mean_weight is not None else None,
            vw * (d_vw - vw @ d_vw) if var_weight is not None else None)


def power_norm(x, running_phi, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5, *,
               warmup=False, channel_axis=1, return_stats=False):
    """PowerNorm in float64 (the reference PowerFunction); updates running_phi in place when training."""
    v, back = _to_ncs(x, channel_axis)
    phi_run = np.array(running_phi, np.float64, copy=True)  # read before the in-place update
    if training:
        psi2 = (v * v).mean(axis=(0, 2))
        phi = psi2 if warmup else phi_run
        running_phi[...] = (1 - momentum) * phi_run + momentum * psi2
    else:
        psi2 = phi = phi_run
    y = back(_affine(v / np.sqrt(phi + eps)[None, :, None], weight, bias))
    return (y, psi2, phi) if return_stats else y


def power_norm_backward(grad_out, x, psi2, phi, ema_gz, weight=None, bias=None, alpha_bkw=0.9, training=True,
                        eps=1e-5, *, channel_axis=1):
    v, back = _to_ncs(x, channel_axis)
    g, _ = _to_ncs(grad_out, channel_axis)
    C = v.shape[1]
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    z = v / np.sqrt(np.asarray(phi, np.float64) + eps)[None, :, None]
    ema = np.asarray(ema_gz, np.float64)
    gw_ = g * w[None, :, None]
    if training:
        approx = gw_ - (1 - alpha_bkw) * ema[None, :, None] * z
        new_ema = ema + (approx * z).mean(axis=(0, 2))
        grad_x = approx / np.sqrt(np.asarray(psi2, np.float64) + eps)[None, :, None]
    else:
        new_ema = ema.copy()
        grad_x = gw_ / np.sqrt(np.asarray(phi, np.float64) + eps)[None, :, None]
    return (back(grad_x), (g * z).sum((0, 2)) if weight is not None else None,
            g.sum((0, 2)) if bias is not None else None, new_ema)


def _cos_rows(a, centered):
    a = np.asarray(a, np.float64)
    return a - a.mean(-1, keepdims=True) if centered else a


def cosine_linear(x, weight, *, centered=False, eps=1e-12, return_stats=False):
    """normalize(x) @ normalize(W).T in float64 (rows centred first when centered)."""
    xc, wc = _cos_rows(x, centered), _cos_rows(weight, centered)
    nx, nw = np.linalg.norm(xc, axis=-1), np.linalg.norm(wc, axis=-1)
    y = (xc / np.maximum(nx, eps)[..., None]) @ (wc / np.maximum(nw, eps)[:, None]).T
    return (y, nx, nw) if return_stats else y


def _normalize_rows_backward(grad_hat, a, n, eps, centered):
    """The gradient through a / max(||a||, eps) (and the centring): the
    projection (I - a_hat a_hat^T) / ||a|| where the norm is above eps."""
    n = np.asarray(n, np.float64)[..., None]
    hat = a / np.maximum(n, eps)
    g = np.where((n > eps) | np.isnan(n), (grad_hat - hat * (grad_hat * hat).sum(-1, keepdims=True)) / np.maximum(n, eps),
                 grad_hat / eps)
    return g - g.mean(-1, keepdims=True) if centered else g


def cosine_linear_backward(grad_out, x, weight, x_norm, w_norm, *, centered=False, eps=1e-12):
    xc, wc = _cos_rows(x, centered), _cos_rows(weight, centered)
    g = np.asarray(grad_out, np.float64)
    x_hat = xc / np.maximum(np.asarray(x_norm, np.float64), eps)[..., None]
    w_hat = wc / np.maximum(np.asarray(w_norm, np.float64), eps)[:, None]
    gx_hat = g @ w_hat
    gw_hat = g.reshape(-1, g.shape[-1]).T @ x_hat.reshape(-1, x_hat.shape[-1])
    return (_normalize_rows_backward(gx_hat, xc, x_norm, eps, centered),
            _normalize_rows_backward(gw_hat, wc, w_norm, eps, centered))


def _bln_coefs(batch_size, N, d):
    B = N if batch_size is None else batch_size
    return (1 / B - 1e-4) / np.sqrt(d), (1 - 1 / B - 1e-4) / np.sqrt(d)


def batch_layer_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                     eps=1e-3, batch_size=None, *, return_stats=False):
    """Batch Layer Normalization in float64; updates the running statistics in place when training."""
    x = np.asarray(x, np.float64)
    N, d = x.shape[0], x.shape[-1]
    x2 = x.reshape(N, -1)
    if training:
        mean_b, var_b = x2.mean(0), x2.var(0)
        running_mean[...] = (1 - momentum) * running_mean + momentum * mean_b
        running_var[...] = (1 - momentum) * running_var + momentum * var_b * N / (N - 1)
    else:
        mean_b, var_b = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
    invstd_b = 1 / np.sqrt(var_b + eps)
    xb = ((x2 - mean_b) * invstd_b).reshape(x.shape)
    mean_f = x.mean(-1)
    rstd_f = 1 / np.sqrt(x.var(-1) + eps)
    xf = (x - mean_f[..., None]) * rstd_f[..., None]
    a, c = _bln_coefs(batch_size, N, d)
    y = a * xf + c * xb
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return (y, mean_f, rstd_f, mean_b, invstd_b) if return_stats else y


def batch_layer_norm_backward(grad_out, x, mean_f, rstd_f, mean_b, invstd_b, weight=None, bias=None,
                              training=True, batch_size=None):
    x = np.asarray(x, np.float64)
    g = np.asarray(grad_out, np.float64)
    N, d = x.shape[0], x.shape[-1]
    a, c = _bln_coefs(batch_size, N, d)
    w = np.ones(d) if weight is None else np.asarray(weight, np.float64)
    u = g * w
    rf = np.asarray(rstd_f, np.float64)[..., None]
    xf = (x - np.asarray(mean_f, np.float64)[..., None]) * rf
    uf = a * u
    gx_f = rf * (uf - uf.mean(-1, keepdims=True) - xf * (uf * xf).mean(-1, keepdims=True))
    x2, u2 = x.reshape(N, -1), (c * u).reshape(N, -1)
    rb = np.asarray(invstd_b, np.float64)
    xb = (x2 - np.asarray(mean_b, np.float64)) * rb
    if training:
        gx_b = rb * (u2 - u2.mean(0) - xb * (u2 * xb).mean(0))
    else:
        gx_b = u2 * rb
    grad_x = gx_f + gx_b.reshape(x.shape)
    axes = tuple(range(x.ndim - 1))
    gw = (g * (a * xf + c * xb.reshape(x.shape))).sum(axes) if weight is not None else None
    return grad_x, gw, g.sum(axes) if bias is not None else None


def cluster_norm(x, cluster, mean, log_scale, *, return_stats=False):
    """(x - mean[c]) / (exp(log_scale[c]) + 1e-3) per row, in float64."""
    x = np.asarray(x, np.float64)
    X = x.reshape(-1, x.shape[-1])
    c = np.asarray(cluster).reshape(-1)
    mu, ls = np.asarray(mean, np.float64), np.asarray(log_scale, np.float64)
    y = ((X - mu[c]) / (np.exp(ls[c]) + 1e-3)).reshape(x.shape)
    return (y,) if return_stats else y


def cluster_norm_backward(grad_out, x, cluster, mean, log_scale):
    x = np.asarray(x, np.float64)
    X = x.reshape(-1, x.shape[-1])
    g = np.asarray(grad_out, np.float64).reshape(X.shape)
    c = np.asarray(cluster).reshape(-1)
    mu, ls = np.asarray(mean, np.float64), np.asarray(log_scale, np.float64)
    gm, gs = np.zeros_like(mu), np.zeros_like(ls)
    gx = np.empty_like(X)
    for b in range(X.shape[0]):   # row by row: each row's cluster takes its share
        k = c[b]
        s = np.exp(ls[k])
        gx[b] = g[b] / (s + 1e-3)
        gm[k] -= gx[b]
        gs[k] -= g[b] * (X[b] - mu[k]) * s / (s + 1e-3) ** 2
    return gx.reshape(x.shape), gm, gs


def _mixture(prior_logits, means, var_params):
    rho = np.asarray(prior_logits, np.float64)
    pi = np.exp(rho - rho.max())
    return pi / pi.sum(), np.asarray(means, np.float64), np.logaddexp(0, np.asarray(var_params, np.float64))


def mixture_norm(x, prior_logits, means, var_params, eps=1e-5, *, return_stats=False):
    """Mixture Normalization in float64, component by component, with the
    diagonal Gaussian posterior of each row."""
    x = np.asarray(x, np.float64)
    X = x.reshape(-1, x.shape[-1])
    pi, E, V = _mixture(prior_logits, means, var_params)
    K = len(pi)
    logp = np.stack([np.log(pi[k]) - 0.5 * (((X - E[k]) ** 2 / V[k]) + np.log(2 * np.pi * V[k])).sum(1)
                     for k in range(K)], 1)
    tau = np.exp(logp - logp.max(1, keepdims=True))
    tau /= tau.sum(1, keepdims=True)
    y = sum(tau[:, k:k + 1] / np.sqrt(pi[k] + eps) * (X - E[k]) / np.sqrt(V[k] + eps) for k in range(K))
    y = y.reshape(x.shape)
    return (y, tau.reshape(x.shape[:-1] + (K,))) if return_stats else y


def mixture_norm_backward(grad_out, x, tau, prior_logits, means, var_params, eps=1e-5):
    """The chain rule component by component (through tau's softmax over the
    components' log densities, the priors' softmax and the softplus)."""
    x = np.asarray(x, np.float64)
    X = x.reshape(-1, x.shape[-1])
    g = np.asarray(grad_out, np.float64).reshape(X.shape)
    pi, E, V = _mixture(prior_logits, means, var_params)
    K = len(pi)
    t = np.asarray(tau, np.float64).reshape(-1, K)
    gx = np.zeros_like(X)
    gE, gV = np.zeros_like(E), np.zeros_like(V)
    dtau = np.empty_like(t)
    dpi = np.zeros(K)
    for k in range(K):
        a, r = 1 / np.sqrt(pi[k] + eps), 1 / np.sqrt(V[k] + eps)
        u = (X - E[k]) * r                       # this component's normalized rows
        dtau[:, k] = a * (g * u).sum(1)
        gx += g * t[:, k:k + 1] * a * r
        gE[k] -= (g * t[:, k:k + 1] * a * r).sum(0)
        gV[k] -= 0.5 * r ** 2 * (g * t[:, k:k + 1] * a * u).sum(0)
        dpi[k] -= 0.5 * a ** 2 * (t[:, k] * dtau[:, k]).sum()
    dl = t * (dtau - (t * dtau).sum(1, keepdims=True))
    for k in range(K):
        d = (X - E[k]) / V[k]
        gx -= dl[:, k:k + 1] * d
        gE[k] += (dl[:, k:k + 1] * d).sum(0)
        gV[k] += 0.5 * (dl[:, k:k + 1] * (d * d - 1 / V[k])).sum(0)
        dpi[k] += dl[:, k].sum() / pi[k]
    nu = np.asarray(var_params, np.float64)
    return (gx.reshape(x.shape), pi * (dpi - (pi * dpi).sum()), gE, gV / (1 + np.exp(-nu)))
