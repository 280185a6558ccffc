/* Row and block kernels over 16-bit storage (float16, bfloat16), widened to
 * float32 in registers on load and narrowed on store: the LayerNorm /
 * RMSNorm forward rows, and the channels-first blocks of the channel engine.
 *
 * The same algorithm as the float32 row kernels of _kernels.pxi, written
 * once here as a macro over the storage type's vector load / store:
 *   - moments of d = x - shift (shift = the row's first value) in float32
 *     vector accumulators over blocks of FN_BLOCK values, each block's lanes
 *     flushed into FN_LANES double lanes, summed once per row; a second pass
 *     about the mean when the first element lies far out (FN_CANCELLATION);
 *   - y = ((x - hi) * rstd + off) * w + b with the mean split as hi + off.
 * A row is read twice (moments, normalize) and written once, like the
 * float32 kernels, but in half the bytes: no scratch copy of the row.
 *
 * Included by _kernels.pxi after simd.h.
 */
#ifndef FASTNORM_ROWS16_H
#define FASTNORM_ROWS16_H

#include <math.h>
#include "simd.h"

#define FN_LANES 32                            /* = LANES in _kernels.pxi */
#define FN_NV (FN_LANES / FN_W)                /* accumulator vectors */
#define FN_BLOCK 256                           /* = BLOCK */
#define FN_GROUP 4                             /* rows normalized together */

/* values stored one at a time before y + head is aligned for streaming
   stores; an output that is not even 2-byte aligned (a view of a byte
   buffer) can never be, and clears *stream (plain stores throughout) */
static inline Py_ssize_t fn_stream_head(const uint16_t* y, Py_ssize_t n, int* stream) {
    if (*stream && ((uintptr_t)y & 1u)) *stream = 0;
    if (!*stream) return 0;
    Py_ssize_t head = (Py_ssize_t)((((uintptr_t)y + FN_VBYTES / 2 - 1) & ~(uintptr_t)(FN_VBYTES / 2 - 1))
                                   - (uintptr_t)y) / 2;
    return head < n ? head : n;
}


/* a LayerNorm row's scalars from its mean and sum of squared deviations:
   rstd (returned) and the normalize pass's hi, r, off (the mean split as
   hi + off / r, so that x - hi is exact near the mean) */
static inline double fn_ln_scalars(double mean, double m2, Py_ssize_t n, double eps, float* hi,
                                   float* r, float* off) {
    const double rstd = 1.0 / sqrt(m2 / n + eps);
    *hi = (float)mean;
    *r = (float)rstd;
    *off = (float)(-(mean - (double)*hi) * rstd);
    return rstd;
}

/* one LayerNorm output value before narrowing: ((x - hi) * r + off) * w + b
   (w, b: float32 or NULL), written once so that the row and the group
   kernels round alike (one contraction of * w + b into a fused multiply-add) */
static inline float fn_ln_value(float x, float hi, float r, float off, const float* w,
                                const float* b, Py_ssize_t k) {
    const float u = (x - hi) * r + off;
    if (w && b) return u * w[k] + b[k];
    if (w) return u * w[k];
    return b ? u + b[k] : u;
}

/* lanes[j] += the float lanes of acc (FN_NV vectors): a block's float sums
   widened into the row's double lanes (vectorized: stored once, converted
   and added as whole vectors) */
static inline void fn_flush_lanes(const fn_vf* acc, double* lanes) {
    float f[FN_LANES];
    __builtin_memcpy(f, acc, sizeof(f));
    for (int j = 0; j < FN_LANES; j++)
        lanes[j] += f[j];
}

/* the last lane block of a row of at least FN_LANES values that ends short
   of a whole one, at `end`, is summed as the whole block of the FN_LANES
   values ending there, its lanes below FN_TAIL_START masked to 0 (summed
   by the block before): vector code, not a scalar chain of up to 31 adds.
   _kernels.pxi's _tail_start is the same rule. */
