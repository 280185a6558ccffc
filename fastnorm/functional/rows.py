"""Row normalizations: LayerNorm, RMSNorm and the fused residual add + norm.

Each normalizes contiguous rows over the trailing dims named by
``normalized_shape``; the kernels are in ``_kernels.pxi`` (row section) and
``rows16.h`` (16-bit storage)."""
import numpy as np

from .. import _dispatch
from .._args import check_eps
from .._dtypes import cast, machine_eps
from .._validation import (
    single_value_stats,
    into_out,
    out_aliases,
    Output,
    as_float_array,
    as_rows,
    lead_dims,
    normalized_dims,
    same_shape_input,
    stats_array,
    stats_out,
    vector_param,
)

__all__ = ["layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward", "add_layer_norm", "add_rms_norm"]


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
    fast = _dispatch.kernels.layer_norm_fast(x, normalized_shape, weight, bias, eps, out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    if out_aliases(out, (weight, bias)):
        return into_out(out, layer_norm(x, normalized_shape, weight, bias, eps, n_threads=n_threads,
                                        return_stats=return_stats))
    x, cdt = as_float_array(x, "x")
    shape, D = normalized_dims(x, normalized_shape)
    lead, M = lead_dims(x, len(shape))
    w = vector_param(weight, "weight", shape, D, x.dtype, cdt)
    b = vector_param(bias, "bias", shape, D, x.dtype, cdt)
    eps = check_eps(eps)
    y = Output(x, M, D, x.dtype, x.dtype, out, (x, weight, bias))
    mean = stats_out(M, cdt, return_stats)
    rstd = stats_out(M, cdt, return_stats)
    _dispatch.kernels.layer_norm_forward(as_rows(x, M, D, x.dtype), y.rows, w, b, eps, mean, rstd, n_threads)
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
    grads = _dispatch.kernels.layer_norm_backward_fast(grad_out, x, mean, rstd, weight, bias, n_threads)
    if grads is NotImplemented:
        grads = _row_norm_backward(False, grad_out, x, mean, rstd, weight, bias, n_threads)
    return single_value_stats(grads, x, rstd)


def _rms_eps(eps, cdt, data_dtype):
    if eps is None:
        # torch: eps=None means the machine epsilon of the compute (opmath) dtype
        return machine_eps(data_dtype)
    return check_eps(eps)


def rms_norm(x, normalized_shape=None, weight=None, eps=None, *,
             out=None, n_threads=None, return_stats=False):
    """Root-mean-square normalization over the trailing dims of `normalized_shape`.

    y = x / sqrt(mean(x^2) + eps) * weight.  ``eps=None`` (default) is the
    machine epsilon of the compute dtype (float32's for float16 / bfloat16
    input), as torch.nn.functional.rms_norm.

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
    fast = _dispatch.kernels.rms_norm_fast(x, normalized_shape, weight, eps, out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    if out_aliases(out, (weight,)):
        return into_out(out, rms_norm(x, normalized_shape, weight, eps, n_threads=n_threads,
                                      return_stats=return_stats))
    x, cdt = as_float_array(x, "x")
    shape, D = normalized_dims(x, normalized_shape)
    lead, M = lead_dims(x, len(shape))
    w = vector_param(weight, "weight", shape, D, x.dtype, cdt)
    eps = _rms_eps(eps, cdt, x.dtype)
    y = Output(x, M, D, x.dtype, x.dtype, out, (x, weight))
    rstd = stats_out(M, cdt, return_stats)
    _dispatch.kernels.rms_norm_forward(as_rows(x, M, D, x.dtype), y.rows, w, eps, rstd, n_threads)
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
    fast = _dispatch.kernels.rms_norm_backward_fast(grad_out, x, rstd, weight, n_threads)
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
    lead, M = lead_dims(x, nd)
    w = vector_param(weight, "weight", shape, D, x.dtype, cdt)
    if bias is not None:
        vector_param(bias, "bias", shape, D, x.dtype, cdt)
    mean = None if rms else stats_array(mean, "mean", lead, M, cdt)
    rstd = stats_array(rstd, "rstd", lead, M, cdt)
    grad_x = Output(x, M, D, x.dtype, x.dtype)
    grad_w = np.empty(D, dtype=cdt) if weight is not None else None
    grad_b = np.empty(D, dtype=cdt) if bias is not None else None
    _dispatch.kernels.norm_backward(rms, as_rows(grad_out, M, D, x.dtype), as_rows(x, M, D, x.dtype), mean, rstd,
                           w, grad_x.rows, grad_w, grad_b, n_threads)

    def param_grad(grad, p):
        return None if grad is None else cast(grad, np.asarray(p).dtype).reshape(shape)
    return grad_x.finish(x.shape), param_grad(grad_w, weight), param_grad(grad_b, bias)


def _add_norm(rms, x, residual, normalized_shape, weight, bias, eps, out, residual_out,
              n_threads, return_stats):
    fast = _dispatch.kernels.add_norm_fast(rms, x, residual, normalized_shape, weight, bias, eps, out,
                                  residual_out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    residual = same_shape_input(residual, "residual", x)
    shape, D = normalized_dims(x, normalized_shape)
    lead, M = lead_dims(x, len(shape))
    w = vector_param(weight, "weight", shape, D, x.dtype, cdt)
    b = None if rms else vector_param(bias, "bias", shape, D, x.dtype, cdt)
    eps = _rms_eps(eps, cdt, x.dtype) if rms else check_eps(eps)
    if out is not None and out is residual_out:
        raise ValueError("out and residual_out must be different arrays")
    # each row of x and residual is read before its h and y are written, so
    # out / residual_out may be x or residual themselves
    y = Output(x, M, D, x.dtype, x.dtype, out, (x, residual, weight, bias, residual_out))
    h = Output(x, M, D, x.dtype, x.dtype, residual_out, (x, residual, out), name="residual_out")
    mean = stats_out(M, cdt, return_stats and not rms)
    rstd = stats_out(M, cdt, return_stats)
    _dispatch.kernels.add_norm_forward(rms, as_rows(x, M, D, x.dtype), as_rows(residual, M, D, x.dtype), h.rows,
                              y.rows, w, b, eps, mean, rstd, n_threads)
    result = (y.finish(x.shape), h.finish(x.shape))
    if not return_stats:
        return result
    if D == 0:
        rstd.fill(np.nan)
        if mean is not None:
            mean.fill(np.nan)
    if rms:
        return result + (rstd.reshape(lead),)
    return result + (mean.reshape(lead), rstd.reshape(lead))


def add_layer_norm(x, residual, normalized_shape=None, weight=None, bias=None, eps=1e-5, *,
                   out=None, residual_out=None, n_threads=None, return_stats=False):
    """Residual add and LayerNorm in one pass: h = x + residual, y = layer_norm(h).

    The pre-norm transformer step (ONNX Runtime's SkipLayerNormalization).
    Returns (y, h), or (y, h, mean, rstd) with return_stats; the backward is
    `layer_norm_backward` on h, whose grad_x flows unchanged to x and residual.
    `residual_out` (may be `residual` itself) receives h; `out` receives y.

    Examples
    --------
    >>> x = np.ones((2, 4)); r = np.arange(8.0).reshape(2, 4)
    >>> y, h = add_layer_norm(x, r, 4)
    >>> bool(np.array_equal(h, x + r))
    True
    """
    return _add_norm(False, x, residual, normalized_shape, weight, bias, eps, out, residual_out,
                     n_threads, return_stats)


def add_rms_norm(x, residual, normalized_shape=None, weight=None, eps=None, *,
                 out=None, residual_out=None, n_threads=None, return_stats=False):
    """Residual add and RMSNorm in one pass: h = x + residual, y = rms_norm(h)
    (ONNX Runtime's SkipSimplifiedLayerNormalization).

    Returns (y, h), or (y, h, rstd) with return_stats; the backward is
    `rms_norm_backward` on h.
    """
    return _add_norm(True, x, residual, normalized_shape, weight, None, eps, out, residual_out,
                     n_threads, return_stats)
