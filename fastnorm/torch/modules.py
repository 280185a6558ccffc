"""Drop-in torch.nn modules over fastnorm's ops.

Each is a subclass of torch's own class that replaces only the forward (or,
for InstanceNorm, the method its forward calls), so that constructor
arguments, parameters, buffers, ``state_dict`` keys and ``extra_repr`` are
torch's: a torch module's state dict loads into them unchanged and back.
fastnorm's own layers (FilterResponseNorm, fused residual add + norm) are
new modules in the same style.
"""
import torch
from torch import nn

from . import ops as F


class LayerNorm(nn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class GroupNorm(nn.GroupNorm):
    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class LocalResponseNorm(nn.LocalResponseNorm):
    def forward(self, x):
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)


class _BatchNormForward:
    """torch's _BatchNorm.forward (momentum=None: a cumulative average;
    track_running_stats=False: batch statistics in eval too) over fastnorm's op."""

    def forward(self, x):
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if keep else None, self.running_var if keep else None,
                            self.weight, self.bias, batch_stats, factor, self.eps)


class BatchNorm1d(_BatchNormForward, nn.BatchNorm1d):
    pass


class BatchNorm2d(_BatchNormForward, nn.BatchNorm2d):
    pass


class BatchNorm3d(_BatchNormForward, nn.BatchNorm3d):
    pass


class _InstanceNormApply:
    """torch's _InstanceNorm.forward calls _apply_instance_norm (after its
    input checks and the unbatched case): only that changes."""

    def _apply_instance_norm(self, x):
        return F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                               self.training or not self.track_running_stats,
                               self.momentum if self.momentum is not None else 0.0, self.eps)


class InstanceNorm1d(_InstanceNormApply, nn.InstanceNorm1d):
    pass


class InstanceNorm2d(_InstanceNormApply, nn.InstanceNorm2d):
    pass


class InstanceNorm3d(_InstanceNormApply, nn.InstanceNorm3d):
    pass


class FilterResponseNorm(nn.Module):
    """Filter Response Normalization with its TLU (Singh & Krishnan, 2020):
    y = max(x * rsqrt(mean(x^2 over spatial) + eps) * weight + bias, tau),
    per sample and channel.  Parameters weight (ones), bias, tau (zeros) of
    shape (num_features,); tlu=False drops tau."""

    def __init__(self, num_features, eps=1e-6, tlu=True, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features, **kw))
        self.bias = nn.Parameter(torch.zeros(num_features, **kw))
        self.tau = nn.Parameter(torch.zeros(num_features, **kw)) if tlu else None

    def forward(self, x):
        return F.filter_response_norm(x, self.weight, self.bias, self.tau, self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, tlu={self.tau is not None}"


class AddLayerNorm(nn.LayerNorm):
    """LayerNorm of x + residual, fused: forward(x, residual) -> (y, x + residual)."""

    def forward(self, x, residual):
        return F.add_layer_norm(x, residual, self.normalized_shape, self.weight, self.bias, self.eps)


class AddRMSNorm(nn.RMSNorm):
    """RMSNorm of x + residual, fused: forward(x, residual) -> (y, x + residual)."""

    def forward(self, x, residual):
        return F.add_rms_norm(x, residual, self.normalized_shape, self.weight, self.eps)


# torch.nn's class -> the drop-in (patch() swaps these)
TORCH_MODULES = {
    nn.LayerNorm: LayerNorm, nn.RMSNorm: RMSNorm, nn.GroupNorm: GroupNorm,
    nn.LocalResponseNorm: LocalResponseNorm,
    nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d,
    nn.InstanceNorm1d: InstanceNorm1d, nn.InstanceNorm2d: InstanceNorm2d, nn.InstanceNorm3d: InstanceNorm3d,
}
