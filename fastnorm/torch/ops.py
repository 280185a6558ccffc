"""fastnorm's ops as ``torch.library`` custom ops (``torch.ops.fastnorm.*``).

Each forward is a custom op that returns its output(s) and the statistics
its backward needs; each backward is a custom op of its own; an autograd
formula joins them (``register_autograd``), and a fake implementation gives
every op's output shapes and dtypes without running it, so that eager mode,
``torch.compile`` (no graph breaks) and ``torch.export`` all see one op.
The implementations call the NumPy kernels over the tensors' memory
(``_bridge``): no copy for contiguous tensors, nor for channels_last ones in
the channel ops; bfloat16 / float16 tensors stay 16-bit.

The functions at the bottom (``layer_norm``, ``batch_norm``, ...) are the
torch.nn.functional spellings over these ops.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import functional as _fn
from . import _bridge as B

_IMPL = {}   # custom op -> its implementation (a plain function)
_EAGER = {}  # forward custom op -> the torch.autograd.Function of eager autograd


def _op(name):
    """Register fn as the custom op fastnorm::name (its schema from fn's annotations)."""
    def wrap(fn):
        op = torch.library.custom_op(f"fastnorm::{name}", fn, mutates_args=())
        _IMPL[op] = fn
        return op
    return wrap


def _call(ctx, op, *args):
    """A backward op called from an autograd formula: the implementation
    itself in eager autograd (ctx.direct), the custom op when traced."""
    return _IMPL[op](*args) if getattr(ctx, "direct", False) else op(*args)


def _autograd(op, grad, setup):
    """The autograd formula of a forward op, twice: registered on the custom
    op (torch.compile, torch.export, tensor subclasses) and as a
    torch.autograd.Function over the implementations for eager autograd,
    where the custom-op dispatcher would cost ~100 us per forward+backward."""
    op.register_autograd(grad, setup_context=setup)
    impl = _IMPL[op]

    def forward(ctx, *args):  # forward(ctx, ...): apply() then binds no signature
        output = impl(*args)
        ctx.direct = True
        setup(ctx, args, output)
        return output
    _EAGER[op] = type(f"Eager_{op._name.replace('::', '_')}", (torch.autograd.Function,),
                      {"forward": staticmethod(forward),
                       # the kernels' backward is not itself differentiable: a second
                       # backward says so instead of failing on a missing grad_fn
                       "backward": staticmethod(once_differentiable(grad))})


def _run(op, *args):
    """A forward op with autograd: eagerly through its autograd.Function when
    every tensor is a plain CPU tensor outside tracing, else the custom op."""
    if B.eager(args):
        return _EAGER[op].apply(*args)
    return op(*args)


def _none_grad(x):
    """The placeholder for a gradient that does not exist (a custom op
    returns tensors; the autograd formula turns it back into None)."""
    return x.new_empty((0,))


def _param_grad(g, p, x):
    return _none_grad(x) if p is None else B.tensor(g).to(p.dtype)


def _fake_param_grad(p, x):
    return _none_grad(x) if p is None else torch.empty_like(p, memory_format=torch.contiguous_format)


def _keep(p, g):
    """The gradient of an optional parameter for autograd."""
    return g if p is not None else None


def _layout_like(x):
    """A fake output laid out as the channel ops lay out theirs."""
    if B.channels_last(x):
        return torch.empty_like(x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _channel_grads(backward, grad, x, weight, bias, n_threads, *args):
    """A channel op's backward over the kernels: backward(grad, x, *args,
    weight, bias, channel_axis=, n_threads=) -> (dx, dw, db), x's layout
    kept; tensors among args (the statistics) as arrays."""
    x, xa, axis = B.channel_input(x)
    arrays = [B.array(a) if isinstance(a, torch.Tensor) else a for a in args]
    dx, dw, db = backward(B.channel_array(grad, axis), xa, *arrays, weight=B.param_array(weight),
                          bias=B.param_array(bias), channel_axis=axis, n_threads=B.threads(n_threads))
    return _from_channel_array(dx, axis), _param_grad(dw, weight, x), _param_grad(db, bias, x)


def _from_channel_array(a, axis):
    """A kernel's own channel output (in the layout of `axis`) as an (N, C, ...) tensor."""
    t = B.tensor(a)
    return t.movedim(-1, 1) if axis == -1 else t


# ---------------------------------------------------------------- LayerNorm

def _tensors(r, stats, axis=1):
    """A kernel's result (an array, or a tuple of arrays with return_stats)
    as tensors; the first is the output, in the layout of channel_axis."""
    if not stats:
        return B.tensor(r) if axis == 1 else _from_channel_array(r, axis)
    return (_from_channel_array(r[0], axis),) + tuple(B.tensor(a) for a in r[1:])


def _layer_norm(x, normalized_shape, weight, bias, eps, n_threads, stats):
    r = _fn.layer_norm(B.array(x.contiguous()), normalized_shape, B.param_array(weight),
                       B.param_array(bias), eps, n_threads=B.threads(n_threads), return_stats=stats)
    return _tensors(r, stats)


@_op("layer_norm")
def layer_norm_op(x: Tensor, normalized_shape: List[int], weight: Optional[Tensor],
                  bias: Optional[Tensor], eps: float, n_threads: int) -> Tuple[Tensor, Tensor, Tensor]:
    return _layer_norm(x, normalized_shape, weight, bias, eps, n_threads, True)


@layer_norm_op.register_fake
def _(x, normalized_shape, weight, bias, eps, n_threads):
    lead = x.shape[:x.dim() - len(normalized_shape)]
    sd = B.stat_dtype(x.dtype)
    return (torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(lead, dtype=sd),
            x.new_empty(lead, dtype=sd))


@_op("layer_norm_backward")
def layer_norm_backward_op(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor],
                           bias: Optional[Tensor], n_threads: int) -> Tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = _fn.layer_norm_backward(B.array(grad.contiguous()), B.array(x.contiguous()), B.array(mean),
                                         B.array(rstd), B.param_array(weight), B.param_array(bias),
                                         n_threads=B.threads(n_threads))
    return B.tensor(dx), _param_grad(dw, weight, x), _param_grad(db, bias, x)


@layer_norm_backward_op.register_fake
def _(grad, x, mean, rstd, weight, bias, n_threads):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), _fake_param_grad(weight, x),
            _fake_param_grad(bias, x))


