"""fastnorm: fast CPU normalization layers for NumPy.

Forward and backward passes of neural-network normalizations in Cython
kernels, parallel with OpenMP, under an API with PyTorch's semantics.

>>> import numpy as np, fastnorm
>>> x = np.random.default_rng(0).standard_normal((8, 768), dtype=np.float32)
>>> y, mean, rstd = fastnorm.layer_norm(x, 768, return_stats=True)
>>> gx, gw, gb = fastnorm.layer_norm_backward(np.ones_like(x), x, mean, rstd)
"""
__version__ = "0.1.0"

try:
    from . import _core  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on how fastnorm was installed
    raise ImportError(
        "fastnorm's compiled kernels are missing (importing the source tree "
        f"{__path__[0]!r} without building it?). Build it with "
        "`pip install -e .` in the repository, or install it with `pip install .` "
        "and import it from another directory."
    ) from exc

from ._buffers import output_cache_info, set_output_cache
from ._config import get_config, max_threads, show_config
from ._dtypes import register_if_loaded as _register_if_loaded
from .functional import (
    add_layer_norm, add_rms_norm, batch_norm, filter_response_norm, filter_response_norm_backward, batch_norm_backward, group_norm, group_norm_backward, instance_norm,
    instance_norm_backward, layer_norm, local_response_norm, local_response_norm_backward, layer_norm_backward, normalize, normalize_backward,
    min_max_scale, min_max_scale_backward, rms_norm, rms_norm_backward, standardize, standardize_backward, weight_norm,
    weight_norm_backward, dynamic_tanh, dynamic_tanh_backward, ada_norm, ada_norm_backward,
    weight_standardization, weight_standardization_backward, batch_renorm, batch_renorm_backward,
    switchable_norm, switchable_norm_backward, power_norm, power_norm_backward, cosine_linear,
    cosine_linear_backward, batch_layer_norm, batch_layer_norm_backward, cluster_norm, cluster_norm_backward,
    mixture_norm, mixture_norm_backward,
)
from . import functional, nn, reference

_register_if_loaded()   # bfloat16, when ml_dtypes is already imported (see _dtypes)

__all__ = [
    "layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward",
    "batch_norm", "batch_norm_backward", "group_norm", "group_norm_backward",
    "instance_norm", "instance_norm_backward", "normalize", "normalize_backward",
    "add_layer_norm", "add_rms_norm", "standardize", "standardize_backward", "min_max_scale", "min_max_scale_backward", "weight_norm",
    "weight_norm_backward", "filter_response_norm", "filter_response_norm_backward",
    "local_response_norm", "local_response_norm_backward", "functional", "nn", "reference", "show_config", "get_config", "max_threads",
    "set_output_cache", "output_cache_info",
    "dynamic_tanh", "dynamic_tanh_backward", "ada_norm", "ada_norm_backward",
    "weight_standardization", "weight_standardization_backward", "batch_renorm", "batch_renorm_backward",
    "switchable_norm", "switchable_norm_backward", "power_norm", "power_norm_backward",
    "cosine_linear", "cosine_linear_backward", "batch_layer_norm", "batch_layer_norm_backward",
    "cluster_norm", "cluster_norm_backward", "mixture_norm", "mixture_norm_backward",
]
