# Elementwise ops (pointwise.h): Dynamic Tanh, y = w * tanh(alpha * x) + b.
# Included by _kernels.pxi.
#
# x is C-contiguous (P, C, S): channel c of "sample" p holds S contiguous
# values (channels-first: S = the spatial size), or S = 1 and each row of C
# values is one channels-last position.  The flat array is split into one
# contiguous range per thread, whatever the shape (one wide row, many
# narrow ones, a single sample), and each range is walked in pieces over
# which the parameters are scalars (S > 1) or a contiguous slice (S = 1).
# The backward's sums are per-thread partials merged in thread order, so
# results are deterministic for a given thread count.

cdef extern from "pointwise.h" nogil:
    void fn_dyt_forward_s(int st, const void* x, void* y, Py_ssize_t n, float a, const float* w,
                          const float* b, int vec, int stream)
    void fn_dyt_forward_d(const double* x, double* y, Py_ssize_t n, double a, const double* w,
                          const double* b, int vec)
    void fn_dyt_backward_s(int st, const void* g, const void* x, void* dx, Py_ssize_t n, float a,
                           const float* w, int vec, double* s_alpha, double* gw, double* gb,
                           int stream)
    void fn_dyt_backward_d(const double* g, const double* x, double* dx, Py_ssize_t n, double a,
                           const double* w, int vec, double* s_alpha, double* gw, double* gb)

DEF PW_PIECE = 4096   # values per piece (the backward's float sums stay short)


