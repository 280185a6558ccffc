"""The cache of large output buffers: reuse, isolation, limits."""
import numpy as np
import pytest

import fastnorm

BIG = (512, 4096)  # 8 MiB of float32: above the 1 MiB threshold


@pytest.fixture
def fresh_cache():
    previous = fastnorm.set_output_cache(0)
    fastnorm.set_output_cache(1 << 30)
    yield
    fastnorm.set_output_cache(previous)


def test_released_outputs_are_reused(fresh_cache, rng):
    x = rng.standard_normal(BIG).astype(np.float32)
    y = fastnorm.layer_norm(x)
    address = y.ctypes.data
    assert fastnorm.output_cache_info()[2] == 0
    del y
    assert fastnorm.output_cache_info()[2] == 1
    y2 = fastnorm.layer_norm(x)
    assert y2.ctypes.data == address
    assert fastnorm.output_cache_info()[2] == 0
    np.testing.assert_array_equal(y2, fastnorm.layer_norm(x, out=np.empty_like(x)))


def test_live_outputs_and_views_are_never_shared(fresh_cache, rng):
    x = rng.standard_normal(BIG).astype(np.float32)
    y1 = fastnorm.layer_norm(x)
    y2 = fastnorm.rms_norm(x)
    assert not np.shares_memory(y1, y2)
    view = y1[::2]
    expected = view.copy()
    del y1
    y3 = fastnorm.layer_norm(x * 2)  # must not land in memory the view still uses
    assert not np.shares_memory(view, y3)
    np.testing.assert_array_equal(view, expected)
    assert y3.flags.c_contiguous and y3.flags.writeable and y3.flags.aligned


def test_limit_and_disable(fresh_cache, rng):
    x = rng.standard_normal(BIG).astype(np.float32)
    fastnorm.set_output_cache(1 << 20)  # smaller than one output: nothing is kept
    del_me = fastnorm.layer_norm(x)
    del del_me
    assert fastnorm.output_cache_info()[0] == 0
    fastnorm.set_output_cache(1 << 30)
    y = fastnorm.layer_norm(x)
    del y
    assert fastnorm.output_cache_info()[0] > 0
    fastnorm.set_output_cache(0)
    assert fastnorm.output_cache_info()[:1] == (0,)
    with pytest.raises(ValueError, match="max_bytes"):
        fastnorm.set_output_cache(-1)


def test_small_outputs_are_plain_numpy_arrays(rng):
    y = fastnorm.layer_norm(rng.standard_normal((4, 8)).astype(np.float32))
    assert y.flags.owndata


def test_current_sizes_evict_old_ones(fresh_cache, rng):
    """Once the slots hold other sizes, a new workload's outputs still get
    cached (least recently released evicted first)."""
    from fastnorm import _buffers
    for k in range(_buffers.SLOTS + 1):  # one size more than there are slots
        y = fastnorm.layer_norm(rng.standard_normal((520 + 80 * k, 4096)).astype(np.float32))
        del y
    assert fastnorm.output_cache_info()[2] == _buffers.SLOTS
    x = rng.standard_normal(BIG).astype(np.float32)
    y = fastnorm.layer_norm(x)
    address = y.ctypes.data
    del y
    y2 = fastnorm.layer_norm(x)
    assert y2.ctypes.data == address


def test_kernel_scratch_comes_back_to_the_cache(fresh_cache, rng):
    """A backward's work memory (here the parameter-gradient totals of 40
    rows of 2^16) is taken from the cache and given back: a second call
    finds it there and the cache does not grow."""
    x = rng.standard_normal((40, 1 << 16)).astype(np.float32)
    w = np.ones(1 << 16, np.float32)
    y, mean, rstd = fastnorm.layer_norm(x, 1 << 16, w, w, return_stats=True)
    del y
    g = rng.standard_normal(x.shape).astype(np.float32)
    first = fastnorm.layer_norm_backward(g, x, mean, rstd, w, w, n_threads=2)
    held = fastnorm.output_cache_info()
    del first
    after_first = fastnorm.output_cache_info()
    second = fastnorm.layer_norm_backward(g, x, mean, rstd, w, w, n_threads=2)
    assert held[2] >= 1  # the scratch went back while the outputs are alive
    del second
    assert fastnorm.output_cache_info() == after_first


def test_threads_share_the_scratch_cache(fresh_cache, rng):
    """Python threads running wide-row backwards at once (scratch taken and
    returned without the GIL): every result equals the serial one."""
    import threading
    n = 1 << 16
    xs = [rng.standard_normal((36, n)).astype(np.float32) for _ in range(4)]
    w = np.ones(n, np.float32)
    stats = [fastnorm.layer_norm(x, n, w, w, return_stats=True)[1:] for x in xs]
    expected = [fastnorm.layer_norm_backward(x, x, m, r, w, w, n_threads=2) for x, (m, r) in zip(xs, stats)]
    failures = []

    def work(i):
        for _ in range(6):
            got = fastnorm.layer_norm_backward(xs[i], xs[i], *stats[i], w, w, n_threads=2)
            if not all(np.array_equal(a, b) for a, b in zip(got, expected[i])):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
