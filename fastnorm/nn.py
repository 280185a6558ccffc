"""Stateful layers with torch.nn's names, arguments and attributes.

Parameters and buffers are NumPy arrays under torch's names, so
``layer.load_state_dict(torch_layer.state_dict())`` loads a torch model's
weights as they are.  ``forward(x)`` (or calling the layer) saves what
``backward(grad_out)`` needs; ``backward`` returns grad_x and stores the
parameter gradients as ``grad_weight`` / ``grad_bias``.
"""
import numbers
from collections import namedtuple

import numpy as np

from ._args import check_count, check_dim

from ._dtypes import as_float_array, bfloat16, compute_dtype

from . import functional as F

__all__ = [
    "Module", "LayerNorm", "RMSNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm",
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "WeightNorm", "FilterResponseNorm",
    "LocalResponseNorm", "IncompatibleKeys", "StateDictError", "DynamicTanh", "AdaNorm",
    "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "WeightStandardization", "SwitchableNorm2d",
    "SwitchableNorm3d", "PowerNorm1d", "PowerNorm2d", "CosineLinear", "BatchLayerNorm", "ClusterNorm",
    "MixtureNorm",
]


# what load_state_dict returns, as torch's Module.load_state_dict
IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class StateDictError(RuntimeError, KeyError):
    """load_state_dict(strict=True) with missing or unexpected keys: a
    RuntimeError as torch raises (and a KeyError, as fastnorm raised before)."""

    def __str__(self):
        return RuntimeError.__str__(self)


class _Deferred:
    """An eval-mode forward's call and input, for a backward that may follow."""
    __slots__ = ("call", "x", "extra")

    def __init__(self, call, x, extra):
        self.call, self.x, self.extra = call, x, extra


