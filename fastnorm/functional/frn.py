"""Filter Response Normalization with a Thresholded Linear Unit (``_frn_kernels.pxi``)."""
import numpy as np

from .. import _dispatch
from .._buffers import empty as _empty
from .._args import check_eps
from .._dtypes import cast, check_param_dtype
from .._validation import (
    ChannelLayout,
    as_float_array,
    channel_output,
    channel_stats_input,
    into_out,
    out_aliases,
    restored_output,
    same_shape_input,
    to_kernel_layout,
)

__all__ = ["filter_response_norm", "filter_response_norm_backward"]


def _frn_param(p, name, C, dtype, cdt, required=True):
    if p is None:
        if required:
            raise TypeError(f"{name} must be an array of {C} values, got None")
        return None
    p = np.asarray(p)
    if p.size != C or (p.ndim > 1 and sorted(d for d in p.shape if d != 1) != ([C] if C != 1 else [])):
        raise ValueError(f"{name} must have {C} values (shape ({C},) or (1, {C}, 1, ...)), got shape {p.shape}")
    p = check_param_dtype(p, name, dtype, cdt)
    return cast(np.ascontiguousarray(p), cdt).reshape(C)


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
    fast = _dispatch.kernels.frn_fast(x, weight, bias, tau, eps, channel_axis, out, n_threads,
                                      return_stats)
    if fast is not NotImplemented:
        return fast
    if out_aliases(out, (weight, bias, tau)):
        return into_out(out, filter_response_norm(x, weight, bias, tau, eps, channel_axis=channel_axis,
                                                  n_threads=n_threads, return_stats=return_stats))
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    N, C, S = layout.N, layout.C, layout.S
    w = _frn_param(weight, "weight", C, x.dtype, cdt)
    b = _frn_param(bias, "bias", C, x.dtype, cdt)
    t = _frn_param(tau, "tau", C, x.dtype, cdt, required=False)
    eps = check_eps(eps)
    data = layout.data  # the kernels read the storage dtype (16-bit: staged through float32)
    y_k, direct = channel_output(x, layout, data, x.dtype, out)
    rstd = np.empty(N * C, cdt)
    _dispatch.kernels.frn_forward(data, y_k, layout.cl, N, C, S, w, b, t, eps, rstd, n_threads)
    y = out if direct else restored_output(x, layout.restore(y_k), cdt, out)
    return (y, rstd.reshape(N, C)) if return_stats else y


def filter_response_norm_backward(grad_out, x, rstd, weight, bias, tau=None, *, channel_axis=1,
                                  n_threads=None):
    """Gradients of `filter_response_norm`: (grad_x, grad_weight, grad_bias, grad_tau).

    The TLU passes the gradient to z = weight * xhat + bias where z > tau and
    to tau where z < tau (half each at ties, as torch.maximum); grad_tau is
    None when tau is None.  Parameter gradients have the parameters' shapes.
    """
    fast = _dispatch.kernels.frn_backward_fast(grad_out, x, rstd, weight, bias, tau, channel_axis,
                                               n_threads)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    grad_out = same_shape_input(grad_out, "grad_out", x)
    layout = ChannelLayout(x, channel_axis)
    N, C, S = layout.N, layout.C, layout.S
    g = to_kernel_layout(grad_out, layout)
    w = _frn_param(weight, "weight", C, x.dtype, cdt)
    b = _frn_param(bias, "bias", C, x.dtype, cdt)
    t = _frn_param(tau, "tau", C, x.dtype, cdt, required=False)
    rstd = channel_stats_input(rstd, "rstd", (N, C)).astype(cdt)
    data = layout.data
    dx = _empty(data.shape, x.dtype)
    gw, gb, gt = np.empty(C), np.empty(C), np.empty(C)
    _dispatch.kernels.frn_backward(g, data, dx, layout.cl, N, C, S, w, b, t, rstd, gw, gb, gt, n_threads)
    grad_x = layout.restore(dx)
    return (grad_x,
            gw.reshape(np.shape(weight)).astype(np.asarray(weight).dtype),
            gb.reshape(np.shape(bias)).astype(np.asarray(bias).dtype),
            None if tau is None else gt.reshape(np.shape(tau)).astype(np.asarray(tau).dtype))
