"""fastnorm's functional API: forward and backward of each normalization.

Names, argument order, defaults and formulas follow torch.nn.functional.
Every forward takes keyword-only ``out=`` (``out is x`` runs in place),
``n_threads=`` (None = the OpenMP default, which follows OMP_NUM_THREADS and
threadpoolctl) and ``return_stats=`` (also return what the backward needs).
Inputs are never modified unless ``out`` aliases them.
"""
import math

import numpy as np

from . import _config
from ._buffers import empty as _empty
from ._dtypes import cast, machine_eps
from ._validation import (
    ChannelLayout,
    Output,
    as_float_array,
    as_rows,
    check_eps,
    check_out,
    normalized_dims,
    same_shape_input,
    stats_array,
    vector_param,
)

__all__ = [
    "layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward",
    "batch_norm", "batch_norm_backward", "group_norm", "group_norm_backward",
    "instance_norm", "instance_norm_backward", "normalize", "normalize_backward",
    "add_layer_norm", "add_rms_norm", "standardize", "standardize_backward", "min_max_scale",
    "min_max_scale_backward",
    "weight_norm", "weight_norm_backward", "filter_response_norm", "filter_response_norm_backward",
    "local_response_norm", "local_response_norm_backward",
]

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
    y = Output(x, M, D, x.dtype, x.dtype, out, (x, weight, bias))
    mean = _stats_out(M, cdt, return_stats)
    rstd = _stats_out(M, cdt, return_stats)
    _kernels.layer_norm_forward(as_rows(x, M, D, x.dtype), y.rows, w, b, eps, mean, rstd, n_threads)
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
    fast = _kernels.rms_norm_fast(x, normalized_shape, weight, eps, out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    shape, D = normalized_dims(x, normalized_shape)
    lead, M = _lead(x, len(shape))
    w = vector_param(weight, "weight", shape, D, x.dtype, cdt)
    eps = _rms_eps(eps, cdt, x.dtype)
    y = Output(x, M, D, x.dtype, x.dtype, out, (x, weight))
    rstd = _stats_out(M, cdt, return_stats)
    _kernels.rms_norm_forward(as_rows(x, M, D, x.dtype), y.rows, w, eps, rstd, n_threads)
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
    grad_x = Output(x, M, D, x.dtype, x.dtype)
    grad_w = np.empty(D, dtype=cdt) if weight is not None else None
    grad_b = np.empty(D, dtype=cdt) if bias is not None else None
    _kernels.norm_backward(rms, as_rows(grad_out, M, D, x.dtype), as_rows(x, M, D, x.dtype), mean, rstd,
                           w, grad_x.rows, grad_w, grad_b, n_threads)

    def param_grad(grad, p):
        return None if grad is None else cast(grad, np.asarray(p).dtype).reshape(shape)
    return grad_x.finish(x.shape), param_grad(grad_w, weight), param_grad(grad_b, bias)


# ---------------------------------------------------------------- channel normalizations

def _check_momentum(momentum):
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)):
        raise TypeError(f"momentum must be a number, got {momentum!r}")
    return float(momentum)