def _layer_norm_setup(ctx, inputs, output):
    x, _, w, b, _, nt = inputs
    ctx.save_for_backward(x, w, b, output[1], output[2])
    ctx.n_threads = nt


def _layer_norm_grad(ctx, gy, _gmean, _grstd):
    x, w, b, mean, rstd = ctx.saved_tensors
    dx, dw, db = _call(ctx, layer_norm_backward_op, gy, x, mean, rstd, w, b, ctx.n_threads)
    return dx, None, _keep(w, dw), _keep(b, db), None, None


_autograd(layer_norm_op, _layer_norm_grad, _layer_norm_setup)


# ---------------------------------------------------------------- RMSNorm

def _rms_norm(x, normalized_shape, weight, eps, n_threads, stats):
    r = _fn.rms_norm(B.array(x.contiguous()), normalized_shape, B.param_array(weight), eps,
                     n_threads=B.threads(n_threads), return_stats=stats)
    return _tensors(r, stats)


@_op("rms_norm")
def rms_norm_op(x: Tensor, normalized_shape: List[int], weight: Optional[Tensor], eps: Optional[float],
                n_threads: int) -> Tuple[Tensor, Tensor]:
    return _rms_norm(x, normalized_shape, weight, eps, n_threads, True)


@rms_norm_op.register_fake
def _(x, normalized_shape, weight, eps, n_threads):
    lead = x.shape[:x.dim() - len(normalized_shape)]
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty(lead, dtype=B.stat_dtype(x.dtype)))


@_op("rms_norm_backward")
def rms_norm_backward_op(grad: Tensor, x: Tensor, rstd: Tensor, weight: Optional[Tensor],
                         n_threads: int) -> Tuple[Tensor, Tensor]:
    dx, dw = _fn.rms_norm_backward(B.array(grad.contiguous()), B.array(x.contiguous()), B.array(rstd),
                                   B.param_array(weight), n_threads=B.threads(n_threads))
    return B.tensor(dx), _param_grad(dw, weight, x)


@rms_norm_backward_op.register_fake
def _(grad, x, rstd, weight, n_threads):
    return torch.empty_like(x, memory_format=torch.contiguous_format), _fake_param_grad(weight, x)


