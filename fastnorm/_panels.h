/* Channels-last loops over register panels, and the four-row LayerNorm /
 * RMSNorm backward.
 *
 * A channels-last array is rows of C values; a statistic is per column.  The
 * kernels here walk the rows in blocks of FN_RB rows and each block in panels
 * of a few SIMD vectors of columns: a panel's accumulators (or coefficients)
 * live in registers for the whole block, so each value costs one load and
 * two or three vector operations, with no accumulator traffic through memory.
 * A row block is read once from memory; the panels after the first find it in
 * the L1/L2 cache.  For short rows only (the caller's choice, see
 * PANEL_ROW_BYTES in _channel_kernels.pxi): with long rows a block's panels
 * become many strided streams, and rows of 4 KiB alias in the L1 cache.  At
 * the end of a block the `T` accumulators are added into double sums, so the
 * float accumulation spans at most FN_RB values.
 *
 * Written with GCC vector extensions, so every instruction-set build
 * (SSE2 / AVX2 / AVX-512) gets its own native vector width; columns left over
 * after whole panels go a vector, then a value, at a time.
 *
 * Each kernel is defined for float and double by one macro.
 */
#include "simd.h"

#define FN_RB 64  /* rows per block */

/* Streaming stores need every vector of the rows aligned: y at a vector
   boundary and rows of whole vectors. */
static int fastnorm_cl_stream_ok(const void* y, Py_ssize_t C, size_t itemsize)
{
    return ((uintptr_t)y % FN_VBYTES) == 0 && (C * itemsize) % FN_VBYTES == 0;
}

/* sums of d and d * d per column over rows r0..r1, d = x - shift[c]; sd, sq: C doubles */
#define FN_DEFINE_CL_MOMENTS(NAME, ST, T, V, VU, LDV, LD1, PUTV, ST1)                                            \
static void NAME(const ST* x, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,                \
                 const T* shift, double* sd, double* sq)                                 \
{                                                                                       \
    const Py_ssize_t W = FN_VBYTES / sizeof(T);                                         \
    Py_ssize_t rb, re, r, c0, j;                                                        \
    for (j = 0; j < C; j++) { sd[j] = 0; sq[j] = 0; }                                   \
    for (rb = r0; rb < r1; rb = re) {                                                   \
        re = rb + FN_RB < r1 ? rb + FN_RB : r1;                                         \
        for (c0 = 0; c0 + 4 * W <= C; c0 += 4 * W) {                                    \
            const V s0 = FN_LOAD(VU, shift + c0), s1 = FN_LOAD(VU, shift + c0 + W);      \
            const V s2 = FN_LOAD(VU, shift + c0 + 2 * W);                                \
            const V s3 = FN_LOAD(VU, shift + c0 + 3 * W);                                \
            V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                   \
            V q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0};                                   \
            for (r = rb; r < re; r++) {                                                 \
                const ST* p = x + r * C + c0;                                            \
                V d0 = LDV(p) - s0, d1 = LDV(p + W) - s1;               \
                V d2 = LDV(p + 2 * W) - s2, d3 = LDV(p + 3 * W) - s3;   \
                a0 += d0; a1 += d1; a2 += d2; a3 += d3;                                 \
                q0 += d0 * d0; q1 += d1 * d1; q2 += d2 * d2; q3 += d3 * d3;             \
            }                                                                           \
            for (j = 0; j < W; j++) {                                                   \
                sd[c0 + j] += a0[j]; sd[c0 + W + j] += a1[j];                           \
                sd[c0 + 2 * W + j] += a2[j]; sd[c0 + 3 * W + j] += a3[j];               \
                sq[c0 + j] += q0[j]; sq[c0 + W + j] += q1[j];                           \
                sq[c0 + 2 * W + j] += q2[j]; sq[c0 + 3 * W + j] += q3[j];               \
            }                                                                           \
        }                                                                               \
        for (; c0 + W <= C; c0 += W) {                                                  \
            const V s0 = FN_LOAD(VU, shift + c0);                                       \
            V a0 = {0}, q0 = {0};                                                       \
            for (r = rb; r < re; r++) {                                                 \
                V d0 = LDV(x + r * C + c0) - s0;                                \
                a0 += d0;                                                               \
                q0 += d0 * d0;                                                          \
            }                                                                           \
            for (j = 0; j < W; j++) { sd[c0 + j] += a0[j]; sq[c0 + j] += q0[j]; }       \
        }                                                                               \
        for (; c0 < C; c0++) {                                                          \
            T a0 = 0, q0 = 0;                                                           \
            for (r = rb; r < re; r++) {                                                 \
                T d0 = LD1(x[r * C + c0]) - shift[c0];                                       \
                a0 += d0;                                                               \
                q0 += d0 * d0;                                                          \
            }                                                                           \
            sd[c0] += a0;                                                               \
            sq[c0] += q0;                                                               \
        }                                                                               \
    }                                                                                   \
}