def _to_numpy(value):
    """A state-dict value (NumPy array, torch tensor, array-like) as an ndarray
    (a torch.bfloat16 tensor as an ml_dtypes.bfloat16 array of the same bits)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16" and bfloat16() is not None:
            import torch  # only reached with a torch tensor in hand
            return value.contiguous().view(torch.int16).numpy().view(bfloat16())
        value = value.numpy()
    return np.asarray(value)


def _shape_tuple(normalized_shape):
    """normalized_shape as a tuple of ints >= 1 (an int, or a sequence of
    ints: never a string, whose characters would pass for dims)."""
    if isinstance(normalized_shape, (numbers.Integral, np.integer)) and not isinstance(normalized_shape, bool):
        return (check_count(normalized_shape, "normalized_shape"),)
    if isinstance(normalized_shape, (str, bytes)) or not hasattr(normalized_shape, "__iter__"):
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}")
    return tuple(check_count(d, "normalized_shape's dims") for d in normalized_shape)


class Module:
    """Minimal base: train/eval mode, parameters and buffers, state dicts."""

    _parameter_names = ()
    _buffer_names = ()

    def __init__(self):
        self.training = True
        self._saved = None

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def __call__(self, x, **kwargs):
        return self.forward(x, **kwargs)

    def _forward(self, call, x, *extra):
        """Run call(return_stats), the layer's functional op.  In training
        mode with the statistics, saved with x (and `extra`) for backward; in
        eval mode the output alone, so that an eval forward costs what the
        functional call does, and backward (if it comes) recomputes the
        statistics from the saved input.  Eval mode never updates running
        statistics, so the recomputation changes nothing."""
        if self.training:
            r = call(True)
            self._saved = (np.asarray(x),) + tuple(r[1:]) + extra
            return r[0]
        y = call(False)
        self._saved = _Deferred(call, x, extra)
        return y

    def parameters(self):
        return [getattr(self, n) for n in self._parameter_names if getattr(self, n) is not None]

    def state_dict(self, *, prefix=""):
        """Parameters and buffers under torch's keys (copies), each key
        preceded by `prefix` (as torch's ``state_dict(prefix=...)``)."""
        state = {}
        for name in self._parameter_names + self._buffer_names:
            value = getattr(self, name)
            if value is not None:
                state[prefix + name] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state_dict, strict=True, *, prefix=""):
        """Load parameters and buffers; torch tensors are accepted as they are.

        As torch: the layer's keys are looked up as ``prefix + name`` (keys
        of state_dict outside the prefix are ignored); with strict=True
        missing or unexpected keys raise StateDictError (a RuntimeError) and
        nothing is loaded; a value of the wrong shape always raises
        ValueError, before anything is loaded.  Returns
        ``IncompatibleKeys(missing_keys, unexpected_keys)``."""
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        expected = [n for n in self._parameter_names + self._buffer_names if getattr(self, n) is not None]
        missing = [prefix + k for k in expected if prefix + k not in state_dict]
        unexpected = [k for k in state_dict
                      if isinstance(k, str) and k.startswith(prefix) and k[len(prefix):] not in expected]
        if strict and (missing or unexpected):
            raise StateDictError(
                f"Error(s) in loading state_dict for {type(self).__name__}: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        values = {}
        for key in expected:
            if prefix + key not in state_dict:
                continue
            current = getattr(self, key)
            value = _to_numpy(state_dict[prefix + key])
            if value.shape != current.shape:
                raise ValueError(
                    f"size mismatch for {prefix + key}: copying a param with shape {value.shape}, "
                    f"the shape in the current model is {current.shape}"
                )
            values[key] = value
        for key, value in values.items():
            getattr(self, key)[...] = value  # in place, keeping dtype (as torch's copy_)
        return IncompatibleKeys(missing, unexpected)

    def _saved_or_raise(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        if isinstance(self._saved, _Deferred):  # an eval forward: its statistics now
            d = self._saved
            self._saved = (np.asarray(d.x),) + tuple(d.call(True)[1:]) + d.extra
        return self._saved

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class LayerNorm(Module):
    """torch.nn.LayerNorm: y = (x - mean) / sqrt(var + eps) * weight + bias.

    Parameters
    ----------
    normalized_shape : int or tuple, the trailing dims to normalize over.
    eps : float, default 1e-5.
    elementwise_affine : bool, default True: learnable ``weight`` (ones) and,
        if `bias`, ``bias`` (zeros).
    bias : bool, default True.
    dtype : float32 (default), float64, float16 or bfloat16 (ml_dtypes.bfloat16).
    """

    _parameter_names = ("weight", "bias")

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32):
        super().__init__()
        self.normalized_shape = _shape_tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        dtype = np.dtype(dtype)
        self.weight = np.ones(self.normalized_shape, dtype) if elementwise_affine else None
        self.bias = np.zeros(self.normalized_shape, dtype) if elementwise_affine and bias else None
        self.grad_weight = None
        self.grad_bias = None

    def forward(self, x, *, n_threads=None):
        return self._forward(lambda stats: F.layer_norm(x, self.normalized_shape, self.weight, self.bias,
                                                        self.eps, n_threads=n_threads, return_stats=stats), x)

    def backward(self, grad_out, *, n_threads=None):
        x, mean, rstd = self._saved_or_raise()
        grad_x, self.grad_weight, self.grad_bias = F.layer_norm_backward(
            grad_out, x, mean, rstd, self.weight, self.bias, n_threads=n_threads)
        return grad_x

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class RMSNorm(Module):
    """torch.nn.RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight.

    Parameters
    ----------
    normalized_shape : int or tuple.
    eps : float or None (default: the machine epsilon of the input's dtype).
    elementwise_affine : bool, default True: learnable ``weight`` (ones).
    dtype : float32 (default), float64, float16 or bfloat16 (ml_dtypes.bfloat16).
    """

    _parameter_names = ("weight",)

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=np.float32):
        super().__init__()
        self.normalized_shape = _shape_tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.weight = np.ones(self.normalized_shape, np.dtype(dtype)) if elementwise_affine else None
        self.grad_weight = None

    def forward(self, x, *, n_threads=None):
        return self._forward(lambda stats: F.rms_norm(x, self.normalized_shape, self.weight, self.eps,
                                                      n_threads=n_threads, return_stats=stats), x)

    def backward(self, grad_out, *, n_threads=None):
        x, rstd = self._saved_or_raise()
        grad_x, self.grad_weight = F.rms_norm_backward(grad_out, x, rstd, self.weight, n_threads=n_threads)
        return grad_x

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class _BatchNorm(Module):
    """Shared body of BatchNorm1d/2d/3d (torch.nn.BatchNorm*d)."""

    _parameter_names = ("weight", "bias")
    _buffer_names = ("running_mean", "running_var", "num_batches_tracked")
    _input_ndims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32, *, channel_axis=1):
        super().__init__()
        dtype = np.dtype(dtype)
        self.num_features = check_count(num_features, "num_features")
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.channel_axis = channel_axis
        self.weight = np.ones(num_features, dtype) if affine else None
        self.bias = np.zeros(num_features, dtype) if affine else None
        if track_running_stats:
            # in the compute dtype: float32 for float16 / bfloat16 layers (the
            # statistics of a 16-bit layer are kept at float32 precision)
            self.running_mean = np.zeros(num_features, compute_dtype(dtype))
            self.running_var = np.ones(num_features, compute_dtype(dtype))
            self.num_batches_tracked = np.array(0, dtype=np.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.grad_weight = None
        self.grad_bias = None

    def _check_input(self, x):
        shape = np.shape(x)
        if len(shape) not in self._input_ndims:
            raise ValueError(f"{type(self).__name__} expects {' or '.join(map(str, self._input_ndims))}-D "
                             f"input, got shape {shape}")
        channels = shape[self.channel_axis]
        # as torch: the channel count matters when there are per-channel
        # parameters or running statistics (else any count normalizes)
        if channels != self.num_features and (self.weight is not None or self.running_mean is not None):
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects {self.num_features} channels "
                             f"along axis {self.channel_axis}, got {channels} (input shape {shape})")

    def forward(self, x, *, n_threads=None):
        self._check_input(x)
        factor = 0.0 if self.momentum is None else self.momentum
        tracking = self.training and self.track_running_stats
        if tracking and self.momentum is None:  # cumulative moving average
            factor = 1.0 / float(self.num_batches_tracked + 1)
        batch_stats = self.training or not self.track_running_stats
        y = self._forward(lambda stats: F.batch_norm(
            x, self.running_mean if not batch_stats or self.training else None,
            self.running_var if not batch_stats or self.training else None,
            self.weight, self.bias, batch_stats, factor, self.eps,
            channel_axis=self.channel_axis, n_threads=n_threads, return_stats=stats), x, batch_stats)
        if tracking:  # counted once the call has succeeded
            self.num_batches_tracked += 1
        return y

    def backward(self, grad_out, *, n_threads=None):
        x, mean, invstd, batch_stats = self._saved_or_raise()
        grad_x, self.grad_weight, self.grad_bias = F.batch_norm_backward(
            grad_out, x, mean, invstd, self.weight, self.bias, batch_stats,
            channel_axis=self.channel_axis, n_threads=n_threads)
        return grad_x

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """torch.nn.BatchNorm1d: input (N, C) or (N, C, L)."""
    _input_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """torch.nn.BatchNorm2d: input (N, C, H, W) (or NHWC with channel_axis=-1)."""
    _input_ndims = (4,)