def _rms_norm_setup(ctx, inputs, output):
    x, _, w, _, nt = inputs
    ctx.save_for_backward(x, w, output[1])
    ctx.n_threads = nt


def _rms_norm_grad(ctx, gy, _grstd):
    x, w, rstd = ctx.saved_tensors
    dx, dw = _call(ctx, rms_norm_backward_op, gy, x, rstd, w, ctx.n_threads)
    return dx, None, _keep(w, dw), None, None


_autograd(rms_norm_op, _rms_norm_grad, _rms_norm_setup)


# ---------------------------------------------------------------- fused residual add + norm

def _add_layer_norm(x, residual, normalized_shape, weight, bias, eps, n_threads, stats):
    r = _fn.add_layer_norm(B.array(x.contiguous()), B.array(residual.contiguous()), tuple(normalized_shape),
                           B.param_array(weight), B.param_array(bias), eps, n_threads=B.threads(n_threads),
                           return_stats=stats)
    return tuple(B.tensor(a) for a in r)


@_op("add_layer_norm")
def add_layer_norm_op(x: Tensor, residual: Tensor, normalized_shape: List[int], weight: Optional[Tensor],
                      bias: Optional[Tensor], eps: float, n_threads: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _add_layer_norm(x, residual, normalized_shape, weight, bias, eps, n_threads, True)


@add_layer_norm_op.register_fake
def _(x, residual, normalized_shape, weight, bias, eps, n_threads):
    lead = x.shape[:x.dim() - len(normalized_shape)]
    sd = B.stat_dtype(x.dtype)
    c = torch.contiguous_format
    return (torch.empty_like(x, memory_format=c), torch.empty_like(x, memory_format=c),
            x.new_empty(lead, dtype=sd), x.new_empty(lead, dtype=sd))


def _add_layer_norm_setup(ctx, inputs, output):
    _, _, _, w, b, _, nt = inputs
    ctx.save_for_backward(output[1], w, b, output[2], output[3])
    ctx.n_threads = nt


def _add_layer_norm_grad(ctx, gy, gh, _gmean, _grstd):
    h, w, b, mean, rstd = ctx.saved_tensors
    dx, dw, db = _call(ctx, layer_norm_backward_op, gy, h, mean, rstd, w, b, ctx.n_threads)
    dx = dx + gh  # h = x + residual feeds both the norm and the caller
    return dx, dx, None, _keep(w, dw), _keep(b, db), None, None


_autograd(add_layer_norm_op, _add_layer_norm_grad, _add_layer_norm_setup)


def _add_rms_norm(x, residual, normalized_shape, weight, eps, n_threads, stats):
    r = _fn.add_rms_norm(B.array(x.contiguous()), B.array(residual.contiguous()), tuple(normalized_shape),
                         B.param_array(weight), eps, n_threads=B.threads(n_threads), return_stats=stats)
    return tuple(B.tensor(a) for a in r)


@_op("add_rms_norm")
def add_rms_norm_op(x: Tensor, residual: Tensor, normalized_shape: List[int], weight: Optional[Tensor],
                    eps: Optional[float], n_threads: int) -> Tuple[Tensor, Tensor, Tensor]:
    return _add_rms_norm(x, residual, normalized_shape, weight, eps, n_threads, True)


@add_rms_norm_op.register_fake
def _(x, residual, normalized_shape, weight, eps, n_threads):
    lead = x.shape[:x.dim() - len(normalized_shape)]
    c = torch.contiguous_format
    return (torch.empty_like(x, memory_format=c), torch.empty_like(x, memory_format=c),
            x.new_empty(lead, dtype=B.stat_dtype(x.dtype)))


def _add_rms_norm_setup(ctx, inputs, output):
    _, _, _, w, _, nt = inputs
    ctx.save_for_backward(output[1], w, output[2])
    ctx.n_threads = nt


def _add_rms_norm_grad(ctx, gy, gh, _grstd):
    h, w, rstd = ctx.saved_tensors
    dx, dw = _call(ctx, rms_norm_backward_op, gy, h, rstd, w, ctx.n_threads)
    dx = dx + gh
    return dx, dx, None, _keep(w, dw), None, None


_autograd(add_rms_norm_op, _add_rms_norm_grad, _add_rms_norm_setup)


# ---------------------------------------------------------------- the channel ops

class _Stats:
    """Running statistics for an op that must not mutate its inputs (an
    autograd formula needs a functional op): the kernels update a float32 /
    float64 copy, returned as an output that the caller copies back (a
    bfloat16 module's buffers go through float32)."""

    def __init__(self, t, like):
        self.like = like
        self.work = None if t is None else t.to(torch.float64 if t.dtype == torch.float64 else torch.float32,
                                                 memory_format=torch.contiguous_format, copy=True)
        self.array = None if t is None else B.array(self.work)

    def result(self, t):
        return _none_grad(self.like) if t is None else self.work.to(t.dtype)


def _fake_stats(t, x):
    return _none_grad(x) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)