def _running_buffer(a, name, C):
    """A running statistic updated in place: None, or a float (C,) ndarray."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray (it is updated in place), got {type(a).__name__}")
    if a.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},), got {a.shape}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
    return a


def _blend_running(buf, value, momentum):
    """buf = (1 - momentum) * buf + momentum * value(), in place; nothing (and
    value is not computed) when buf is None."""
    if buf is not None:
        buf *= 1.0 - momentum
        buf += (momentum * value()).astype(buf.dtype)


def _channel_run(x, layout, cdt, cpg, per_sample, weight, bias, eps, batch_stats,
                 st_mean, st_var, out, n_threads):
    """Run the channel forward kernel; returns y in x's axis order (into `out` if given)."""
    # the kernels take the data in its storage dtype, the parameters in the compute dtype
    w = layout.channel_vector(weight, "weight", x.dtype, cdt)
    b = layout.channel_vector(bias, "bias", x.dtype, cdt)
    data = layout.data
    y_k = None
    if out is not None:
        check_out(out, x, x.dtype)
        y_k = layout.to_kernel(out)
        if y_k is not None and y_k is not data and np.may_share_memory(y_k, data) and not (
                y_k.__array_interface__["data"][0] == data.__array_interface__["data"][0]):
            y_k = None  # partial overlap with x: go through a temporary
        if y_k is not None:
            _kernels.channel_forward(data, y_k, layout.cl, layout.N, layout.C, layout.S, cpg,
                                     per_sample, w, b, eps, batch_stats, st_mean, st_var, n_threads)
            return out
    y_k = layout.empty(x.dtype)
    _kernels.channel_forward(data, y_k, layout.cl, layout.N, layout.C, layout.S, cpg, per_sample,
                             w, b, eps, batch_stats, st_mean, st_var, n_threads)
    y = layout.restore(y_k)
    if out is not None:
        np.copyto(out, y)
        return out
    return y


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, channel_axis=1, out=None, n_threads=None,
               return_stats=False):
    """Batch normalization, as torch.nn.functional.batch_norm.

    y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c per channel c.
    Training: mean and biased var over every axis but the channel axis, and
    running_mean / running_var (if given) updated in place:
    running = (1 - momentum) * running + momentum * batch statistic, with the
    unbiased variance.  Eval: the running statistics, folded into one
    scale-and-shift pass.

    Parameters
    ----------
    x : (N, C, *spatial) float array, or (N, *spatial, C) with channel_axis=-1.
    running_mean, running_var : float (C,) arrays or None (training only).
    weight, bias : (C,) arrays of x's dtype, optional.
    channel_axis : 1 (channels-first, default) or -1 (channels-last).
    return_stats : also return (mean, invstd) of shape (C,): the batch's in
        training, the running ones in eval; `batch_norm_backward` takes them.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
    >>> rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    >>> y = batch_norm(x, rm, rv, training=True)
    >>> bool(abs(y.mean(axis=(0, 2, 3))).max() < 1e-5)
    True
    """
    fast = _kernels.channel_norm_fast(0, x, running_mean, running_var, weight, bias, training,
                                      momentum, eps, None, channel_axis, out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    C = layout.C
    eps = check_eps(eps)
    momentum = _check_momentum(momentum)
    running_mean = _running_buffer(running_mean, "running_mean", C)
    running_var = _running_buffer(running_var, "running_var", C)
    st_mean = np.empty(C, np.float64)
    st_var = np.empty(C, np.float64)
    if training:
        count = layout.N * layout.S
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when training=False")
        st_mean[:] = running_mean
        st_var[:] = running_var
    y = _channel_run(x, layout, cdt, 1, False, weight, bias, eps, training, st_mean, st_var,
                     out, n_threads)
    if training:
        _blend_running(running_mean, lambda: st_mean, momentum)
        _blend_running(running_var, lambda: st_var * (count / (count - 1)), momentum)
    if not return_stats:
        return y
    invstd = 1.0 / np.sqrt(st_var + eps)
    return y, st_mean.astype(cdt), invstd.astype(cdt)


def _to_kernel_layout(a, layout):
    """`a` (shaped like x) in the kernel layout of `layout`, C-contiguous."""
    if layout.S == 1 or layout.cl:
        v = np.moveaxis(a, layout.axis, -1) if layout.axis != a.ndim - 1 else a
    else:
        v = np.moveaxis(a, layout.axis, 1) if layout.axis != 1 else a
    return np.ascontiguousarray(v)


def _channel_stat_input(s, name, shape, cdt):
    if s is None:
        raise TypeError(f"{name} must be the array the forward returned, got None")
    s = np.asarray(s)
    if s.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {s.dtype}")
    if s.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {s.shape}")
    return np.ascontiguousarray(s, dtype=np.float64).reshape(-1)


def batch_norm_backward(grad_out, x, mean, invstd, weight=None, bias=None, training=True, *,
                        channel_axis=1, n_threads=None):
    """Gradients of `batch_norm`, given the (mean, invstd) it returned.

    Training, with xhat = (x - mean) * invstd and m values per channel:
    grad_x = invstd * w * (g - mean_c(g) - xhat * mean_c(g * xhat)).
    Eval: grad_x = g * w * invstd.  grad_weight = sum_c(g * xhat), grad_bias = sum_c(g).

    Returns (grad_x, grad_weight, grad_bias), None for a parameter that was None.
    """
    fast = _kernels.channel_backward_fast(0, grad_out, x, mean, invstd, weight, bias,
                                          bool(training), None, channel_axis, n_threads)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    mean = _channel_stat_input(mean, "mean", (layout.C,), cdt)
    invstd = _channel_stat_input(invstd, "invstd", (layout.C,), cdt)
    return _channel_backward_common(grad_out, x, layout, cdt, 1, False, mean, invstd,
                                    weight, bias, bool(training), n_threads)


def _channel_backward_common(grad_out, x, layout, cdt, cpg, per_sample, mean, rstd, weight, bias,
                             batch_stats, n_threads):
    grad_out = same_shape_input(grad_out, "grad_out", x)
    g = _to_kernel_layout(grad_out, layout)
    w = layout.channel_vector(weight, "weight", x.dtype, cdt)
    if bias is not None:
        layout.channel_vector(bias, "bias", x.dtype, cdt)
    data = layout.data
    dx_k = layout.empty(x.dtype)
    grad_w = np.empty(layout.C, np.float64) if weight is not None else None
    grad_b = np.empty(layout.C, np.float64) if bias is not None else None
    _kernels.channel_backward(g, data, dx_k, layout.cl, layout.N, layout.C, layout.S, cpg,
                              per_sample, w, mean, rstd, batch_stats, grad_w, grad_b, n_threads)
    dx = layout.restore(dx_k)
    return (dx,
            None if grad_w is None else grad_w.astype(np.asarray(weight).dtype),
            None if grad_b is None else grad_b.astype(np.asarray(bias).dtype))


def _groups(num_groups, C):
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if C % num_groups:
        raise ValueError(f"num_channels ({C}) must be divisible by num_groups ({num_groups})")
    return C // int(num_groups)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, out=None,
               n_threads=None, return_stats=False):
    """Group normalization, as torch.nn.functional.group_norm.

    The C channels are split into num_groups groups of C/num_groups adjacent
    channels; each (sample, group) is normalized with its own mean and biased
    variance, then y = xhat * weight_c + bias_c.

    Returns y, or (y, mean, rstd) with mean/rstd of shape (N, num_groups).
    """
    fast = _kernels.channel_norm_fast(1, x, None, None, weight, bias, True, 0.0, eps, num_groups,
                                      channel_axis, out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    cpg = _groups(num_groups, layout.C)
    eps = check_eps(eps)
    n_stats = layout.N * int(num_groups)
    st_mean = np.empty(n_stats, np.float64)
    st_var = np.empty(n_stats, np.float64)
    y = _channel_run(x, layout, cdt, cpg, True, weight, bias, eps, True, st_mean, st_var,
                     out, n_threads)
    if not return_stats:
        return y
    shape = (layout.N, int(num_groups))
    return y, st_mean.astype(cdt).reshape(shape), (1.0 / np.sqrt(st_var + eps)).astype(cdt).reshape(shape)


def group_norm_backward(grad_out, x, num_groups, mean, rstd, weight=None, bias=None, *,
                        channel_axis=1, n_threads=None):
    """Gradients of `group_norm`: (grad_x, grad_weight, grad_bias)."""
    fast = _kernels.channel_backward_fast(1, grad_out, x, mean, rstd, weight, bias, True, num_groups,
                                          channel_axis, n_threads)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    cpg = _groups(num_groups, layout.C)
    shape = (layout.N, int(num_groups))
    mean = _channel_stat_input(mean, "mean", shape, cdt)
    rstd = _channel_stat_input(rstd, "rstd", shape, cdt)
    return _channel_backward_common(grad_out, x, layout, cdt, cpg, True, mean, rstd, weight, bias,
                                    True, n_threads)


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5, *, channel_axis=1, out=None,
                  n_threads=None, return_stats=False):
    """Instance normalization, as torch.nn.functional.instance_norm.

    Each (sample, channel) is normalized over its spatial positions.  With
    use_input_stats and running statistics given, these are updated in place
    with the batch-mean of the per-instance mean and unbiased variance (as
    torch).  use_input_stats=False normalizes with the running statistics.

    Returns y, or (y, mean, rstd) with mean/rstd of shape (N, C).
    """
    fast = _kernels.channel_norm_fast(2, x, running_mean, running_var, weight, bias,
                                      True if use_input_stats is True else None, momentum, eps, None,
                                      channel_axis, out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    N, C, S = layout.N, layout.C, layout.S
    if x.ndim < 3:
        raise ValueError(f"x must have at least 3 dimensions (N, C, *spatial), got shape {x.shape}")
    eps = check_eps(eps)
    momentum = _check_momentum(momentum)
    running_mean = _running_buffer(running_mean, "running_mean", C)
    running_var = _running_buffer(running_var, "running_var", C)
    if use_input_stats:
        if S <= 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {x.shape}")
        st_mean = np.empty(N * C, np.float64)
        st_var = np.empty(N * C, np.float64)
        y = _channel_run(x, layout, cdt, 1, True, weight, bias, eps, True, st_mean, st_var,
                         out, n_threads)
        _blend_running(running_mean, lambda: st_mean.reshape(N, C).mean(axis=0), momentum)
        _blend_running(running_var, lambda: (st_var.reshape(N, C) * (S / (S - 1))).mean(axis=0), momentum)
        mean_nc, var_nc = st_mean, st_var
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when use_input_stats=False")
        st_mean = np.asarray(running_mean, np.float64).copy()
        st_var = np.asarray(running_var, np.float64).copy()
        y = _channel_run(x, layout, cdt, 1, False, weight, bias, eps, False, st_mean, st_var,
                         out, n_threads)
        mean_nc, var_nc = np.tile(st_mean, N), np.tile(st_var, N)
    if not return_stats:
        return y
    return (y, mean_nc.astype(cdt).reshape(N, C),
            (1.0 / np.sqrt(var_nc + eps)).astype(cdt).reshape(N, C))


def instance_norm_backward(grad_out, x, mean, rstd, weight=None, bias=None, use_input_stats=True, *,
                           channel_axis=1, n_threads=None):
    """Gradients of `instance_norm`: (grad_x, grad_weight, grad_bias).

    use_input_stats=False: the statistics were running statistics (constants)."""
    fast = _kernels.channel_backward_fast(2, grad_out, x, mean, rstd, weight, bias,
                                          bool(use_input_stats), None, channel_axis, n_threads)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    shape = (layout.N, layout.C)
    mean = _channel_stat_input(mean, "mean", shape, cdt)
    rstd = _channel_stat_input(rstd, "rstd", shape, cdt)
    return _channel_backward_common(grad_out, x, layout, cdt, 1, True, mean, rstd, weight, bias,
                                    bool(use_input_stats), n_threads)


# ---------------------------------------------------------------- Lp normalization

def _check_p(p):
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"p must be a real number, got {p!r}")
    p = float(p)
    if not p > 0:  # also NaN
        raise ValueError(f"p must be > 0 (or inf), got {p!r}")
    return p


