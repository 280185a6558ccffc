"""Plain-NumPy float64 reference twins of every fastnorm op.

Same signatures as fastnorm.functional (minus out= and n_threads=); each
computes in float64 with the textbook formula and returns float64.  They are
the slow ground truth the fast kernels are tested against.
"""
import numpy as np

__all__ = ["layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward"]


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
        eps = float(np.finfo(x_in.dtype if x_in.dtype.kind == "f" else np.float64).eps)
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
    grad_x = rstd * gw - x * rstd ** 3 * (gw * x).mean(axis=axes, keepdims=True)
    grad_weight = (g * x * rstd).sum(axis=lead_axes) if weight is not None else None
    return grad_x, grad_weight