def _store(buffer, value):
    """Write an op's updated running statistic back into the caller's buffer."""
    if buffer is not None:
        with torch.no_grad():
            buffer.copy_(value)


def _batch_norm(x, rm, rv, weight, bias, training, momentum, eps, n_threads, stats):
    """rm, rv: the running statistics' arrays (updated in place) or None."""
    x, xa, axis = B.channel_input(x)
    r = _fn.batch_norm(xa, rm, rv, B.param_array(weight), B.param_array(bias), training, momentum, eps,
                       channel_axis=axis, n_threads=B.threads(n_threads), return_stats=stats)
    return _tensors(r, stats, axis)


@_op("batch_norm")
def batch_norm_op(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                  weight: Optional[Tensor], bias: Optional[Tensor], training: bool, momentum: float,
                  eps: float, n_threads: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, mean, invstd, the updated running mean, var) (empty when not given)."""
    rm, rv = _Stats(running_mean, x), _Stats(running_var, x)
    y, mean, invstd = _batch_norm(x, rm.array, rv.array, weight, bias, training, momentum, eps, n_threads, True)
    return y, mean, invstd, rm.result(running_mean), rv.result(running_var)


@batch_norm_op.register_fake
def _(x, running_mean, running_var, weight, bias, training, momentum, eps, n_threads):
    sd = B.stat_dtype(x.dtype)
    return (_layout_like(x), x.new_empty((x.shape[1],), dtype=sd), x.new_empty((x.shape[1],), dtype=sd),
            _fake_stats(running_mean, x), _fake_stats(running_var, x))


@_op("batch_norm_backward")
def batch_norm_backward_op(grad: Tensor, x: Tensor, mean: Tensor, invstd: Tensor, weight: Optional[Tensor],
                           bias: Optional[Tensor], training: bool, n_threads: int) -> Tuple[Tensor, Tensor, Tensor]:
    return _channel_grads(lambda g, x_, m, s, **kw: _fn.batch_norm_backward(g, x_, m, s, training=training, **kw),
                          grad, x, weight, bias, n_threads, mean, invstd)


@batch_norm_backward_op.register_fake
def _(grad, x, mean, invstd, weight, bias, training, n_threads):
    return _layout_like(x), _fake_param_grad(weight, x), _fake_param_grad(bias, x)


def _running_setup(ctx, inputs, output):
    """BatchNorm's and InstanceNorm's autograd context: the two ops take
    (x, running_mean, running_var, weight, bias, flag, momentum, eps,
    n_threads), flag being training / use_input_stats."""
    x, _, _, w, b, flag, _, _, nt = inputs
    ctx.save_for_backward(x, w, b, output[1], output[2])
    ctx.flag, ctx.n_threads = flag, nt


def _running_grad(backward_op):
    """The autograd formula of BatchNorm / InstanceNorm over its backward op."""
    def grad(ctx, gy, _gmean, _gstd, _grm, _grv):
        x, w, b, mean, std = ctx.saved_tensors
        dx, dw, db = _call(ctx, backward_op, gy, x, mean, std, w, b, ctx.flag, ctx.n_threads)
        return dx, None, None, _keep(w, dw), _keep(b, db), None, None, None, None
    return grad


_autograd(batch_norm_op, _running_grad(batch_norm_backward_op), _running_setup)


def _group_norm(x, num_groups, weight, bias, eps, n_threads, stats):
    x, xa, axis = B.channel_input(x)
    r = _fn.group_norm(xa, num_groups, B.param_array(weight), B.param_array(bias), eps, channel_axis=axis,
                       n_threads=B.threads(n_threads), return_stats=stats)
    return _tensors(r, stats, axis)


@_op("group_norm")
def group_norm_op(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                  n_threads: int) -> Tuple[Tensor, Tensor, Tensor]:
    return _group_norm(x, num_groups, weight, bias, eps, n_threads, True)


@group_norm_op.register_fake
def _(x, num_groups, weight, bias, eps, n_threads):
    sd = B.stat_dtype(x.dtype)
    shape = (x.shape[0], num_groups)
    return _layout_like(x), x.new_empty(shape, dtype=sd), x.new_empty(shape, dtype=sd)


@_op("group_norm_backward")
def group_norm_backward_op(grad: Tensor, x: Tensor, num_groups: int, mean: Tensor, rstd: Tensor,
                           weight: Optional[Tensor], bias: Optional[Tensor],
                           n_threads: int) -> Tuple[Tensor, Tensor, Tensor]:
    return _channel_grads(_fn.group_norm_backward, grad, x, weight, bias, n_threads, num_groups, mean, rstd)


@group_norm_backward_op.register_fake
def _(grad, x, num_groups, mean, rstd, weight, bias, n_threads):
    return _layout_like(x), _fake_param_grad(weight, x), _fake_param_grad(bias, x)


def _group_norm_setup(ctx, inputs, output):
    x, g, w, b, _, nt = inputs
    ctx.save_for_backward(x, w, b, output[1], output[2])
    ctx.num_groups, ctx.n_threads = g, nt


def _group_norm_grad(ctx, gy, _gmean, _grstd):
    x, w, b, mean, rstd = ctx.saved_tensors
    dx, dw, db = _call(ctx, group_norm_backward_op, gy, x, ctx.num_groups, mean, rstd, w, b, ctx.n_threads)
    return dx, None, _keep(w, dw), _keep(b, db), None, None


_autograd(group_norm_op, _group_norm_grad, _group_norm_setup)


def _instance_norm(x, rm, rv, weight, bias, use_input_stats, momentum, eps, n_threads, stats):
    x, xa, axis = B.channel_input(x)
    r = _fn.instance_norm(xa, rm, rv, B.param_array(weight), B.param_array(bias), use_input_stats, momentum,
                          eps, channel_axis=axis, n_threads=B.threads(n_threads), return_stats=stats)
    return _tensors(r, stats, axis)


@_op("instance_norm")
def instance_norm_op(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                     weight: Optional[Tensor], bias: Optional[Tensor], use_input_stats: bool, momentum: float,
                     eps: float, n_threads: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, mean, rstd, the updated running mean, var) (empty when not given)."""
    rm, rv = _Stats(running_mean, x), _Stats(running_var, x)
    y, mean, rstd = _instance_norm(x, rm.array, rv.array, weight, bias, use_input_stats, momentum, eps,
                                   n_threads, True)
    return y, mean, rstd, rm.result(running_mean), rv.result(running_var)


