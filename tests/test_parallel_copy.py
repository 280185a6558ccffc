"""kernels.parallel_copy, the benchmarks' all-threads memory limit: the
bytes of src in dst at every size and alignment, streaming or not, on one
thread or several; named errors for what it cannot copy."""
import numpy as np
import pytest

from fastnorm import _dispatch

SIZES = [0, 1, 15, 63, 64, 65, 1000, 4096 + 7, 300_001]


def _view(nbytes, offset, dtype):
    buf = np.zeros(nbytes + 64, np.uint8)
    n = nbytes // np.dtype(dtype).itemsize
    return np.frombuffer(buf.data, dtype=dtype, count=n, offset=offset)


@pytest.mark.parametrize("stream", [None, False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.float64])
def test_copies_every_byte(isa, rng, dtype, threads, stream):
    kern = _dispatch.kernels
    for n in SIZES:
        for so, do in ((0, 0), (1, 3), (4, 0), (0, 36)):
            src = _view(n * np.dtype(dtype).itemsize, so, dtype)
            src[...] = rng.integers(0, 60000, src.size).astype(dtype)
            dst = _view(n * np.dtype(dtype).itemsize, do, dtype)
            dst.view(np.uint8)[...] = 0xAB
            guard = np.frombuffer(dst.base, np.uint8) if dst.base is not None else None
            assert kern.parallel_copy(src, dst, threads, stream) is dst
            assert np.array_equal(src.view(np.uint8), dst.view(np.uint8)), (n, so, do)
            if guard is not None:  # nothing written past the end
                end = do + dst.nbytes
                assert (guard[end:end + 16] == 0).all()


def test_named_errors():
    kern = _dispatch.kernels
    a = np.zeros(100, np.float32)
    with pytest.raises(ValueError, match="dtype and shape"):
        kern.parallel_copy(a, np.zeros(100, np.float64))
    with pytest.raises(ValueError, match="dtype and shape"):
        kern.parallel_copy(a, np.zeros(99, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        kern.parallel_copy(np.zeros(200, np.float32)[::2], a)
    with pytest.raises(ValueError, match="overlap"):
        kern.parallel_copy(a[:50], a[10:60])
    ro = np.zeros(100, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        kern.parallel_copy(a, ro)
