# cython: language_level=3
"""A small cache of large output buffers.

A fresh multi-megabyte NumPy array is fresh memory from the OS: its first
write page-faults and the kernel zeroes every page, which costs about a third
of a memory-bound forward (measured: LayerNorm (8192, 4096) float32 goes from
about 1.2x to about 1.5x of the copy time).  Inference pipelines call the
same op with the same shapes over and over, so fastnorm hands out large outputs
from buffers whose memory goes back to this cache, not to the OS, when the
array (and every view of it) is gone -- what ONNX Runtime's arena and PyTorch's
caching allocators do.

Only outputs of at least MIN_CACHED_BYTES use it; at most MAX_SLOTS buffers and
`limit` bytes (default 1 GiB, `fastnorm.set_output_cache(bytes)`, 0 disables)
are kept, the least recently released evicted first.

The kernels' own work memory (staging rows, per-thread partial sums) comes
from the same cache through scratch_alloc / scratch_free, which run without
the GIL: a backward over a few rows of 2^20 used to malloc, page-fault and
free 24-48 MiB of partials on every call (measured: LayerNorm backward
(8, 2^20) bfloat16 took 7x PyTorch's time).  The slots are guarded by a spin
lock (held for a few slot compares, never across an allocation's use).
"""
cimport numpy as cnp
from libc.stdlib cimport free, malloc
from libc.stdint cimport uintptr_t
from cpython.ref cimport Py_INCREF

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    object PyArray_NewFromDescr(void* subtype, cnp.dtype descr, int nd, cnp.npy_intp* dims,
                                cnp.npy_intp* strides, void* data, int flags, void* obj)

cdef extern from "pages.h":
    void* fastnorm_alloc_pages(size_t nbytes) nogil
    void fastnorm_lock(char* lock) nogil
    void fastnorm_unlock(char* lock) nogil

cdef enum:
    MAX_SLOTS = 8

cdef size_t MIN_CACHED_BYTES = 128 * 1024
SLOTS = MAX_SLOTS  # for tests
cdef size_t limit = 1 << 30
cdef void* slot_ptr[MAX_SLOTS]
cdef size_t slot_size[MAX_SLOTS]
cdef unsigned long long slot_stamp[MAX_SLOTS]
cdef unsigned long long clock = 0
cdef size_t cached_bytes = 0
cdef char slots_lock = 0   # guards the slot arrays, cached_bytes, clock and limit


cdef class _PooledMemory:
    """The base object of a cached output: returns its memory on deallocation."""
    cdef void* ptr
    cdef size_t nbytes

    def __dealloc__(self):
        if self.ptr != NULL:
            _give_back(self.ptr, self.nbytes)
            self.ptr = NULL


cdef void _evict_oldest() noexcept nogil:
    global cached_bytes
    cdef int i, oldest = -1
    for i in range(MAX_SLOTS):
        if slot_ptr[i] != NULL and (oldest < 0 or slot_stamp[i] < slot_stamp[oldest]):
            oldest = i
    if oldest >= 0:
        free(slot_ptr[oldest])
        cached_bytes -= slot_size[oldest]
        slot_ptr[oldest] = NULL


cdef void _release(void* ptr, size_t nbytes) noexcept nogil:
    """Keep a released buffer, evicting the least recently released ones when
    the slots or the byte limit are full (so that a workload's current sizes
    are the ones cached, not the first sizes ever seen).  Caller holds the lock."""
    global cached_bytes, clock
    cdef int i, n_used
    if nbytes > limit:
        free(ptr)
        return
    while True:
        n_used = 0
        for i in range(MAX_SLOTS):
            if slot_ptr[i] != NULL:
                n_used += 1
        if n_used < MAX_SLOTS and cached_bytes + nbytes <= limit:
            break
        _evict_oldest()
    for i in range(MAX_SLOTS):
        if slot_ptr[i] == NULL:
            clock += 1
            slot_ptr[i] = ptr
            slot_size[i] = nbytes
            slot_stamp[i] = clock
            cached_bytes += nbytes
            return


cdef void _give_back(void* ptr, size_t nbytes) noexcept nogil:
    """_release under the lock: a cached block's way back."""
    fastnorm_lock(&slots_lock)
    _release(ptr, nbytes)
    fastnorm_unlock(&slots_lock)


cdef void* _take(size_t nbytes, size_t* got) noexcept nogil:
    """The smallest cached buffer of nbytes..2*nbytes, or a new one."""
    global cached_bytes
    cdef int i, best = -1
    cdef void* p
    fastnorm_lock(&slots_lock)
    for i in range(MAX_SLOTS):
        if slot_ptr[i] != NULL and nbytes <= slot_size[i] <= 2 * nbytes:
            if best < 0 or slot_size[i] < slot_size[best]:
                best = i
    if best >= 0:
        p = slot_ptr[best]
        got[0] = slot_size[best]
        cached_bytes -= slot_size[best]
        slot_ptr[best] = NULL
        fastnorm_unlock(&slots_lock)
        return p
    fastnorm_unlock(&slots_lock)
    got[0] = nbytes
    return fastnorm_alloc_pages(nbytes)