@instance_norm_op.register_fake
def _(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, n_threads):
    sd = B.stat_dtype(x.dtype)
    shape = (x.shape[0], x.shape[1])
    return (_layout_like(x), x.new_empty(shape, dtype=sd), x.new_empty(shape, dtype=sd),
            _fake_stats(running_mean, x), _fake_stats(running_var, x))


@_op("instance_norm_backward")
def instance_norm_backward_op(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor],
                              bias: Optional[Tensor], use_input_stats: bool,
                              n_threads: int) -> Tuple[Tensor, Tensor, Tensor]:
    return _channel_grads(lambda g, x_, m, s, **kw: _fn.instance_norm_backward(
        g, x_, m, s, use_input_stats=use_input_stats, **kw), grad, x, weight, bias, n_threads, mean, rstd)


@instance_norm_backward_op.register_fake
def _(grad, x, mean, rstd, weight, bias, use_input_stats, n_threads):
    return _layout_like(x), _fake_param_grad(weight, x), _fake_param_grad(bias, x)


_autograd(instance_norm_op, _running_grad(instance_norm_backward_op), _running_setup)


def _local_response_norm(x, size, alpha, beta, k, n_threads, stats):
    x, xa, axis = B.channel_input(x)
    r = _fn.local_response_norm(xa, size, alpha, beta, k, channel_axis=axis, n_threads=B.threads(n_threads),
                                return_stats=stats)
    if not stats:
        return _from_channel_array(r, axis)
    return _from_channel_array(r[0], axis), _from_channel_array(r[1], axis)


