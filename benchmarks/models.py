"""Real models, unpatched vs ``fastnorm.torch.patch``-ed, end to end.

    python benchmarks/compare.py --models-only --threads 2

Models from transformers / diffusers configs with random weights (nothing is
downloaded): a Llama decoder (RMSNorm; a 128-token prefill and a one-token
decode step with the KV cache), GPT-2 (LayerNorm; prefill), ConvNeXt
(LayerNorm on channels-last activations), ResNet (BatchNorm2d; also a
training step) and a UNet2D (GroupNorm).  Each case times the unpatched
and the patched model in interleaved rounds (medians), and reports the
share of each model's wall time spent inside its normalization modules
(forward hooks around them).
"""
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastnorm.torch as fnt  # noqa: E402


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=1024, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512)
    return LlamaForCausalLM(cfg)


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_embd=512, n_layer=4, n_head=8, n_positions=512))


def _convnext():
    from transformers import ConvNextConfig, ConvNextModel
    return ConvNextModel(ConvNextConfig(num_channels=3, num_stages=4, hidden_sizes=[48, 96, 192, 384],
                                        depths=[1, 1, 3, 1], image_size=128))


def _resnet():
    from transformers import ResNetConfig, ResNetModel
    return ResNetModel(ResNetConfig(num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128, 256],
                                    depths=[1, 1, 2, 1]))


def _unet():
    from diffusers import UNet2DModel
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128),
                       layers_per_block=1, norm_num_groups=32,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def _decode_step(model):
    """A callable running one cached decode step after a 127-token prompt."""
    from transformers import DynamicCache
    ids = torch.randint(0, 1024, (1, 127))
    with torch.no_grad():
        cache = DynamicCache()
        model(ids, past_key_values=cache, use_cache=True)
    nxt = torch.randint(0, 1024, (1, 1))

    def step():
        logits = model(nxt, past_key_values=cache, use_cache=True).logits
        cache.crop(-1)  # back to the prompt's length: every call decodes the 128th token
        return logits
    return step


def _train_step(model, x):
    def step(x=x):  # x a default argument: _cast_inputs casts it
        model.zero_grad(set_to_none=True)
        model(x).last_hidden_state.float().square().mean().backward()
    return step


# (case, model factory, dtype, mode, make the timed call from (model))
CASES = [
    ("llama prefill 128 tokens", _llama, "eval", lambda m: (lambda ids=torch.randint(0, 1024, (1, 128)): m(ids).logits)),
    ("llama decode 1 token", _llama, "eval", _decode_step),
    ("gpt2 prefill 128 tokens", _gpt2, "eval", lambda m: (lambda ids=torch.randint(0, 1024, (1, 128)): m(ids).logits)),
    ("convnext forward (8, 3, 128, 128)", _convnext, "eval",
     lambda m: (lambda x=torch.randn(8, 3, 128, 128): m(x).last_hidden_state)),
    ("resnet forward (8, 3, 128, 128)", _resnet, "eval",
     lambda m: (lambda x=torch.randn(8, 3, 128, 128): m(x).last_hidden_state)),
    ("resnet training step (8, 3, 128, 128)", _resnet, "train", lambda m: _train_step(m, torch.randn(8, 3, 128, 128))),
    ("unet2d forward (4, 3, 32, 32)", _unet, "eval",
     lambda m: (lambda x=torch.randn(4, 3, 32, 32), t=torch.tensor([10] * 4): m(x, t).sample)),
]


def _norm_share(model, fn):
    """The share of one call's wall time spent inside the model's
    normalization modules (the classes patch() maps, patched or not), from
    forward hooks around them (one warm-up call first)."""
    import time
    names = set(fnt.PATCHES)
    spent = [0.0]
    starts = []
    handles = []
    for m in model.modules():
        cls = getattr(m, "_fastnorm_original", type(m))
        if f"{cls.__module__}.{cls.__qualname__}" in names:
            handles.append(m.register_forward_pre_hook(lambda mod, args: starts.append(time.perf_counter())))
            handles.append(m.register_forward_hook(
                lambda mod, args, out: spent.__setitem__(0, spent[0] + time.perf_counter() - starts.pop())))
    try:
        fn()
        spent[0] = 0.0
        t0 = time.perf_counter()
        fn()
        total = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    return spent[0] / total if total else 0.0


def run(threads, repeats, min_time, emit, dtypes=("float32", "bfloat16"), timer=None):
    import compare
    timer = timer or compare.time_case
    torch.set_num_threads(threads)
    emit("### Real models: unpatched vs fastnorm.torch.patch")
    emit("")
    emit(f"- threads: {threads}; random weights from small configs (transformers / diffusers); medians of "
         f"{repeats} interleaved rounds; ratio = unpatched / patched (above 1: patched is faster); norm "
         "share: the share of a call's wall time spent inside the normalization modules (forward hooks), "
         "unpatched and patched.")
    emit("")
    emit("| model case | dtype | unpatched | patched | ratio | norm share unpatched | norm share patched |")
    emit("|---|---|---:|---:|---:|---:|---:|")
    rows = []
    for dname in dtypes:
        dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dname]
        for name, make, mode, call in CASES:
            torch.manual_seed(0)
            try:
                base = make().to(dt)
            except ImportError as exc:  # pragma: no cover - the bench extra installs both libraries
                emit(f"| {name} | {dname} | n/a ({exc}) | | | | |")
                continue
            patched = copy.deepcopy(base)
            fnt.patch(patched)
            for m in (base, patched):
                m.train(mode == "train")
            if mode == "train":
                cast = lambda f: f  # noqa: E731
            else:
                cast = lambda f: (lambda: _no_grad(f))  # noqa: E731
            f_base, f_patched = cast(_cast_inputs(call(base), dt)), cast(_cast_inputs(call(patched), dt))
            t = timer({"unpatched": f_base, "patched": f_patched}, repeats, min_time)
            r = t["unpatched"] / t["patched"]
            s0, s1 = _norm_share(base, f_base), _norm_share(patched, f_patched)
            rows.append(dict(case=name, dtype=dname, ratio=r))
            emit(f"| {name} | {dname} | {compare.fmt_time(t['unpatched'])} | {compare.fmt_time(t['patched'])} "
                 f"| {r:.2f}x | {100 * s0:.1f}% | {100 * s1:.1f}% |")
    emit("")
    slower = [r for r in rows if r["ratio"] < 1]
    emit(f"- patched at least as fast in {len(rows) - len(slower)} of {len(rows)} cases"
         + ("" if not slower else "; slower: " + ", ".join(f"{r['case']} {r['dtype']} ({r['ratio']:.2f}x)"
                                                            for r in slower)))
    return rows


def _no_grad(f):
    with torch.no_grad():
        return f()


def _cast_inputs(f, dt):
    """The call with its floating default arguments (images) in dtype dt."""
    defaults = getattr(f, "__defaults__", None)
    if defaults:
        f.__defaults__ = tuple(d.to(dt) if isinstance(d, torch.Tensor) and d.is_floating_point() else d
                               for d in defaults)
    return f


if __name__ == "__main__":
    import compare
    compare.main(["--models-only"] + sys.argv[1:])
