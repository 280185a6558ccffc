"""Tensors <-> NumPy arrays over the same memory, for the kernels.

CPU tensors are viewed, never copied, where the kernels take their layout:
contiguous tensors as they are, and channels_last tensors of the channel ops
as (N, *spatial, C) arrays with channel_axis=-1.  bfloat16 tensors go
through their 16-bit pattern (torch.int16) to ml_dtypes.bfloat16 arrays.
"""
import numpy as np
import torch

from .. import _buffers, _dtypes

_NUMPY = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64),
          torch.float16: np.dtype(np.float16)}

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tensor(t, name):
    """A clear error for what the kernels cannot take (device, dtype)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastnorm.torch: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type not in ("cpu", "meta"):
        raise ValueError(f"fastnorm.torch runs on CPU tensors: {name} is on {t.device}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"fastnorm.torch: {name} must be float32, float64, float16 or bfloat16, "
                        f"got {t.dtype}")


def array(t):
    """The ndarray over t's memory (t: a CPU tensor); a contiguous one is
    wrapped directly (_buffers.array_over: a third of Tensor.numpy()'s cost)."""
    dtype = _NUMPY.get(t.dtype)
    if dtype is None and t.dtype == torch.bfloat16:
        dtype = _NUMPY[torch.bfloat16] = np.dtype(_dtypes.bfloat16())
    if t.is_contiguous() and dtype is not None:
        return _buffers.array_over(t, t.data_ptr(), tuple(t.shape), dtype)
    if t.requires_grad:
        t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_dtypes.bfloat16())
    return t.numpy()


def param_array(t):
    """maybe_array for a parameter, whose view is kept on the Parameter and
    reused while its memory stays the same (optimizers update it in place;
    a new ``.data`` changes the key)."""
    if t is None:
        return None
    if not isinstance(t, torch.nn.Parameter) or not t.is_contiguous():
        return array(t.contiguous())
    key = (t.data_ptr(), t.dtype, t.shape)
    cached = getattr(t, "_fastnorm_view", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    a = array(t.detach())  # its base the detached tensor: no reference cycle through the Parameter
    t._fastnorm_view = (key, a)
    return a


def eager(args):
    """True when an op's autograd may run eagerly (torch.autograd.Function
    over the implementations): every tensor among args a plain CPU tensor
    of a float dtype, not inside tracing."""
    if torch.compiler.is_compiling():
        return False
    for t in args:
        if isinstance(t, torch.Tensor) and (type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter
                                            or not t.is_cpu or t.dtype not in _FLOATS):
            return False
    return True


def plain(*tensors):
    """True when the eager path may run the kernels directly: plain CPU
    tensors (no subclass such as a FakeTensor), nothing that needs a
    gradient, not inside torch.compile / torch.export tracing."""
    if torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter
                              or (grad and t.requires_grad) or not t.is_cpu or t.dtype not in _FLOATS):
            return False
    return True


def tensor(a):
    """The tensor over an ndarray's memory (the kernels' own outputs)."""
    if a.dtype.kind == "V":  # ml_dtypes.bfloat16
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def stat_dtype(dtype):
    """The dtype of the saved statistics: the compute dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def channels_last(t):
    """True when t (N, C, *spatial) is laid out channels-last (and not also
    plainly contiguous): the kernels read it as (N, *spatial, C)."""
    return t.dim() >= 3 and not t.is_contiguous() and t.movedim(1, -1).is_contiguous()


def channel_input(t):
    """(t in a layout the kernels read, its array, channel_axis)."""
    if channels_last(t):
        return t, array(t.movedim(1, -1)), -1
    t = t.contiguous()
    return t, array(t), 1


def channel_array(t, axis):
    """t's array in the layout of channel_axis `axis` (copied only when t is
    laid out otherwise, e.g. a gradient of another memory format)."""
    if axis == -1:
        return array(t.movedim(1, -1).contiguous())
    return array(t.contiguous())


def threads(n_threads):
    """The kernels' thread count: torch's unless given (> 0)."""
    return n_threads if n_threads > 0 else torch.get_num_threads()
