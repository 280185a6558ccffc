"""The op registry: one record per public op, iterated by the tests and the benchmarks.

Each `Op` names its forward and backward in `fastnorm.functional`, its
float64 twin in `fastnorm.reference`, its layer in `fastnorm.nn` (or why it
has none), and builds an example call: the forward's arguments for a given
dtype and shape, and how the backward is called from the forward's saved
statistics.  A new op is one `Op(...)` line here; `tests/test_registry.py`
fails until its backward, twin and layer exist and agree.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import functional, nn, reference

__all__ = ["Op", "Call", "OPS", "by_name"]


@dataclass
class Call:
    """An example call of an op.

    args / kwargs: the forward's; n_outputs: how many leading results of
    ``forward(..., return_stats=True)`` are outputs (the rest are the saved
    statistics); backward(outputs, stats, grads) -> (args, kwargs) of the
    backward, given the forward's outputs and statistics and one upstream
    gradient per output (the ops with two outputs, the fused add + norm, take
    the gradient of y; h's flows to x and residual unchanged).
    """
    args: tuple
    kwargs: dict
    n_outputs: int
    backward: Callable


@dataclass(frozen=True)
class Op:
    name: str
    family: str
    example: Callable               # (rng, dtype, shape or None) -> Call
    backward_name: str
    layer: Optional[str] = None     # class in fastnorm.nn
    no_layer: Optional[str] = None  # why there is none
    default_shape: tuple = ()
    mutates: tuple = ()             # positional args the forward updates in place (running stats)
    make_layer: Optional[Callable] = None   # (x, dtype) -> (layer, forward args)

    @property
    def forward(self):
        return getattr(functional, self.name)

    @property
    def backward(self):
        return getattr(functional, self.backward_name)

    @property
    def reference(self):
        return getattr(reference, self.name)

    @property
    def reference_backward(self):
        return getattr(reference, self.backward_name)

    @property
    def layer_class(self):
        return getattr(nn, self.layer) if self.layer else None


def _values(rng, shape, dtype, scale=1.0, offset=0.0):
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


def _param(rng, n, dtype, offset):
    return (offset + 0.25 * rng.standard_normal(n)).astype(dtype)


# ---------------------------------------------------------------- row ops

def _layer_norm(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    D = shape[-1]
    w, b = _param(rng, D, dtype, 1.0), _param(rng, D, dtype, 0.0)
    return Call((x, D, w, b, 1e-5), {}, 1,
                lambda out, st, g: ((g[0], x, st[0], st[1], w, b), {}))


def _rms_norm(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    D = shape[-1]
    w = _param(rng, D, dtype, 1.0)
    return Call((x, D, w), {}, 1, lambda out, st, g: ((g[0], x, st[0], w), {}))


def _add_norm_example(rms):
    def example(rng, dtype, shape):
        x = _values(rng, shape, dtype, 2.0, 0.5)
        r = _values(rng, shape, dtype, 1.0, 0.0)
        D = shape[-1]
        w = _param(rng, D, dtype, 1.0)
        # the norm's backward runs on h = x + residual, the forward's second output
        if rms:
            return Call((x, r, D, w), {}, 2, lambda out, st, g: ((g[0], out[1], st[0], w), {}))
        b = _param(rng, D, dtype, 0.0)
        return Call((x, r, D, w, b), {}, 2,
                    lambda out, st, g: ((g[0], out[1], st[0], st[1], w, b), {}))
    return example


def _normalize(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    return Call((x,), {"p": 2.0, "dim": -1}, 1,
                lambda out, st, g: ((g[0], x, st[0]), {"p": 2.0, "dim": -1}))


def _weight_norm(rng, dtype, shape):
    v = _values(rng, shape, dtype, 1.0, 0.2)
    g = _param(rng, shape[0], dtype, 1.0).reshape((shape[0],) + (1,) * (len(shape) - 1))
    return Call((v, g), {"dim": 0}, 1, lambda out, st, gr: ((gr[0], v, g, st[0]), {"dim": 0}))


# ---------------------------------------------------------------- channel ops

def _batch_norm(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    C = shape[1]
    cdt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    rm, rv = np.zeros(C, cdt), np.ones(C, cdt)
    w, b = _param(rng, C, dtype, 1.0), _param(rng, C, dtype, 0.0)
    return Call((x, rm, rv, w, b, True), {}, 1,
                lambda out, st, g: ((g[0], x, st[0], st[1], w, b, True), {}))


def _group_norm(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    C = shape[1]
    G = 4 if C % 4 == 0 else 1
    w, b = _param(rng, C, dtype, 1.0), _param(rng, C, dtype, 0.0)
    return Call((x, G, w, b), {}, 1, lambda out, st, g: ((g[0], x, G, st[0], st[1], w, b), {}))


def _instance_norm(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    C = shape[1]
    w, b = _param(rng, C, dtype, 1.0), _param(rng, C, dtype, 0.0)
    return Call((x, None, None, w, b), {}, 1, lambda out, st, g: ((g[0], x, st[0], st[1], w, b), {}))


def _frn(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    C = shape[1]
    w, b, t = _param(rng, C, dtype, 1.0), _param(rng, C, dtype, 0.0), _param(rng, C, dtype, -0.5)
    return Call((x, w, b, t), {}, 1, lambda out, st, g: ((g[0], x, st[0], w, b, t), {}))


def _lrn(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    kw = {"alpha": 1e-2, "beta": 0.75, "k": 1.0}
    return Call((x, 3), dict(kw), 1, lambda out, st, g: ((g[0], x, st[0], 3), dict(kw)))


# ---------------------------------------------------------------- feature scaling

def _standardize(rng, dtype, shape):
    x = _values(rng, shape, dtype, 3.0, 2.0)
    return Call((x,), {}, 1, lambda out, st, g: ((g[0], x, st[0], st[1]), {}))


def _min_max_scale(rng, dtype, shape):
    x = _values(rng, shape, dtype, 3.0, 2.0)
    return Call((x,), {}, 1, lambda out, st, g: ((g[0], x, st[0], st[1]), {}))


# ---------------------------------------------------------------- the newer members

def _dynamic_tanh(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    C = shape[-1]
    a = np.full(1, 0.7, dtype)
    w, b = _param(rng, C, dtype, 1.0), _param(rng, C, dtype, 0.0)
    return Call((x, a, w, b), {}, 1, lambda out, st, g: ((g[0], x, a, w, b), {}))


def _ada_norm(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    kw = {"scale": 2.0, "k": 0.1}
    return Call((x, shape[-1]), dict(kw), 1, lambda out, st, g: ((g[0], x, st[0], st[1]), dict(kw)))


def _weight_standardization(rng, dtype, shape):
    w = _values(rng, shape, dtype, 0.5, 0.1)
    return Call((w,), {}, 1, lambda out, st, g: ((g[0], w, st[0], st[1]), {}))


def _batch_renorm(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    C = shape[1]
    cdt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    # running statistics away from the batch's, so that r and d are not 1 and 0
    rm = (0.3 + 0.2 * rng.standard_normal(C)).astype(cdt)
    rv = (3.0 + rng.random(C)).astype(cdt)
    w, b = _param(rng, C, dtype, 1.0), _param(rng, C, dtype, 0.0)
    kw = {"r_max": 1.5, "d_max": 0.1}  # some channels clipped, some not
    return Call((x, rm, rv, w, b, True), dict(kw), 1,
                lambda out, st, g: ((g[0], x, st[0], st[1], st[2], st[3], w, b, True), {}))


def _switchable_norm(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    C = shape[1]
    cdt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    rm, rv = np.zeros(C, cdt), np.ones(C, cdt)
    w, b = _param(rng, C, dtype, 1.0), _param(rng, C, dtype, 0.0)
    mw, vw = _param(rng, 3, dtype, 0.5), _param(rng, 3, dtype, -0.2)
    return Call((x, rm, rv, w, b, mw, vw, True), {}, 1,
                lambda out, st, g: ((g[0], x, st[0], st[1], st[2], st[3], w, b, mw, vw, True), {}))


def _power_norm(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    C = shape[1]
    cdt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    phi = (1.0 + rng.random(C)).astype(cdt)
    ema = (0.1 * rng.standard_normal(C)).astype(dtype)  # returned updated, in its own dtype
    w, b = _param(rng, C, dtype, 1.0), _param(rng, C, dtype, 0.0)
    return Call((x, phi, w, b, True), {}, 1,
                lambda out, st, g: ((g[0], x, st[0], st[1], ema, w, b), {}))


def _cosine_linear(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    # a square weight: y has x's shape, as the layout and out= checks expect
    w = _values(rng, (shape[-1], shape[-1]), dtype, 0.3, 0.05)
    return Call((x, w), {}, 1, lambda out, st, g: ((g[0], x, w, st[0], st[1]), {}))


def _batch_layer_norm(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    K = int(np.prod(shape[1:]))
    cdt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    rm, rv = np.zeros(K, cdt), np.ones(K, cdt)
    w, b = _param(rng, shape[-1], dtype, 1.0), _param(rng, shape[-1], dtype, 0.0)
    return Call((x, rm, rv, w, b, True), {}, 1,
                lambda out, st, g: ((g[0], x, st[0], st[1], st[2], st[3], w, b, True), {}))


def _cluster_norm(rng, dtype, shape):
    x = _values(rng, shape, dtype, 2.0, 0.5)
    K, D = 3, shape[-1]
    cluster = rng.integers(0, K, int(np.prod(shape[:-1])))
    mean = _values(rng, (K, D), dtype, 0.5, 0.2)
    log_scale = _values(rng, (K, D), dtype, 0.3, 0.1)
    return Call((x, cluster, mean, log_scale), {}, 1,
                lambda out, st, g: ((g[0], x, cluster, mean, log_scale), {}))


def _mixture_norm(rng, dtype, shape):
    x = _values(rng, shape, dtype, 1.0, 0.0)
    K, D = 2, shape[-1]
    logits = _values(rng, (K,), dtype, 0.3, 0.0)
    # components close to the data, so that both posteriors are away from 0 and 1
    means = _values(rng, (K, D), dtype, 0.05, 0.0)
    var_params = _values(rng, (K, D), dtype, 0.2, 0.5)
    return Call((x, logits, means, var_params), {}, 1,
                lambda out, st, g: ((g[0], x, st[0], logits, means, var_params), {}))


def _ws_layer(w, dtype):
    return nn.WeightStandardization(w.astype(dtype)), ()


_ROWS = (4, 24)
_CHANNELS = (2, 8, 3, 5)


def _layer(cls, *args, **kwargs):
    """A layer factory: cls(*args(x), dtype=..., **kwargs) applied to x."""
    def make(x, dtype):
        return getattr(nn, cls)(*(a(x) if callable(a) else a for a in args), dtype=dtype, **kwargs), (x,)
    return make


def _weight_norm_layer(v, dtype):
    return nn.WeightNorm(v.astype(dtype)), ()

OPS = [
    Op("layer_norm", "rows", _layer_norm, "layer_norm_backward", layer="LayerNorm", default_shape=_ROWS,
       make_layer=_layer("LayerNorm", lambda x: x.shape[-1])),
    Op("rms_norm", "rows", _rms_norm, "rms_norm_backward", layer="RMSNorm", default_shape=_ROWS,
       make_layer=_layer("RMSNorm", lambda x: x.shape[-1])),
    Op("add_layer_norm", "rows", _add_norm_example(False), "layer_norm_backward",
       no_layer="an inference fusion of x + residual and LayerNorm (train with LayerNorm)",
       default_shape=_ROWS),
    Op("add_rms_norm", "rows", _add_norm_example(True), "rms_norm_backward",
       no_layer="an inference fusion of x + residual and RMSNorm (train with RMSNorm)",
       default_shape=_ROWS),
    Op("normalize", "lp", _normalize, "normalize_backward",
       no_layer="a function in torch too (torch.nn.functional.normalize)", default_shape=_ROWS),
    Op("weight_norm", "lp", _weight_norm, "weight_norm_backward", layer="WeightNorm",
       default_shape=(6, 4, 3), make_layer=_weight_norm_layer),
    Op("batch_norm", "channels", _batch_norm, "batch_norm_backward", layer="BatchNorm2d",
       default_shape=_CHANNELS, mutates=(1, 2), make_layer=_layer("BatchNorm2d", lambda x: x.shape[1])),
    Op("group_norm", "channels", _group_norm, "group_norm_backward", layer="GroupNorm",
       default_shape=_CHANNELS, make_layer=_layer("GroupNorm", 4, lambda x: x.shape[1])),
    Op("instance_norm", "channels", _instance_norm, "instance_norm_backward", layer="InstanceNorm2d",
       default_shape=_CHANNELS,
       make_layer=_layer("InstanceNorm2d", lambda x: x.shape[1], affine=True, track_running_stats=True)),
    Op("filter_response_norm", "frn", _frn, "filter_response_norm_backward",
       layer="FilterResponseNorm", default_shape=_CHANNELS,
       make_layer=_layer("FilterResponseNorm", lambda x: x.shape[1])),
    Op("local_response_norm", "lrn", _lrn, "local_response_norm_backward",
       layer="LocalResponseNorm", default_shape=_CHANNELS,
       make_layer=lambda x, dtype: (nn.LocalResponseNorm(3), (x,))),
    Op("standardize", "features", _standardize, "standardize_backward",
       no_layer="a data-pipeline transform (scikit-learn's StandardScaler), not a network layer",
       default_shape=(16, 5)),
    Op("min_max_scale", "features", _min_max_scale, "min_max_scale_backward",
       no_layer="a data-pipeline transform (scikit-learn's MinMaxScaler), not a network layer",
       default_shape=(16, 5)),
    Op("dynamic_tanh", "pointwise", _dynamic_tanh, "dynamic_tanh_backward", layer="DynamicTanh",
       default_shape=_ROWS, make_layer=_layer("DynamicTanh", lambda x: x.shape[-1])),
    Op("ada_norm", "stdnorm", _ada_norm, "ada_norm_backward", layer="AdaNorm", default_shape=_ROWS,
       make_layer=lambda x, dtype: (nn.AdaNorm(x.shape[-1], scale=2.0), (x,))),
    Op("weight_standardization", "stdnorm", _weight_standardization, "weight_standardization_backward",
       layer="WeightStandardization", default_shape=(6, 4, 3, 3), make_layer=_ws_layer),
    Op("batch_renorm", "channels", _batch_renorm, "batch_renorm_backward", layer="BatchRenorm2d",
       default_shape=_CHANNELS, mutates=(1, 2), make_layer=_layer("BatchRenorm2d", lambda x: x.shape[1])),
    Op("switchable_norm", "mixed", _switchable_norm, "switchable_norm_backward", layer="SwitchableNorm2d",
       default_shape=_CHANNELS, mutates=(1, 2), make_layer=_layer("SwitchableNorm2d", lambda x: x.shape[1])),
    Op("power_norm", "mixed", _power_norm, "power_norm_backward", layer="PowerNorm2d", default_shape=_CHANNELS,
       mutates=(1,), make_layer=_layer("PowerNorm2d", lambda x: x.shape[1], warmup_iters=2)),
    Op("cosine_linear", "lp", _cosine_linear, "cosine_linear_backward", layer="CosineLinear", default_shape=_ROWS,
       make_layer=_layer("CosineLinear", lambda x: x.shape[-1], lambda x: x.shape[-1])),
    Op("batch_layer_norm", "mixed", _batch_layer_norm, "batch_layer_norm_backward", layer="BatchLayerNorm",
       default_shape=_ROWS, mutates=(1, 2), make_layer=_layer("BatchLayerNorm", lambda x: x.shape[-1])),
    Op("cluster_norm", "cluster", _cluster_norm, "cluster_norm_backward", layer="ClusterNorm", default_shape=_ROWS,
       make_layer=lambda x, dtype: (nn.ClusterNorm(3, x.shape[-1], dtype=dtype, rng=np.random.default_rng(1)),
                                    (x, np.arange(x.shape[0]) % 3))),
    Op("mixture_norm", "cluster", _mixture_norm, "mixture_norm_backward", layer="MixtureNorm", default_shape=_ROWS,
       make_layer=lambda x, dtype: (nn.MixtureNorm(2, x.shape[-1], dtype=dtype), (x,))),
]

_BY_NAME = {op.name: op for op in OPS}


def by_name(name):
    return _BY_NAME[name]
