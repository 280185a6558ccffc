# Rows standardized by the unbiased std with eps added to it (stdnorm.h):
# AdaNorm and Weight Standardization.  Included by _kernels.pxi.
#
# x, y: (M, n) with contiguous rows (any row stride), as the row kernels;
# rows are split over the threads (static schedule).  mean / std: (M,)
# outputs (forward) or inputs (backward) of the compute dtype.  float32 and
# 16-bit rows run one vector code (stdnorm.h), float64 its own.

cdef extern from "stdnorm.h" nogil:
    void fn_sn_moments(int st, const void* x, Py_ssize_t n, double* mean, double* m2)
    void fn_sn_moments_d(const double* x, Py_ssize_t n, double* mean, double* m2)
    void fn_sn_forward(int st, const void* x, void* y, Py_ssize_t n, double mean, double inv,
                       float scale, float kf, int stream)
    void fn_sn_forward_d(const double* x, double* y, Py_ssize_t n, double mean, double inv,
                         double scale, double kf)
    void fn_sn_backward(int st, const void* g, const void* x, void* dx, Py_ssize_t n, double mean,
                        double s, double inv, float scale, float kf)
    void fn_sn_backward_d(const double* g, const double* x, double* dx, Py_ssize_t n,
                          double mean, double s, double inv, double scale, double kf)


cdef void _sn_forward(const char* xb, Py_ssize_t xs, char* yb, Py_ssize_t ys, int st, Py_ssize_t M,
                     Py_ssize_t n, double scale, double kf, double eps, floating* mean,
                     floating* std, int nth) noexcept nogil:
    cdef Py_ssize_t r
    cdef double mu, m2, s
    # rows straight to memory with streaming stores when the output is large
    # and not x itself (in place, the lines are in cache already)
    cdef bint stream = (floating is float and _use_streaming(M, n, _itemsize(st, sizeof(floating)))
                        and yb != xb)
    for r in prange(M, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        mu = 0.0  # assigned in the body: thread-private (written through pointers below)
        m2 = 0.0
        if floating is float:
            fn_sn_moments(st, xb + r * xs, n, &mu, &m2)
        else:
            fn_sn_moments_d(<const double*>(xb + r * xs), n, &mu, &m2)
        s = sqrt(m2 / (n - 1)) if n > 1 else NAN   # torch's unbiased std of one value: NaN
        if floating is float:
            fn_sn_forward(st, xb + r * xs, yb + r * ys, n, mu, 1.0 / (s + eps), <float>scale,
                          <float>kf, stream)
        else:
            fn_sn_forward_d(<const double*>(xb + r * xs), <double*>(yb + r * ys), n, mu,
                            1.0 / (s + eps), scale, kf)
        if stream:
            fastnorm_stream_fence()   # each row's streaming stores, fenced by the thread that made them
        if mean != NULL:
            mean[r] = <floating>mu
            std[r] = <floating>s


cdef void _sn_backward(const char* gb_, Py_ssize_t gs, const char* xb, Py_ssize_t xs, char* db,
                      Py_ssize_t ds, int st, Py_ssize_t M, Py_ssize_t n, double scale, double kf,
                      double eps, const floating* mean, const floating* std, int nth) noexcept nogil:
    cdef Py_ssize_t r
    cdef double s
    for r in prange(M, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        s = std[r]
        if floating is float:
            fn_sn_backward(st, gb_ + r * gs, xb + r * xs, db + r * ds, n, mean[r], s,
                           1.0 / (s + eps), <float>scale, <float>kf)
        else:
            fn_sn_backward_d(<const double*>(gb_ + r * gs), <const double*>(xb + r * xs),
                             <double*>(db + r * ds), n, mean[r], s, 1.0 / (s + eps), scale, kf)


def std_norm_forward(cnp.ndarray x, cnp.ndarray y, double scale, double k, double eps,
                     object mean, object std, object n_threads):
    """y = scale * z * (1 - k z), z = (x - mean) / (std + eps), per row of
    x (M, n); mean / std: (M,) outputs of the compute dtype, or None."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef Py_ssize_t M = x.shape[0], n = x.shape[1]
    _check_rows(x, typenum, M, n, "x")
    _check_rows(y, typenum, M, n, "y")
    cdef int ctype = _kernel_typenum(typenum)
    if mean is not None:
        _check_flat(mean, ctype, M, "mean")
        _check_flat(std, ctype, M, "std")
    cdef int nth = resolve_threads(n_threads, M * n)
    cdef bint dbl
    cdef int st = storage_of(typenum, &dbl)
    if M == 0 or n == 0:
        return
    cdef const char* xb = <const char*>cnp.PyArray_DATA(x)
    cdef char* yb = <char*>cnp.PyArray_DATA(y)
    cdef Py_ssize_t xs = x.strides[0], ys = y.strides[0]
    cdef void* mp = _ptr_or_null(mean)
    cdef void* sp = _ptr_or_null(std)
    with nogil:
        if dbl:
            _sn_forward[double](xb, xs, yb, ys, st, M, n, scale, k, eps, <double*>mp,
                                <double*>sp, nth)
        else:
            _sn_forward[float](xb, xs, yb, ys, st, M, n, scale, k, eps, <float*>mp,
                               <float*>sp, nth)


def std_norm_backward(cnp.ndarray g, cnp.ndarray x, cnp.ndarray dx, cnp.ndarray mean,
                      cnp.ndarray std, double scale, double k, double eps, object n_threads):
    """grad_x of std_norm_forward, (1 - k z) held constant; g, x, dx: (M, n) rows."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef Py_ssize_t M = x.shape[0], n = x.shape[1]
    _check_rows(g, typenum, M, n, "grad_out")
    _check_rows(x, typenum, M, n, "x")
    _check_rows(dx, typenum, M, n, "grad_x")
    cdef int ctype = _kernel_typenum(typenum)
    _check_flat(mean, ctype, M, "mean")
    _check_flat(std, ctype, M, "std")
    cdef int nth = resolve_threads(n_threads, M * n)
    cdef bint dbl
    cdef int st = storage_of(typenum, &dbl)
    if M == 0 or n == 0:
        return
    cdef const char* gb_ = <const char*>cnp.PyArray_DATA(g)
    cdef const char* xb = <const char*>cnp.PyArray_DATA(x)
    cdef char* db = <char*>cnp.PyArray_DATA(dx)
    cdef Py_ssize_t gs = g.strides[0], xs = x.strides[0], ds = dx.strides[0]
    cdef void* mp = cnp.PyArray_DATA(mean)
    cdef void* sp = cnp.PyArray_DATA(std)
    with nogil:
        if dbl:
            _sn_backward[double](gb_, gs, xb, xs, db, ds, st, M, n, scale, k, eps,
                                 <const double*>mp, <const double*>sp, nth)
        else:
            _sn_backward[float](gb_, gs, xb, xs, db, ds, st, M, n, scale, k, eps,
                                <const float*>mp, <const float*>sp, nth)
