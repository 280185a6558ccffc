# Local Response Normalization (torch.nn.functional.local_response_norm),
# channels-first: included by _kernels.pxi.
#
# scale_c = k + alpha / size * sum of x_j^2 over the zero-padded window
# j in [c - size//2, c + (size-1)//2]; y_c = x_c * scale_c^-beta.  The window
# sums slide along the channels with one add and one subtract per element
# (O(1), not O(size)), in float64 planes so that the running sum does not drift.
# Work is split into units of (sample, chunk of positions).

from libc.math cimport exp, log

cdef enum:
    LRN_CHUNK = 512     # positions per unit


cdef inline double _neg_pow(double s, double beta) noexcept nogil:
    """s ** -beta, with the common exponents without pow."""
    if beta == 0.75:
        return 1.0 / sqrt(s * sqrt(s))
    if beta == 0.5:
        return 1.0 / sqrt(s)
    if beta == 1.0:
        return 1.0 / s
    return exp(-beta * log(s))


cdef void _lrn_unit(const floating* x, floating* y, floating* scale_out, Py_ssize_t C, Py_ssize_t S,
                    Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t size, double alpha, double beta,
                    double k, double* acc) noexcept nogil:
    """One sample (x: C planes of S), positions s0..s1; acc: s1 - s0 doubles."""
    cdef Py_ssize_t lo = size // 2, hi = (size - 1) // 2, c, j, s, L = s1 - s0
    cdef const floating* p
    cdef double a = alpha / size, sc
    for s in range(L):
        acc[s] = 0
    for j in range(0, hi + 1 if hi + 1 < C else C):   # window of channel 0: [-lo, hi]
        p = x + j * S + s0
        for s in range(L):
            acc[s] += <double>p[s] * p[s]
    for c in range(C):
        p = x + c * S + s0
        for s in range(L):
            sc = k + a * acc[s]
            scale_out[c * S + s0 + s] = <floating>sc
            y[c * S + s0 + s] = <floating>(p[s] * _neg_pow(sc, beta))
        if c + 1 + hi < C:          # slide: the window of c + 1 gains c + 1 + hi ...
            p = x + (c + 1 + hi) * S + s0
            for s in range(L):
                acc[s] += <double>p[s] * p[s]
        if c - lo >= 0:             # ... and loses c - lo
            p = x + (c - lo) * S + s0
            for s in range(L):
                acc[s] -= <double>p[s] * p[s]


cdef void _lrn_backward_unit(const floating* g, const floating* x, const floating* scale,
                             floating* dx, Py_ssize_t C, Py_ssize_t S, Py_ssize_t s0, Py_ssize_t s1,
                             Py_ssize_t size, double alpha, double beta, double* acc,
                             double* ring) noexcept nogil:
    """dx_i = g_i s_i^-beta - 2 alpha beta / size * x_i * sum over the channels c
    whose window holds i (c in [i - hi, i + lo]) of t_c = g_c x_c s_c^(-beta-1).
    t is computed once per element into a ring of `size` planes, which the
    sliding sum adds and later subtracts."""
    cdef Py_ssize_t lo = size // 2, hi = (size - 1) // 2, c, i, s, L = s1 - s0, q
    cdef double coef = 2.0 * alpha * beta / size, sc
    cdef double* plane
    for s in range(L):
        acc[s] = 0
    for c in range(0, lo + 1 if lo + 1 < C else C):   # channels whose window holds i = 0: [-hi, lo]
        plane = ring + (c % size) * LRN_CHUNK
        for s in range(L):
            q = c * S + s0 + s
            sc = scale[q]
            plane[s] = <double>g[q] * x[q] * _neg_pow(sc, beta) / sc
            acc[s] += plane[s]
    for i in range(C):
        for s in range(L):
            q = i * S + s0 + s
            dx[q] = <floating>(<double>g[q] * _neg_pow(<double>scale[q], beta) - coef * x[q] * acc[s])
        if i - hi >= 0:        # drop t of channel i - hi (in the ring since it was added)
            plane = ring + ((i - hi) % size) * LRN_CHUNK
            for s in range(L):
                acc[s] -= plane[s]
        if i + 1 + lo < C:     # add t of channel i + 1 + lo (overwrites the plane just dropped)
            plane = ring + ((i + 1 + lo) % size) * LRN_CHUNK
            for s in range(L):
                q = (i + 1 + lo) * S + s0 + s
                sc = scale[q]
                plane[s] = <double>g[q] * x[q] * _neg_pow(sc, beta) / sc
                acc[s] += plane[s]


