"""The benchmarks cover the op registry: every op has forward and
forward+backward rows, in several spellings, in the call overhead table
(benchmarks/overhead.py)."""
import importlib.util
import os

import numpy as np
import pytest

from fastnorm import _registry

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _bench_module(name):
    """benchmarks/<name>.py, imported with benchmarks/ on the path (its peers)."""
    import sys
    sys.path.insert(0, _PATH)
    spec = importlib.util.spec_from_file_location(name, os.path.join(_PATH, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _overhead():
    return _bench_module("overhead")


SPECS = _overhead().SPECS


@pytest.mark.parametrize("op", _registry.OPS, ids=lambda o: o.name)
def test_every_op_has_overhead_rows(op):
    rows = [spec for spec in SPECS if spec[0].split()[0] == op.name]
    forwards = [spec for spec in rows if spec[2] == "fwd"]
    backwards = [spec for spec in rows if spec[2] == "fwd+bwd"]
    assert len(forwards) >= 2, f"{op.name}: fewer than two forward spellings in benchmarks/overhead.py"
    assert backwards, f"{op.name}: no forward+backward row in benchmarks/overhead.py"
    assert all(op.backward_name in spec[3] for spec in backwards), op.name


def _leaves(result):
    if isinstance(result, (tuple, list)):
        return [leaf for r in result for leaf in _leaves(r)]
    return [result]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s[3][:60])
def test_every_spelling_gives_the_general_paths_result(spec, dtype, general_path):
    """Each literal call of the overhead table, whatever its spelling, returns
    bit for bit what the validating general path returns, and leaves the
    namespace's arrays (running statistics, out= buffers) the same."""
    overhead = _overhead()
    if dtype == "float16":
        overhead.peers.DTYPES.setdefault("float16", np.float16)
    op, family, _direction, code = spec[:4]

    def run():
        ns = overhead.fastnorm_namespace(family, dtype)
        arrays = {k: v for k, v in ns.items() if isinstance(v, np.ndarray)}
        for k in ("o", "o2", "ol"):  # out= buffers: compare what the call wrote
            if k in arrays:
                arrays[k][...] = 0
        result = overhead.compile_call(code, ns)()
        return _leaves(result) + [arrays[k] for k in sorted(arrays)]

    fast = run()
    general_path()
    general = run()
    assert len(fast) == len(general)
    for k, (a, b) in enumerate(zip(fast, general)):
        if a is None or b is None:
            assert a is b, k
            continue
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (code, k)
        assert np.array_equal(a, b, equal_nan=True), (code, k)


def _grid():
    return _bench_module("grid")


def test_grid_covers_the_shape_classes():
    """The short grid has single rows and many rows, odd widths, widths on
    both sides of powers of two and very wide rows; the channel ops in both
    layouts, a single sample and 1x1 spatial size; the full grid adds more."""
    grid = _grid()
    short = grid.cases()
    rows = {shape for op, shape, _ in short if op == "layer_norm"}
    widths = {w for _, w in rows}
    assert {1, 16384} <= {r for r, _ in rows}
    assert any(w % 2 for w in widths if w > 1) and 1023 in widths and 4097 in widths
    assert max(widths) >= 1 << 20
    chan = [(op, shape, cl) for op, shape, cl in short if op == "batch_norm train"]
    assert {cl for *_, cl in chan} == {False, True}
    assert any(shape[0] == 1 for _, shape, _ in chan) and any(shape[2] == 1 for _, shape, _ in chan)
    full = grid.cases(full=True)
    assert set(short) < set(full)
    assert max(s[1] for op, s, _ in full if op == "layer_norm") >= 1_000_000
    assert all(np.prod(s) <= grid.MAX_VALUES for _, s, _ in full)


def test_grid_run_writes_table_summary_and_picture(tmp_path):
    """A tiny run of the grid command: every case timed (no mismatch), its
    limit positive and not above a single-threaded copy's, the Markdown and
    the PNG written."""
    grid = _grid()
    md, png = tmp_path / "grid.md", tmp_path / "grid.png"
    results = grid.main(["--threads", "2", "--ops", "layer_norm", "batch_norm", "--max-values", "600",
                         "--repeats", "1", "--min-time", "0.001", "--save", str(md), "--plot", str(png)])
    assert results and all("mismatch" not in r for _, r in results)
    assert {k[3] for k, _ in results} == {"float32", "bfloat16"}
    assert {k[4] for k, _ in results} == {"fwd", "fwd+bwd"}
    for _, r in results:
        assert 0 < r["limit"] and r["fastnorm"] > 0 and r["torch"] > 0
    text = md.read_text()
    assert "| case |" in text and "geometric mean" in text and "worst ten" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_compare_flags_regressions(tmp_path):
    """--json writes a run's raw results; --compare of two runs lists every
    case in both, and flags (and with --fail-on-regression exits 1 on) a
    case whose time as a fraction of its limit grew past the threshold."""
    import json
    grid = _grid()
    old = tmp_path / "old.json"
    grid.main(["--threads", "2", "--ops", "rms_norm", "--max-values", "600", "--dtypes", "float32",
               "--repeats", "1", "--min-time", "0.001", "--json", str(old)])
    data = json.loads(old.read_text())
    assert data["results"] and all(r["fastnorm"] > 0 and r["limit"] > 0 for r in data["results"])
    slowed = dict(data, results=[dict(r) for r in data["results"]])
    slowed["results"][0]["fastnorm"] *= 1.5  # one case 1.5x slower, same limit
    new = tmp_path / "new.json"
    new.write_text(json.dumps(slowed))
    assert grid.main(["--compare", str(old), str(old)]) == []
    flagged = grid.main(["--compare", str(old), str(new), "--save", str(tmp_path / "cmp.md")])
    first = data["results"][0]
    assert flagged == [(first["op"], tuple(first["shape"]), first["channels_last"], first["dtype"],
                        first["direction"])]
    text = (tmp_path / "cmp.md").read_text()
    assert "REGRESSION" in text and f"{len(data['results'])} cases in both runs" in text
    with pytest.raises(SystemExit) as e:
        grid.main(["--compare", str(old), str(new), "--fail-on-regression"])
    assert e.value.code == 1


def test_pytest_benchmark_grid_covers_the_short_grid():
    """benchmarks/test_bench_grid.py parametrizes every case of the short grid
    in both dtypes and directions, with ids that name the case."""
    bench = _bench_module("test_bench_grid")
    grid = _grid()
    assert len(bench.CASES) == 4 * len(grid.cases())
    ids = {bench.case_id(c) for c in bench.CASES}
    assert len(ids) == len(bench.CASES)
    assert "layer_norm-1x1048576-bfloat16-fwd+bwd" in ids


def test_pytest_benchmark_grid_runs_a_case(tmp_path):
    """One case of the pytest-benchmark grid runs under pytest (timing
    disabled) for fastnorm and PyTorch."""
    import subprocess
    import sys
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(root / "benchmarks" / "test_bench_grid.py"), "--benchmark-disable",
                           "-k", "layer_norm-8x127-float32-fwd and not bwd"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