#define FN_TAIL_START(vend, end) ((int)(FN_LANES - ((end) - (vend))))

/* all ones in the lanes of accumulator vector v whose index in the lane
   block is at least cut, 0 below */
static inline fn_vi fn_tail_mask(int v, int cut) {
    fn_vi lane;
    for (int j = 0; j < FN_W; j++) lane[j] = v * (int)FN_W + j;
    return lane >= cut;
}

static inline double fn_lanes_total(const double* lanes) { return fn_lanes_total32(lanes); }

/* the total of FN_NV accumulator vectors (FN_LANES float lanes) as
   fn_lanes_total of lanes flushed once from them, in registers: the same
   tree, the same bits (the "0.0 +" is the flush into zeroed lanes, which
   turns an all -0 total into +0) */
typedef double fn_vdw __attribute__((vector_size(FN_VBYTES * 2)));
static inline double fn_acc_total(const fn_vf* acc) {
    fn_vdw d[FN_NV];
    for (int v = 0; v < FN_NV; v++) d[v] = __builtin_convertvector(acc[v], fn_vdw);
    for (int h = FN_NV / 2; h > 0; h /= 2)     /* widths FN_LANES / 2 .. FN_W */
        for (int v = 0; v < h; v++) d[v] += d[v + h];
    fn_v4d q[FN_W / 4];                        /* widths FN_W / 2 .. 4 */
    __builtin_memcpy(q, &d[0], sizeof(q));
    for (int h = FN_W / 8; h > 0; h /= 2)
        for (int p = 0; p < h; p++) q[p] += q[p + h];
    const double p0 = q[0][0] + q[0][2], p1 = q[0][1] + q[0][3];
    return 0.0 + (p0 + p1);
}

/* x * y + z rounded once where the build has FMA (the vector loops' `+= x *
   y` contract to it): spelled out in the scalar loops, which gcc vectorizes
   as an in-order reduction for float32 loads (products rounded apart from
   the adds) but not for 16-bit ones, so the two would differ by an ulp */
#if defined(__FMA__)
#define FN_FMA(x, y, z) __builtin_fmaf((x), (y), (z))
#else
#define FN_FMA(x, y, z) ((x) * (y) + (z))
#endif

/* the storage code and one-value load of each instantiation's S */
#define FN_ST_f32 FN_ST_NATIVE
#define FN_LOAD1_f32(v) (v)
static inline fn_vf fn_vload_f32(const float* p) { return FN_LOAD(fn_vfu, p); }

/* ---- the row kernels, once per storage type ---- */
/* the storage code of each instantiation's S */
#define FN_ST_bf16 FN_ST_BF16
#define FN_ST_f16 FN_ST_F16

