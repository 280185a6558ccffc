"""The build: OpenMP present, kernels per instruction set, show_config, threads."""
import io
import os
import sys
import threading

import numpy as np
import pytest

import fastnorm
from fastnorm import _build_info, _config, _dispatch, _registry


def test_openmp_not_silently_lost():
    """If the build machine has OpenMP (the probe), the kernels must use it.

    Only FASTNORM_OPENMP=0 at build time may turn it off."""
    if _build_info.OPENMP_REASON.startswith("disabled"):
        pytest.skip("built with FASTNORM_OPENMP=0 on purpose")
    assert _build_info.OPENMP, f"OpenMP was lost at build time: {_build_info.OPENMP_REASON}"
    for isa in _config.available_isas():
        kernels = _config.load_isa(isa)
        assert kernels.have_openmp(), f"the {isa} kernels were compiled without OpenMP"
        assert kernels.openmp_team_size(2) == 2, f"the {isa} kernels cannot run 2 threads"


def test_show_config_reports_everything():
    buf = io.StringIO()
    fastnorm.show_config(file=buf)
    text = buf.getvalue()
    cfg = fastnorm.get_config()
    assert f"fastnorm {fastnorm.__version__}" in text
    assert "OpenMP:" in text and ("on (" in text) == cfg["openmp"]
    assert cfg["isa"] in text and np.__version__ in text
    assert cfg["isa"] in cfg["isas_built"]


def test_best_isa_is_selected():
    forced = os.environ.get("FASTNORM_ISA", "").strip().lower()
    assert _config.ISA == (forced or _config.available_isas()[0])
    assert "-ffast-math" not in _build_info.COMPILE_FLAGS


def test_threadpoolctl_limits_are_respected():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not fastnorm.get_config()["openmp"]:
        pytest.skip("single-threaded build")
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert fastnorm.max_threads() == 1
    assert fastnorm.max_threads() >= 1


def test_concurrent_calls_from_python_threads(rng):
    xs = [rng.standard_normal((64, 513)).astype(np.float32) for _ in range(8)]
    expected = [fastnorm.layer_norm(x) for x in xs]
    results = [None] * len(xs)
    errors = []

    def work(i):
        try:
            for _ in range(20):
                y, m, r = fastnorm.layer_norm(xs[i], return_stats=True, n_threads=2)
                fastnorm.layer_norm_backward(np.ones_like(xs[i]), xs[i], m, r)
            results[i] = y
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for y, e in zip(results, expected):
        np.testing.assert_array_equal(y, e)


@pytest.mark.parametrize("isa", _config.available_isas())
def test_one_thread_regions_inside_an_enclosing_team(isa):
    """parallel.h runs a one-thread region as a direct call only outside every
    OpenMP region: called from each thread of an enclosing team, a region
    still sees its whole iteration range (a direct call there would split it
    across the enclosing team)."""
    kernels = _config.load_isa(isa)
    for outer, n in [(2, 8), (3, 7), (4, 1000)]:
        assert kernels.parallel_self_check(outer, n) == [n] * (outer + 1)


def test_serial_fastpath_is_on_where_it_applies():
    """gcc's OpenMP on Linux is where one-thread regions skip libgomp's team set-up."""
    cfg = fastnorm.get_config()
    import sysconfig
    gcc = "gcc" in (os.environ.get("CC") or sysconfig.get_config_var("CC") or "")
    if cfg["openmp"] and sys.platform.startswith("linux") and gcc:
        assert cfg["serial_fastpath"]
    buf = io.StringIO()
    fastnorm.show_config(file=buf)
    assert ("skip the runtime" in buf.getvalue()) == cfg["serial_fastpath"]