/* sums of g, g * t and t per column over rows r0..r1, t = x - hi[c];
   sums: 3 * C doubles (g, then g * t, then t) */
#define FN_DEFINE_CL_BACKWARD_SUMS(NAME, ST, T, V, VU, LDV, LD1, PUTV, ST1)                                      \
static void NAME(const ST* g, const ST* x, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,    \
                 const T* hi, double* sums)                                              \
{                                                                                       \
    const Py_ssize_t W = FN_VBYTES / sizeof(T);                                         \
    Py_ssize_t rb, re, r, c0, j;                                                        \
    double* sa = sums;                                                                  \
    double* sb = sums + C;                                                              \
    double* st = sums + 2 * C;                                                          \
    for (j = 0; j < 3 * C; j++) sums[j] = 0;                                            \
    for (rb = r0; rb < r1; rb = re) {                                                   \
        re = rb + FN_RB < r1 ? rb + FN_RB : r1;                                         \
        for (c0 = 0; c0 + 2 * W <= C; c0 += 2 * W) {                                    \
            const V h0 = FN_LOAD(VU, hi + c0), h1 = FN_LOAD(VU, hi + c0 + W);            \
            V a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0}, t0 = {0}, t1 = {0};               \
            for (r = rb; r < re; r++) {                                                 \
                const ST* gp = g + r * C + c0;                                           \
                const ST* xp = x + r * C + c0;                                           \
                V g0 = LDV(gp), g1 = LDV(gp + W);                       \
                V d0 = LDV(xp) - h0, d1 = LDV(xp + W) - h1;             \
                a0 += g0; a1 += g1;                                                     \
                b0 += g0 * d0; b1 += g1 * d1;                                           \
                t0 += d0; t1 += d1;                                                     \
            }                                                                           \
            for (j = 0; j < W; j++) {                                                   \
                sa[c0 + j] += a0[j]; sa[c0 + W + j] += a1[j];                           \
                sb[c0 + j] += b0[j]; sb[c0 + W + j] += b1[j];                           \
                st[c0 + j] += t0[j]; st[c0 + W + j] += t1[j];                           \
            }                                                                           \
        }                                                                               \
        for (; c0 + W <= C; c0 += W) {                                                  \
            const V h0 = FN_LOAD(VU, hi + c0);                                          \
            V a0 = {0}, b0 = {0}, t0 = {0};                                             \
            for (r = rb; r < re; r++) {                                                 \
                V g0 = LDV(g + r * C + c0);                                     \
                V d0 = LDV(x + r * C + c0) - h0;                                \
                a0 += g0;                                                               \
                b0 += g0 * d0;                                                          \
                t0 += d0;                                                               \
            }                                                                           \
            for (j = 0; j < W; j++) {                                                   \
                sa[c0 + j] += a0[j]; sb[c0 + j] += b0[j]; st[c0 + j] += t0[j];          \
            }                                                                           \
        }                                                                               \
        for (; c0 < C; c0++) {                                                          \
            T a0 = 0, b0 = 0, t0 = 0;                                                   \
            for (r = rb; r < re; r++) {                                                 \
                T g0 = LD1(g[r * C + c0]), d0 = LD1(x[r * C + c0]) - hi[c0];                      \
                a0 += g0;                                                               \
                b0 += g0 * d0;                                                          \
                t0 += d0;                                                               \
            }                                                                           \
            sa[c0] += a0; sb[c0] += b0; st[c0] += t0;                                   \
        }                                                                               \
    }                                                                                   \
}