cdef inline Py_ssize_t _pw_piece(Py_ssize_t i, Py_ssize_t end, Py_ssize_t C, Py_ssize_t S,
                                 Py_ssize_t* c) noexcept nogil:
    """The piece of the flat range starting at i: its channel (or, S = 1, its
    first channel) in c, its length as the return value."""
    cdef Py_ssize_t n, seg
    if S == 1:
        c[0] = i % C
        seg = C - c[0]
    else:
        c[0] = (i // S) % C
        seg = S - i % S
    n = end - i
    if seg < n:
        n = seg
    return n if n < PW_PIECE else PW_PIECE


cdef int _dyt_forward(const char* x, char* y, int st, Py_ssize_t P, Py_ssize_t C, Py_ssize_t S,
                      double alpha, const floating* w, const floating* b, int nth) noexcept nogil:
    cdef Py_ssize_t total = P * C * S, i, end, n, c
    cdef Py_ssize_t isz = _itemsize(st, sizeof(floating))
    cdef bint vec = S == 1
    # float32 and 16-bit storage: loaded and stored in their own width (pointwise.h);
    # no streaming stores in place (see _stat_apply)
    cdef bint stream = (floating is float) and _use_streaming(P * C, S, isz) and y != x
    cdef int p
    for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        c = 0  # assigned in the body: thread-private (it is written through &c)
        i = _part_start(total, nth, p)
        end = _part_start(total, nth, p + 1)
        while i < end:
            n = _pw_piece(i, end, C, S, &c)
            if floating is double:
                fn_dyt_forward_d(<const double*>x + i, <double*>y + i, n, alpha, w + c, b + c, vec)
            else:
                fn_dyt_forward_s(st, x + i * isz, y + i * isz, n, <float>alpha, w + c, b + c, vec, stream)
            i = i + n
        if stream:
            fastnorm_stream_fence()
    return 0


cdef int _dyt_backward(const char* g, const char* x, char* dx, int st, Py_ssize_t P, Py_ssize_t C,
                       Py_ssize_t S, double alpha, const floating* w, double* part,
                       int nth) noexcept nogil:
    """part: nth * (2C + 1) zeroed doubles: per thread, grad_weight (C),
    grad_bias (C), then grad_alpha."""
    cdef Py_ssize_t total = P * C * S, i, end, n, c
    cdef Py_ssize_t isz = _itemsize(st, sizeof(floating))
    cdef Py_ssize_t stride = 2 * C + 1
    cdef bint vec = S == 1
    cdef bint stream = (floating is float) and _use_streaming_grad(P * C, S, isz)
    cdef int p
    cdef double* mine
    for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        mine = part + p * stride
        c = 0
        i = _part_start(total, nth, p)
        end = _part_start(total, nth, p + 1)
        while i < end:
            n = _pw_piece(i, end, C, S, &c)
            if floating is double:
                fn_dyt_backward_d(<const double*>g + i, <const double*>x + i, <double*>dx + i, n, alpha,
                                  w + c, vec, mine + 2 * C, mine + c, mine + C + c)
            else:
                fn_dyt_backward_s(st, g + i * isz, x + i * isz, dx + i * isz, n, <float>alpha, w + c, vec,
                                  mine + 2 * C, mine + c, mine + C + c, stream)
            i = i + n
        if stream:
            fastnorm_stream_fence()
    return 0


def dyt_forward(cnp.ndarray x, cnp.ndarray y, Py_ssize_t P, Py_ssize_t C, Py_ssize_t S, double alpha,
                cnp.ndarray weight, cnp.ndarray bias, object n_threads):
    """x, y: C-contiguous, P*C*S values of one storage dtype; weight, bias:
    contiguous (C,) of the compute dtype (float64 for float64 x, else float32)."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef int ctype = _kernel_typenum(typenum)
    cdef bint dbl
    cdef int st = storage_of(typenum, &dbl)
    _check_flat(x, typenum, P * C * S, "x")
    _check_flat(y, typenum, P * C * S, "y")
    _check_flat(weight, ctype, C, "weight")
    _check_flat(bias, ctype, C, "bias")
    if P * C * S == 0:
        return
    cdef int nth = resolve_threads(n_threads, P * C * S)
    cdef const char* xp = <const char*>cnp.PyArray_DATA(x)
    cdef char* yp = <char*>cnp.PyArray_DATA(y)
    cdef int status = 0
    with nogil:
        if dbl:
            status = _dyt_forward[double](xp, yp, st, P, C, S, alpha,
                                          <const double*>cnp.PyArray_DATA(weight),
                                          <const double*>cnp.PyArray_DATA(bias), nth)
        else:
            status = _dyt_forward[float](xp, yp, st, P, C, S, alpha,
                                         <const float*>cnp.PyArray_DATA(weight),
                                         <const float*>cnp.PyArray_DATA(bias), nth)
    if status != 0:
        raise MemoryError("fastnorm: out of memory in dynamic_tanh")


def dyt_backward(cnp.ndarray g, cnp.ndarray x, cnp.ndarray dx, Py_ssize_t P, Py_ssize_t C, Py_ssize_t S,
                 double alpha, cnp.ndarray weight, cnp.ndarray grad_w, cnp.ndarray grad_b,
                 object n_threads):
    """Backward of dyt_forward: writes dx, grad_w and grad_b (float64 (C,)),
    returns grad_alpha (a float)."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef int ctype = _kernel_typenum(typenum)
    cdef bint dbl
    cdef int st = storage_of(typenum, &dbl)
    _check_flat(g, typenum, P * C * S, "grad_out")
    _check_flat(x, typenum, P * C * S, "x")
    _check_flat(dx, typenum, P * C * S, "grad_x")
    _check_flat(weight, ctype, C, "weight")
    _check_flat(grad_w, cnp.NPY_FLOAT64, C, "grad_w")
    _check_flat(grad_b, cnp.NPY_FLOAT64, C, "grad_b")
    cdef int nth = resolve_threads(n_threads, P * C * S)
    cdef Py_ssize_t stride = 2 * C + 1, k, j
    cdef double* part = <double*>scratch_alloc(<size_t>nth * stride * sizeof(double))
    cdef int status = 0
    if part == NULL:
        raise MemoryError("fastnorm: out of memory in dynamic_tanh_backward")
    memset(part, 0, <size_t>nth * stride * sizeof(double))
    cdef double* gw = <double*>cnp.PyArray_DATA(grad_w)
    cdef double* gb = <double*>cnp.PyArray_DATA(grad_b)
    cdef double ga = 0.0
    cdef const char* gp = <const char*>cnp.PyArray_DATA(g)
    cdef const char* xp = <const char*>cnp.PyArray_DATA(x)
    cdef char* dp = <char*>cnp.PyArray_DATA(dx)
    with nogil:
        if P * C * S:
            if dbl:
                status = _dyt_backward[double](gp, xp, dp, st, P, C, S, alpha,
                                      <const double*>cnp.PyArray_DATA(weight), part, nth)
            else:
                status = _dyt_backward[float](gp, xp, dp, st, P, C, S, alpha,
                                     <const float*>cnp.PyArray_DATA(weight), part, nth)
        for k in range(C):
            gw[k] = 0
            gb[k] = 0
        for j in range(nth):
            for k in range(C):
                gw[k] += part[j * stride + k]
                gb[k] += part[j * stride + C + k]
            ga += part[j * stride + 2 * C]
    scratch_free(part)
    if status != 0:
        raise MemoryError("fastnorm: out of memory in dynamic_tanh_backward")
    return ga


# ---------------------------------------------------------------- per-statistic passes
#
# Statistic k of value (p, c, s) is (p // R) * C + c (see pointwise.h): the
# pieces of _pw_piece have one statistic (S > 1) or consecutive ones (S = 1).

cdef extern from "pointwise.h" nogil:
    void fn_stat_sums_s(int st, const void* g, const void* x, Py_ssize_t n, const float* hi, int vec,
                        double* sg, double* sgx)
    void fn_stat_apply_s(int st, const void* g, const void* x, void* dx, Py_ssize_t n, const float* hi,
                         const float* al, const float* be, const float* ga, int vec, int stream)
    void fn_stat_sums_d(const double* g, const double* x, Py_ssize_t n, const double* hi, int vec,
                        double* sg, double* sgx)
    void fn_stat_apply_d(const double* g, const double* x, double* dx, Py_ssize_t n, const double* hi,
                         const double* al, const double* be, const double* ga, int vec)


cdef inline Py_ssize_t _stat_of_flat(Py_ssize_t i, Py_ssize_t C, Py_ssize_t S, Py_ssize_t R) noexcept nogil:
    cdef Py_ssize_t p = i // (C * S)
    return (p // R) * C + (i // S) % C


cdef int _stat_sums(const char* g, const char* x, int st, Py_ssize_t P, Py_ssize_t C, Py_ssize_t S,
                    Py_ssize_t R, const floating* hi, Py_ssize_t K, double* part, int nth) noexcept nogil:
    """part: nth * 2K zeroed doubles (per thread: sum g, then sum g * (x - hi))."""
    cdef Py_ssize_t total = P * C * S, i, end, n, c, k
    cdef Py_ssize_t isz = _itemsize(st, sizeof(floating))
    cdef bint vec = S == 1
    cdef int p
    cdef double* mine
    for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        mine = part + 2 * K * p
        c = 0
        i = _part_start(total, nth, p)
        end = _part_start(total, nth, p + 1)
        while i < end:
            n = _pw_piece(i, end, C, S, &c)
            k = _stat_of_flat(i, C, S, R)
            if floating is double:
                fn_stat_sums_d(<const double*>g + i, <const double*>x + i, n, hi + k, vec, mine + k,
                               mine + K + k)
            else:
                fn_stat_sums_s(st, g + i * isz, x + i * isz, n, hi + k, vec, mine + k, mine + K + k)
            i = i + n
    return 0


cdef int _stat_apply(const char* g, const char* x, char* dx, int st, Py_ssize_t P, Py_ssize_t C,
                     Py_ssize_t S, Py_ssize_t R, const floating* hi, const floating* al,
                     const floating* be, const floating* ga, int nth) noexcept nogil:
    cdef Py_ssize_t total = P * C * S, i, end, n, c, k
    cdef Py_ssize_t isz = _itemsize(st, sizeof(floating))
    cdef bint vec = S == 1
    # in place (dx is g or x) the lines are already in cache, owned: streaming
    # stores would only push the result out to memory (measured: an in-place
    # row scaling of a (4096, 1024) float32 product, 9.3 ms streamed)
    cdef bint stream = ((floating is float) and _use_streaming(P * C, S, isz)
                        and dx != g and dx != x)
    cdef int p
    cdef const floating* alk
    for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        c = 0
        i = _part_start(total, nth, p)
        end = _part_start(total, nth, p + 1)
        while i < end:
            n = _pw_piece(i, end, C, S, &c)
            k = _stat_of_flat(i, C, S, R)
            alk = al + k if al != NULL else NULL
            if floating is double:
                fn_stat_apply_d(<const double*>g + i, <const double*>x + i, <double*>dx + i, n, hi + k,
                                alk, be + k, ga + k, vec)
            else:
                fn_stat_apply_s(st, g + i * isz, x + i * isz, dx + i * isz, n, hi + k, alk, be + k,
                                ga + k, vec, stream)
            i = i + n
        if stream:
            fastnorm_stream_fence()
    return 0


def stat_sums(cnp.ndarray g, cnp.ndarray x, Py_ssize_t P, Py_ssize_t C, Py_ssize_t S, Py_ssize_t R,
              cnp.ndarray hi, cnp.ndarray sg, cnp.ndarray sgx, object n_threads):
    """Per statistic k = (p // R) * C + c of x's (P, C, S) layout: sg[k] =
    sum g, sgx[k] = sum g * (x - hi[k]) (float64 outputs of K = P // R * C)."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef int ctype = _kernel_typenum(typenum)
    cdef bint dbl
    cdef int st = storage_of(typenum, &dbl)
    cdef Py_ssize_t K = (P // R) * C if R > 0 else 0, j, k
    _check_flat(g, typenum, P * C * S, "g")
    _check_flat(x, typenum, P * C * S, "x")
    _check_flat(hi, ctype, K, "hi")
    _check_flat(sg, cnp.NPY_FLOAT64, K, "sg")
    _check_flat(sgx, cnp.NPY_FLOAT64, K, "sgx")
    if R < 1 or P % R:
        raise ValueError("internal: stat_sums needs P divisible by R >= 1")
    cdef int nth = resolve_threads(n_threads, P * C * S)
    cdef double* part = <double*>scratch_alloc(<size_t>nth * 2 * K * sizeof(double) + 8)
    if part == NULL:
        raise MemoryError("fastnorm: out of memory in stat_sums")
    memset(part, 0, <size_t>nth * 2 * K * sizeof(double))
    cdef double* a = <double*>cnp.PyArray_DATA(sg)
    cdef double* b = <double*>cnp.PyArray_DATA(sgx)
    cdef const char* gp = <const char*>cnp.PyArray_DATA(g)
    cdef const char* xp = <const char*>cnp.PyArray_DATA(x)
    cdef void* hp = cnp.PyArray_DATA(hi)
    with nogil:
        if P * C * S:
            if dbl:
                _stat_sums[double](gp, xp, st, P, C, S, R, <const double*>hp, K, part, nth)
            else:
                _stat_sums[float](gp, xp, st, P, C, S, R, <const float*>hp, K, part, nth)
        for k in range(K):
            a[k] = 0
            b[k] = 0
        for j in range(nth):
            for k in range(K):
                a[k] += part[2 * K * j + k]
                b[k] += part[2 * K * j + K + k]
    scratch_free(part)


def stat_apply(cnp.ndarray g, cnp.ndarray x, cnp.ndarray dx, Py_ssize_t P, Py_ssize_t C, Py_ssize_t S,
               Py_ssize_t R, cnp.ndarray hi, cnp.ndarray alpha, cnp.ndarray beta, cnp.ndarray gamma,
               object n_threads):
    """dx = alpha[k] * g + beta[k] * (x - hi[k]) + gamma[k] per statistic k
    (as stat_sums); coefficients: contiguous (K,) of the compute dtype; g may
    be x (an affine map per statistic: alpha is folded into beta and gamma,
    and x is read once) and dx may be x (in place)."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef int ctype = _kernel_typenum(typenum)
    cdef bint dbl
    cdef int st = storage_of(typenum, &dbl)
    cdef Py_ssize_t K = (P // R) * C if R > 0 else 0
    _check_flat(g, typenum, P * C * S, "g")
    _check_flat(x, typenum, P * C * S, "x")
    _check_flat(dx, typenum, P * C * S, "dx")
    for a, name in ((hi, "hi"), (alpha, "alpha"), (beta, "beta"), (gamma, "gamma")):
        _check_flat(a, ctype, K, name)
    if R < 1 or P % R:
        raise ValueError("internal: stat_apply needs P divisible by R >= 1")
    cdef int nth = resolve_threads(n_threads, P * C * S)
    cdef const char* gp = <const char*>cnp.PyArray_DATA(g)
    cdef const char* xp = <const char*>cnp.PyArray_DATA(x)
    cdef char* dp = <char*>cnp.PyArray_DATA(dx)
    cdef void* hp = cnp.PyArray_DATA(hi)
    cdef void* ap = cnp.PyArray_DATA(alpha)
    cdef void* bp = cnp.PyArray_DATA(beta)
    cdef void* cp = cnp.PyArray_DATA(gamma)
    if P * C * S == 0:
        return
    if gp == xp:
        # an affine map of x: alpha folds into beta and gamma, and the kernel
        # never multiplies alpha by x (0 * inf would be NaN where the map is finite)
        beta = beta + alpha  # new contiguous (K,) arrays
        gamma = gamma + alpha * hi
        bp = cnp.PyArray_DATA(beta)
        cp = cnp.PyArray_DATA(gamma)
        ap = NULL
    with nogil:
        if dbl:
            _stat_apply[double](gp, xp, dp, st, P, C, S, R, <const double*>hp, <const double*>ap,
                                <const double*>bp, <const double*>cp, nth)
        else:
            _stat_apply[float](gp, xp, dp, st, P, C, S, R, <const float*>hp, <const float*>ap,
                               <const float*>bp, <const float*>cp, nth)
