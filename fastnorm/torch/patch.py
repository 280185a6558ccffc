"""patch(model) / unpatch(model): swap a model's normalization modules for
fastnorm's, in place.

A module is patched by changing its class to a subclass whose forward runs
fastnorm: the module object, its parameters, buffers, hooks and state-dict
keys stay the same (shared, not copied), and ``unpatch`` restores the class.

Which classes are patched is an explicit mapping from a class's qualified
name to a forward (``PATCHES``); ``register(qualname, forward)`` extends it.
The torch.nn classes map to the drop-in modules of ``modules``; the model
libraries' classes below are matched by name, so neither library is
imported here.  A mapped forward may return NotImplemented for a call it
does not cover (a dtype mix whose result dtype fastnorm would not give), and
the original forward runs instead: outputs never change beyond float
rounding.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List

from . import modules as M
from . import ops as F

_ORIGINAL = "_fastnorm_original"


def _qualname(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _llama_rms_forward(self, x):
    """transformers' LlamaRMSNorm and its copies: weight * (x normalized in
    float32, cast to x's dtype); fastnorm rounds once, after the weight."""
    if self.weight.dtype != x.dtype:
        return NotImplemented
    return F.rms_norm(x, (x.shape[-1],), self.weight, self.variance_epsilon)


def _diffusers_rms_forward(self, x):
    """diffusers' RMSNorm (without its bias; weight in x's dtype or none)."""
    if self.bias is not None or (self.weight is not None and self.weight.dtype != x.dtype):
        return NotImplemented
    return F.rms_norm(x, tuple(self.dim), self.weight, self.eps)


def _convnext_layer_norm_forward(self, x):
    """transformers' ConvNextLayerNorm: LayerNorm over the channels of NHWC
    (channels_last) or NCHW (channels_first) features."""
    if self.data_format == "channels_first":
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)
    return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


_LLAMA_LIKE = ["llama.modeling_llama.LlamaRMSNorm", "mistral.modeling_mistral.MistralRMSNorm",
               "qwen2.modeling_qwen2.Qwen2RMSNorm", "qwen3.modeling_qwen3.Qwen3RMSNorm",
               "phi3.modeling_phi3.Phi3RMSNorm"]

# torch.nn's classes become the drop-in modules (InstanceNorm's change
# _apply_instance_norm, not forward: the whole class is swapped)
_DROP_IN = {_qualname(k): v for k, v in M.TORCH_MODULES.items()}
PATCHES: Dict[str, Callable] = {name: cls.forward for name, cls in _DROP_IN.items()}
PATCHES.update({f"transformers.models.{n}": _llama_rms_forward for n in _LLAMA_LIKE})
PATCHES["transformers.models.convnext.modeling_convnext.ConvNextLayerNorm"] = _convnext_layer_norm_forward
PATCHES["diffusers.models.normalization.RMSNorm"] = _diffusers_rms_forward


def register(qualname, forward):
    """Patch modules of the class named `qualname` (module path + class
    name) with `forward(self, *args)`; returning NotImplemented from it runs
    the original forward for that call."""
    if not callable(forward):
        raise TypeError("fastnorm.torch.register: forward must be callable")
    PATCHES[qualname] = forward
    _SUBCLASSES.pop(qualname, None)


_SUBCLASSES: Dict[str, type] = {}


def _patched_class(cls):
    name = _qualname(cls)
    if name in _DROP_IN and PATCHES.get(name) is _DROP_IN[name].forward:
        return _DROP_IN[name]
    sub = _SUBCLASSES.get(name)
    if sub is None:
        fast = PATCHES[name]
        original = cls.forward

        def forward(self, *args, **kwargs):
            y = fast(self, *args, **kwargs)
            return original(self, *args, **kwargs) if y is NotImplemented else y
        sub = type(f"Fastnorm{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
        _SUBCLASSES[name] = sub
    return sub


@dataclass
class PatchReport:
    """What patch() did: module names replaced (with their class) and the
    normalization-like modules it left alone (and why)."""
    replaced: List[str] = field(default_factory=list)
    left_alone: List[str] = field(default_factory=list)

    def __str__(self):
        return (f"fastnorm.torch.patch: replaced {len(self.replaced)} modules, left {len(self.left_alone)}"
                + "".join(f"\n  left alone: {s}" for s in self.left_alone))


def _looks_like_norm(cls):
    n = cls.__name__.lower()
    return "norm" in n and not n.startswith("fastnorm")


def patch(model):
    """Swap model's normalization modules (model itself included) in place;
    returns a PatchReport."""
    report = PatchReport()
    for name, m in model.named_modules():
        cls = type(m)
        if getattr(cls, _ORIGINAL, None) is not None or cls in M.TORCH_MODULES.values():
            continue  # already fastnorm's
        if _qualname(cls) in PATCHES:
            new = _patched_class(cls)
            m.__class__ = new
            setattr(m, _ORIGINAL, cls)
            report.replaced.append(f"{name or '<model>'} ({cls.__name__})")
        elif _looks_like_norm(cls):
            report.left_alone.append(f"{name or '<model>'} ({_qualname(cls)}: not in fastnorm.torch.PATCHES)")
    return report


def unpatch(model):
    """Restore the classes patch() replaced; returns how many."""
    n = 0
    for m in model.modules():
        original = m.__dict__.pop(_ORIGINAL, None)
        if original is not None:
            m.__class__ = original
            n += 1
    return n
