"""The cache of large output buffers: reuse, isolation, limits."""
import numpy as np
import pytest

import fastnorm

BIG = (512, 4096)  # 8 MiB of float32: above the 4 MiB threshold


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
    for rows in (520, 600, 700, 800, 900):  # five sizes, four slots
        y = fastnorm.layer_norm(rng.standard_normal((rows, 4096)).astype(np.float32))
        del y
    assert fastnorm.output_cache_info()[2] == 4
    x = rng.standard_normal(BIG).astype(np.float32)
    y = fastnorm.layer_norm(x)
    address = y.ctypes.data
    del y
    y2 = fastnorm.layer_norm(x)
    assert y2.ctypes.data == address
