"""fastnorm.torch's drop-in modules, patch() of real models, the eager
path, torch.compile (no graph breaks) and torch.export."""
import copy

import pytest
import torch
from torch import nn

import fastnorm.torch as fnt
from test_torch_bridge import OPS, _case, _leaves, _outs

# (torch module factory, input shape)
MODULES = {
    "LayerNorm": (lambda: nn.LayerNorm(12), (4, 3, 12)),
    "LayerNorm_nobias": (lambda: nn.LayerNorm((3, 12), bias=False), (4, 3, 12)),
    "RMSNorm": (lambda: nn.RMSNorm(12, eps=1e-6), (4, 3, 12)),
    "RMSNorm_noaffine": (lambda: nn.RMSNorm(12, elementwise_affine=False), (4, 12)),
    "GroupNorm": (lambda: nn.GroupNorm(3, 6), (2, 6, 5, 4)),
    "LocalResponseNorm": (lambda: nn.LocalResponseNorm(3, 1e-2, 0.75, 2.0), (2, 6, 5, 4)),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(6), (8, 6)),
    "BatchNorm1d_3d": (lambda: nn.BatchNorm1d(6, momentum=None), (4, 6, 5)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(6), (2, 6, 5, 4)),
    "BatchNorm2d_nostats": (lambda: nn.BatchNorm2d(6, track_running_stats=False), (2, 6, 5, 4)),
    "BatchNorm3d": (lambda: nn.BatchNorm3d(6, affine=False), (2, 6, 3, 4, 2)),
    "InstanceNorm1d": (lambda: nn.InstanceNorm1d(6, affine=True), (2, 6, 7)),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(6, affine=True, track_running_stats=True), (2, 6, 5, 4)),
    "InstanceNorm3d": (lambda: nn.InstanceNorm3d(6), (2, 6, 3, 4, 2)),
}


def _pair(name):
    make, shape = MODULES[name]
    torch.manual_seed(0)
    theirs = make()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    cls = fnt.modules.TORCH_MODULES[type(theirs)]
    ours = copy.deepcopy(theirs)
    ours.__class__ = cls
    return theirs, ours, shape


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_matches_torch_over_steps(name):
    """Train-mode steps (outputs, every gradient, running statistics,
    num_batches_tracked), then eval; state dicts load both ways."""
    theirs, ours, shape = _pair(name)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    for step in range(3):
        x = torch.randn(shape) * 2 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(yb)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
        for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4, msg=n)
        for (n, a), b in zip(ours.named_buffers(), theirs.buffers()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    ours.eval(), theirs.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("route", ["autograd.Function", "custom op"])
@pytest.mark.parametrize("name,layout", [(n, lay) for n in sorted(OPS) for lay in
                                         (("contiguous", "channels_last") if OPS[n][3] else ("contiguous",))])
def test_three_routes_agree(name, layout, route, monkeypatch):
    """Under no_grad the functions run the kernels directly; with autograd,
    eagerly, a torch.autograd.Function over the same implementations; the
    custom op (its registered autograd formula) otherwise.  The same values
    and gradients, bit for bit, and the same running statistics."""
    a, ours, _, diff = _case(name, torch.float32, layout)
    direct, first, second = _leaves(a, ()), _leaves(a, diff), _leaves(a, diff)
    with torch.no_grad():
        yd = _outs(ours(fnt, direct))
    yf = _outs(ours(fnt, first))
    if route == "custom op":
        monkeypatch.setattr(fnt._bridge, "eager", lambda args: False)
    yo = _outs(ours(fnt, second))
    for p, q, r in zip(yd, yf, yo):
        assert torch.equal(p, q.detach()) and torch.equal(p, r.detach())
        assert p.stride() == q.stride() == r.stride()
    gs = [torch.randn_like(y) for y in yf]
    torch.autograd.backward(yf, gs)
    torch.autograd.backward(yo, gs)
    for k in diff:
        assert torch.equal(first[k].grad, second[k].grad), k
    for k in ("rm", "rv"):
        if k in a:
            assert torch.equal(direct[k], first[k]) and torch.equal(direct[k], second[k])


def test_bad_tensors_are_named():
    x = torch.randn(2, 8)
    with pytest.raises(TypeError, match="x must be float32"):
        fnt.layer_norm(x.to(torch.int32), 8)
    with pytest.raises(ValueError, match="running_mean"):
        fnt.batch_norm(torch.randn(4, 3), torch.zeros(3, requires_grad=True), torch.ones(3), training=True)
    with pytest.raises(TypeError, match="torch.Tensor"):
        fnt.layer_norm(x.numpy(), 8)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n_threads"):
            fnt.layer_norm(x, 8, n_threads=bad)
    torch.testing.assert_close(fnt.layer_norm(x, 8, n_threads=1), fnt.layer_norm(x, [8], n_threads=2))


def test_second_backward_is_refused_clearly():
    x = torch.randn(3, 8, requires_grad=True)
    g, = torch.autograd.grad(fnt.layer_norm(x, 8).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


def test_bfloat16_module_running_stats_and_threads():
    """A bfloat16 BatchNorm (bfloat16 buffers) updates its statistics like
    torch's; n_threads defaults to torch's count."""
    theirs = nn.BatchNorm2d(4).to(torch.bfloat16)
    ours = copy.deepcopy(theirs)
    fnt.patch(ours)
    x = torch.randn(3, 4, 5, 5).to(torch.bfloat16)
    ours(x), theirs(x)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-2, atol=1e-2)
    assert ours.running_mean.dtype == torch.bfloat16
    assert fnt._bridge.threads(0) == torch.get_num_threads()


# ---------------------------------------------------------------- real models

def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg), lambda: (torch.randint(0, 96, (2, 12)),), lambda o: o.logits


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg), lambda: (torch.randint(0, 96, (2, 12)),), lambda o: o.logits