#define FN_DEFINE_SUMS(S, T, LOAD1, VLOAD)                                                     \
/* sums of d^2 and d, d = (x - shift) - center, over n >= FN_LANES values */                   \
static void fn_moments_lanes_##S(const T* x, Py_ssize_t n, float shift, float center,          \
                                 double* sum_sq, double* sum_dev) {                            \
    double lq[FN_LANES] = {0}, ls[FN_LANES] = {0};                                             \
    const fn_vf vs = fn_splat(shift), vc = fn_splat(center);                                   \
    for (Py_ssize_t i = 0; i < n; i += FN_BLOCK) {                                             \
        Py_ssize_t end = i + FN_BLOCK < n ? i + FN_BLOCK : n;                                  \
        Py_ssize_t vend = i + ((end - i) / FN_LANES) * FN_LANES, k;                            \
        fn_vf aq[FN_NV], as[FN_NV];                                                            \
        for (int v = 0; v < FN_NV; v++) { aq[v] = fn_splat(0); as[v] = fn_splat(0); }          \
        if (center == 0)  /* the one-pass case: spare a subtraction */                         \
            for (k = i; k < vend; k += FN_LANES)                                               \
                for (int v = 0; v < FN_NV; v++) {                                              \
                    fn_vf d = VLOAD(x + k + v * FN_W) - vs;                                    \
                    aq[v] += d * d;                                                            \
                    as[v] += d;                                                                \
                }                                                                              \
        else                                                                                   \
            for (k = i; k < vend; k += FN_LANES)                                               \
                for (int v = 0; v < FN_NV; v++) {                                              \
                    fn_vf d = (VLOAD(x + k + v * FN_W) - vs) - vc;                             \
                    aq[v] += d * d;                                                            \
                    as[v] += d;                                                                \
                }                                                                              \
        if (vend < end)  /* the partial last lane block, as a whole one (FN_TAIL_START) */     \
            for (int v = 0; v < FN_NV; v++) {                                                  \
                const fn_vi keep = fn_tail_mask(v, FN_TAIL_START(vend, end));                  \
                fn_vf d = (VLOAD(x + end - FN_LANES + v * FN_W) - vs) - vc;                    \
                d = (fn_vf)((fn_vi)d & keep);                                                  \
                aq[v] += d * d;                                                                \
                as[v] += d;                                                                    \
            }                                                                                  \
        if (end == n && i == 0) {  /* one block: its lanes' total in registers */              \
            *sum_sq = fn_acc_total(aq);                                                        \
            *sum_dev = fn_acc_total(as);                                                       \
            return;                                                                            \
        }                                                                                      \
        fn_flush_lanes(aq, lq);                                                                \
        fn_flush_lanes(as, ls);                                                                \
    }                                                                                          \
    *sum_sq = fn_lanes_total(lq);                                                              \
    *sum_dev = fn_lanes_total(ls);                                                             \
}                                                                                              \
                                                                                               \
/* sums of d^2 and d, d = (x - shift) - center; rows narrower than the lane                    \
   block inline, as a scalar loop */                                                           \
static inline void fn_moments_##S(const T* x, Py_ssize_t n, float shift, float center,         \
                                  double* sum_sq, double* sum_dev) {                           \
    if (n >= FN_LANES) {                                                                       \
        fn_moments_lanes_##S(x, n, shift, center, sum_sq, sum_dev);                            \
        return;                                                                                \
    }                                                                                          \
    float rq = 0, rs = 0;                                                                      \
    for (Py_ssize_t k = 0; k < n; k++) {                                                       \
        float d = (LOAD1(x[k]) - shift) - center;                                              \
        rq = FN_FMA(d, d, rq);                                                                 \
        rs += d;                                                                               \
    }                                                                                          \
    *sum_sq = rq;                                                                              \
    *sum_dev = rs;                                                                             \
}                                                                                              \
                                                                                               \
static inline double fn_sum_squares_##S(const T* x, Py_ssize_t n) {                            \
    double sq, sd;                                                                             \
    fn_moments_##S(x, n, 0.0f, 0.0f, &sq, &sd);                                                \
    return fn_sums_in_range(sq, n) ? sq : fn_exact_sum_squares(FN_ST_##S, x, n, 1);            \
}                                                                                              \
                                                                                               \
/* mean and sum of squared deviations of n values (_block_moments): moments                    \
   about the first value, again about the mean when that one lies far out */                   \
static void fn_block_moments_##S(const T* x, Py_ssize_t n, double* mean_out, double* m2_out) { \
    float shift = LOAD1(x[0]);                                                                 \
    double sq, sd;                                                                             \
    fn_moments_##S(x, n, shift, 0.0f, &sq, &sd);                                               \
    if (!fn_one_pass_ok(sq, sd, n)) {                                                          \
        shift = (float)((double)shift + sd / n);                                               \
        fn_moments_##S(x, n, shift, 0.0f, &sq, &sd);                                           \
    }                                                                                          \
    *mean_out = (double)shift + sd / n;                                                        \
    *m2_out = sq - sd * sd / n;                                                                \
    if (*m2_out < 0) *m2_out = 0;                                                              \
    if (!fn_sums_in_range(sq, n)) fn_exact_moments(FN_ST_##S, x, n, 1, mean_out, m2_out);      \
}                                                                                              \
                                                                                               \