@_op("local_response_norm")
def local_response_norm_op(x: Tensor, size: int, alpha: float, beta: float, k: float,
                           n_threads: int) -> Tuple[Tensor, Tensor]:
    return _local_response_norm(x, size, alpha, beta, k, n_threads, True)


@local_response_norm_op.register_fake
def _(x, size, alpha, beta, k, n_threads):
    y = _layout_like(x)
    return y, torch.empty_like(y, dtype=B.stat_dtype(x.dtype))


@_op("local_response_norm_backward")
def local_response_norm_backward_op(grad: Tensor, x: Tensor, scale: Tensor, size: int, alpha: float,
                                    beta: float, k: float, n_threads: int) -> Tensor:
    x, xa, axis = B.channel_input(x)
    dx = _fn.local_response_norm_backward(B.channel_array(grad, axis), xa, B.channel_array(scale, axis),
                                          size, alpha, beta, k, channel_axis=axis,
                                          n_threads=B.threads(n_threads))
    return _from_channel_array(dx, axis)


@local_response_norm_backward_op.register_fake
def _(grad, x, scale, size, alpha, beta, k, n_threads):
    return _layout_like(x)


def _lrn_setup(ctx, inputs, output):
    x, size, alpha, beta, k, nt = inputs
    ctx.save_for_backward(x, output[1])
    ctx.args = (size, alpha, beta, k, nt)


def _lrn_grad(ctx, gy, _gscale):
    x, scale = ctx.saved_tensors
    return (_call(ctx, local_response_norm_backward_op, gy, x, scale, *ctx.args),) + (None,) * 5


_autograd(local_response_norm_op, _lrn_grad, _lrn_setup)


def _filter_response_norm(x, weight, bias, tau, eps, n_threads, stats):
    x, xa, axis = B.channel_input(x)
    r = _fn.filter_response_norm(xa, B.param_array(weight), B.param_array(bias), B.param_array(tau), eps,
                                 channel_axis=axis, n_threads=B.threads(n_threads), return_stats=stats)
    return _tensors(r, stats, axis)


@_op("filter_response_norm")
def filter_response_norm_op(x: Tensor, weight: Tensor, bias: Tensor, tau: Optional[Tensor], eps: float,
                            n_threads: int) -> Tuple[Tensor, Tensor]:
    return _filter_response_norm(x, weight, bias, tau, eps, n_threads, True)


@filter_response_norm_op.register_fake
def _(x, weight, bias, tau, eps, n_threads):
    return _layout_like(x), x.new_empty((x.shape[0], x.shape[1]), dtype=B.stat_dtype(x.dtype))


@_op("filter_response_norm_backward")
def filter_response_norm_backward_op(grad: Tensor, x: Tensor, rstd: Tensor, weight: Tensor, bias: Tensor,
                                     tau: Optional[Tensor],
                                     n_threads: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    x, xa, axis = B.channel_input(x)
    out = _fn.filter_response_norm_backward(B.channel_array(grad, axis), xa, B.array(rstd), B.param_array(weight),
                                            B.param_array(bias), B.param_array(tau), channel_axis=axis,
                                            n_threads=B.threads(n_threads))
    dx, dw, db = out[0], out[1], out[2]
    dtau = out[3] if tau is not None else None
    return (_from_channel_array(dx, axis), _param_grad(dw, weight, x), _param_grad(db, bias, x),
            _param_grad(dtau, tau, x))


@filter_response_norm_backward_op.register_fake
def _(grad, x, rstd, weight, bias, tau, n_threads):
    return _layout_like(x), _fake_param_grad(weight, x), _fake_param_grad(bias, x), _fake_param_grad(tau, x)


def _frn_setup(ctx, inputs, output):
    x, w, b, tau, _, nt = inputs
    ctx.save_for_backward(x, w, b, tau, output[1])
    ctx.n_threads = nt


def _frn_grad(ctx, gy, _grstd):
    x, w, b, tau, rstd = ctx.saved_tensors
    dx, dw, db, dtau = _call(ctx, filter_response_norm_backward_op, gy, x, rstd, w, b, tau, ctx.n_threads)
    return dx, dw, db, _keep(tau, dtau), None, None


_autograd(filter_response_norm_op, _frn_grad, _frn_setup)


# ---------------------------------------------------------------- Lp normalize

def _normalize(x, p, dim, eps, n_threads, stats):
    r = _fn.normalize(B.array(x.contiguous()), p, dim, eps, n_threads=B.threads(n_threads), return_stats=stats)
    return _tensors(r, stats)


@_op("normalize")
def normalize_op(x: Tensor, p: float, dim: int, eps: float, n_threads: int) -> Tuple[Tensor, Tensor]:
    return _normalize(x, p, dim, eps, n_threads, True)


@normalize_op.register_fake
def _(x, p, dim, eps, n_threads):
    shape = list(x.shape)
    del shape[dim]
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty(shape, dtype=B.stat_dtype(x.dtype)))


