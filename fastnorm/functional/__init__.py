"""fastnorm's functional API: forward and backward of each normalization.

Names, argument order, defaults and formulas follow torch.nn.functional.
Every forward takes keyword-only ``out=`` (``out is x`` runs in place),
``n_threads=`` (None = the OpenMP default, which follows OMP_NUM_THREADS and
threadpoolctl) and ``return_stats=`` (also return what the backward needs).
Inputs are never modified unless ``out`` aliases them.

One module per op family: rows (LayerNorm, RMSNorm, fused add + norm),
channels (BatchNorm, GroupNorm, InstanceNorm), lp (normalize, WeightNorm),
features (standardize, min_max_scale), frn, lrn, pointwise (Dynamic Tanh),
stdnorm (AdaNorm, Weight Standardization), mixed (Switchable Normalization, PowerNorm, Batch Layer Normalization),
cluster (CB-Norm, Mixture Normalization).  Each op is arguments ->
layout canonicalizer (fastnorm._validation) -> output policy -> the typed
kernel dispatch (fastnorm._dispatch), with a C-level fast entry first.
"""
from .rows import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward, add_layer_norm, add_rms_norm  # noqa: F401
from .channels import batch_norm, batch_norm_backward, group_norm, group_norm_backward, instance_norm, instance_norm_backward  # noqa: F401
from .lp import normalize, normalize_backward, weight_norm, weight_norm_backward, cosine_linear, cosine_linear_backward  # noqa: F401
from .features import standardize, standardize_backward, min_max_scale, min_max_scale_backward  # noqa: F401
from .frn import filter_response_norm, filter_response_norm_backward  # noqa: F401
from .lrn import local_response_norm, local_response_norm_backward  # noqa: F401
from .pointwise import dynamic_tanh, dynamic_tanh_backward  # noqa: F401
from .stdnorm import ada_norm, ada_norm_backward, weight_standardization, weight_standardization_backward  # noqa: F401
from .channels import batch_renorm, batch_renorm_backward  # noqa: F401
from .mixed import (switchable_norm, switchable_norm_backward, power_norm, power_norm_backward,  # noqa: F401
                    batch_layer_norm, batch_layer_norm_backward)
from .cluster import cluster_norm, cluster_norm_backward, mixture_norm, mixture_norm_backward  # noqa: F401

__all__ = [
    "layer_norm",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_backward",
    "add_layer_norm",
    "add_rms_norm",
    "batch_norm",
    "batch_norm_backward",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "normalize",
    "normalize_backward",
    "weight_norm",
    "weight_norm_backward",
    "standardize",
    "standardize_backward",
    "min_max_scale",
    "min_max_scale_backward",
    "filter_response_norm",
    "filter_response_norm_backward",
    "local_response_norm",
    "local_response_norm_backward",
    "dynamic_tanh",
    "dynamic_tanh_backward",
    "ada_norm",
    "ada_norm_backward",
    "weight_standardization",
    "weight_standardization_backward",
    "batch_renorm",
    "batch_renorm_backward",
    "switchable_norm",
    "switchable_norm_backward",
    "power_norm",
    "power_norm_backward",
    "cosine_linear",
    "cosine_linear_backward",
    "batch_layer_norm",
    "batch_layer_norm_backward",
    "cluster_norm",
    "cluster_norm_backward",
    "mixture_norm",
    "mixture_norm_backward",
]