/* y = (x - hi[c]) * a[c] + b[c] over rows r0..r1 (rows of C values);
   stream: non-temporal stores (fastnorm_cl_stream_ok must hold for y + r0 * C) */
#define FN_DEFINE_CL_AFFINE(NAME, ST, T, V, VU, LDV, LD1, PUTV, ST1)                                              \
static void NAME(const ST* x, ST* y, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,           \
                 const T* hi, const T* a, const T* b, int stream)                         \
{                                                                                        \
    const Py_ssize_t W = FN_VBYTES / sizeof(T);                                          \
    Py_ssize_t rb, re, r, c0;                                                            \
    for (rb = r0; rb < r1; rb = re) {                                                    \
        re = rb + FN_RB < r1 ? rb + FN_RB : r1;                                          \
        for (c0 = 0; c0 + 4 * W <= C; c0 += 4 * W) {                                     \
            const V h0 = FN_LOAD(VU, hi + c0), h1 = FN_LOAD(VU, hi + c0 + W);             \
            const V h2 = FN_LOAD(VU, hi + c0 + 2 * W), h3 = FN_LOAD(VU, hi + c0 + 3 * W); \
            const V a0 = FN_LOAD(VU, a + c0), a1 = FN_LOAD(VU, a + c0 + W);               \
            const V a2 = FN_LOAD(VU, a + c0 + 2 * W), a3 = FN_LOAD(VU, a + c0 + 3 * W);   \
            const V b0 = FN_LOAD(VU, b + c0), b1 = FN_LOAD(VU, b + c0 + W);               \
            const V b2 = FN_LOAD(VU, b + c0 + 2 * W), b3 = FN_LOAD(VU, b + c0 + 3 * W);   \
            for (r = rb; r < re; r++) {                                                  \
                const ST* p = x + r * C + c0;                                             \
                ST* q = y + r * C + c0;                                                   \
                V v0 = (LDV(p) - h0) * a0 + b0;                                  \
                V v1 = (LDV(p + W) - h1) * a1 + b1;                              \
                V v2 = (LDV(p + 2 * W) - h2) * a2 + b2;                          \
                V v3 = (LDV(p + 3 * W) - h3) * a3 + b3;                          \
                PUTV(q, v0, stream);                                            \
                PUTV(q + W, v1, stream);                                        \
                PUTV(q + 2 * W, v2, stream);                                    \
                PUTV(q + 3 * W, v3, stream);                                    \
            }                                                                            \
        }                                                                                \
        for (; c0 + W <= C; c0 += W) {                                                   \
            const V h0 = FN_LOAD(VU, hi + c0), a0 = FN_LOAD(VU, a + c0);                  \
            const V b0 = FN_LOAD(VU, b + c0);                                            \
            for (r = rb; r < re; r++) {                                                  \
                V v0 = (LDV(x + r * C + c0) - h0) * a0 + b0;                     \
                PUTV(y + r * C + c0, v0, stream);                               \
            }                                                                            \
        }                                                                                \
        for (; c0 < C; c0++)                                                             \
            for (r = rb; r < re; r++)                                                    \
                y[r * C + c0] = ST1((LD1(x[r * C + c0]) - hi[c0]) * a[c0] + b[c0]);          \
    }                                                                                    \
}