/* sums of g, g * t and t, t = (x - hi) - lo (_block_backward_sums) */                         \
static void fn_block_backward_sums_##S(const T* g, const T* x, Py_ssize_t n, float hi,         \
                                       float lo, double* sum_g, double* sum_gt, double* sum_t) { \
    if (n < FN_LANES) {  /* the tail loop alone */                                             \
        float ra = 0, rb = 0, rc = 0;                                                          \
        for (Py_ssize_t k = 0; k < n; k++) {                                                   \
            float gk = LOAD1(g[k]), t = (LOAD1(x[k]) - hi) - lo;                               \
            ra += gk; rb = FN_FMA(gk, t, rb); rc += t;                                         \
        }                                                                                      \
        *sum_g = ra; *sum_gt = rb; *sum_t = rc;                                                \
        return;                                                                                \
    }                                                                                          \
    double la[FN_LANES] = {0}, lb[FN_LANES] = {0}, lc[FN_LANES] = {0};                         \
    const fn_vf vh = fn_splat(hi), vl = fn_splat(lo);                                          \
    for (Py_ssize_t i = 0; i < n; i += FN_BLOCK) {                                             \
        Py_ssize_t end = i + FN_BLOCK < n ? i + FN_BLOCK : n;                                  \
        Py_ssize_t vend = i + ((end - i) / FN_LANES) * FN_LANES, k;                            \
        fn_vf aa[FN_NV], ab[FN_NV], ac[FN_NV];                                                 \
        for (int v = 0; v < FN_NV; v++) { aa[v] = fn_splat(0); ab[v] = aa[v]; ac[v] = aa[v]; } \
        for (k = i; k < vend; k += FN_LANES)                                                   \
            for (int v = 0; v < FN_NV; v++) {                                                  \
                fn_vf gv = VLOAD(g + k + v * FN_W);                                            \
                fn_vf t = (VLOAD(x + k + v * FN_W) - vh) - vl;                                 \
                aa[v] += gv;                                                                   \
                ab[v] += gv * t;                                                               \
                ac[v] += t;                                                                    \
            }                                                                                  \
        if (vend < end)  /* the partial last lane block, as a whole one (FN_TAIL_START) */     \
            for (int v = 0; v < FN_NV; v++) {                                                  \
                const fn_vi keep = fn_tail_mask(v, FN_TAIL_START(vend, end));                  \
                const Py_ssize_t o = end - FN_LANES + v * FN_W;                                \
                fn_vf gv = (fn_vf)((fn_vi)VLOAD(g + o) & keep);                                \
                fn_vf t = (fn_vf)((fn_vi)((VLOAD(x + o) - vh) - vl) & keep);                   \
                aa[v] += gv;                                                                   \
                ab[v] += gv * t;                                                               \
                ac[v] += t;                                                                    \
            }                                                                                  \
        if (end == n && i == 0) {  /* one block: its lanes' total in registers */              \
            *sum_g = fn_acc_total(aa);                                                         \
            *sum_gt = fn_acc_total(ab);                                                        \
            *sum_t = fn_acc_total(ac);                                                         \
            return;                                                                            \
        }                                                                                      \
        fn_flush_lanes(aa, la);                                                                \
        fn_flush_lanes(ab, lb);                                                                \
        fn_flush_lanes(ac, lc);                                                                \
    }                                                                                          \
    *sum_g = fn_lanes_total(la);                                                               \
    *sum_gt = fn_lanes_total(lb);                                                              \
    *sum_t = fn_lanes_total(lc);                                                               \
}

