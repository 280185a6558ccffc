"""fastnorm's functional API: forward and backward of each normalization.

Names, argument order, defaults and formulas follow torch.nn.functional.
Every forward takes keyword-only ``out=`` (``out is x`` runs in place),
``n_threads=`` (None = the OpenMP default, which follows OMP_NUM_THREADS and
threadpoolctl) and ``return_stats=`` (also return what the backward needs).
Inputs are never modified unless ``out`` aliases them.
"""
import numpy as np

from . import _config
from ._validation import (
    Output,
    as_float_array,
    as_rows,
    check_eps,
    normalized_dims,
    same_shape_input,
    stats_array,
    vector_param,
)

__all__ = ["layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward"]

_kernels = _config.kernels


def _lead(x, nd):
    """x's leading shape (the dims not normalized) and its size."""
    lead = x.shape[: x.ndim - nd]
    M = 1
    for d in lead:
        M *= d
    return lead, M


def _stats_out(M, cdt, want):
    return np.empty(M, dtype=cdt) if want else None


def layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5, *,
               out=None, n_threads=None, return_stats=False):
    """Layer normalization over the trailing dims named by `normalized_shape`.

    y = (x - mean) / sqrt(var + eps) * weight + bias, with the mean and the
    biased variance taken over the last ``len(normalized_shape)`` dims.

    Parameters
    ----------
    x : array of float32, float64 (or float16, computed in float32), any shape.
    normalized_shape : int or tuple of ints, optional
        The trailing dims to normalize over; None (default) = the last dim.
    weight, bias : arrays of shape `normalized_shape` and x's dtype, optional.
    eps : float, added to the variance inside the square root.
    out : array like x, optional (``out is x`` normalizes in place).
    n_threads : int or None.
    return_stats : also return ``mean`` and ``rstd = 1/sqrt(var + eps)``,
        shaped like x's leading dims, for `layer_norm_backward`.

    Returns
    -------
    y, or (y, mean, rstd) with return_stats.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((4, 768), dtype=np.float32)
    >>> y = layer_norm(x, 768)
    >>> bool(abs(y.mean(-1)).max() < 1e-5)
    True
    """
    fast = _kernels.layer_norm_fast(x, normalized_shape, weight, bias, eps, out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    shape, D = normalized_dims(x, normalized_shape)
    lead, M = _lead(x, len(shape))
    w = vector_param(weight, "weight", shape, D, x.dtype, cdt)
    b = vector_param(bias, "bias", shape, D, x.dtype, cdt)
    eps = check_eps(eps)
    y = Output(x, M, D, x.dtype, cdt, out, (x, weight, bias))
    mean = _stats_out(M, cdt, return_stats)
    rstd = _stats_out(M, cdt, return_stats)
    _kernels.layer_norm_forward(as_rows(x, M, D, cdt), y.rows, w, b, eps, mean, rstd, n_threads)
    result = y.finish(x.shape)
    if not return_stats:
        return result
    if D == 0:
        mean.fill(np.nan)
        rstd.fill(np.nan)
    return result, mean.reshape(lead), rstd.reshape(lead)


def layer_norm_backward(grad_out, x, mean, rstd, weight=None, bias=None, *, n_threads=None):
    """Gradients of `layer_norm`.

    With xhat = (x - mean) * rstd and g' = grad_out * weight, over each row of
    n normalized elements:
    grad_x = rstd * (g' - mean(g') - xhat * mean(g' * xhat)),
    grad_weight = sum over rows of grad_out * xhat, grad_bias = sum of grad_out.

    Parameters
    ----------
    grad_out : array like x.
    x : the forward's input.
    mean, rstd : the statistics ``layer_norm(..., return_stats=True)`` returned.
    weight, bias : the forward's parameters (None if it had none).

    Returns
    -------
    (grad_x, grad_weight, grad_bias); a gradient is None where the parameter was None.
    """
    fast = _kernels.layer_norm_backward_fast(grad_out, x, mean, rstd, weight, bias, n_threads)
    if fast is not NotImplemented:
        return fast
    grad_x, grad_w, grad_b = _row_norm_backward(False, grad_out, x, mean, rstd, weight, bias, n_threads)
    return grad_x, grad_w, grad_b


def _rms_eps(eps, cdt, data_dtype):
    if eps is None:
        # torch: eps=None means the machine epsilon of the input's dtype
        return float(np.finfo(data_dtype).eps)
    return check_eps(eps)


def rms_norm(x, normalized_shape=None, weight=None, eps=None, *,
             out=None, n_threads=None, return_stats=False):
    """Root-mean-square normalization over the trailing dims of `normalized_shape`.

    y = x / sqrt(mean(x^2) + eps) * weight.  ``eps=None`` (default) is the
    machine epsilon of x's dtype, as torch.nn.functional.rms_norm.

    Parameters
    ----------
    x : array of float32, float64 (or float16, computed in float32).
    normalized_shape : int or tuple of ints, optional (None = the last dim).
    weight : array of shape `normalized_shape` and x's dtype, optional.
    eps : float or None.
    out, n_threads : see `layer_norm`.
    return_stats : also return ``rstd = 1/sqrt(mean(x^2) + eps)``, shaped like
        x's leading dims, for `rms_norm_backward`.

    Returns
    -------
    y, or (y, rstd) with return_stats.

    Examples
    --------
    >>> x = np.ones((2, 8), dtype=np.float32) * 3
    >>> rms_norm(x, 8)[0, :3]
    array([1., 1., 1.], dtype=float32)
    """
    fast = _kernels.rms_norm_fast(x, normalized_shape, weight, eps, out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    shape, D = normalized_dims(x, normalized_shape)
    lead, M = _lead(x, len(shape))
    w = vector_param(weight, "weight", shape, D, x.dtype, cdt)
    eps = _rms_eps(eps, cdt, x.dtype)
    y = Output(x, M, D, x.dtype, cdt, out, (x, weight))
    rstd = _stats_out(M, cdt, return_stats)
    _kernels.rms_norm_forward(as_rows(x, M, D, cdt), y.rows, w, eps, rstd, n_threads)
    result = y.finish(x.shape)
    if not return_stats:
        return result
    if D == 0:
        rstd.fill(np.nan)
    return result, rstd.reshape(lead)


def rms_norm_backward(grad_out, x, rstd, weight=None, *, n_threads=None):
    """Gradients of `rms_norm`.

    With g' = grad_out * weight over each row of n normalized elements:
    grad_x = rstd * g' - x * rstd^3 * mean(g' * x),
    grad_weight = sum over rows of grad_out * x * rstd.

    Returns
    -------
    (grad_x, grad_weight); grad_weight is None when weight is None.
    """
    fast = _kernels.rms_norm_backward_fast(grad_out, x, rstd, weight, n_threads)
    if fast is not NotImplemented:
        return fast
    grad_x, grad_w, _ = _row_norm_backward(True, grad_out, x, None, rstd, weight, None, n_threads)
    return grad_x, grad_w


def _row_norm_backward(rms, grad_out, x, mean, rstd, weight, bias, n_threads):
    """The general (validating, any-layout) path of the LayerNorm and RMSNorm backwards.

    The normalized dims are those of weight (or bias), else the dims of x that
    the statistics lack."""
    x, cdt = as_float_array(x, "x")
    grad_out = same_shape_input(grad_out, "grad_out", x)
    first_stat, first_name = (rstd, "rstd") if rms else (mean, "mean")
    if weight is not None:
        nd = np.ndim(weight)
    elif bias is not None:
        nd = np.ndim(bias)
    else:
        nd = x.ndim - np.ndim(first_stat)
    if nd < 1 or nd > x.ndim:
        raise ValueError(
            f"{first_name} must have x's leading dimensions (x.ndim - len(normalized_shape) dims); "
            f"got {first_name} of shape {np.shape(first_stat)} for x of shape {x.shape}"
        )
    shape, D = normalized_dims(x, x.shape[x.ndim - nd:])
    lead, M = _lead(x, nd)
    w = vector_param(weight, "weight", shape, D, x.dtype, cdt)
    if bias is not None:
        vector_param(bias, "bias", shape, D, x.dtype, cdt)
    mean = None if rms else stats_array(mean, "mean", lead, M, cdt)
    rstd = stats_array(rstd, "rstd", lead, M, cdt)
    grad_x = Output(x, M, D, x.dtype, cdt)
    grad_w = np.empty(D, dtype=cdt) if weight is not None else None
    grad_b = np.empty(D, dtype=cdt) if bias is not None else None
    _kernels.norm_backward(rms, as_rows(grad_out, M, D, cdt), as_rows(x, M, D, cdt), mean, rstd,
                           w, grad_x.rows, grad_w, grad_b, n_threads)

    def param_grad(grad):
        return None if grad is None else grad.reshape(shape).astype(x.dtype, copy=False)
    return grad_x.finish(x.shape), param_grad(grad_w), param_grad(grad_b)