class BatchNorm3d(_BatchNorm):
    """torch.nn.BatchNorm3d: input (N, C, D, H, W) (or NDHWC with channel_axis=-1)."""
    _input_ndims = (5,)


class GroupNorm(Module):
    """torch.nn.GroupNorm(num_groups, num_channels, eps=1e-5, affine=True)."""

    _parameter_names = ("weight", "bias")

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32, *,
                 channel_axis=1):
        super().__init__()
        num_groups = check_count(num_groups, "num_groups")
        num_channels = check_count(num_channels, "num_channels")
        if num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.channel_axis = channel_axis
        self.weight = np.ones(num_channels, np.dtype(dtype)) if affine else None
        self.bias = np.zeros(num_channels, np.dtype(dtype)) if affine else None
        self.grad_weight = None
        self.grad_bias = None

    def forward(self, x, *, n_threads=None):
        return self._forward(lambda stats: F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps,
                                                        channel_axis=self.channel_axis, n_threads=n_threads,
                                                        return_stats=stats), x)

    def backward(self, grad_out, *, n_threads=None):
        x, mean, rstd = self._saved_or_raise()
        grad_x, self.grad_weight, self.grad_bias = F.group_norm_backward(
            grad_out, x, self.num_groups, mean, rstd, self.weight, self.bias,
            channel_axis=self.channel_axis, n_threads=n_threads)
        return grad_x

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class _InstanceNorm(_BatchNorm):
    """Shared body of InstanceNorm1d/2d/3d (torch's defaults: affine=False,
    track_running_stats=False)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, dtype=np.float32, *, channel_axis=1):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype,
                         channel_axis=channel_axis)

    def forward(self, x, *, n_threads=None):
        self._check_input(x)
        # as torch's InstanceNorm: num_batches_tracked is never advanced, and
        # momentum=None means a factor of 0 (no cumulative average)
        factor = 0.0 if self.momentum is None else self.momentum
        use_input_stats = self.training or not self.track_running_stats
        return self._forward(lambda stats: F.instance_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, use_input_stats,
            factor, self.eps, channel_axis=self.channel_axis, n_threads=n_threads, return_stats=stats),
            x, use_input_stats)

    def backward(self, grad_out, *, n_threads=None):
        x, mean, rstd, use_input_stats = self._saved_or_raise()
        grad_x, self.grad_weight, self.grad_bias = F.instance_norm_backward(
            grad_out, x, mean, rstd, self.weight, self.bias, use_input_stats,
            channel_axis=self.channel_axis, n_threads=n_threads)
        return grad_x


class InstanceNorm1d(_InstanceNorm):
    """torch.nn.InstanceNorm1d: input (N, C, L)."""
    _input_ndims = (3,)


class InstanceNorm2d(_InstanceNorm):
    """torch.nn.InstanceNorm2d: input (N, C, H, W)."""
    _input_ndims = (4,)


class InstanceNorm3d(_InstanceNorm):
    """torch.nn.InstanceNorm3d: input (N, C, D, H, W)."""
    _input_ndims = (5,)


class WeightNorm(Module):
    """Weight normalization of a weight tensor, with torch's parameter names
    (torch.nn.utils.weight_norm): ``weight_g`` and ``weight_v``, w = g * v / ||v||.

    ``WeightNorm(weight, dim=0)`` starts from an existing weight (g = its norm,
    so forward() returns it unchanged); ``forward()`` (or calling it) returns
    the weight; ``backward(grad_weight)`` stores ``grad_weight_v`` and
    ``grad_weight_g``.  ``dim=None`` normalizes over the whole tensor;
    ``centered=True`` is centered weight normalization.
    """

    _parameter_names = ("weight_g", "weight_v")

    def __init__(self, weight, dim=0, centered=False):
        super().__init__()
        weight = np.array(as_float_array(weight, "weight")[0], copy=True)
        if weight.ndim == 0:
            raise ValueError("weight must have at least 1 dimension, got a 0-d array")
        self.dim = dim
        self.centered = centered
        self.weight_v = weight
        if dim is None:
            g = np.ones((), weight.dtype)
        else:
            d = check_dim(dim, weight.ndim)
            g = np.ones(tuple(weight.shape[i] if i == d else 1 for i in range(weight.ndim)), weight.dtype)
        _, norm = F.weight_norm(weight, g, dim, centered=centered, return_stats=True)
        self.weight_g = norm.astype(weight.dtype)
        self.grad_weight_v = None
        self.grad_weight_g = None

    def forward(self, *, n_threads=None):
        w, norm = F.weight_norm(self.weight_v, self.weight_g, self.dim, centered=self.centered,
                                n_threads=n_threads, return_stats=True)
        self._saved = norm
        return w

    def __call__(self, **kwargs):
        return self.forward(**kwargs)

    def backward(self, grad_weight, *, n_threads=None):
        norm = self._saved_or_raise()
        self.grad_weight_v, self.grad_weight_g = F.weight_norm_backward(
            grad_weight, self.weight_v, self.weight_g, norm, self.dim, centered=self.centered,
            n_threads=n_threads)
        return self.grad_weight_v

    def extra_repr(self):
        return f"dim={self.dim}, centered={self.centered}, shape={self.weight_v.shape}"


class FilterResponseNorm(Module):
    """Filter Response Normalization + TLU (Singh & Krishnan, 2019):
    y = max(weight * x / sqrt(mean(x^2 over spatial) + eps) + bias, tau).

    Parameters ``weight`` (ones), ``bias`` (zeros) and, with learnable_tau,
    ``tau`` (zeros), each of shape (num_features,).
    """

    _parameter_names = ("weight", "bias", "tau")

    def __init__(self, num_features, eps=1e-6, learnable_tau=True, dtype=np.float32, *, channel_axis=1):
        super().__init__()
        dtype = np.dtype(dtype)
        self.num_features = check_count(num_features, "num_features")
        self.eps = eps
        self.channel_axis = channel_axis
        self.weight = np.ones(num_features, dtype)
        self.bias = np.zeros(num_features, dtype)
        self.tau = np.zeros(num_features, dtype) if learnable_tau else None
        self.grad_weight = self.grad_bias = self.grad_tau = None

    def forward(self, x, *, n_threads=None):
        return self._forward(lambda stats: F.filter_response_norm(
            x, self.weight, self.bias, self.tau, self.eps, channel_axis=self.channel_axis,
            n_threads=n_threads, return_stats=stats), x)

    def backward(self, grad_out, *, n_threads=None):
        x, rstd = self._saved_or_raise()
        grad_x, self.grad_weight, self.grad_bias, self.grad_tau = F.filter_response_norm_backward(
            grad_out, x, rstd, self.weight, self.bias, self.tau, channel_axis=self.channel_axis,
            n_threads=n_threads)
        return grad_x

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, learnable_tau={self.tau is not None}"


class LocalResponseNorm(Module):
    """torch.nn.LocalResponseNorm(size, alpha=1e-4, beta=0.75, k=1.0) (no parameters)."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0, *, channel_axis=1):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.channel_axis = channel_axis

    def forward(self, x, *, n_threads=None):
        return self._forward(lambda stats: F.local_response_norm(
            x, self.size, self.alpha, self.beta, self.k, channel_axis=self.channel_axis,
            n_threads=n_threads, return_stats=stats), x)

    def backward(self, grad_out, *, n_threads=None):
        x, scale = self._saved_or_raise()
        return F.local_response_norm_backward(grad_out, x, scale, self.size, self.alpha, self.beta,
                                              self.k, channel_axis=self.channel_axis, n_threads=n_threads)

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class DynamicTanh(Module):
    """Dynamic Tanh (Zhu et al. 2025), the reference's ``DynamicTanh``:
    y = weight * tanh(alpha * x) + bias, with parameters ``alpha`` (shape
    (1,), ``alpha_init_value``, default 0.5), ``weight`` (ones) and ``bias``
    (zeros) over the channel axis (-1, or 1 for channels-first images, the
    reference's ``channels_last=False``).  backward stores ``grad_alpha``,
    ``grad_weight`` and ``grad_bias``."""

    _parameter_names = ("alpha", "weight", "bias")

    def __init__(self, normalized_shape, alpha_init_value=0.5, dtype=np.float32, *, channel_axis=-1):
        super().__init__()
        self.normalized_shape = check_count(normalized_shape, "normalized_shape")
        dtype = np.dtype(dtype)
        self.channel_axis = channel_axis
        self.alpha = np.full(1, alpha_init_value, dtype)
        self.weight = np.ones(self.normalized_shape, dtype)
        self.bias = np.zeros(self.normalized_shape, dtype)
        self.grad_alpha = self.grad_weight = self.grad_bias = None

    def forward(self, x, *, n_threads=None):
        # no statistics to save (return_stats gives (y,)): the backward recomputes tanh from x
        return self._forward(lambda stats: F.dynamic_tanh(x, self.alpha, self.weight, self.bias,
                                                          channel_axis=self.channel_axis, n_threads=n_threads,
                                                          return_stats=stats), x)

    def backward(self, grad_out, *, n_threads=None):
        (x,) = self._saved_or_raise()
        grad_x, self.grad_alpha, self.grad_weight, self.grad_bias = F.dynamic_tanh_backward(
            grad_out, x, self.alpha, self.weight, self.bias, channel_axis=self.channel_axis,
            n_threads=n_threads)
        return grad_x

    def extra_repr(self):
        return f"{self.normalized_shape}, alpha={float(self.alpha[0])}, channel_axis={self.channel_axis}"


