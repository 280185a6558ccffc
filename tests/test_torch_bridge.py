"""fastnorm.torch: every op against torch's own (values and gradients, float32
/ bfloat16 / float16, contiguous and channels_last), gradcheck in float64,
torch.compile without graph breaks, torch.export."""
import pytest
import torch
import torch.nn.functional as F

import fastnorm.torch as fnt

torch.manual_seed(0)


def _frn_ref(x, w, b, tau, eps):
    nu2 = x.square().mean(dim=tuple(range(2, x.dim())), keepdim=True)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = x * torch.rsqrt(nu2 + eps) * w.view(shape) + b.view(shape)
    return y if tau is None else torch.maximum(y, tau.view(shape))


# name: (make(dtype) -> dict of tensors and scalars, fastnorm call, torch call, channel op)
def _rows(dtype, n=48, lead=(3, 5)):
    return dict(x=torch.randn(*lead, n, dtype=dtype) * 2 + 0.5, r=torch.randn(*lead, n, dtype=dtype),
                w=(torch.randn(n) * 0.5 + 1).to(dtype), b=(torch.randn(n) * 0.5).to(dtype))


def _chan(dtype, shape=(3, 8, 5, 6)):
    C = shape[1]
    return dict(x=torch.randn(*shape, dtype=dtype) * 2 + 0.5, w=(torch.randn(C) * 0.5 + 1).to(dtype),
                b=(torch.randn(C) * 0.5).to(dtype), tau=(torch.randn(C) * 0.1 - 0.5).to(dtype),
                rm=torch.randn(C) * 0.1, rv=torch.rand(C) + 0.5)


OPS = {
    "layer_norm": (_rows, lambda m, a: m.layer_norm(a["x"], (48,), a["w"], a["b"], 1e-5),
                   lambda a: F.layer_norm(a["x"], (48,), a["w"], a["b"], 1e-5), False, ("x", "w", "b")),
    "layer_norm_2d": (_rows, lambda m, a: m.layer_norm(a["x"], (5, 48)),
                      lambda a: F.layer_norm(a["x"], (5, 48)), False, ("x",)),
    "rms_norm": (_rows, lambda m, a: m.rms_norm(a["x"], [48], a["w"], 1e-6),
                 lambda a: F.rms_norm(a["x"], [48], a["w"], 1e-6), False, ("x", "w")),
    "add_layer_norm": (_rows, lambda m, a: m.add_layer_norm(a["x"], a["r"], 48, a["w"], a["b"]),
                       lambda a: (F.layer_norm(a["x"] + a["r"], (48,), a["w"], a["b"]), a["x"] + a["r"]),
                       False, ("x", "r", "w", "b")),
    "add_rms_norm": (_rows, lambda m, a: m.add_rms_norm(a["x"], a["r"], 48, a["w"], 1e-6),
                     lambda a: (F.rms_norm(a["x"] + a["r"], (48,), a["w"], 1e-6), a["x"] + a["r"]),
                     False, ("x", "r", "w")),
    "normalize": (_rows, lambda m, a: m.normalize(a["x"], 2.0, -1),
                  lambda a: F.normalize(a["x"], 2.0, -1), False, ("x",)),
    "batch_norm_train": (_chan, lambda m, a: m.batch_norm(a["x"], a["rm"], a["rv"], a["w"], a["b"], True, 0.1),
                         lambda a: F.batch_norm(a["x"], a["rm"], a["rv"], a["w"], a["b"], True, 0.1),
                         True, ("x", "w", "b")),
    "batch_norm_eval": (_chan, lambda m, a: m.batch_norm(a["x"], a["rm"], a["rv"], a["w"], a["b"]),
                        lambda a: F.batch_norm(a["x"], a["rm"], a["rv"], a["w"], a["b"]), True, ("x", "w", "b")),
    "group_norm": (_chan, lambda m, a: m.group_norm(a["x"], 4, a["w"], a["b"]),
                   lambda a: F.group_norm(a["x"], 4, a["w"], a["b"]), True, ("x", "w", "b")),
    "instance_norm": (_chan, lambda m, a: m.instance_norm(a["x"], a["rm"], a["rv"], a["w"], a["b"]),
                      lambda a: F.instance_norm(a["x"], a["rm"], a["rv"], a["w"], a["b"]), True, ("x", "w", "b")),
    "local_response_norm": (_chan, lambda m, a: m.local_response_norm(a["x"], 3, 1e-2, 0.75, 2.0),
                            lambda a: F.local_response_norm(a["x"], 3, 1e-2, 0.75, 2.0), True, ("x",)),
    "filter_response_norm": (_chan, lambda m, a: m.filter_response_norm(a["x"], a["w"], a["b"], a["tau"], 1e-6),
                             lambda a: _frn_ref(a["x"], a["w"], a["b"], a["tau"], 1e-6), True,
                             ("x", "w", "b", "tau")),
}