/* dx = al[c] * g + (be[c] * (x - hi[c]) + ga[c]) over rows r0..r1; with
   centred == 0 (running statistics) dx = al[c] * g, x unread (inf * 0 would
   be NaN); stream as for the affine kernel */
#define FN_DEFINE_CL_BACKWARD(NAME, ST, T, V, VU, LDV, LD1, PUTV, ST1)                                            \
static void NAME(const ST* g, const ST* x, ST* dx, Py_ssize_t r0, Py_ssize_t r1,            \
                 Py_ssize_t C, const T* hi, const T* al, const T* be, const T* ga,        \
                 int centred, int stream)                                                 \
{                                                                                        \
    const Py_ssize_t W = FN_VBYTES / sizeof(T);                                          \
    Py_ssize_t rb, re, r, c0;                                                            \
    for (rb = r0; rb < r1; rb = re) {                                                    \
        re = rb + FN_RB < r1 ? rb + FN_RB : r1;                                          \
        for (c0 = 0; c0 + 2 * W <= C; c0 += 2 * W) {                                     \
            const V h0 = FN_LOAD(VU, hi + c0), h1 = FN_LOAD(VU, hi + c0 + W);             \
            const V l0 = FN_LOAD(VU, al + c0), l1 = FN_LOAD(VU, al + c0 + W);             \
            const V e0 = FN_LOAD(VU, be + c0), e1 = FN_LOAD(VU, be + c0 + W);             \
            const V k0 = FN_LOAD(VU, ga + c0), k1 = FN_LOAD(VU, ga + c0 + W);             \
            for (r = rb; r < re; r++) {                                                  \
                const ST* gp = g + r * C + c0;                                            \
                const ST* xp = x + r * C + c0;                                            \
                ST* q = dx + r * C + c0;                                                  \
                V v0, v1;                                                                \
                if (centred) {                                                           \
                    v0 = l0 * LDV(gp) + (e0 * (LDV(xp) - h0) + k0);      \
                    v1 = l1 * LDV(gp + W) + (e1 * (LDV(xp + W) - h1) + k1); \
                } else {                                                                 \
                    v0 = l0 * LDV(gp);                                           \
                    v1 = l1 * LDV(gp + W);                                       \
                }                                                                        \
                PUTV(q, v0, stream);                                            \
                PUTV(q + W, v1, stream);                                        \
            }                                                                            \
        }                                                                                \
        for (; c0 + W <= C; c0 += W) {                                                   \
            const V h0 = FN_LOAD(VU, hi + c0), l0 = FN_LOAD(VU, al + c0);                 \
            const V e0 = FN_LOAD(VU, be + c0), k0 = FN_LOAD(VU, ga + c0);                 \
            for (r = rb; r < re; r++) {                                                  \
                V v0;                                                                    \
                if (centred)                                                             \
                    v0 = l0 * LDV(g + r * C + c0)                                \
                         + (e0 * (LDV(x + r * C + c0) - h0) + k0);               \
                else                                                                     \
                    v0 = l0 * LDV(g + r * C + c0);                               \
                PUTV(dx + r * C + c0, v0, stream);                              \
            }                                                                            \
        }                                                                                \
        for (; c0 < C; c0++)                                                             \
            for (r = rb; r < re; r++)                                                    \
                dx[r * C + c0] = ST1(centred                                             \
                    ? al[c0] * LD1(g[r * C + c0]) + (be[c0] * (LD1(x[r * C + c0]) - hi[c0]) + ga[c0]) \
                    : al[c0] * LD1(g[r * C + c0]));                                      \
    }                                                                                    \
}

/* per column min and max over rows r0..r1, NaN ignored: mn / mx come in
   holding the running values (+inf / -inf to start) and are updated */