FN_DEFINE_SUMS(f32, float, FN_LOAD1_f32, fn_vload_f32)
FN_DEFINE_SUMS(bf16, uint16_t, fn_bf16_to_float, fn_vload_bf16)
FN_DEFINE_SUMS(f16, uint16_t, fn_half_to_float, fn_vload_f16)

#define FN_DEFINE_ROWS16(S, LOAD1, STORE1, VLOAD, PACK)                                     \
/* LayerNorm of one row; w, b: float32 or NULL */                                              \
/* y = ((x - hi) * r + off) * w + b over a row or a segment of one */                          \
static void fn_ln_normalize_##S(const uint16_t* x, uint16_t* y, Py_ssize_t n, const float* w,  \
                                const float* b, float hi, float r, float off, int stream) {    \
    const fn_vf vh = fn_splat(hi), vr = fn_splat(r), vo = fn_splat(off);                    \
    Py_ssize_t k = 0, head = fn_stream_head(y, n, &stream);                                    \
    for (; k < head; k++)                                                                      \
        y[k] = STORE1(fn_ln_value(LOAD1(x[k]), hi, r, off, w, b, k));                          \
    for (; k + FN_W <= n; k += FN_W) {                                                         \
        fn_vf t = (VLOAD(x + k) - vh) * vr + vo;                                               \
        if (w && b) t = t * FN_LOAD(fn_vfu, w + k) + FN_LOAD(fn_vfu, b + k);                   \
        else if (w) t *= FN_LOAD(fn_vfu, w + k);                                               \
        else if (b) t += FN_LOAD(fn_vfu, b + k);                                               \
        fn_put_h(y + k, PACK(t), stream);                                                      \
    }                                                                                          \
    for (; k < n; k++)                                                                         \
        y[k] = STORE1(fn_ln_value(LOAD1(x[k]), hi, r, off, w, b, k));                          \
}                                                                                              \
                                                                                               \
/* FN_GROUP rows at once (row i at x + i * xs, y + i * ys; strides in     \
   elements): each w, b vector loaded once for the group, not once per row   \
   (a float32 w and b of a 4096-wide row fill a 32 KiB L1 by themselves);    \
   w and b both given (not NULL);                                            \
   the rows' heads must agree (ys * 2 a multiple of the vector, or no stream) */\
static void fn_ln_normalize_group_##S(const uint16_t* x, Py_ssize_t xs, uint16_t* y,          \
                                      Py_ssize_t ys, Py_ssize_t n, const float* w,              \
                                      const float* b, const float* hi, const float* r,         \
                                      const float* off, int stream) {                          \
    fn_vf vh[FN_GROUP], vr[FN_GROUP], vo[FN_GROUP];                                            \
    for (int i = 0; i < FN_GROUP; i++) {                                                       \
        vh[i] = fn_splat(hi[i]); vr[i] = fn_splat(r[i]); vo[i] = fn_splat(off[i]);          \
    }                                                                                          \
    Py_ssize_t k = 0, head = fn_stream_head(y, n, &stream);                                    \
    for (; k < head; k++)                                                                      \
        for (int i = 0; i < FN_GROUP; i++)                                                     \
            y[i * ys + k] = STORE1(fn_ln_value(LOAD1(x[i * xs + k]), hi[i], r[i], off[i], w, b, k)); \
    for (; k + FN_W <= n; k += FN_W) {                                                         \
        const fn_vf wv = FN_LOAD(fn_vfu, w + k), bv = FN_LOAD(fn_vfu, b + k);                  \
        for (int i = 0; i < FN_GROUP; i++)                                                     \
            fn_put_h(y + i * ys + k, PACK(((VLOAD(x + i * xs + k) - vh[i]) * vr[i] + vo[i]) * wv + bv), \
                     stream);                                                                  \
    }                                                                                          \
    for (; k < n; k++)                                                                         \
        for (int i = 0; i < FN_GROUP; i++)                                                     \
            y[i * ys + k] = STORE1(fn_ln_value(LOAD1(x[i * xs + k]), hi[i], r[i], off[i], w, b, k)); \
}                                                                                              \
                                                                                               \