def lrn_forward(cnp.ndarray x, cnp.ndarray y, cnp.ndarray scale, Py_ssize_t N, Py_ssize_t C,
                Py_ssize_t S, Py_ssize_t size, double alpha, double beta, double k, object n_threads):
    """x, y, scale: C-contiguous (N, C, S) of one dtype."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    _check_flat(x, typenum, N * C * S, "x")
    _check_flat(y, typenum, N * C * S, "y")
    _check_flat(scale, typenum, N * C * S, "scale")
    cdef int nth = resolve_threads(n_threads, N * C * S * size)
    cdef Py_ssize_t chunks = (S + LRN_CHUNK - 1) // LRN_CHUNK, u, n, s0, s1
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef void* sp = cnp.PyArray_DATA(scale)
    cdef double* acc = <double*>malloc(nth * LRN_CHUNK * sizeof(double) + 8)
    cdef int p
    if acc == NULL:
        raise MemoryError()
    if N * C * S > 0:
        with nogil:
            for p in prange(nth, schedule='static', num_threads=nth):
                for u in range(_part_start(N * chunks, nth, p), _part_start(N * chunks, nth, p + 1)):
                    n = u // chunks
                    s0 = (u % chunks) * LRN_CHUNK
                    s1 = s0 + LRN_CHUNK if s0 + LRN_CHUNK < S else S
                    if typenum == cnp.NPY_FLOAT32:
                        _lrn_unit[float](<const float*>xp + n * C * S, <float*>yp + n * C * S,
                                         <float*>sp + n * C * S, C, S, s0, s1, size, alpha, beta, k,
                                         acc + p * LRN_CHUNK)
                    else:
                        _lrn_unit[double](<const double*>xp + n * C * S, <double*>yp + n * C * S,
                                          <double*>sp + n * C * S, C, S, s0, s1, size, alpha, beta, k,
                                          acc + p * LRN_CHUNK)
    free(acc)


def lrn_backward(cnp.ndarray g, cnp.ndarray x, cnp.ndarray scale, cnp.ndarray dx, Py_ssize_t N,
                 Py_ssize_t C, Py_ssize_t S, Py_ssize_t size, double alpha, double beta,
                 object n_threads):
    cdef int typenum = cnp.PyArray_TYPE(x)
    _check_flat(x, typenum, N * C * S, "x")
    _check_flat(g, typenum, N * C * S, "grad_out")
    _check_flat(scale, typenum, N * C * S, "scale")
    _check_flat(dx, typenum, N * C * S, "grad_x")
    cdef int nth = resolve_threads(n_threads, N * C * S * size)
    cdef Py_ssize_t chunks = (S + LRN_CHUNK - 1) // LRN_CHUNK, u, n, s0, s1
    cdef void* gp = cnp.PyArray_DATA(g)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* sp = cnp.PyArray_DATA(scale)
    cdef void* dp = cnp.PyArray_DATA(dx)
    cdef double* acc = <double*>malloc(nth * (size + 1) * LRN_CHUNK * sizeof(double) + 8)
    cdef int p
    if acc == NULL:
        raise MemoryError()
    if N * C * S > 0:
        with nogil:
            for p in prange(nth, schedule='static', num_threads=nth):
                for u in range(_part_start(N * chunks, nth, p), _part_start(N * chunks, nth, p + 1)):
                    n = u // chunks
                    s0 = (u % chunks) * LRN_CHUNK
                    s1 = s0 + LRN_CHUNK if s0 + LRN_CHUNK < S else S
                    if typenum == cnp.NPY_FLOAT32:
                        _lrn_backward_unit[float](<const float*>gp + n * C * S, <const float*>xp + n * C * S,
                                                  <const float*>sp + n * C * S, <float*>dp + n * C * S,
                                                  C, S, s0, s1, size, alpha, beta,
                                                  acc + p * (size + 1) * LRN_CHUNK,
                                                  acc + p * (size + 1) * LRN_CHUNK + LRN_CHUNK)
                    else:
                        _lrn_backward_unit[double](<const double*>gp + n * C * S, <const double*>xp + n * C * S,
                                                   <const double*>sp + n * C * S, <double*>dp + n * C * S,
                                                   C, S, s0, s1, size, alpha, beta,
                                                  acc + p * (size + 1) * LRN_CHUNK,
                                                  acc + p * (size + 1) * LRN_CHUNK + LRN_CHUNK)
    free(acc)