# A scratch block: the caller's pointer q is 64-byte aligned and the two
# words before it say where the block starts and its cached size (0: a
# plain malloc, not from the cache).
cdef enum:
    SCRATCH_HEAD = 64


cdef void* scratch_alloc(size_t nbytes) noexcept nogil:
    """nbytes of 64-byte aligned work memory for a kernel (NULL when out of
    memory): from the cache when large, so that a repeated call touches
    memory that is already mapped.  Give it back with scratch_free."""
    cdef size_t got = 0
    cdef char* raw
    cdef char* q
    if nbytes + SCRATCH_HEAD >= MIN_CACHED_BYTES and limit != 0:
        raw = <char*>_take(nbytes + SCRATCH_HEAD, &got)
        if raw == NULL:
            return NULL
        q = raw + SCRATCH_HEAD
    else:
        raw = <char*>malloc(nbytes + 2 * SCRATCH_HEAD)
        if raw == NULL:
            return NULL
        q = <char*>((<uintptr_t>raw + 2 * SCRATCH_HEAD - 1) & ~(<uintptr_t>SCRATCH_HEAD - 1))
    (<void**>q)[-1] = raw
    (<size_t*>q)[-2] = got
    return q


cdef void scratch_free(void* p) noexcept nogil:
    """Return scratch_alloc's memory (NULL: nothing)."""
    if p == NULL:
        return
    cdef void* raw = (<void**>p)[-1]
    cdef size_t got = (<size_t*>p)[-2]
    if got == 0:
        free(raw)
        return
    _give_back(raw, got)


cdef object empty_array(int nd, cnp.npy_intp* dims, int typenum):
    """An uninitialized C-contiguous array (cached memory when large)."""
    cdef size_t n = 1, nbytes, got
    cdef int i
    for i in range(nd):
        n *= <size_t>dims[i]
    nbytes = n * cnp.PyArray_DescrFromType(typenum).itemsize
    if nbytes < MIN_CACHED_BYTES or limit == 0:
        return cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    cdef void* p = _take(nbytes, &got)
    if p == NULL:
        raise MemoryError(f"fastnorm: cannot allocate {nbytes} bytes")
    cdef _PooledMemory owner = _PooledMemory.__new__(_PooledMemory)
    owner.ptr = p
    owner.nbytes = got
    cdef cnp.ndarray arr = cnp.PyArray_New(cnp.ndarray, nd, dims, typenum, NULL, p, 0,
                                           cnp.NPY_ARRAY_CARRAY, None)
    Py_INCREF(owner)  # PyArray_SetBaseObject steals a reference
    cnp.PyArray_SetBaseObject(arr, owner)
    return arr


def empty(shape, dtype):
    """Python-level `empty_array` (shape: tuple of ints; dtype float32/float64)."""
    cdef cnp.npy_intp dims[32]
    cdef int nd = len(shape), i
    if nd > 32:
        raise ValueError("at most 32 dimensions")
    for i in range(nd):
        dims[i] = shape[i]
    return empty_array(nd, dims, cnp.dtype(dtype).num)


def set_output_cache(max_bytes):
    """Keep up to `max_bytes` of released large outputs for reuse (0 disables
    the cache and frees what it holds).  Returns the previous limit."""
    global limit, cached_bytes
    cdef int i
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes must be a non-negative int, got {max_bytes!r}")
    cdef size_t previous
    cdef size_t new_limit = min(max_bytes, <size_t>-1)  # more than the address space: no limit
    with nogil:
        fastnorm_lock(&slots_lock)
        previous = limit
        limit = new_limit
        for i in range(MAX_SLOTS):  # drop what no longer fits
            if slot_ptr[i] != NULL and cached_bytes > limit:
                free(slot_ptr[i])
                cached_bytes -= slot_size[i]
                slot_ptr[i] = NULL
        fastnorm_unlock(&slots_lock)
    return previous


def output_cache_info():
    """(bytes cached now, limit in bytes, buffers cached now)."""
    cdef int i, count = 0
    cdef size_t now, lim
    with nogil:
        fastnorm_lock(&slots_lock)
        for i in range(MAX_SLOTS):
            if slot_ptr[i] != NULL:
                count += 1
        now = cached_bytes
        lim = limit
        fastnorm_unlock(&slots_lock)
    return now, lim, count


def array_over(object owner, Py_ssize_t address, tuple shape, cnp.dtype dtype):
    """A C-contiguous, writeable ndarray of `shape` and `dtype` over the memory
    at `address`, kept alive by `owner` (its base): fastnorm.torch's view of
    a contiguous CPU tensor, without the cost of Tensor.numpy()."""
    cdef int nd = len(shape)
    cdef cnp.npy_intp dims[32]
    cdef int i
    if nd > 32:
        raise ValueError("array_over: more than 32 dimensions")
    for i in range(nd):
        dims[i] = shape[i]
    Py_INCREF(dtype)  # PyArray_NewFromDescr steals it
    cdef cnp.ndarray a = PyArray_NewFromDescr(<void*>cnp.ndarray, dtype, nd, dims, NULL, <void*>address,
                                              cnp.NPY_ARRAY_CARRAY, NULL)
    cnp.set_array_base(a, owner)
    return a