@pytest.mark.parametrize("op", _registry.OPS, ids=[o.name for o in _registry.OPS])
def test_concurrent_tiny_calls_match_serial_ones(op):
    """Tiny calls (one-thread regions, the direct-call path) from several
    Python threads at once give the results of the same calls made alone."""
    calls = [op.example(np.random.default_rng(i), np.float32, op.default_shape) for i in range(6)]

    def args(c):  # running statistics the op updates: fresh copies, so that every call is the same
        return [np.array(a, copy=True) if j in op.mutates else a for j, a in enumerate(c.args)]
    expected = [op.forward(*args(c), **c.kwargs) for c in calls]
    got = [None] * len(calls)
    errors = []

    def work(i):
        try:
            for _ in range(30):
                got[i] = op.forward(*args(calls[i]), **calls[i].kwargs)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for g, e in zip(got, expected):
        for a, b in zip(g if isinstance(g, tuple) else (g,), e if isinstance(e, tuple) else (e,)):
            np.testing.assert_array_equal(a, b)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_memory_does_not_grow_over_many_calls(rng):
    """Many calls whose kernels allocate scratch (3 MB of parameter-gradient
    partials per backward here) leave the resident memory where it was."""
    x = rng.standard_normal((4, 65536)).astype(np.float32)
    w = np.ones(65536, np.float32)
    for _ in range(20):
        y, m, r = fastnorm.layer_norm(x, None, w, w, return_stats=True, n_threads=2)
        fastnorm.layer_norm_backward(x, x, m, r, w, w, n_threads=2)
    before = _rss_bytes()
    for _ in range(300):
        y, m, r = fastnorm.layer_norm(x, None, w, w, return_stats=True, n_threads=2)
        fastnorm.layer_norm_backward(x, x, m, r, w, w, n_threads=2)
        fastnorm.layer_norm_backward(x[:1], x[:1], m[:1], r[:1], w, w, n_threads=2)  # wide-row path
        fastnorm.rms_norm_backward(x, x, r, w, n_threads=2)
    assert _rss_bytes() - before < 64 * 2**20


def _run_python(code):
    import subprocess
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_import_does_not_load_ml_dtypes():
    """ml_dtypes' import costs most of a second; fastnorm leaves it to programs
    that hold bfloat16 arrays."""
    assert _run_python("import sys, fastnorm; print('ml_dtypes' in sys.modules)") == ["False"]


@pytest.mark.parametrize("order", ["ml_dtypes first", "fastnorm first"])
def test_bfloat16_works_whenever_ml_dtypes_is_imported(order):
    """bfloat16 arrays are taken whether ml_dtypes was imported before or
    after fastnorm, and after the first call they take the C fast entries."""
    imports = "import ml_dtypes, fastnorm" if order == "ml_dtypes first" else "import fastnorm, ml_dtypes"
    out = _run_python(
        f"{imports}\n"
        "import numpy as np\n"
        "from fastnorm import _dispatch, _config\n"
        "x = np.linspace(-1, 1, 64).reshape(4, 16).astype(ml_dtypes.bfloat16)\n"
        "y = fastnorm.layer_norm(x, 16)\n"
        "ref = fastnorm.layer_norm(x.astype(np.float32), 16).astype(ml_dtypes.bfloat16)\n"
        "fast = _dispatch.kernels.layer_norm_fast(x, 16, None, None, 1e-5, None, None, False)\n"
        "late = _config.load_isa('baseline').layer_norm_fast(x, 16, None, None, 1e-5, None, None, False)\n"
        "print(y.dtype, np.array_equal(y.view(np.uint16), ref.view(np.uint16)),\n"
        "      fast is not NotImplemented, late is not NotImplemented)\n")
    assert out == ["bfloat16", "True", "True", "True"]


def test_threads_follow_the_work(isa):
    """A call wakes at most one thread per 16,384 values of work and none below
    32,768 values: on many cores a small call does not pay every core's
    wake-up, while on 2 every call from 32,768 values up keeps both."""
    k = _dispatch.kernels
    if not k.have_openmp():  # a build without OpenMP runs every call on one thread
        assert k.threads_for(64, 1 << 20) == 1
        return
    assert k.threads_for(64, 1000) == 1
    assert k.threads_for(64, 32767) == 1
    assert k.threads_for(2, 32768) == 2
    assert k.threads_for(64, 40_000) == 2
    assert k.threads_for(64, 1 << 20) == 64
    assert k.threads_for(64, 10 * 16384 + 5) == 10
    assert k.threads_for(1, 1 << 30) == 1