/* LayerNorm of one row; w, b: float32 or NULL */                                              \
static void fn_ln_row_##S(const uint16_t* x, uint16_t* y, Py_ssize_t n, const float* w,        \
                          const float* b, double eps, double* mean_out, double* rstd_out,      \
                          int stream) {                                                        \
    double mean, m2;                                                                           \
    float hi, r, off;                                                                          \
    fn_block_moments_##S(x, n, &mean, &m2);                                                    \
    *rstd_out = fn_ln_scalars(mean, m2, n, eps, &hi, &r, &off);                                \
    fn_ln_normalize_##S(x, y, n, w, b, hi, r, off, stream);                                    \
    *mean_out = mean;                                                                          \
}                                                                                              \
                                                                                               \
/* y = x * r * w over a row or a segment of one */                                             \
static void fn_rms_normalize_##S(const uint16_t* x, uint16_t* y, Py_ssize_t n, const float* w, \
                                 float r, int stream) {                                        \
    const fn_vf vr = fn_splat(r);                                                             \
    Py_ssize_t k = 0, head = fn_stream_head(y, n, &stream);                                    \
    for (; k < head; k++)                                                                      \
        y[k] = STORE1(LOAD1(x[k]) * r * (w ? w[k] : 1.0f));                                    \
    for (; k + FN_W <= n; k += FN_W) {                                                         \
        fn_vf t = VLOAD(x + k) * vr;                                                           \
        if (w) t *= FN_LOAD(fn_vfu, w + k);                                                    \
        fn_put_h(y + k, PACK(t), stream);                                                      \
    }                                                                                          \
    for (; k < n; k++)                                                                         \
        y[k] = STORE1(LOAD1(x[k]) * r * (w ? w[k] : 1.0f));                                    \
}                                                                                              \
                                                                                               \
/* channels-first blocks (_channel_kernels.pxi): y = (x - hi) * a + b */                      \
static void fn_block_affine_##S(const uint16_t* x, uint16_t* y, Py_ssize_t n, float hi,       \
                                float a, float b, int stream) {                                \
    const fn_vf vh = fn_splat(hi), va = fn_splat(a), vb = fn_splat(b);                     \
    Py_ssize_t k = 0, head = fn_stream_head(y, n, &stream);                                     \
    for (; k < head; k++) y[k] = STORE1((LOAD1(x[k]) - hi) * a + b);                           \
    if (hi == 0)                                                                               \
        for (; k + FN_W <= n; k += FN_W) fn_put_h(y + k, PACK(VLOAD(x + k) * va + vb), stream); \
    else                                                                                       \
        for (; k + FN_W <= n; k += FN_W)                                                       \
            fn_put_h(y + k, PACK((VLOAD(x + k) - vh) * va + vb), stream);                     \
    for (; k < n; k++) y[k] = STORE1(hi == 0 ? LOAD1(x[k]) * a + b : (LOAD1(x[k]) - hi) * a + b); \
}                                                                                              \
                                                                                               \
