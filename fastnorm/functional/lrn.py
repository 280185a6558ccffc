"""Local Response Normalization across channels (``_lrn_kernels.pxi``)."""
import numpy as np

from .. import _dispatch
from .._buffers import empty as _empty
from .._args import check_lrn_args
from .._dtypes import cast
from .._validation import (
    ChannelLayout,
    as_float_array,
    channel_output,
    restored_output,
    same_shape_input,
    to_kernel_layout,
)

__all__ = ["local_response_norm", "local_response_norm_backward"]


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
    fast = _dispatch.kernels.lrn_fast(x, size, alpha, beta, k, channel_axis, out, n_threads,
                                      return_stats)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    size, alpha, beta, k = check_lrn_args(x, size, alpha, beta, k)
    layout = ChannelLayout(x, channel_axis)
    data = layout.data  # the kernels read the storage dtype (16-bit: widened in cache tiles)
    y_k, direct = channel_output(x, layout, data, x.dtype, out)
    scale = np.empty(data.shape, cdt) if return_stats else None  # a statistic: the compute dtype
    _dispatch.kernels.lrn_forward(data, y_k, scale, layout.cl, layout.N, layout.C, layout.S, size, alpha,
                         beta, k, n_threads)
    y = out if direct else restored_output(x, layout.restore(y_k), cdt, out)
    return (y, layout.restore(scale)) if return_stats else y


def local_response_norm_backward(grad_out, x, scale, size, alpha=1e-4, beta=0.75, k=1.0, *,
                                 channel_axis=1, n_threads=None):
    """Gradient of `local_response_norm` w.r.t. x, given the scale it returned:
    grad_i = g_i scale_i^-beta - 2 alpha beta / size * x_i *
    sum over the channels c whose window holds i of g_c x_c scale_c^(-beta-1)."""
    dx = _dispatch.kernels.lrn_backward_fast(grad_out, x, scale, size, alpha, beta, k,
                                             channel_axis, n_threads)
    if dx is NotImplemented:
        dx = _lrn_backward(grad_out, x, scale, size, alpha, beta, k, channel_axis, n_threads)
    s = np.asarray(scale)
    if s.dtype != np.float64 and s.size and not np.isfinite(s.max()):
        # a float32 scale that overflowed (|x| beyond ~2^63: the window's sum of
        # squares is past float32's range) cannot give the gradient back: the
        # call is redone in float64, scale included, from x (rare; a NaN in x
        # comes here too and stays NaN)
        x64, g64 = np.asarray(x).astype(np.float64), np.asarray(grad_out).astype(np.float64)
        _, s64 = local_response_norm(x64, size, alpha, beta, k, channel_axis=channel_axis,
                                     n_threads=n_threads, return_stats=True)
        dx = local_response_norm_backward(g64, x64, s64, size, alpha, beta, k, channel_axis=channel_axis,
                                          n_threads=n_threads).astype(dx.dtype)
    return dx


def _lrn_backward(grad_out, x, scale, size, alpha, beta, k, channel_axis, n_threads):
    x, cdt = as_float_array(x, "x")
    size, alpha, beta, k = check_lrn_args(x, size, alpha, beta, k)
    grad_out = same_shape_input(grad_out, "grad_out", x)
    scale = np.asarray(scale)
    if scale.dtype.kind != "f":
        raise TypeError(f"scale must be a floating-point array, got dtype {scale.dtype}")
    if scale.shape != x.shape:
        raise ValueError(f"scale must have the shape of x {x.shape}, got {scale.shape}")
    layout = ChannelLayout(x, channel_axis)
    dx = _empty(layout.data.shape, x.dtype)
    _dispatch.kernels.lrn_backward(to_kernel_layout(grad_out, layout), layout.data,
                                   cast(to_kernel_layout(scale, layout), cdt), dx, layout.cl,
                                   layout.N, layout.C, layout.S, size, alpha, beta, n_threads)
    return layout.restore(dx)