typedef int fn_vfi __attribute__((vector_size(FN_VBYTES)));
typedef long long fn_vdi __attribute__((vector_size(FN_VBYTES)));
#define FN_SELECT(VI, V, m, a, b) ((V)(((VI)(a) & (m)) | ((VI)(b) & ~(m))))
#define FN_MINMAX_STEP(VI, V, v, lo, hi)                                                 \
    {                                                                                    \
        lo = FN_SELECT(VI, V, (v) < lo, v, lo);  /* a NaN compares false: kept out */    \
        hi = FN_SELECT(VI, V, (v) > hi, v, hi);                                          \
    }
#define FN_DEFINE_CL_MINMAX(NAME, ST, T, V, VU, VI, LDV, LD1, PUTV, ST1)                                          \
static void NAME(const ST* x, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C, T* mn, T* mx)   \
{                                                                                        \
    const Py_ssize_t W = FN_VBYTES / sizeof(T);                                          \
    Py_ssize_t rb, re, r, c0, j;                                                         \
    for (rb = r0; rb < r1; rb = re) {                                                    \
        re = rb + FN_RB < r1 ? rb + FN_RB : r1;                                          \
        for (c0 = 0; c0 + 2 * W <= C; c0 += 2 * W) {                                     \
            V lo0 = FN_LOAD(VU, mn + c0), lo1 = FN_LOAD(VU, mn + c0 + W);                 \
            V hi0 = FN_LOAD(VU, mx + c0), hi1 = FN_LOAD(VU, mx + c0 + W);                 \
            for (r = rb; r < re; r++) {                                                  \
                const V v0 = LDV(x + r * C + c0), v1 = LDV(x + r * C + c0 + W); \
                FN_MINMAX_STEP(VI, V, v0, lo0, hi0)                                      \
                FN_MINMAX_STEP(VI, V, v1, lo1, hi1)                                      \
            }                                                                            \
            *(VU*)(mn + c0) = lo0; *(VU*)(mn + c0 + W) = lo1;                            \
            *(VU*)(mx + c0) = hi0; *(VU*)(mx + c0 + W) = hi1;                            \
        }                                                                                \
        for (; c0 + W <= C; c0 += W) {                                                   \
            V lo0 = FN_LOAD(VU, mn + c0), hi0 = FN_LOAD(VU, mx + c0);                     \
            for (r = rb; r < re; r++) {                                                  \
                const V v0 = LDV(x + r * C + c0);                                \
                FN_MINMAX_STEP(VI, V, v0, lo0, hi0)                                      \
            }                                                                            \
            *(VU*)(mn + c0) = lo0; *(VU*)(mx + c0) = hi0;                                \
        }                                                                                \
        for (j = c0; j < C; j++)                                                         \
            for (r = rb; r < re; r++) {                                                  \
                T v = LD1(x[r * C + j]);                                                      \
                mn[j] = v < mn[j] ? v : mn[j];                                           \
                mx[j] = v > mx[j] ? v : mx[j];                                           \
            }                                                                            \
    }                                                                                    \
}

/* one instance per (storage, compute) pair: float32 and float64 data load
   and store themselves; float16 / bfloat16 data are widened to float on
   load and narrowed (round to nearest even) on store, in registers */