/* dx = alpha * g + (beta * (x - hi) + gamma); x unread when beta = gamma = 0 */              \
static void fn_block_backward_##S(const uint16_t* g, const uint16_t* x, uint16_t* dx,         \
                                  Py_ssize_t n, float hi, float alpha, float beta,              \
                                  float gamma, int stream) {                                    \
    const fn_vf vh = fn_splat(hi), va = fn_splat(alpha), vb = fn_splat(beta);              \
    const fn_vf vg = fn_splat(gamma);                                                         \
    const int plain = beta == 0 && gamma == 0;                                                 \
    Py_ssize_t k = 0, head = fn_stream_head(dx, n, &stream);                                    \
    for (; k < head; k++)                                                                      \
        dx[k] = STORE1(plain ? alpha * LOAD1(g[k])                                             \
                             : alpha * LOAD1(g[k]) + (beta * (LOAD1(x[k]) - hi) + gamma));     \
    if (plain)                                                                                 \
        for (; k + FN_W <= n; k += FN_W) fn_put_h(dx + k, PACK(va * VLOAD(g + k)), stream);   \
    else                                                                                       \
        for (; k + FN_W <= n; k += FN_W)                                                       \
            fn_put_h(dx + k, PACK(va * VLOAD(g + k) + (vb * (VLOAD(x + k) - vh) + vg)), stream); \
    for (; k < n; k++)                                                                         \
        dx[k] = STORE1(plain ? alpha * LOAD1(g[k])                                             \
                             : alpha * LOAD1(g[k]) + (beta * (LOAD1(x[k]) - hi) + gamma));     \
}

FN_DEFINE_ROWS16(bf16, fn_bf16_to_float, fn_float_to_bf16, fn_vload_bf16, fn_pack_bf16)
FN_DEFINE_ROWS16(f16, fn_half_to_float, fn_float_to_half, fn_vload_f16, fn_pack_f16)

/* dispatch on the storage code (FN_ST_F16 / FN_ST_BF16) */
static inline void fn_ln_row16(int storage, const void* x, void* y, Py_ssize_t n, const float* w,
                               const float* b, double eps, double* mean, double* rstd, int stream) {
    if (storage == FN_ST_BF16) fn_ln_row_bf16((const uint16_t*)x, (uint16_t*)y, n, w, b, eps, mean, rstd, stream);
    else fn_ln_row_f16((const uint16_t*)x, (uint16_t*)y, n, w, b, eps, mean, rstd, stream);
}

static inline void fn_block_moments16(int storage, const void* x, Py_ssize_t n, double* mean,
                                      double* m2) {
    if (storage == FN_ST_BF16) fn_block_moments_bf16((const uint16_t*)x, n, mean, m2);
    else fn_block_moments_f16((const uint16_t*)x, n, mean, m2);
}

/* LayerNorm rows r0..r1 (strides in bytes); mean, rstd: float32 per row or
   NULL.  With w and b, rows go FN_GROUP at a time: the moments of each, then
   one normalize pass over the group (fn_ln_normalize_group_*), while the
   group's rows fit in L2 (FN_GROUP * n * 2 bytes <= 256 KiB). */
static inline void fn_ln_rows16(int storage, const char* xb, Py_ssize_t xs, char* yb, Py_ssize_t ys,
                                Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n, const float* w,
                                const float* b, double eps, float* mean, float* rstd, int stream) {
    const int group = w && b && n * 2 * FN_GROUP <= 256 * 1024 && (xs % 2) == 0 && (ys % 2) == 0
                      && (!stream || ys % (FN_VBYTES / 2) == 0);
    Py_ssize_t r = r0;
    if (group)
        for (; r + FN_GROUP <= r1; r += FN_GROUP) {
            float hi[FN_GROUP], rf[FN_GROUP], off[FN_GROUP];
            for (int i = 0; i < FN_GROUP; i++) {
                double m, m2;
                fn_block_moments16(storage, xb + (r + i) * xs, n, &m, &m2);
                const double s = fn_ln_scalars(m, m2, n, eps, &hi[i], &rf[i], &off[i]);
                if (mean) mean[r + i] = (float)m;
                if (rstd) rstd[r + i] = (float)s;
            }
            if (storage == FN_ST_BF16)
                fn_ln_normalize_group_bf16((const uint16_t*)(xb + r * xs), xs / 2, (uint16_t*)(yb + r * ys),
                                           ys / 2, n, w, b, hi, rf, off, stream);
            else
                fn_ln_normalize_group_f16((const uint16_t*)(xb + r * xs), xs / 2, (uint16_t*)(yb + r * ys),
                                          ys / 2, n, w, b, hi, rf, off, stream);
        }
    for (; r < r1; r++) {
        double m, s;
        fn_ln_row16(storage, xb + r * xs, yb + r * ys, n, w, b, eps, &m, &s, stream);
        if (mean) mean[r] = (float)m;
        if (rstd) rstd[r] = (float)s;
    }
}

