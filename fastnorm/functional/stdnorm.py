"""Rows standardized by their unbiased std, eps added to the std: AdaNorm
and Weight Standardization (``_stdnorm_kernels.pxi``, ``stdnorm.h``)."""
import numpy as np

from .. import _dispatch
from .._args import _as_float, check_eps
from .._validation import (
    Output,
    as_float_array,
    as_rows,
    into_out,
    lead_dims,
    normalized_dims,
    out_aliases,
    same_shape_input,
    stats_array,
    stats_out,
)

__all__ = ["ada_norm", "ada_norm_backward", "weight_standardization", "weight_standardization_backward"]


def _real(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    return _as_float(v, name)


def _forward(x, nd, scale, k, eps, out, n_threads, return_stats):
    """The rows of x over its last nd dims through the kernel."""
    lead, M = lead_dims(x, nd)
    D = 1
    for d in x.shape[x.ndim - nd:]:
        D *= d
    cdt = np.float64 if x.dtype == np.float64 else np.float32
    y = Output(x, M, D, x.dtype, x.dtype, out, (x,))
    mean = stats_out(M, cdt, return_stats)
    std = stats_out(M, cdt, return_stats)
    _dispatch.kernels.std_norm_forward(as_rows(x, M, D, x.dtype), y.rows, scale, k, eps, mean, std, n_threads)
    result = y.finish(x.shape)
    if not return_stats:
        return result
    if D == 0:
        mean.fill(np.nan)
        std.fill(np.nan)
    return result, mean.reshape(lead), std.reshape(lead)


def _backward(grad_out, x, mean, std, nd, scale, k, eps, n_threads):
    grad_out = same_shape_input(grad_out, "grad_out", x)
    lead, M = lead_dims(x, nd)
    D = 1
    for d in x.shape[x.ndim - nd:]:
        D *= d
    cdt = np.float64 if x.dtype == np.float64 else np.float32
    mean = stats_array(mean, "mean", lead, M, cdt)
    std = stats_array(std, "std", lead, M, cdt)
    grad_x = Output(x, M, D, x.dtype, x.dtype)
    _dispatch.kernels.std_norm_backward(as_rows(grad_out, M, D, x.dtype), as_rows(x, M, D, x.dtype), grad_x.rows,
                                        mean, std, scale, k, eps, n_threads)
    return grad_x.finish(x.shape)


def ada_norm(x, normalized_shape=None, scale=1.0, k=0.1, eps=1e-5, *, out=None, n_threads=None,
             return_stats=False):
    """AdaNorm (Xu et al. 2019, "Understanding and Improving Layer Normalization").

    Over the trailing dims of `normalized_shape` (None = the last dim), with
    the unbiased standard deviation s and eps added to s, as the reference
    implementation (lancopku/AdaNorm, ``layer_norm.py``, mode ``adanorm``):
    z = (x - mean) / (s + eps),  y = scale * z * (1 - k * z).
    The factor (1 - k z) is detached (gradients flow through z only).  The
    reference centres z a second time (z - mean(z)); that mean is zero up to
    rounding, and the kernel takes it as zero.  There is no weight or bias
    (the reference does not use them in this mode).  A row of one value has
    a NaN std (n - 1 = 0), as torch's ``std``.

    Returns y, or (y, mean, std) with return_stats (shaped like x's leading
    dims, for `ada_norm_backward`).

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((4, 64), dtype=np.float32)
    >>> y = ada_norm(x, 64)
    >>> bool(abs(y.mean(-1)).max() < 0.2)
    True
    """
    if out_aliases(out):
        return into_out(out, ada_norm(x, normalized_shape, scale, k, eps, n_threads=n_threads,
                                      return_stats=return_stats))
    x, cdt = as_float_array(x, "x")
    shape, D = normalized_dims(x, normalized_shape)
    return _forward(x, len(shape), _real(scale, "scale"), _real(k, "k"), check_eps(eps), out, n_threads,
                    return_stats)


def ada_norm_backward(grad_out, x, mean, std, scale=1.0, k=0.1, eps=1e-5, *, n_threads=None):
    """grad_x of `ada_norm` (the factor 1 - k z held constant, as the
    reference's detach).  With u = grad_out * scale * (1 - k z) over each
    row of n values: grad_x = (u - mean(u)) / (s + eps)
    - (x - mean) * sum(u * (x - mean)) / ((s + eps)^2 (n - 1) s).
    The normalized dims are those of x that mean lacks."""
    x, cdt = as_float_array(x, "x")
    nd = x.ndim - np.ndim(mean)
    if nd < 1:
        raise ValueError(f"mean must have x's leading dimensions, got shape {np.shape(mean)} for x of shape {x.shape}")
    return _backward(grad_out, x, mean, std, nd, _real(scale, "scale"), _real(k, "k"), check_eps(eps), n_threads)


def weight_standardization(weight, eps=1e-5, *, out=None, n_threads=None, return_stats=False):
    """Weight Standardization (Qiao et al. 2019) of a weight of shape
    (out_channels, ...): per output channel, over every other dim,
    w_hat = (w - mean) / (s + eps), s the unbiased std, eps added to s, as
    the reference implementation's Conv2d (joe-siyuan-qiao/WeightStandardization,
    which uses torch's default ``std``; the paper writes the biased
    variance under the square root).

    Returns w_hat, or (w_hat, mean, std) with return_stats (shape (out_channels,)).

    Examples
    --------
    >>> w = np.random.default_rng(0).standard_normal((8, 3, 3, 3))
    >>> w_hat = weight_standardization(w)
    >>> bool(np.allclose(w_hat.reshape(8, -1).std(1, ddof=1), 1, atol=1e-4))
    True
    """
    if out_aliases(out):
        return into_out(out, weight_standardization(weight, eps, n_threads=n_threads, return_stats=return_stats))
    w, cdt = as_float_array(weight, "weight")
    if w.ndim < 2:
        raise ValueError(f"weight must have at least 2 dimensions (out_channels, ...), got shape {w.shape}")
    return _forward(w, w.ndim - 1, 1.0, 0.0, check_eps(eps), out, n_threads, return_stats)


def weight_standardization_backward(grad_out, weight, mean, std, eps=1e-5, *, n_threads=None):
    """grad of `weight_standardization` with respect to the weight:
    per output channel of n values, grad = (g - mean(g)) / (s + eps)
    - (w - mean) * sum(g * (w - mean)) / ((s + eps)^2 (n - 1) s)."""
    w, cdt = as_float_array(weight, "weight")
    if w.ndim < 2:
        raise ValueError(f"weight must have at least 2 dimensions (out_channels, ...), got shape {w.shape}")
    return _backward(grad_out, w, mean, std, w.ndim - 1, 1.0, 0.0, check_eps(eps), n_threads)