def _check_dim(dim, ndim, name="dim"):
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {dim!r}")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name}={dim} is out of range for an array of {ndim} dimensions")
    return int(dim) % ndim


def normalize(x, p=2.0, dim=1, eps=1e-12, *, out=None, n_threads=None, return_stats=False):
    """Lp normalization along `dim`, as torch.nn.functional.normalize.

    y = x / max(||x||_p, eps), the norm taken over `dim` for every other index.
    Cosine normalization of a linear layer composes from it:
    ``normalize(x, dim=-1) @ normalize(w, dim=-1).T`` (w of shape (out, in)).

    Parameters
    ----------
    x : float array.  p : p > 0, or inf for max |x| (default 2).  dim : int (default 1, as torch).
    eps : the floor of the norm.  out, n_threads : as the other ops.
    return_stats : also return ``norm`` = ||x||_p (x's shape without `dim`),
        for `normalize_backward`.

    The last dim runs in place on contiguous rows (memory speed for p = 2);
    another dim is moved last through a copy.

    Examples
    --------
    >>> normalize(np.array([[3.0, 4.0]]), dim=-1)
    array([[0.6, 0.8]])
    """
    fast = _kernels.normalize_fast(x, p, dim, eps, out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension, got a 0-d array")
    p = _check_p(p)
    dim = _check_dim(dim, x.ndim)
    eps = check_eps(eps)
    xm = x if dim == x.ndim - 1 else np.moveaxis(x, dim, -1)
    D = xm.shape[-1]
    M = xm.size // D if D else int(math.prod(xm.shape[:-1]))
    rows = as_rows(xm, M, D, x.dtype)
    norms = np.empty(M, dtype=cdt) if return_stats else None
    if dim == x.ndim - 1:  # rows of x: the output allocator handles out= and in place
        y = Output(x, M, D, x.dtype, x.dtype, out, (x,))
        if D > 0:
            _kernels.normalize_forward(rows, y.rows, p, eps, norms, n_threads)
        result = y.finish(x.shape)
    else:
        if out is not None:
            check_out(out, x, x.dtype)
        y_rows = np.empty((M, D), dtype=x.dtype)
        if D > 0:
            _kernels.normalize_forward(rows, y_rows, p, eps, norms, n_threads)
        result = np.moveaxis(y_rows.reshape(xm.shape), -1, dim)
        if out is not None:
            np.copyto(out, result)
            result = out
    if norms is not None and D == 0:
        norms.fill(0)
    if not return_stats:
        return result
    return result, norms.reshape(xm.shape[:-1])


def normalize_backward(grad_out, x, norm, p=2.0, dim=1, eps=1e-12, *, n_threads=None):
    """Gradient of `normalize` w.r.t. x, given the ``norm`` it returned.

    With N = ||x||_p along `dim`: where N >= eps,
    grad_x = g / N - sum(g * x) / N^(p+1) * sign(x) |x|^(p-1); elsewhere g / eps.
    p = inf: the norm's gradient goes to the elements with |x| = N, split
    evenly between ties (as torch).
    """
    x, cdt = as_float_array(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension, got a 0-d array")
    grad_out = same_shape_input(grad_out, "grad_out", x)
    p = _check_p(p)
    dim = _check_dim(dim, x.ndim)
    eps = check_eps(eps)
    xm = x if dim == x.ndim - 1 else np.moveaxis(x, dim, -1)
    gm = grad_out if dim == x.ndim - 1 else np.moveaxis(grad_out, dim, -1)
    D = xm.shape[-1]
    M = int(math.prod(xm.shape[:-1]))
    norm = stats_array(norm, "norm", xm.shape[:-1], M, cdt)
    dx = np.empty((M, D), dtype=x.dtype)
    if D > 0:
        _kernels.normalize_backward(as_rows(gm, M, D, x.dtype), as_rows(xm, M, D, x.dtype), norm, dx,
                                    p, eps, n_threads)
    result = dx.reshape(xm.shape)
    if dim != x.ndim - 1:
        result = np.moveaxis(result, -1, dim)
    return result


# ---------------------------------------------------------------- fused residual add + norm

def _add_norm(rms, x, residual, normalized_shape, weight, bias, eps, out, residual_out,
              n_threads, return_stats):
    fast = _kernels.add_norm_fast(rms, x, residual, normalized_shape, weight, bias, eps, out,
                                  residual_out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    residual = same_shape_input(residual, "residual", x)
    shape, D = normalized_dims(x, normalized_shape)
    lead, M = _lead(x, len(shape))
    w = vector_param(weight, "weight", shape, D, x.dtype, cdt)
    b = None if rms else vector_param(bias, "bias", shape, D, x.dtype, cdt)
    eps = _rms_eps(eps, cdt, x.dtype) if rms else check_eps(eps)
    if out is not None and out is residual_out:
        raise ValueError("out and residual_out must be different arrays")
    # each row of x and residual is read before its h and y are written, so
    # out / residual_out may be x or residual themselves
    y = Output(x, M, D, x.dtype, x.dtype, out, (x, residual, weight, bias, residual_out))
    h = Output(x, M, D, x.dtype, x.dtype, residual_out, (x, residual, out), name="residual_out")
    mean = _stats_out(M, cdt, return_stats and not rms)
    rstd = _stats_out(M, cdt, return_stats)
    _kernels.add_norm_forward(rms, as_rows(x, M, D, x.dtype), as_rows(residual, M, D, x.dtype), h.rows,
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


# ---------------------------------------------------------------- data standardization

def _feature_rows(x, axis, name="x"):
    """x as a C-contiguous (samples, features) matrix: samples along `axis`,
    every other dim a feature; returns (matrix, restore, stats shape)."""
    x, cdt = as_float_array(x, name)
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-d array")
    axis = _check_dim(axis, x.ndim, "axis")
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


def _feature_stat(v, name, shape):
    v = np.asarray(v)
    if v.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array, got dtype {v.dtype}")
    if v.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (x without the sample axis), got {v.shape}")
    return np.ascontiguousarray(v, dtype=np.float64).reshape(-1)


def _feature_output(x, data, axis, cdt, out):
    """Where the (samples, features) kernel writes: `out` itself when it has
    the kernel's layout (and is not a partial overlap of x), else a new array."""
    if out is None:
        return _empty(data.shape, x.dtype), False
    check_out(out, x, x.dtype)
    axis = _check_dim(axis, x.ndim, "axis")
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


def _nan_ignoring_moments(data, mean_v, var_v, count):
    """Redo, leaving NaN out, the moments of the features whose fast moments
    came out non-finite (a NaN or inf in the feature; rare, so in NumPy)."""
    bad = np.flatnonzero(~(np.isfinite(mean_v) & np.isfinite(var_v)))
    if bad.size == 0:
        return
    sub = data[:, bad].astype(np.float64)
    nan = np.isnan(sub)
    with_nan = nan.any(axis=0)
    if not with_nan.any():
        return
    cols, sub, nan = bad[with_nan], sub[:, with_nan], nan[:, with_nan]
    n = (~nan).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(nan, 0.0, sub).sum(axis=0) / n
        dev = np.where(nan, 0.0, sub - m)
        mean_v[cols] = m
        var_v[cols] = (dev * dev).sum(axis=0) / n
    count[cols] = n


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
    x, cdt, data, restore, sshape, N, F = _feature_rows(x, axis)
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative int, got {ddof!r}")
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together (or neither)")
    if mean is None:
        if N - ddof <= 0:
            raise ValueError(f"need more than ddof={ddof} samples along axis, got {N}")
        mean_v = np.empty(F, np.float64)
        var_v = np.empty(F, np.float64)
        _kernels.channel_moments(data, True, N, F, 1, mean_v, var_v, n_threads)
        count = np.full(F, float(N))
        _nan_ignoring_moments(data, mean_v, var_v, count)
        with np.errstate(invalid="ignore", divide="ignore"):
            std_v = np.sqrt(var_v * (count / (count - ddof)))
        std_v[count - ddof <= 0] = np.nan
    else:
        mean_v = _feature_stat(mean, "mean", sshape)
        std_v = _feature_stat(std, "std", sshape)
    centre = mean_v if with_mean else np.zeros(F)
    scale = 1.0 / np.where(std_v == 0, 1.0, std_v) if with_std else np.ones(F)
    y_k, direct = _feature_output(x, data, axis, cdt, out)
    _kernels.channel_affine(data, y_k, True, N, F, 1, np.ascontiguousarray(centre),
                            np.ascontiguousarray(scale), np.zeros(F), n_threads)
    z = _finish_features(x, y_k, restore, out, direct)
    if not return_stats:
        return z
    return z, mean_v.reshape(sshape), std_v.reshape(sshape)


def min_max_scale(x, axis=0, feature_range=(0.0, 1.0), *, data_min=None, data_max=None,
                  out=None, n_threads=None, return_stats=False):
    """Scale every feature to `feature_range`: y = (x - min) / (max - min) * (hi - lo) + lo.

    As scikit-learn's MinMaxScaler: NaN is ignored when finding min and max
    (and stays NaN); a constant feature (max == min) is divided by 1, so it
    comes out as `lo`.  Given data_min and data_max they are applied instead of
    computed (fit / transform).

    Returns y, or (y, data_min, data_max) with return_stats.
    """
    x, cdt, data, restore, sshape, N, F = _feature_rows(x, axis)
    try:
        lo, hi = (float(v) for v in feature_range)
    except (TypeError, ValueError):
        raise TypeError(f"feature_range must be a pair of numbers, got {feature_range!r}") from None
    if not lo < hi:
        raise ValueError(f"feature_range must be (min, max) with min < max, got {feature_range!r}")
    if (data_min is None) != (data_max is None):
        raise ValueError("data_min and data_max must be given together (or neither)")
    if data_min is None:
        if N == 0:
            raise ValueError("need at least one sample along axis to find min and max")
        mn = np.empty(F, np.float64)
        mx = np.empty(F, np.float64)
        _kernels.column_minmax(data, N, F, mn, mx, n_threads)
        all_nan = mn > mx  # only NaN in the feature
        mn[all_nan] = np.nan
        mx[all_nan] = np.nan
    else:
        mn = _feature_stat(data_min, "data_min", sshape)
        mx = _feature_stat(data_max, "data_max", sshape)
    span = mx - mn
    scale = (hi - lo) / np.where(span == 0, 1.0, span)
    y_k, direct = _feature_output(x, data, axis, cdt, out)
    _kernels.channel_affine(data, y_k, True, N, F, 1, np.ascontiguousarray(mn),
                            np.ascontiguousarray(scale), np.full(F, lo), n_threads)
    y = _finish_features(x, y_k, restore, out, direct)
    if not return_stats:
        return y
    return y, mn.reshape(sshape), mx.reshape(sshape)


# ---------------------------------------------------------------- weight normalization

def _weight_rows(v, dim, name="v"):
    """v as (rows, n): rows along `dim` (moved first), or one row (dim=None)."""
    if dim is None:
        vm = v.reshape(1, -1) if v.size else v.reshape(1, 0)
        return vm, 1, v.size, (lambda a: a.reshape(v.shape)), None
    d = _check_dim(dim, v.ndim)
    moved = v if d == 0 else np.moveaxis(v, d, 0)
    M = moved.shape[0]
    n = int(math.prod(moved.shape[1:]))
    if d == 0:
        return moved, M, n, (lambda a: a.reshape(moved.shape)), d
    return moved, M, n, (lambda a: np.moveaxis(a.reshape(moved.shape), 0, d)), d


def _g_shape(v, d):
    """torch's shape for g and the norm: v's size along dim, 1 elsewhere."""
    if d is None:
        return ()
    return tuple(v.shape[i] if i == d else 1 for i in range(v.ndim))


def _g_vector(g, v, d, M, cdt):
    if g is None:
        raise TypeError("g must be an array, got None")
    g = np.asarray(g)
    if g.dtype != v.dtype:
        raise TypeError(f"g must have the dtype of v ({v.dtype}), got {g.dtype}")
    if g.size != M or (g.ndim > 1 and g.shape != _g_shape(v, d)):
        raise ValueError(f"g must have shape {_g_shape(v, d)} (or ({M},)), got {g.shape}")
    return np.ascontiguousarray(g, dtype=cdt).reshape(M)


def weight_norm(v, g, dim=0, *, centered=False, out=None, n_threads=None, return_stats=False):
    """Weight normalization, as torch._weight_norm: w = g * v / ||v||.

    The norm is taken over every dim but `dim` (dim=None: one norm over the
    whole tensor); g has v's size along `dim` (torch's shape (out, 1, ...) or
    flat).  centered=True is centered weight normalization: v minus its mean
    over the same dims is normalized instead.

    Returns w, or (w, norm) with return_stats, norm shaped like torch's
    (v's size along dim, 1 elsewhere), for `weight_norm_backward`.

    Examples
    --------
    >>> weight_norm(np.array([[3.0, 4.0]]), np.array([[10.0]]))
    array([[6., 8.]])
    """
    v, cdt = as_float_array(v, "v")
    if v.ndim == 0:
        raise ValueError("v must have at least 1 dimension, got a 0-d array")
    vm, M, n, restore, d = _weight_rows(v, dim)
    gv = _g_vector(g, v, d, M, cdt)
    rows = as_rows(vm, M, n, cdt)
    w_rows = _empty((M, n), cdt)
    norms = np.empty(M, np.float64)
    means = np.empty(M, np.float64)
    _kernels.weight_norm_forward(rows, w_rows, gv, bool(centered), norms, means, n_threads)
    w = restore(w_rows)
    w = cast(w, v.dtype)
    if out is not None:
        check_out(out, v, v.dtype, "out")
        np.copyto(out, w)
        w = out
    if not return_stats:
        return w
    return w, norms.astype(cdt).reshape(_g_shape(v, d))


def weight_norm_backward(grad_w, v, g, norm, dim=0, *, centered=False, n_threads=None):
    """Gradients of `weight_norm`: (grad_v, grad_g).

    With u = v (minus its mean when centered), N = ||u||, d = sum(grad_w * u):
    grad_g = d / N; grad_v = g / N * (grad_w - u * d / N^2), minus its mean
    over the normalized dims when centered.
    """
    v, cdt = as_float_array(v, "v")
    grad_w = same_shape_input(grad_w, "grad_w", v, "v")
    vm, M, n, restore, d = _weight_rows(v, dim)
    gm = _weight_rows(grad_w, dim)[0]
    gv = _g_vector(g, v, d, M, cdt)
    norm = np.asarray(norm)
    if norm.size != M or (norm.ndim > 1 and norm.shape != _g_shape(v, d)):
        raise ValueError(f"norm must have shape {_g_shape(v, d)}, got {norm.shape}")
    if norm.dtype.kind != "f":
        raise TypeError(f"norm must be a floating-point array, got dtype {norm.dtype}")
    norm = np.ascontiguousarray(norm, dtype=cdt).reshape(M)
    grad_v = _empty((M, n), cdt)
    grad_g = np.empty(M, cdt)
    _kernels.weight_norm_backward(as_rows(gm, M, n, cdt), as_rows(vm, M, n, cdt), grad_v, gv,
                                  bool(centered), norm, grad_g, n_threads)
    gshape = np.shape(g)
    return (cast(restore(grad_v), v.dtype),
            grad_g.reshape(gshape).astype(v.dtype, copy=False))


# ---------------------------------------------------------------- Filter Response Normalization

def _frn_param(p, name, C, dtype, cdt, required=True):
    if p is None:
        if required:
            raise TypeError(f"{name} must be an array of {C} values, got None")
        return None
    p = np.asarray(p)
    if p.size != C or (p.ndim > 1 and sorted(d for d in p.shape if d != 1) != ([C] if C != 1 else [])):
        raise ValueError(f"{name} must have {C} values (shape ({C},) or (1, {C}, 1, ...)), got shape {p.shape}")
    if p.dtype != dtype:
        raise TypeError(f"{name} must have the dtype of x ({dtype}), got {p.dtype}")
    return np.ascontiguousarray(p, dtype=cdt).reshape(C)


def _restored_output(x, y, cdt, out):
    """y (already in x's axis order) in x's dtype, copied into `out` if given."""
    y = cast(y, x.dtype)
    if out is not None:
        check_out(out, x, x.dtype)
        np.copyto(out, y)
        return out
    return y


def _channel_output(x, layout, data, cdt, out):
    """Where a kernel reading `data` (x in the kernel's layout) writes: straight
    into `out` when out's memory has that layout, is of the compute dtype and
    is clear of the kernel's input; else into a fresh buffer
    (_restored_output copies it).  Returns (buffer, direct)."""
    if out is not None:
        check_out(out, x, x.dtype)
        if out.dtype == cdt and not np.may_share_memory(out, data):
            view = layout.to_kernel(out)
            if view is not None and view.shape == data.shape:
                return view, True
    return _empty(data.shape, cdt), False


def filter_response_norm(x, weight, bias, tau=None, eps=1e-6, *, channel_axis=1, out=None,
                         n_threads=None, return_stats=False):
    """Filter Response Normalization with a Thresholded Linear Unit
    (Singh & Krishnan, 2019).

    Per (sample, channel): nu2 = mean of x^2 over the spatial positions,
    y = max(weight * x / sqrt(nu2 + eps) + bias, tau) (no max when tau is None).
    weight, bias, tau: C values, shape (C,) or (1, C, 1, ...).

    Returns y, or (y, rstd) with rstd = 1/sqrt(nu2 + eps) of shape (N, C).
    Channels-first and channels-last memory each have their own kernels.
    """
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    N, C, S = layout.N, layout.C, layout.S
    w = _frn_param(weight, "weight", C, x.dtype, cdt)
    b = _frn_param(bias, "bias", C, x.dtype, cdt)
    t = _frn_param(tau, "tau", C, x.dtype, cdt, required=False)
    eps = check_eps(eps)
    data = layout.data_as(cdt)
    y_k, direct = _channel_output(x, layout, data, cdt, out)
    rstd = np.empty(N * C, cdt)
    _kernels.frn_forward(data, y_k, layout.cl, N, C, S, w, b, t, eps, rstd, n_threads)
    y = out if direct else _restored_output(x, layout.restore(y_k), cdt, out)
    return (y, rstd.reshape(N, C)) if return_stats else y


def filter_response_norm_backward(grad_out, x, rstd, weight, bias, tau=None, *, channel_axis=1,
                                  n_threads=None):
    """Gradients of `filter_response_norm`: (grad_x, grad_weight, grad_bias, grad_tau).

    The TLU passes the gradient to z = weight * xhat + bias where z > tau and
    to tau where z < tau (half each at ties, as torch.maximum); grad_tau is
    None when tau is None.  Parameter gradients have the parameters' shapes.
    """
    x, cdt = as_float_array(x, "x")
    grad_out = same_shape_input(grad_out, "grad_out", x)
    layout = ChannelLayout(x, channel_axis)
    N, C, S = layout.N, layout.C, layout.S
    g = cast(_to_kernel_layout(grad_out, layout), cdt)
    w = _frn_param(weight, "weight", C, x.dtype, cdt)
    b = _frn_param(bias, "bias", C, x.dtype, cdt)
    t = _frn_param(tau, "tau", C, x.dtype, cdt, required=False)
    rstd = _channel_stat_input(rstd, "rstd", (N, C), cdt).astype(cdt)
    data = layout.data_as(cdt)
    dx = _empty(data.shape, cdt)
    gw, gb, gt = np.empty(C), np.empty(C), np.empty(C)
    _kernels.frn_backward(g, data, dx, layout.cl, N, C, S, w, b, t, rstd, gw, gb, gt, n_threads)
    grad_x = cast(layout.restore(dx), x.dtype)
    return (grad_x,
            gw.reshape(np.shape(weight)).astype(np.asarray(weight).dtype),
            gb.reshape(np.shape(bias)).astype(np.asarray(bias).dtype),
            None if tau is None else gt.reshape(np.shape(tau)).astype(np.asarray(tau).dtype))


# ---------------------------------------------------------------- Local Response Normalization

def _lrn_args(x, size, alpha, beta, k):
    if x.ndim < 3:
        raise ValueError(f"x must have 3 or more dimensions (N, C, *spatial), got shape {x.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size must be an int, got {size!r}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    for name, v in (("alpha", alpha), ("beta", beta), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a real number, got {v!r}")
    return int(size), float(alpha), float(beta), float(k)


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0, *, channel_axis=1, out=None,
                        n_threads=None, return_stats=False):
    """Local response normalization across channels, as
    torch.nn.functional.local_response_norm.

    scale_c = k + alpha / size * sum of x_j^2 over the zero-padded window of
    channels j in [c - size//2, c + (size-1)//2]; y = x * scale^-beta.  The
    window sums slide (O(1) per element whatever `size`).  x has 3 or more dims.

    Returns y, or (y, scale) with return_stats (scale shaped like x), for
    `local_response_norm_backward`.  Channels-first and channels-last memory
    both run without a copy of x.
    """
    x, cdt = as_float_array(x, "x")
    size, alpha, beta, k = _lrn_args(x, size, alpha, beta, k)
    layout = ChannelLayout(x, channel_axis)
    data = layout.data_as(cdt)
    y_k, direct = _channel_output(x, layout, data, cdt, out)
    scale = np.empty(data.shape, cdt) if return_stats else None
    _kernels.lrn_forward(data, y_k, scale, layout.cl, layout.N, layout.C, layout.S, size, alpha,
                         beta, k, n_threads)
    y = out if direct else _restored_output(x, layout.restore(y_k), cdt, out)
    return (y, layout.restore(scale)) if return_stats else y


def local_response_norm_backward(grad_out, x, scale, size, alpha=1e-4, beta=0.75, k=1.0, *,
                                 channel_axis=1, n_threads=None):
    """Gradient of `local_response_norm` w.r.t. x, given the scale it returned:
    grad_i = g_i scale_i^-beta - 2 alpha beta / size * x_i *
    sum over the channels c whose window holds i of g_c x_c scale_c^(-beta-1)."""
    x, cdt = as_float_array(x, "x")
    size, alpha, beta, k = _lrn_args(x, size, alpha, beta, k)
    grad_out = same_shape_input(grad_out, "grad_out", x)
    scale = np.asarray(scale)
    if scale.dtype.kind != "f":
        raise TypeError(f"scale must be a floating-point array, got dtype {scale.dtype}")
    if scale.shape != x.shape:
        raise ValueError(f"scale must have the shape of x {x.shape}, got {scale.shape}")
    layout = ChannelLayout(x, channel_axis)
    data = layout.data_as(cdt)
    dx = _empty(data.shape, cdt)
    _kernels.lrn_backward(cast(_to_kernel_layout(grad_out, layout), cdt), data,
                          cast(_to_kernel_layout(scale, layout), cdt), dx, layout.cl,
                          layout.N, layout.C, layout.S, size, alpha, beta, n_threads)
    return cast(layout.restore(dx), x.dtype)


def standardize_backward(grad_out, x, mean, std, axis=0, ddof=0, *, with_mean=True, with_std=True,
                         fitted=True, n_threads=None):
    """Gradient of `standardize` w.r.t. x.

    fitted=True (the statistics were computed from x): with z = (x - mean) / std
    and N samples, grad = (g - mean(g)) / std - z / std * sum(g * z) / (N - ddof);
    a feature with std 0 (scaled by 1) gets g - mean(g); a feature holding NaN
    gets NaN (its statistics depend on the NaN entries' z).  fitted=False (mean
    and std were given): they are constants and grad = g / std.
    """
    x, cdt, data, restore, sshape, N, F = _feature_rows(x, axis)
    data = cast(data, cdt)  # the backward runs in the compute dtype
    grad_out = same_shape_input(grad_out, "grad_out", x)
    g = np.ascontiguousarray(np.moveaxis(grad_out, _check_dim(axis, x.ndim, "axis"), 0),
                             dtype=cdt).reshape(N, F)
    mean_v = _feature_stat(mean, "mean", sshape)
    std_v = _feature_stat(std, "std", sshape)
    scale = 1.0 / np.where(std_v == 0, 1.0, std_v) if with_std else np.ones(F)
    if not fitted:
        return restore(g * scale.astype(cdt))
    if not with_std:  # z = x - mean (or x): the mean's gradient only
        return restore(g - g.mean(axis=0) if with_mean else g)
    if not with_mean:  # z = x / std, std still taken about the mean
        xc = data - mean_v
        dot = (g * data).sum(axis=0)
        grad = g * scale - xc * (dot * scale ** 3 / max(N - ddof, 1))
        grad[:, std_v == 0] = g[:, std_v == 0]
        return restore(grad.astype(cdt))
    # The BatchNorm backward with rstd' = c / std and weight 1 / c, c = sqrt(N / (N - ddof)),
    # is exactly this gradient (and g - mean(g) for std 0, where rstd' = c).
    if N - ddof <= 0:
        raise ValueError(f"need more than ddof={ddof} samples along axis, got {N}")
    c = np.sqrt(N / (N - ddof))
    dx = np.empty((N, F), cdt)
    _kernels.channel_backward(g, data, dx, True, N, F, 1, 1, False, np.full(F, 1.0 / c, cdt),
                              np.ascontiguousarray(mean_v), np.ascontiguousarray(c * scale), True,
                              None, None, n_threads)
    return restore(dx)


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
    x, cdt, data, restore, sshape, N, F = _feature_rows(x, axis)
    data = cast(data, cdt)  # the backward runs in the compute dtype
    grad_out = same_shape_input(grad_out, "grad_out", x)
    d = _check_dim(axis, x.ndim, "axis")
    g = np.ascontiguousarray(np.moveaxis(grad_out, d, 0), dtype=cdt).reshape(N, F)
    lo, hi = (float(v) for v in feature_range)
    mn = _feature_stat(data_min, "data_min", sshape)
    mx = _feature_stat(data_max, "data_max", sshape)
    span = mx - mn
    scale = (hi - lo) / np.where(span == 0, 1.0, span)
    grad = np.empty((N, F), cdt)
    _kernels.channel_affine(g, grad, True, N, F, 1, np.zeros(F), np.ascontiguousarray(scale),
                            np.zeros(F), n_threads)
    if fitted and N > 0:
        # per feature: sum g and sum g * (x - min), from the channel backward's sums
        sum_g = np.empty(F)
        sum_gx = np.empty(F)
        scratch = np.empty((N, F), cdt)
        _kernels.channel_backward(g, data, scratch, True, N, F, 1, 1, False, None,
                                  np.ascontiguousarray(np.nan_to_num(mn)), np.ones(F), False,
                                  sum_gx, sum_g, n_threads)
        varying = (span != 0) & np.isfinite(span)
        ratio = np.where(varying, scale / np.where(span == 0, 1.0, span), 0.0)
        d_min = np.where(varying, sum_gx * ratio - scale * sum_g, 0.0)   # dL/dmin
        d_max = np.where(varying, -sum_gx * ratio, 0.0)                   # dL/dmax
        cols = np.arange(F)
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(mn)
            arg_min = np.nanargmin(np.where(np.isnan(data), np.inf, data), axis=0)
            arg_max = np.nanargmax(np.where(np.isnan(data), -np.inf, data), axis=0)
        grad[arg_min[finite], cols[finite]] += d_min[finite].astype(cdt)
        grad[arg_max[finite], cols[finite]] += d_max[finite].astype(cdt)
    return restore(grad)