# rounding of the storage dtype (values and gradients are rounded once from float32)
TOL = {torch.float32: 2e-5, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}


def _outs(r):
    return r if isinstance(r, tuple) else (r,)


def _case(name, dtype, layout, seed=0):
    torch.manual_seed(seed)
    make, ours, theirs, channel, diff = OPS[name]
    a = make(dtype)
    if layout == "channels_last":
        a["x"] = a["x"].contiguous(memory_format=torch.channels_last)
    return a, ours, theirs, diff


def _leaves(a, diff, dtype=None):
    out = {}
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().clone(memory_format=torch.preserve_format)
            if dtype is not None:
                v = v.to(dtype)
            v.requires_grad_(k in diff)
        out[k] = v
    return out


def _check_close(got, ref, tol, what):
    got, ref = got.detach().double(), ref.detach().double()
    scale = max(1.0, float(ref.abs().max()))
    err = float((got - ref).abs().max())
    assert err <= tol * scale * 4, f"{what}: max error {err:.3g}, scale {scale:.3g}"


LAYOUTS = [(name, layout) for name in sorted(OPS)
           for layout in (("contiguous", "channels_last") if OPS[name][3] else ("contiguous",))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name,layout", LAYOUTS)
def test_matches_torch(name, layout, dtype):
    """Values, gradients and updated running statistics against torch's op
    computed in float64 on the same (rounded) inputs."""
    a, ours, theirs, diff = _case(name, dtype, layout)
    mine, ref = _leaves(a, diff), _leaves(a, diff, torch.float64)
    ys = _outs(ours(fnt, mine))
    rs = _outs(theirs(ref))
    assert len(ys) == len(rs)
    for y, r in zip(ys, rs):
        assert y.dtype == dtype and y.shape == r.shape
        if layout == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last)
        _check_close(y, r, TOL[dtype], f"{name} output")
    grads = [torch.randn(y.shape, dtype=torch.float64) for y in ys]
    torch.autograd.backward([y for y in ys], [g.to(dtype) for g in grads])
    torch.autograd.backward([r for r in rs], grads)
    for k in diff:
        assert mine[k].grad is not None, k
        assert mine[k].grad.dtype == dtype
        # gradients sum over rows: allow the float32 accumulation its own rounding
        _check_close(mine[k].grad, ref[k].grad, max(TOL[dtype], 1e-4), f"{name} grad {k}")
    for k in ("rm", "rv"):  # running statistics updated alike (or left alone alike)
        if k in a:
            _check_close(mine[k], ref[k], 1e-5, f"{name} {k}")


@pytest.mark.parametrize("name", sorted(OPS))
def test_gradcheck_float64(name):
    """torch.autograd.gradcheck of every differentiable input, float64."""
    make, ours, _, _, diff = OPS[name]
    torch.manual_seed(1)
    a = make(torch.float64)

    def f(*ts):
        b = dict(a)
        b.update(zip(diff, ts))
        if "rm" in b:  # each evaluation starts from the same running statistics
            b["rm"], b["rv"] = a["rm"].clone(), a["rv"].clone()
        return _outs(ours(fnt, b))
    inputs = tuple(a[k].detach().clone().requires_grad_(True) for k in diff)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