#define FN_LDV_f(p) FN_LOAD(fn_vfu, p)
#define FN_LDV_d(p) FN_LOAD(fn_vdu, p)
#define FN_SELF(v) (v)
#define FN_PUTV_f(q, v, stream) FN_PUT(float, fn_vfu, q, v, stream)
#define FN_PUTV_d(q, v, stream) FN_PUT(double, fn_vdu, q, v, stream)
#define FN_PUTV_bf16(q, v, stream) fn_put_h(q, fn_pack_bf16(v), stream)
#define FN_PUTV_f16(q, v, stream) fn_put_h(q, fn_pack_f16(v), stream)
#define FN_CL_KERNELS(S, ST, T, V, VU, VI, LDV, LD1, PUTV, ST1)                                   \
    FN_DEFINE_CL_MINMAX(fastnorm_cl_minmax_##S, ST, T, V, VU, VI, LDV, LD1, PUTV, ST1)             \
    FN_DEFINE_CL_AFFINE(fastnorm_cl_affine_##S, ST, T, V, VU, LDV, LD1, PUTV, ST1)                 \
    FN_DEFINE_CL_BACKWARD(fastnorm_cl_backward_##S, ST, T, V, VU, LDV, LD1, PUTV, ST1)             \
    FN_DEFINE_CL_MOMENTS(fastnorm_cl_moments_##S, ST, T, V, VU, LDV, LD1, PUTV, ST1)               \
    FN_DEFINE_CL_BACKWARD_SUMS(fastnorm_cl_backward_sums_##S, ST, T, V, VU, LDV, LD1, PUTV, ST1)
FN_CL_KERNELS(f, float, float, fn_vf, fn_vfu, fn_vfi, FN_LDV_f, FN_SELF, FN_PUTV_f, FN_SELF)
FN_CL_KERNELS(d, double, double, fn_vd, fn_vdu, fn_vdi, FN_LDV_d, FN_SELF, FN_PUTV_d, FN_SELF)
FN_CL_KERNELS(bf16, uint16_t, float, fn_vf, fn_vfu, fn_vfi, fn_vload_bf16, fn_bf16_to_float,
              FN_PUTV_bf16, fn_float_to_bf16)
FN_CL_KERNELS(f16, uint16_t, float, fn_vf, fn_vfu, fn_vfi, fn_vload_f16, fn_half_to_float,
              FN_PUTV_f16, fn_float_to_half)

/* the 16-bit instances by storage code (FN_ST_BF16 / FN_ST_F16): the drivers
   make one call whatever the 16-bit type, and a new storage type is one more
   instance and one more case here */
static inline void fastnorm_cl_moments16(int st, const void* x, Py_ssize_t r0, Py_ssize_t r1,
                                         Py_ssize_t C, const float* shift, double* sd, double* sq) {
    if (st == FN_ST_BF16) fastnorm_cl_moments_bf16((const uint16_t*)x, r0, r1, C, shift, sd, sq);
    else fastnorm_cl_moments_f16((const uint16_t*)x, r0, r1, C, shift, sd, sq);
}
static inline void fastnorm_cl_backward_sums16(int st, const void* g, const void* x, Py_ssize_t r0,
                                               Py_ssize_t r1, Py_ssize_t C, const float* hi,
                                               double* sums) {
    if (st == FN_ST_BF16)
        fastnorm_cl_backward_sums_bf16((const uint16_t*)g, (const uint16_t*)x, r0, r1, C, hi, sums);
    else fastnorm_cl_backward_sums_f16((const uint16_t*)g, (const uint16_t*)x, r0, r1, C, hi, sums);
}
static inline void fastnorm_cl_minmax16(int st, const void* x, Py_ssize_t r0, Py_ssize_t r1,
                                        Py_ssize_t C, float* mn, float* mx) {
    if (st == FN_ST_BF16) fastnorm_cl_minmax_bf16((const uint16_t*)x, r0, r1, C, mn, mx);
    else fastnorm_cl_minmax_f16((const uint16_t*)x, r0, r1, C, mn, mx);
}
static inline void fastnorm_cl_affine16(int st, const void* x, void* y, Py_ssize_t r0, Py_ssize_t r1,
                                        Py_ssize_t C, const float* hi, const float* a, const float* b,
                                        int stream) {
    if (st == FN_ST_BF16)
        fastnorm_cl_affine_bf16((const uint16_t*)x, (uint16_t*)y, r0, r1, C, hi, a, b, stream);
    else fastnorm_cl_affine_f16((const uint16_t*)x, (uint16_t*)y, r0, r1, C, hi, a, b, stream);
}
static inline void fastnorm_cl_backward16(int st, const void* g, const void* x, void* dx, Py_ssize_t r0,
                                          Py_ssize_t r1, Py_ssize_t C, const float* hi, const float* al,
                                          const float* be, const float* ga, int centred, int stream) {
    if (st == FN_ST_BF16)
        fastnorm_cl_backward_bf16((const uint16_t*)g, (const uint16_t*)x, (uint16_t*)dx, r0, r1, C, hi,
                                  al, be, ga, centred, stream);
    else fastnorm_cl_backward_f16((const uint16_t*)g, (const uint16_t*)x, (uint16_t*)dx, r0, r1, C, hi,
                                  al, be, ga, centred, stream);
}


/* ---- Row-norm backward, four rows at a time ----
 * LayerNorm / RMSNorm gradients of four rows of n values, with the partial
 * parameter gradients (per column: gw += g * xhat, gb += g) loaded and stored
 * once per four rows instead of once per row: one row at a time, those
 * partials cost two loads and two stores per value, more than the row's own
 * traffic.  The rows are added in order, so the partials are the sums of one
 * row at a time.
 *
 * LayerNorm: xhat = (x - mean) * rstd - shift,
 *            dx = rstd * ((g * w - mg) - xhat * mgx), gw += g * xhat, gb += g.
 * RMSNorm:   dx = rstd * (g * w) - coef * x, gw += g * (x * rstd).
 * Per-row scalars come in arrays of four. */
/* The row pointers and scalars are copied into locals first: gcc cannot tell
   that a store through dx leaves the pointer and scalar arrays alone, and
   reloaded every one of them after each store. */
#define FN_ROWS4_LOCALS(T)                                                               \
    const T* const g0 = g[0]; const T* const g1 = g[1];                                  \
    const T* const g2 = g[2]; const T* const g3 = g[3];                                  \
    const T* const x0 = x[0]; const T* const x1 = x[1];                                  \
    const T* const x2 = x[2]; const T* const x3 = x[3];                                  \
    T* const d0 = dx[0]; T* const d1 = dx[1]; T* const d2 = dx[2]; T* const d3 = dx[3];
#define FN_LN_ROW4(r, V, VU)                                                             \
    {                                                                                    \
        V gv = FN_LOAD(VU, g##r + k);                                                    \
        V xh = (FN_LOAD(VU, x##r + k) - m##r) * s##r - h##r;                             \
        *(VU*)(d##r + k) = s##r * ((gv * wv - a##r) - xh * b##r);                        \
        sw += gv * xh;                                                                   \
        sb += gv;                                                                        \
    }
#define FN_LN_ROW4_SCALAR(r, T)                                                          \
    {                                                                                    \
        T gv = g##r[k];                                                                  \
        T xh = (x##r[k] - m##r) * s##r - h##r;                                           \
        d##r[k] = s##r * ((gv * w[k] - a##r) - xh * b##r);                               \
        sw += gv * xh;                                                                   \
        sb += gv;                                                                        \
    }
#define FN_DEFINE_LN_BACKWARD4(NAME, T, V, VU)                                           \
static void NAME(const T* const* g, const T* const* x, T* const* dx, const T* w,        \
                 Py_ssize_t n, const T* mean, const T* rstd, const T* shift,             \
                 const T* mg, const T* mgx, T* gw, T* gb)                                \
{                                                                                        \
    const Py_ssize_t W = FN_VBYTES / sizeof(T);                                          \
    FN_ROWS4_LOCALS(T)                                                                   \
    const T m0 = mean[0], m1 = mean[1], m2 = mean[2], m3 = mean[3];                      \
    const T s0 = rstd[0], s1 = rstd[1], s2 = rstd[2], s3 = rstd[3];                      \
    const T h0 = shift[0], h1 = shift[1], h2 = shift[2], h3 = shift[3];                  \
    const T a0 = mg[0], a1 = mg[1], a2 = mg[2], a3 = mg[3];                              \
    const T b0 = mgx[0], b1 = mgx[1], b2 = mgx[2], b3 = mgx[3];                          \
    Py_ssize_t k = 0;                                                                    \
    for (; k + W <= n; k += W) {                                                         \
        V sw = FN_LOAD(VU, gw + k), sb = FN_LOAD(VU, gb + k);                            \
        const V wv = FN_LOAD(VU, w + k);                                                 \
        FN_LN_ROW4(0, V, VU) FN_LN_ROW4(1, V, VU)                                        \
        FN_LN_ROW4(2, V, VU) FN_LN_ROW4(3, V, VU)                                        \
        *(VU*)(gw + k) = sw;                                                             \
        *(VU*)(gb + k) = sb;                                                             \
    }                                                                                    \
    for (; k < n; k++) {                                                                 \
        T sw = gw[k], sb = gb[k];                                                        \
        FN_LN_ROW4_SCALAR(0, T) FN_LN_ROW4_SCALAR(1, T)                                  \
        FN_LN_ROW4_SCALAR(2, T) FN_LN_ROW4_SCALAR(3, T)                                  \
        gw[k] = sw;                                                                      \
        gb[k] = sb;                                                                      \
    }                                                                                    \
}

#define FN_RMS_ROW4(r, V, VU)                                                            \
    {                                                                                    \
        V gv = FN_LOAD(VU, g##r + k), xh = FN_LOAD(VU, x##r + k) * s##r;                 \
        *(VU*)(d##r + k) = s##r * (gv * wv - xh * c##r);                                 \
        sw += gv * xh;                                                                   \
    }
#define FN_RMS_ROW4_SCALAR(r)                                                            \
    {                                                                                    \
        const __typeof__(s##r) xh = x##r[k] * s##r;                                      \
        d##r[k] = s##r * (g##r[k] * w[k] - xh * c##r);                                   \
        sw += g##r[k] * xh;                                                              \
    }
#define FN_DEFINE_RMS_BACKWARD4(NAME, T, V, VU)                                          \
static void NAME(const T* const* g, const T* const* x, T* const* dx, const T* w,        \
                 Py_ssize_t n, const T* rstd, const T* coef, T* gw)                      \
{                                                                                        \
    const Py_ssize_t W = FN_VBYTES / sizeof(T);                                          \
    FN_ROWS4_LOCALS(T)                                                                   \
    const T s0 = rstd[0], s1 = rstd[1], s2 = rstd[2], s3 = rstd[3];                      \
    const T c0 = coef[0], c1 = coef[1], c2 = coef[2], c3 = coef[3];                      \
    Py_ssize_t k = 0;                                                                    \
    for (; k + W <= n; k += W) {                                                         \
        V sw = FN_LOAD(VU, gw + k);                                                      \
        const V wv = FN_LOAD(VU, w + k);                                                 \
        FN_RMS_ROW4(0, V, VU) FN_RMS_ROW4(1, V, VU)                                      \
        FN_RMS_ROW4(2, V, VU) FN_RMS_ROW4(3, V, VU)                                      \
        *(VU*)(gw + k) = sw;                                                             \
    }                                                                                    \
    for (; k < n; k++) {                                                                 \
        T sw = gw[k];                                                                    \
        FN_RMS_ROW4_SCALAR(0) FN_RMS_ROW4_SCALAR(1)                                      \
        FN_RMS_ROW4_SCALAR(2) FN_RMS_ROW4_SCALAR(3)                                      \
        gw[k] = sw;                                                                      \
    }                                                                                    \
}

FN_DEFINE_LN_BACKWARD4(fastnorm_ln_backward4_f, float, fn_vf, fn_vfu)
FN_DEFINE_LN_BACKWARD4(fastnorm_ln_backward4_d, double, fn_vd, fn_vdu)
FN_DEFINE_RMS_BACKWARD4(fastnorm_rms_backward4_f, float, fn_vf, fn_vfu)
FN_DEFINE_RMS_BACKWARD4(fastnorm_rms_backward4_d, double, fn_vd, fn_vdu)