@_op("normalize_backward")
def normalize_backward_op(grad: Tensor, x: Tensor, norm: Tensor, p: float, dim: int, eps: float,
                          n_threads: int) -> Tensor:
    return B.tensor(_fn.normalize_backward(B.array(grad.contiguous()), B.array(x.contiguous()), B.array(norm),
                                           p, dim, eps, n_threads=B.threads(n_threads)))


@normalize_backward_op.register_fake
def _(grad, x, norm, p, dim, eps, n_threads):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _normalize_setup(ctx, inputs, output):
    x, p, dim, eps, nt = inputs
    ctx.save_for_backward(x, output[1])
    ctx.args = (p, dim, eps, nt)


def _normalize_grad(ctx, gy, _gnorm):
    x, norm = ctx.saved_tensors
    return (_call(ctx, normalize_backward_op, gy, x, norm, *ctx.args),) + (None,) * 4


_autograd(normalize_op, _normalize_grad, _normalize_setup)


# ---------------------------------------------------------------- torch.nn.functional spellings

def _shape(normalized_shape):
    if isinstance(normalized_shape, int):
        return [normalized_shape]
    return [int(n) for n in normalized_shape]


def _threads_arg(n_threads):
    """The ops' thread argument: 0 follows torch.get_num_threads()."""
    if n_threads is None:
        return 0
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(f"fastnorm.torch: n_threads must be a positive int or None, got {n_threads!r}")
    return n_threads


def _check(**tensors):
    """The custom-op path's argument check (the eager path takes only
    tensors B.plain accepts)."""
    for name, t in tensors.items():
        if t is not None:
            B.check_tensor(t, name)


def _no_grad_for(**tensors):
    """A clear error for inputs whose gradient fastnorm does not compute."""
    if torch.is_grad_enabled():
        for name, t in tensors.items():
            if t is not None and t.requires_grad:
                raise ValueError(f"fastnorm.torch computes no gradient for {name}; it requires grad")


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, n_threads=None):
    """torch.nn.functional.layer_norm."""
    if B.plain(x, weight, bias):  # the kernels take every spelling of normalized_shape
        return _layer_norm(x, normalized_shape, weight, bias, eps, _threads_arg(n_threads), False)
    ns, eps, nt = _shape(normalized_shape), float(eps), _threads_arg(n_threads)
    _check(x=x, weight=weight, bias=bias)
    return _run(layer_norm_op, x, ns, weight, bias, eps, nt)[0]


def rms_norm(x, normalized_shape, weight=None, eps=None, *, n_threads=None):
    """torch.nn.functional.rms_norm (eps None: the dtype's machine epsilon)."""
    if B.plain(x, weight):
        return _rms_norm(x, normalized_shape, weight, eps, _threads_arg(n_threads), False)
    ns, eps, nt = _shape(normalized_shape), None if eps is None else float(eps), _threads_arg(n_threads)
    _check(x=x, weight=weight)
    return _run(rms_norm_op, x, ns, weight, eps, nt)[0]


def add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, *, n_threads=None):
    """(layer_norm(x + residual), x + residual), fused."""
    ns, eps, nt = _shape(normalized_shape), float(eps), _threads_arg(n_threads)
    if B.plain(x, residual, weight, bias):
        return _add_layer_norm(x, residual, ns, weight, bias, eps, nt, False)
    _check(x=x, residual=residual, weight=weight, bias=bias)
    return _run(add_layer_norm_op, x, residual, ns, weight, bias, eps, nt)[:2]