class AdaNorm(Module):
    """AdaNorm (Xu et al. 2019) over the trailing dims `normalized_shape`:
    y = scale * z * (1 - k z), z = (x - mean) / (unbiased std + eps), the
    factor (1 - k z) detached.  No parameters (as the reference's mode)."""

    def __init__(self, normalized_shape, scale=1.0, k=0.1, eps=1e-5):
        super().__init__()
        self.normalized_shape = _shape_tuple(normalized_shape)
        self.scale, self.k, self.eps = scale, k, eps

    def forward(self, x, *, n_threads=None):
        return self._forward(lambda stats: F.ada_norm(x, self.normalized_shape, self.scale, self.k, self.eps,
                                                      n_threads=n_threads, return_stats=stats), x)

    def backward(self, grad_out, *, n_threads=None):
        x, mean, std = self._saved_or_raise()
        return F.ada_norm_backward(grad_out, x, mean, std, self.scale, self.k, self.eps, n_threads=n_threads)

    def extra_repr(self):
        return f"{self.normalized_shape}, scale={self.scale}, k={self.k}, eps={self.eps}"


class _BatchRenorm(_BatchNorm):
    """Shared body of BatchRenorm1d/2d/3d: BatchNorm's parameters and buffers
    (so BatchNorm state dicts load), plus r_max and d_max (set them as the
    paper's schedule raises them).  Running statistics are always tracked."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, dtype=np.float32, *,
                 r_max=3.0, d_max=5.0, channel_axis=1):
        super().__init__(num_features, eps, momentum, affine, True, dtype, channel_axis=channel_axis)
        self.r_max, self.d_max = r_max, d_max

    def forward(self, x, *, n_threads=None):
        self._check_input(x)
        training = self.training
        y = self._forward(lambda stats: F.batch_renorm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training, self.momentum,
            self.eps, self.r_max, self.d_max, channel_axis=self.channel_axis, n_threads=n_threads,
            return_stats=stats), x, training)
        if training:
            self.num_batches_tracked += 1
        return y

    def backward(self, grad_out, *, n_threads=None):
        x, mean, invstd, r, d, training = self._saved_or_raise()
        grad_x, self.grad_weight, self.grad_bias = F.batch_renorm_backward(
            grad_out, x, mean, invstd, r, d, self.weight, self.bias, training,
            channel_axis=self.channel_axis, n_threads=n_threads)
        return grad_x

    def extra_repr(self):
        return f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}"


class BatchRenorm1d(_BatchRenorm):
    """Batch Renormalization of (N, C) or (N, C, L) input."""
    _input_ndims = (2, 3)


class BatchRenorm2d(_BatchRenorm):
    """Batch Renormalization of (N, C, H, W) input (or NHWC with channel_axis=-1)."""
    _input_ndims = (4,)


class BatchRenorm3d(_BatchRenorm):
    """Batch Renormalization of (N, C, D, H, W) input (or NDHWC with channel_axis=-1)."""
    _input_ndims = (5,)


class WeightStandardization(Module):
    """A weight standardized per output channel (Qiao et al. 2019), as
    `WeightNorm` produces a normalized weight: ``forward()`` returns
    (weight - mean) / (unbiased std + eps) of the parameter ``weight``
    (shape (out_channels, ...)); ``backward(grad)`` stores ``grad_weight``."""

    _parameter_names = ("weight",)

    def __init__(self, weight, eps=1e-5):
        super().__init__()
        weight = np.array(as_float_array(weight, "weight")[0], copy=True)
        if weight.ndim < 2:
            raise ValueError(f"weight must have at least 2 dimensions (out_channels, ...), got shape {weight.shape}")
        self.weight = weight
        self.eps = eps
        self.grad_weight = None

    def forward(self, *, n_threads=None):
        w, mean, std = F.weight_standardization(self.weight, self.eps, n_threads=n_threads, return_stats=True)
        self._saved = (mean, std)
        return w

    def __call__(self, **kwargs):
        return self.forward(**kwargs)

    def backward(self, grad, *, n_threads=None):
        mean, std = self._saved_or_raise()
        self.grad_weight = F.weight_standardization_backward(grad, self.weight, mean, std, self.eps,
                                                             n_threads=n_threads)
        return self.grad_weight

    def extra_repr(self):
        return f"shape={self.weight.shape}, eps={self.eps}"


class _SwitchableNorm(Module):
    """Switchable Normalization (the reference's SwitchNorm2d / 3d):
    parameters ``weight`` (ones; zeros with last_gamma), ``bias`` (zeros),
    ``mean_weight`` and ``var_weight`` (ones(3): instance, layer, batch
    logits); buffers ``running_mean`` and ``running_var`` (zeros, as the
    reference).  momentum in torch's convention (0.1 = the reference's 0.9).
    backward stores grad_weight, grad_bias, grad_mean_weight, grad_var_weight."""

    _parameter_names = ("weight", "bias", "mean_weight", "var_weight")
    _buffer_names = ("running_mean", "running_var")
    _input_ndims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, last_gamma=False, dtype=np.float32, *,
                 channel_axis=1):
        super().__init__()
        dtype = np.dtype(dtype)
        self.num_features = check_count(num_features, "num_features")
        self.eps, self.momentum, self.channel_axis = eps, momentum, channel_axis
        self.weight = (np.zeros if last_gamma else np.ones)(num_features, dtype)
        self.bias = np.zeros(num_features, dtype)
        self.mean_weight = np.ones(3, dtype)
        self.var_weight = np.ones(3, dtype)
        self.running_mean = np.zeros(num_features, compute_dtype(dtype))
        self.running_var = np.zeros(num_features, compute_dtype(dtype))
        self.grad_weight = self.grad_bias = self.grad_mean_weight = self.grad_var_weight = None

    def forward(self, x, *, n_threads=None):
        if np.ndim(x) not in self._input_ndims:
            raise ValueError(f"{type(self).__name__} expects {self._input_ndims[0]}-D input, got shape {np.shape(x)}")
        training = self.training
        return self._forward(lambda stats: F.switchable_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.mean_weight, self.var_weight,
            training, self.momentum, self.eps, channel_axis=self.channel_axis, n_threads=n_threads,
            return_stats=stats), x, training)

    def backward(self, grad_out, *, n_threads=None):
        x, mean_in, var_in, mean_bn, var_bn, training = self._saved_or_raise()
        (grad_x, self.grad_weight, self.grad_bias, self.grad_mean_weight,
         self.grad_var_weight) = F.switchable_norm_backward(
            grad_out, x, mean_in, var_in, mean_bn, var_bn, self.weight, self.bias, self.mean_weight,
            self.var_weight, training, self.eps, channel_axis=self.channel_axis, n_threads=n_threads)
        return grad_x

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class SwitchableNorm2d(_SwitchableNorm):
    """Switchable Normalization of (N, C, H, W) input (or NHWC with channel_axis=-1)."""
    _input_ndims = (4,)


class SwitchableNorm3d(_SwitchableNorm):
    """Switchable Normalization of (N, C, D, H, W) input (or NDHWC with channel_axis=-1)."""
    _input_ndims = (5,)


class _PowerNorm(Module):
    """PowerNorm (Shen et al. 2020), as the reference MaskPowerNorm without its
    GroupScaling1D: parameters ``weight`` (ones), ``bias`` (zeros); buffers
    ``running_phi`` (ones), ``ema_gz`` (zeros, the backward's running
    gradient statistic) and ``iters`` (the forward count).  During the first
    ``warmup_iters`` training forwards the batch's quadratic mean normalizes
    and running_phi follows the reference's cumulative average then moving
    average (one update with momentum 1 - alpha_fwd (t - 1) / t); after it,
    running_phi normalizes and is updated with momentum 1 - alpha_fwd."""

    _parameter_names = ("weight", "bias")
    _buffer_names = ("running_phi", "ema_gz", "iters")
    _input_ndims = ()

    def __init__(self, num_features, eps=1e-5, alpha_fwd=0.9, alpha_bkw=0.9, warmup_iters=10000,
                 affine=True, dtype=np.float32, *, channel_axis=1):
        super().__init__()
        dtype = np.dtype(dtype)
        self.num_features = check_count(num_features, "num_features")
        self.eps, self.alpha_fwd, self.alpha_bkw = eps, alpha_fwd, alpha_bkw
        self.warmup_iters = check_count(warmup_iters, "warmup_iters", minimum=0)
        self.channel_axis = channel_axis
        self.weight = np.ones(num_features, dtype) if affine else None
        self.bias = np.zeros(num_features, dtype) if affine else None
        self.running_phi = np.ones(num_features, compute_dtype(dtype))
        self.ema_gz = np.zeros(num_features, compute_dtype(dtype))
        self.iters = np.array(0, dtype=np.int64)
        self.grad_weight = self.grad_bias = None

    def forward(self, x, *, n_threads=None):
        if np.ndim(x) not in self._input_ndims:
            raise ValueError(f"{type(self).__name__} expects {' or '.join(map(str, self._input_ndims))}-D input, "
                             f"got shape {np.shape(x)}")
        training = self.training
        t = int(self.iters) + 1
        warmup = training and t <= self.warmup_iters
        momentum = 1.0 - self.alpha_fwd * ((t - 1) / t if t < self.warmup_iters else 1.0)
        y = self._forward(lambda stats: F.power_norm(
            x, self.running_phi, self.weight, self.bias, training, momentum, self.eps, warmup=warmup,
            channel_axis=self.channel_axis, n_threads=n_threads, return_stats=stats), x, training)
        if training:
            self.iters += 1
        return y

    def backward(self, grad_out, *, n_threads=None):
        x, psi2, phi, training = self._saved_or_raise()
        grad_x, self.grad_weight, self.grad_bias, ema = F.power_norm_backward(
            grad_out, x, psi2, phi, self.ema_gz, self.weight, self.bias, self.alpha_bkw, training, self.eps,
            channel_axis=self.channel_axis, n_threads=n_threads)
        self.ema_gz[...] = ema
        return grad_x

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, alpha_fwd={self.alpha_fwd}, alpha_bkw={self.alpha_bkw}, "
                f"warmup_iters={self.warmup_iters}")


class PowerNorm1d(_PowerNorm):
    """PowerNorm of (N, C) or (N, C, L) input (for transformers' (tokens, C) activations: N = tokens)."""
    _input_ndims = (2, 3)


class PowerNorm2d(_PowerNorm):
    """PowerNorm of (N, C, H, W) input (or NHWC with channel_axis=-1)."""
    _input_ndims = (4,)


class CosineLinear(Module):
    """A cosine-normalized fully connected layer (Luo et al. 2017):
    y = (x / ||x||) @ (weight / ||weight rows||)^T, parameter ``weight``
    (out_features, in_features), initialized as torch.nn.Linear's
    (uniform in +-1/sqrt(in_features), a fixed seed unless rng is given).
    No bias: the outputs are cosines.  backward stores ``grad_weight``."""

    _parameter_names = ("weight",)

    def __init__(self, in_features, out_features, centered=False, eps=1e-12, dtype=np.float32, *, rng=None):
        super().__init__()
        self.in_features = check_count(in_features, "in_features")
        self.out_features = check_count(out_features, "out_features")
        self.centered, self.eps = centered, eps
        rng = np.random.default_rng(0) if rng is None else rng
        bound = 1.0 / np.sqrt(in_features)
        self.weight = rng.uniform(-bound, bound, (out_features, in_features)).astype(np.dtype(dtype))
        self.grad_weight = None

    def forward(self, x, *, n_threads=None):
        return self._forward(lambda stats: F.cosine_linear(x, self.weight, centered=self.centered, eps=self.eps,
                                                           n_threads=n_threads, return_stats=stats), x)

    def backward(self, grad_out, *, n_threads=None):
        x, x_norm, w_norm = self._saved_or_raise()
        grad_x, self.grad_weight = F.cosine_linear_backward(grad_out, x, self.weight, x_norm, w_norm,
                                                            centered=self.centered, eps=self.eps,
                                                            n_threads=n_threads)
        return grad_x

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, centered={self.centered}"


class BatchLayerNorm(Module):
    """Batch Layer Normalization (Ziaee and Cano) of (N, ..., num_features)
    input: parameters ``weight`` (ones) and ``bias`` (zeros) of shape
    (num_features,); buffers ``running_mean`` / ``running_var`` over the
    positions of one sample (``positions`` = x.size / N, default
    num_features: 2-D input), updated as BatchNorm's; ``batch_size`` is the
    reference's B (None: each batch's N)."""

    _parameter_names = ("weight", "bias")
    _buffer_names = ("running_mean", "running_var")

    def __init__(self, num_features, positions=None, eps=1e-3, momentum=0.1, batch_size=None, dtype=np.float32):
        super().__init__()
        dtype = np.dtype(dtype)
        self.num_features = check_count(num_features, "num_features")
        K = self.num_features if positions is None else check_count(positions, "positions")
        self.eps, self.momentum, self.batch_size = eps, momentum, batch_size
        self.weight = np.ones(num_features, dtype)
        self.bias = np.zeros(num_features, dtype)
        self.running_mean = np.zeros(K, compute_dtype(dtype))
        self.running_var = np.ones(K, compute_dtype(dtype))
        self.grad_weight = self.grad_bias = None

    def forward(self, x, *, n_threads=None):
        training = self.training
        return self._forward(lambda stats: F.batch_layer_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training, self.momentum, self.eps,
            self.batch_size, n_threads=n_threads, return_stats=stats), x, training)

    def backward(self, grad_out, *, n_threads=None):
        x, mean_f, rstd_f, mean_b, invstd_b, training = self._saved_or_raise()
        grad_x, self.grad_weight, self.grad_bias = F.batch_layer_norm_backward(
            grad_out, x, mean_f, rstd_f, mean_b, invstd_b, self.weight, self.bias, training, self.batch_size,
            n_threads=n_threads)
        return grad_x

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, batch_size={self.batch_size}"


