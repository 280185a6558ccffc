"""Leaks and threads, for every op of the registry: many calls leave the
process's resident memory flat, and Python threads calling different ops at
once (each with n_threads=2) get exactly the serial results."""
import threading

import numpy as np
import pytest

from fastnorm import _registry
from fastnorm._dtypes import F32

OP_IDS = [op.name for op in _registry.OPS]
# shapes large enough for the kernels to run on 2 threads (over 32K elements)
LARGE = {"rows": (64, 1024), "lp": (64, 1024), "channels": (4, 16, 32, 32), "frn": (4, 16, 32, 32), "lrn": (4, 16, 32, 32),
         "features": (4096, 16)}


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _forward_backward(op, call, rng_seed=0):
    """One forward (with its statistics) and its backward; fresh copies of
    running statistics so that every call computes the same thing."""
    args = tuple(np.array(a, copy=True) if i in op.mutates else a for i, a in enumerate(call.args))
    res = op.forward(*args, **call.kwargs, return_stats=True, n_threads=2)
    outputs, stats = res[:call.n_outputs], res[call.n_outputs:]
    g = np.random.default_rng(rng_seed).standard_normal(outputs[0].shape).astype(outputs[0].dtype)
    bargs, bkwargs = call.backward(outputs, stats, [g])
    grads = op.backward(*bargs, **bkwargs)
    grads = grads if isinstance(grads, tuple) else (grads,)
    return [np.array(a, copy=True) for a in outputs + tuple(g for g in grads if g is not None)]


FAMILIES = sorted({op.family for op in _registry.OPS})


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
@pytest.mark.parametrize("family", FAMILIES)
def test_many_calls_leave_memory_flat(family):
    """10^5 forward+backward calls per op family (its ops in turn) after a
    warm-up: resident memory grows by less than 4 MiB (a leak of even one
    small array per call would show)."""
    ops = [op for op in _registry.OPS if op.family == family]
    calls = [op.example(np.random.default_rng(0), F32, op.default_shape) for op in ops]
    for i in range(2000):
        _forward_backward(ops[i % len(ops)], calls[i % len(ops)])
    before = _rss_bytes()
    for i in range(100_000):
        _forward_backward(ops[i % len(ops)], calls[i % len(ops)])
    grown = _rss_bytes() - before
    assert grown < 4 << 20, f"{family}: resident memory grew by {grown / 2**20:.1f} MiB over 10^5 calls"


def test_threads_calling_different_ops_get_serial_results():
    """8 Python threads, each running a different op 30 times with
    n_threads=2 (OpenMP teams from several threads at once): every result
    equals, bit for bit, the op's serial result."""
    ops = [op for op in _registry.OPS][:8]
    assert len(ops) == 8
    calls = [op.example(np.random.default_rng(i), F32,
                        op.default_shape if op.name == "weight_norm" else LARGE.get(op.family, op.default_shape))
             for i, op in enumerate(ops)]
    serial = [_forward_backward(op, call) for op, call in zip(ops, calls)]
    failures = []
    barrier = threading.Barrier(len(ops))

    def worker(k):
        barrier.wait()
        for _ in range(30):
            got = _forward_backward(ops[k], calls[k])
            if not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, serial[k])):
                failures.append(ops[k].name)
                return
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(ops))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, f"results differ from serial: {sorted(set(failures))}"