static inline void fn_block_affine16(int storage, const void* x, void* y, Py_ssize_t n, float hi,
                                     float a, float b, int stream) {
    if (storage == FN_ST_BF16) fn_block_affine_bf16((const uint16_t*)x, (uint16_t*)y, n, hi, a, b, stream);
    else fn_block_affine_f16((const uint16_t*)x, (uint16_t*)y, n, hi, a, b, stream);
}

static inline void fn_block_backward_sums16(int storage, const void* g, const void* x, Py_ssize_t n,
                                            float hi, float lo, double* sg, double* sgt, double* st) {
    if (storage == FN_ST_BF16)
        fn_block_backward_sums_bf16((const uint16_t*)g, (const uint16_t*)x, n, hi, lo, sg, sgt, st);
    else fn_block_backward_sums_f16((const uint16_t*)g, (const uint16_t*)x, n, hi, lo, sg, sgt, st);
}

static inline void fn_block_backward16(int storage, const void* g, const void* x, void* dx,
                                       Py_ssize_t n, float hi, float alpha, float beta, float gamma,
                                       int stream) {
    if (storage == FN_ST_BF16)
        fn_block_backward_bf16((const uint16_t*)g, (const uint16_t*)x, (uint16_t*)dx, n, hi, alpha,
                               beta, gamma, stream);
    else fn_block_backward_f16((const uint16_t*)g, (const uint16_t*)x, (uint16_t*)dx, n, hi, alpha,
                               beta, gamma, stream);
}

/* a segment of a wide row (the rows split across threads): its moments
   about `shift`, and its normalize passes */
static inline void fn_moments16(int storage, const void* x, Py_ssize_t n, float shift, double* sum_sq,
                                double* sum_dev) {
    if (storage == FN_ST_BF16) fn_moments_bf16((const uint16_t*)x, n, shift, 0.0f, sum_sq, sum_dev);
    else fn_moments_f16((const uint16_t*)x, n, shift, 0.0f, sum_sq, sum_dev);
}

static inline void fn_ln_normalize16(int storage, const void* x, void* y, Py_ssize_t n, const float* w,
                                     const float* b, float hi, float r, float off) {
    if (storage == FN_ST_BF16) fn_ln_normalize_bf16((const uint16_t*)x, (uint16_t*)y, n, w, b, hi, r, off, 0);
    else fn_ln_normalize_f16((const uint16_t*)x, (uint16_t*)y, n, w, b, hi, r, off, 0);
}

static inline void fn_rms_normalize16(int storage, const void* x, void* y, Py_ssize_t n, const float* w,
                                      float r, int stream) {
    if (storage == FN_ST_BF16) fn_rms_normalize_bf16((const uint16_t*)x, (uint16_t*)y, n, w, r, stream);
    else fn_rms_normalize_f16((const uint16_t*)x, (uint16_t*)y, n, w, r, stream);
}

static inline double fn_sum_squares16(int storage, const void* x, Py_ssize_t n) {
    if (storage == FN_ST_BF16) return fn_sum_squares_bf16((const uint16_t*)x, n);
    return fn_sum_squares_f16((const uint16_t*)x, n);
}

/* one 16-bit value widened */
static inline float fn_load1_16(int storage, const void* p, Py_ssize_t i) {
    uint16_t h = ((const uint16_t*)p)[i];
    return storage == FN_ST_BF16 ? fn_bf16_to_float(h) : fn_half_to_float(h);
}

#endif /* FASTNORM_ROWS16_H */
