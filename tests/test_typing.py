"""The type stubs (fastnorm/__init__.pyi, with the py.typed marker): they
declare every public function with the runtime's parameters, and mypy reads
them as a user's code would (return_stats picks the return type)."""
import ast
import inspect
import os
import textwrap

import pytest

import fastnorm

STUB = os.path.join(os.path.dirname(fastnorm.__file__), "__init__.pyi")


def _stub_functions():
    tree = ast.parse(open(STUB).read())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found.setdefault(node.name, []).append(node)
    return found


def test_py_typed_marker_and_stub_exist():
    assert os.path.exists(os.path.join(os.path.dirname(fastnorm.__file__), "py.typed"))
    assert os.path.exists(STUB)


@pytest.mark.parametrize("name", [n for n in fastnorm.__all__ if callable(getattr(fastnorm, n))
                                  and not inspect.ismodule(getattr(fastnorm, n))])
def test_stub_signature_matches_the_function(name):
    """Every overload of `name` in the stub has the runtime's parameter
    names, order, kinds (positional / keyword-only) and defaults present."""
    defs = _stub_functions().get(name)
    assert defs, f"{name} is not in the stub"
    sig = inspect.signature(getattr(fastnorm, name))
    want = [(p.name, p.kind == p.KEYWORD_ONLY, p.default is not p.empty) for p in sig.parameters.values()]
    for node in defs:
        a = node.args
        pos = [(x.arg, False) for x in a.args]
        n_def = len(a.defaults)
        got = [(n, kw, i >= len(pos) - n_def) for i, (n, kw) in enumerate(pos)]
        got += [(x.arg, True, d is not None) for x, d in zip(a.kwonlyargs, a.kw_defaults)]
        if name in _OVERLOADED and got[-1][0] == "return_stats":
            got[-1] = ("return_stats", True, True)  # the Literal[True] overload has no default
        assert got == want, f"{name}: stub {got} vs runtime {want}"


_OVERLOADED = {"layer_norm", "rms_norm", "batch_norm", "group_norm", "instance_norm", "normalize",
               "add_layer_norm", "add_rms_norm", "standardize", "min_max_scale", "weight_norm",
               "filter_response_norm", "local_response_norm", "dynamic_tanh", "ada_norm",
               "weight_standardization", "batch_renorm", "switchable_norm",
               "power_norm", "cosine_linear", "batch_layer_norm",
               "cluster_norm", "mixture_norm"}


def test_mypy_reads_the_stubs(tmp_path):
    """A user's code type-checks: return_stats=False gives an array,
    return_stats=True a tuple to unpack; a wrong argument type is an error."""
    api = pytest.importorskip("mypy.api")
    good = tmp_path / "good.py"
    good.write_text(textwrap.dedent("""
        import numpy as np
        import fastnorm
        x = np.ones((4, 8), np.float32)
        y: np.ndarray = fastnorm.layer_norm(x, 8, eps=1e-5)
        y2, mean, rstd = fastnorm.layer_norm(x, (8,), return_stats=True)
        gx, gw, gb = fastnorm.layer_norm_backward(y, x, mean, rstd)
        z, h = fastnorm.add_rms_norm(x, x, 8)
        w = fastnorm.group_norm(np.ones((2, 4, 3, 3)), 2, channel_axis=1)
        print(y.shape, y2.shape, gx.shape, z.shape, h.shape, w.shape)
        fastnorm.show_config()
    """))
    out, err, status = api.run([str(good), "--no-incremental", "--cache-dir", str(tmp_path / "c")])
    assert status == 0, out + err
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""
        import numpy as np
        import fastnorm
        x = np.ones((4, 8), np.float32)
        fastnorm.layer_norm(x, 8, eps="small")
        print(fastnorm.layer_norm(x, 8, return_stats=True).shape)
    """))
    out, err, status = api.run([str(bad), "--no-incremental", "--cache-dir", str(tmp_path / "c")])
    assert status == 1, out + err
    assert "bad.py:5: error: No overload variant" in out, out  # eps given a str
    assert 'bad.py:6: error: "tuple' in out, out  # return_stats=True gives a tuple, not an array