class ClusterNorm(Module):
    """Supervised cluster-based normalization (CB-Norm): parameters ``mean``
    and ``log_scale`` of shape (num_clusters, num_features) (the reference
    initializes them with Xavier; here mean 0 and log_scale 0 unless rng is
    given, which draws them as Xavier's uniform).  ``layer(x, cluster)``;
    backward stores grad_mean and grad_log_scale."""

    _parameter_names = ("mean", "log_scale")

    def __init__(self, num_clusters, num_features, dtype=np.float32, *, rng=None):
        super().__init__()
        self.num_clusters = check_count(num_clusters, "num_clusters")
        self.num_features = check_count(num_features, "num_features")
        shape, dtype = (num_clusters, num_features), np.dtype(dtype)
        if rng is None:
            self.mean, self.log_scale = np.zeros(shape, dtype), np.zeros(shape, dtype)
        else:
            bound = np.sqrt(6.0 / (num_clusters + num_features))
            self.mean = rng.uniform(-bound, bound, shape).astype(dtype)
            self.log_scale = rng.uniform(-bound, bound, shape).astype(dtype)
        self.grad_mean = self.grad_log_scale = None

    def __call__(self, x, cluster, **kwargs):
        return self.forward(x, cluster, **kwargs)

    def forward(self, x, cluster, *, n_threads=None):
        return self._forward(lambda stats: F.cluster_norm(x, cluster, self.mean, self.log_scale,
                                                          n_threads=n_threads, return_stats=stats), x,
                             np.array(cluster, copy=True))

    def backward(self, grad_out, *, n_threads=None):
        x, cluster = self._saved_or_raise()
        grad_x, self.grad_mean, self.grad_log_scale = F.cluster_norm_backward(
            grad_out, x, cluster, self.mean, self.log_scale, n_threads=n_threads)
        return grad_x

    def extra_repr(self):
        return f"{self.num_clusters}, {self.num_features}"