def _convnext():
    from transformers import ConvNextConfig, ConvNextModel
    cfg = ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=32)
    return ConvNextModel(cfg), lambda: (torch.randn(2, 3, 32, 32),), lambda o: o.last_hidden_state


def _resnet():
    from transformers import ResNetConfig, ResNetModel
    cfg = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])
    return ResNetModel(cfg), lambda: (torch.randn(2, 3, 32, 32),), lambda o: o.last_hidden_state


def _unet():
    from diffusers import UNet2DModel
    m = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                    norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D"))
    return m, lambda: (torch.randn(2, 3, 16, 16), torch.tensor([3, 7])), lambda o: o.sample


MODELS = {"llama": (_llama, "RMSNorm"), "gpt2": (_gpt2, "LayerNorm"), "convnext": (_convnext, "LayerNorm"),
          "resnet": (_resnet, "BatchNorm2d"), "unet": (_unet, "GroupNorm")}
MODEL_TOL = {torch.float32: 2e-4, torch.bfloat16: 6e-2}


def _run(model, args, first, train):
    """eval: the output; train: (loss, {name: grad}) of one step (dropout
    draws the same masks: the seed is reset before each run)."""
    torch.manual_seed(1)
    if not train:
        model.eval()
        with torch.no_grad():
            return first(model(*args)).float()
    model.train()
    model.zero_grad()
    loss = first(model(*args)).float().square().mean()
    loss.backward()
    return float(loss.detach()), {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}


def _err(a, b):
    return float((a - b).abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_patched_model_matches(name, dtype):
    """eval outputs, then one training step's loss and every parameter
    gradient.  float32: the patched model equals the unpatched one within
    rounding.  bfloat16: both are compared with the float32 model on the
    same (bfloat16-rounded) weights, and the patched model's error may not
    exceed twice torch's own bfloat16 error (or the dtype's rounding)."""
    make, kind = MODELS[name]
    torch.manual_seed(0)
    model, inputs, first = make()
    model = model.to(dtype)
    patched = copy.deepcopy(model)
    report = fnt.patch(patched)
    assert any(kind in r for r in report.replaced), report
    args = inputs()
    cast = lambda d: tuple(a.to(d) if a.is_floating_point() else a for a in args)  # noqa: E731
    reference = copy.deepcopy(model).float() if dtype != torch.float32 else model
    tol = MODEL_TOL[dtype]
    ref_y = _run(reference, cast(torch.float32), first, False)
    theirs_y, ours_y = _run(model, cast(dtype), first, False), _run(patched, cast(dtype), first, False)
    scale = max(1.0, float(ref_y.abs().max()))
    assert _err(ours_y, ref_y) <= max(2 * _err(theirs_y, ref_y), tol * scale)
    ref_loss, ref_g = _run(reference, cast(torch.float32), first, True)
    their_loss, their_g = _run(model, cast(dtype), first, True)
    our_loss, our_g = _run(patched, cast(dtype), first, True)
    assert abs(our_loss - ref_loss) <= max(2 * abs(their_loss - ref_loss), tol * max(1.0, abs(ref_loss)))
    assert set(our_g) == set(their_g) == set(ref_g)
    for n, g in ref_g.items():
        gs = max(1e-3, float(g.abs().max()))
        assert _err(our_g[n], g) <= max(2 * _err(their_g[n], g), 4 * tol * gs), n
    assert fnt.unpatch(patched) == len(report.replaced)
    assert not any(type(m).__name__.startswith("Fastnorm") for m in patched.modules())


# ---------------------------------------------------------------- torch.compile / torch.export

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.rms = nn.RMSNorm(8)

    def forward(self, x):
        h = self.gn(self.bn(self.conv(x)))
        h = self.ln(h.permute(0, 2, 3, 1))
        return self.rms(h) + fnt.local_response_norm(h.permute(0, 3, 1, 2), 3).permute(0, 2, 3, 1)


def test_compile_without_graph_breaks_forward_and_backward():
    torch.manual_seed(0)
    net = _Net()
    fnt.patch(net)
    ref = copy.deepcopy(net)
    x = torch.randn(2, 3, 6, 6)
    explanation = torch._dynamo.explain(copy.deepcopy(net))(x)  # explain runs the model once
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = compiled(xa), ref(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net.bn.running_mean, ref.bn.running_mean)


def test_export_has_fastnorm_ops():
    net = _Net().eval()
    fnt.patch(net)
    x = torch.randn(2, 3, 6, 6)
    ep = torch.export.export(net, (x,))
    names = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"fastnorm.batch_norm.default", "fastnorm.group_norm.default", "fastnorm.layer_norm.default",
            "fastnorm.rms_norm.default"} <= names, names
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), net(x))


def test_parameter_views_follow_the_parameter_and_free_with_it():
    """The array view kept on a Parameter sees in-place updates (an
    optimizer step), is rebuilt for a new .data, and does not keep the
    module alive (no reference cycle: freed without the garbage collector)."""
    import gc
    import weakref
    m = fnt.LayerNorm(8)
    x = torch.randn(3, 8)
    with torch.no_grad():
        m(x)
        m.weight.mul_(2.0)  # in place: the cached view sees it
        torch.testing.assert_close(m(x), torch.nn.functional.layer_norm(x, (8,), m.weight, m.bias))
        m.weight.data = torch.randn(8)  # new memory: a new view
        torch.testing.assert_close(m(x), torch.nn.functional.layer_norm(x, (8,), m.weight, m.bias))
    gc.disable()
    try:
        ref = weakref.ref(m.weight)
        del m
        assert ref() is None
    finally:
        gc.enable()
