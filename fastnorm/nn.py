"""Stateful layers with torch.nn's names, arguments and attributes.

Parameters and buffers are NumPy arrays under torch's names, so
``layer.load_state_dict(torch_layer.state_dict())`` loads a torch model's
weights as they are.  ``forward(x)`` (or calling the layer) saves what
``backward(grad_out)`` needs; ``backward`` returns grad_x and stores the
parameter gradients as ``grad_weight`` / ``grad_bias``.
"""
import numbers

import numpy as np

from . import functional as F

__all__ = ["Module", "LayerNorm", "RMSNorm"]


def _to_numpy(value):
    """A state-dict value (NumPy array, torch tensor, array-like) as an ndarray."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _shape_tuple(normalized_shape):
    if isinstance(normalized_shape, (numbers.Integral, np.integer)):
        return (int(normalized_shape),)
    return tuple(int(d) for d in normalized_shape)


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

    def parameters(self):
        return [getattr(self, n) for n in self._parameter_names if getattr(self, n) is not None]

    def state_dict(self):
        """Parameters and buffers under torch's keys (copies)."""
        state = {}
        for name in self._parameter_names + self._buffer_names:
            value = getattr(self, name)
            if value is not None:
                state[name] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Load parameters and buffers; torch tensors are accepted as they are.

        As torch: with strict=True missing or unexpected keys raise; a value
        of the wrong shape always raises."""
        expected = [n for n in self._parameter_names + self._buffer_names if getattr(self, n) is not None]
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if strict and (missing or unexpected):
            raise KeyError(
                f"Error(s) in loading state_dict for {type(self).__name__}: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        for key in expected:
            if key not in state_dict:
                continue
            current = getattr(self, key)
            value = _to_numpy(state_dict[key])
            if value.shape != current.shape:
                raise ValueError(
                    f"size mismatch for {key}: copying a param with shape {value.shape}, "
                    f"the shape in the current model is {current.shape}"
                )
            current[...] = value  # in place, keeping dtype (as torch's copy_)
        return self

    def _saved_or_raise(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
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
    dtype : float32 (default) or float64.
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
        y, mean, rstd = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps,
                                     n_threads=n_threads, return_stats=True)
        self._saved = (np.asarray(x), mean, rstd)
        return y

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
    dtype : float32 (default) or float64.
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
        y, rstd = F.rms_norm(x, self.normalized_shape, self.weight, self.eps,
                             n_threads=n_threads, return_stats=True)
        self._saved = (np.asarray(x), rstd)
        return y

    def backward(self, grad_out, *, n_threads=None):
        x, rstd = self._saved_or_raise()
        grad_x, self.grad_weight = F.rms_norm_backward(grad_out, x, rstd, self.weight, n_threads=n_threads)
        return grad_x

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
