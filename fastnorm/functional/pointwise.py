"""Elementwise normalization replacements: Dynamic Tanh (``_pointwise_kernels.pxi``)."""
import numbers

import numpy as np

from .. import _dispatch
from .._args import _as_float
from .._buffers import empty as _empty
from .._dtypes import cast, check_param_dtype, compute_dtype, native_order
from .._validation import (
    ChannelLayout,
    as_float_array,
    channel_output,
    into_out,
    out_aliases,
    restored_output,
    same_shape_input,
    to_kernel_layout,
)

__all__ = ["dynamic_tanh", "dynamic_tanh_backward"]


def _alpha_value(alpha, dtype, cdt):
    """alpha: a real number, or an array of one value (torch's shape (1,)
    parameter) in x's dtype (or float32 for 16-bit x), as every parameter."""
    if isinstance(alpha, np.ndarray) or not isinstance(alpha, numbers.Real) or isinstance(alpha, bool):
        if isinstance(alpha, bool) or alpha is None or isinstance(alpha, (str, bytes)):
            raise TypeError(f"alpha must be a real number or an array of one value, got {alpha!r}")
        a = native_order(np.asarray(alpha))
        if compute_dtype(a.dtype) is None or a.size != 1:
            raise TypeError(f"alpha must be a real number or a floating-point array of one value, "
                            f"got {a.dtype} array of shape {a.shape}")
        a = check_param_dtype(a, "alpha", dtype, cdt)
        return float(a.astype(np.float64).reshape(()))
    return _as_float(alpha, "alpha")


def _layout(x, channel_axis):
    """(layout, P, C, S): x as the kernel's (P, C, S) with channel c's values
    contiguous (S > 1) or rows of C channels (S = 1)."""
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension, got a 0-d array")
    if x.ndim == 1:
        if channel_axis not in (-1, 0):
            raise ValueError(f"channel_axis must be -1 for a 1-d x, got {channel_axis!r}")
        x = x.reshape(1, -1)
        channel_axis = -1
    layout = ChannelLayout(x, channel_axis)
    if layout.cl:
        return layout, layout.N * layout.S, layout.C, 1
    return layout, layout.N, layout.C, layout.S


def _dyt_param(p, name, C, dtype, cdt, fill):
    if p is None:
        return np.full(C, fill, cdt)
    p = np.asarray(p)
    if p.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) (the channels), got {p.shape}")
    return cast(np.ascontiguousarray(check_param_dtype(p, name, dtype, cdt)), cdt)


def dynamic_tanh(x, alpha, weight=None, bias=None, *, channel_axis=-1, out=None, n_threads=None,
                 return_stats=False):
    """Dynamic Tanh (DyT; Zhu et al. 2025, "Transformers without Normalization"):
    y = weight * tanh(alpha * x) + bias, the normalization-free replacement
    of LayerNorm.

    Parameters
    ----------
    x : array of float32, float64, float16 or bfloat16.
    alpha : the learnable scalar (the paper's default initial value is 0.5):
        a real number or an array of one value.
    weight, bias : (C,) arrays over the channel axis, or None (1 and 0).
    channel_axis : -1 (default: the last dim, as in transformers) or 1
        (channels-first images, the reference's ``channels_first``).

    float32 computes tanh with a rational approximation within 3.3e-7
    relative of the exact value (see pointwise.h); float64 with libm's tanh.
    With return_stats, returns ``(y,)``: the backward needs no saved
    statistics (it recomputes tanh from x).

    Examples
    --------
    >>> x = np.linspace(-2, 2, 8, dtype=np.float32).reshape(2, 4)
    >>> y = dynamic_tanh(x, 0.5)
    >>> bool(np.allclose(y, np.tanh(0.5 * x)))
    True
    """
    if out_aliases(out, (weight, bias, alpha if isinstance(alpha, np.ndarray) else None)):
        return into_out(out, dynamic_tanh(x, alpha, weight, bias, channel_axis=channel_axis,
                                          n_threads=n_threads, return_stats=return_stats))
    x, cdt = as_float_array(x, "x")
    a = _alpha_value(alpha, x.dtype, cdt)
    layout, P, C, S = _layout(x, channel_axis)
    w = _dyt_param(weight, "weight", C, x.dtype, cdt, 1.0)
    b = _dyt_param(bias, "bias", C, x.dtype, cdt, 0.0)
    x_nd = x if x.ndim > 1 else x.reshape(1, -1)
    data = layout.data
    flat_out = isinstance(out, np.ndarray) and out.ndim == 1  # a 1-d x's out, as x: one row
    y_k, direct = channel_output(x_nd, layout, data, x.dtype, out.reshape(1, -1) if flat_out else out)
    _dispatch.kernels.dyt_forward(data, y_k, P, C, S, a, w, b, n_threads)
    if direct:
        y = out
    else:
        y = restored_output(x_nd, layout.restore(y_k), cdt, None).reshape(x.shape)
        if out is not None:
            np.copyto(out, y)
            y = out
    return (y,) if return_stats else y


def dynamic_tanh_backward(grad_out, x, alpha, weight=None, bias=None, *, channel_axis=-1, n_threads=None):
    """Gradients of `dynamic_tanh`: (grad_x, grad_alpha, grad_weight, grad_bias).

    With t = tanh(alpha * x): grad_x = grad_out * weight * alpha * (1 - t^2),
    grad_alpha = sum of grad_out * weight * x * (1 - t^2), grad_weight = sum
    of grad_out * t and grad_bias = sum of grad_out over every position of
    each channel.  grad_alpha has alpha's shape and dtype (a float for a
    Python number); a parameter gradient is None where the parameter was None.
    """
    x, cdt = as_float_array(x, "x")
    grad_out = same_shape_input(grad_out, "grad_out", x)
    a = _alpha_value(alpha, x.dtype, cdt)
    layout, P, C, S = _layout(x, channel_axis)
    w = _dyt_param(weight, "weight", C, x.dtype, cdt, 1.0)
    if bias is not None:
        _dyt_param(bias, "bias", C, x.dtype, cdt, 0.0)
    g = to_kernel_layout(grad_out if grad_out.ndim > 1 else grad_out.reshape(1, -1), layout)
    data = layout.data
    dx = _empty(data.shape, x.dtype)
    gw, gb = np.empty(C), np.empty(C)
    ga = _dispatch.kernels.dyt_backward(g, data, dx, P, C, S, a, w, gw, gb, n_threads)
    grad_x = layout.restore(dx).reshape(x.shape)
    if isinstance(alpha, np.ndarray):
        grad_alpha = np.full(alpha.shape, ga, dtype=native_order(alpha).dtype)
    else:
        grad_alpha = ga
    return (grad_x, grad_alpha,
            None if weight is None else gw.astype(np.asarray(weight).dtype),
            None if bias is None else gb.astype(np.asarray(bias).dtype))