def add_rms_norm(x, residual, normalized_shape, weight=None, eps=None, *, n_threads=None):
    """(rms_norm(x + residual), x + residual), fused."""
    ns, eps, nt = _shape(normalized_shape), None if eps is None else float(eps), _threads_arg(n_threads)
    if B.plain(x, residual, weight):
        return _add_rms_norm(x, residual, ns, weight, eps, nt, False)
    _check(x=x, residual=residual, weight=weight)
    return _run(add_rms_norm_op, x, residual, ns, weight, eps, nt)[:2]


def _direct_stats(update, *stats):
    """Arrays of the running statistics for the eager path, and the
    write-backs to run after the kernel: float32 / float64 buffers are
    viewed and updated in place; others (a bfloat16 module's) go through a
    float32 copy, written back only when the op updates them."""
    arrays, back = [], []
    for t in stats:
        if t is None:
            arrays.append(None)
        elif t.dtype in (torch.float32, torch.float64) and t.is_contiguous():
            arrays.append(B.array(t))
        else:
            work = t.float()
            arrays.append(B.array(work))
            if update:
                back.append((t, work))
    return arrays, back


def _write_back(back):
    for t, work in back:
        t.copy_(work)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               *, n_threads=None):
    """torch.nn.functional.batch_norm (running statistics updated in place when training)."""
    _no_grad_for(running_mean=running_mean, running_var=running_var)
    training, momentum = bool(training), 0.0 if momentum is None else float(momentum)
    eps, nt = float(eps), _threads_arg(n_threads)
    if B.plain(x, weight, bias, running_mean, running_var):
        (rm, rv), back = _direct_stats(training, running_mean, running_var)
        y = _batch_norm(x, rm, rv, weight, bias, training, momentum, eps, nt, False)
        _write_back(back)
        return y
    _check(x=x, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    y, _, _, rm, rv = _run(batch_norm_op, x, running_mean, running_var, weight, bias, training, momentum, eps, nt)
    if training:
        _store(running_mean, rm)
        _store(running_var, rv)
    return y


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, n_threads=None):
    """torch.nn.functional.group_norm."""
    num_groups, eps, nt = int(num_groups), float(eps), _threads_arg(n_threads)
    if B.plain(x, weight, bias):
        return _group_norm(x, num_groups, weight, bias, eps, nt, False)
    _check(x=x, weight=weight, bias=bias)
    return _run(group_norm_op, x, num_groups, weight, bias, eps, nt)[0]


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, n_threads=None):
    """torch.nn.functional.instance_norm."""
    _no_grad_for(running_mean=running_mean, running_var=running_var)
    use_input_stats, momentum = bool(use_input_stats), 0.0 if momentum is None else float(momentum)
    eps, nt = float(eps), _threads_arg(n_threads)
    if B.plain(x, weight, bias, running_mean, running_var):
        (rm, rv), back = _direct_stats(use_input_stats, running_mean, running_var)
        y = _instance_norm(x, rm, rv, weight, bias, use_input_stats, momentum, eps, nt, False)
        _write_back(back)
        return y
    _check(x=x, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    y, _, _, rm, rv = _run(instance_norm_op, x, running_mean, running_var, weight, bias, use_input_stats, momentum,
                                       eps, nt)
    if use_input_stats:
        _store(running_mean, rm)
        _store(running_var, rv)
    return y


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0, *, n_threads=None):
    """torch.nn.functional.local_response_norm."""
    args = (int(size), float(alpha), float(beta), float(k), _threads_arg(n_threads))
    if B.plain(x):
        return _local_response_norm(x, *args, False)
    _check(x=x)
    return _run(local_response_norm_op, x, *args)[0]


def filter_response_norm(x, weight, bias, tau=None, eps=1e-6, *, n_threads=None):
    """Filter Response Normalization (with TLU when tau is given)."""
    eps, nt = float(eps), _threads_arg(n_threads)
    if B.plain(x, weight, bias, tau):
        return _filter_response_norm(x, weight, bias, tau, eps, nt, False)
    _check(x=x, weight=weight, bias=bias, tau=tau)
    return _run(filter_response_norm_op, x, weight, bias, tau, eps, nt)[0]


def normalize(x, p=2.0, dim=1, eps=1e-12, *, n_threads=None):
    """torch.nn.functional.normalize."""
    args = (float(p), int(dim), float(eps), _threads_arg(n_threads))
    if B.plain(x):
        return _normalize(x, *args, False)
    _check(x=x)
    return _run(normalize_op, x, *args)[0]
