"""fastnorm inside PyTorch: custom ops with autograd and torch.compile
support (``fastnorm.torch.ops``, registered as ``torch.ops.fastnorm.*``),
torch.nn.functional spellings over them, drop-in modules and
``patch(model)`` / ``unpatch(model)``.

Requires PyTorch (the ``torch`` extra, pinned to torch==2.13.0).
"""
try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - the torch extra installs it
    raise ImportError("fastnorm.torch needs PyTorch: pip install 'fastnorm[torch]' "
                      "(a CPU build: see the README)") from exc

from .ops import (add_layer_norm, add_rms_norm, batch_norm, filter_response_norm, group_norm,  # noqa: E402
                  instance_norm, layer_norm, local_response_norm, normalize, rms_norm)

__all__ = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "batch_norm", "group_norm",
           "instance_norm", "local_response_norm", "filter_response_norm", "normalize"]

from . import ops  # noqa: E402
from .modules import (AddLayerNorm, AddRMSNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d,  # noqa: E402
                      FilterResponseNorm, GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d,
                      LayerNorm, LocalResponseNorm, RMSNorm)
from .patch import PATCHES, PatchReport, patch, register, unpatch  # noqa: E402

__all__ += ["ops", "LayerNorm", "RMSNorm", "GroupNorm", "LocalResponseNorm", "BatchNorm1d", "BatchNorm2d",
            "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "FilterResponseNorm",
            "AddLayerNorm", "AddRMSNorm", "PATCHES", "PatchReport", "patch", "unpatch", "register"]