class MixtureNorm(Module):
    """Unsupervised cluster-based normalization (Mixture Normalization with
    learned components): parameters ``prior_logits`` (K,) zeros, ``means``
    (K, D) (a fixed-seed normal draw times 0.1 unless rng is given) and
    ``var_params`` (K, D), softplus^-1(1) so that the variances start at 1.
    backward stores grad_prior_logits, grad_means, grad_var_params."""

    _parameter_names = ("prior_logits", "means", "var_params")

    def __init__(self, num_components, num_features, eps=1e-5, dtype=np.float32, *, rng=None):
        super().__init__()
        K = check_count(num_components, "num_components")
        D = check_count(num_features, "num_features")
        dtype = np.dtype(dtype)
        rng = np.random.default_rng(0) if rng is None else rng
        self.eps = eps
        self.prior_logits = np.zeros(K, dtype)
        self.means = (0.1 * rng.standard_normal((K, D))).astype(dtype)
        self.var_params = np.full((K, D), np.log(np.expm1(1.0)), dtype)
        self.grad_prior_logits = self.grad_means = self.grad_var_params = None

    def forward(self, x, *, n_threads=None):
        return self._forward(lambda stats: F.mixture_norm(x, self.prior_logits, self.means, self.var_params,
                                                          self.eps, n_threads=n_threads, return_stats=stats), x)

    def backward(self, grad_out, *, n_threads=None):
        x, tau = self._saved_or_raise()
        grad_x, self.grad_prior_logits, self.grad_means, self.grad_var_params = F.mixture_norm_backward(
            grad_out, x, tau, self.prior_logits, self.means, self.var_params, self.eps, n_threads=n_threads)
        return grad_x

    def extra_repr(self):
        return f"{self.means.shape[0]}, {self.means.shape[1]}, eps={self.eps}"
