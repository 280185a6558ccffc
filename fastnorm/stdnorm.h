/* Rows standardized by their unbiased standard deviation, eps added to the
 * std (not inside a square root): AdaNorm (Xu et al. 2019) and Weight
 * Standardization (Qiao et al.), as their reference implementations compute
 * them.  Included by _stdnorm_kernels.pxi.
 *
 * Per row of n values: mean, s = sqrt(sum (x - mean)^2 / (n - 1)),
 * inv = 1 / (s + eps), z = (x - mean) * inv,
 *   y = scale * z * (1 - k z)          (k = 0: y = scale * z).
 * The factor (1 - k z) is held constant in the backward (AdaNorm detaches
 * it): with u = g * scale * (1 - k z),
 *   dx = inv * (u - mean(u)) - (x - mean) * inv^2 * sum(u (x - mean)) / ((n - 1) s).
 *
 * Statistics are one pass about the first value (redone about the mean
 * when they cancel).  float32 and
 * the 16-bit dtypes (st: simd.h's storage codes) share one vector code:
 * 16-bit values are widened in registers and rounded once when stored, so
 * a 16-bit row's result is the float32 row's on the widened values, rounded
 * (bit for bit: the heads and tails go through the same vector arithmetic,
 * padded).  Sums run in float vectors over tiles of FN_SN_TILE values,
 * added to double once per tile.  (Staging 16-bit rows through a row-sized
 * float32 scratch instead took 1.66x the copy limit for a (1024, 512, 3, 3)
 * bfloat16 Weight Standardization.)
 */
#ifndef FASTNORM_STDNORM_H
#define FASTNORM_STDNORM_H
#include <math.h>
#include <stddef.h>
#include "simd.h"

#define FN_SN_TILE 512

/* x's vector at k of a row of n values: whole, or the tail padded with 0 */
static inline fn_vf fn_sn_ld(int st, const void* x, ptrdiff_t k, ptrdiff_t n) {
    return k + FN_W <= n ? fn_ldv(st, x, k) : fn_ldn(st, x, k, n - k);
}

/* v with the lanes from m on set to 0 */
static inline fn_vf fn_sn_keep(fn_vf v, ptrdiff_t m) {
    if (m >= FN_W) return v;
    float t[FN_W] __attribute__((aligned(64)));
    *(fn_vf*)t = v;
    for (ptrdiff_t j = m; j < FN_W; j++) t[j] = 0.0f;
    return *(fn_vf*)t;
}

static inline ptrdiff_t fn_sn_end(ptrdiff_t n, ptrdiff_t i) {
    return n - i < FN_SN_TILE ? n : i + FN_SN_TILE;
}

/* sums of d and d^2, d = x - shift, over the row: float vectors per tile,
   added to double once per tile */
static inline __attribute__((always_inline)) void fn_sn_shifted_sums(int st, const void* x, ptrdiff_t n,
                                                                     fn_vf hi, fn_vf lo, double* sd, double* sq) {
    double s = 0.0, q = 0.0;
    for (ptrdiff_t i = 0; i < n; i += FN_SN_TILE) {
        ptrdiff_t e = fn_sn_end(n, i);
        fn_vf s0 = fn_splat(0.0f), s1 = s0, q0 = s0, q1 = s0;
        ptrdiff_t k = i;
        for (; k + 2 * FN_W <= e; k += 2 * FN_W) {
            fn_vf d0 = (fn_ldv(st, x, k) - hi) - lo, d1 = (fn_ldv(st, x, k + FN_W) - hi) - lo;
            s0 += d0;
            s1 += d1;
            q0 += d0 * d0;
            q1 += d1 * d1;
        }
        for (; k < e; k += FN_W) {
            fn_vf d = fn_sn_keep((fn_sn_ld(st, x, k, e) - hi) - lo, e - k);
            s0 += d;
            q0 += d * d;
        }
        s += fn_lane_sum(s0 + s1);
        q += fn_lane_sum(q0 + q1);
    }
    *sd = s;
    *sq = q;
}

/* mean and sum of squared deviations in one pass, about the row's first
 * value; again about that pass's mean when the first value lies so far out
 * that the shifted sums cancel (the mean's offset from the shift more than
 * about 4 standard deviations: as rows16.h's block moments).  (Two passes,
 * the mean then the centered squares, took 1.3x as long on (64, 4096)
 * bfloat16 rows in cache: AMD EPYC, one thread.) */
static inline __attribute__((always_inline)) void fn_sn_moments_v(int st, const void* x, ptrdiff_t n, double* mean, double* m2) {
    double shift = fn_ld1(st, x, 0), sd, sq;
    fn_vf hi = fn_splat((float)shift), lo = fn_splat(0.0f);
    fn_sn_shifted_sums(st, x, n, hi, lo, &sd, &sq);
    if (!fn_one_pass_ok(sq, sd, n)) {
        shift += sd / n;
        hi = fn_splat((float)shift);
        lo = fn_splat((float)(shift - (double)(float)shift));
        fn_sn_shifted_sums(st, x, n, hi, lo, &sd, &sq);
    }
    *mean = shift + sd / n;
    *m2 = sq - sd * sd / n;
    if (*m2 < 0) *m2 = 0;
    if (!fn_sums_in_range(sq, n)) fn_exact_moments(st, x, n, 1, mean, m2);  /* out of float32's range */
}

/* z = (x - mean) inv as (x - hi) r - lo r (lr = lo r); y = z (scale -
   (scale k) z) (sk = scale k): one subtraction, two fused multiply-adds
   and a product per vector */
static inline fn_vf fn_sn_value(fn_vf v, fn_vf hi, fn_vf lr, fn_vf r, fn_vf scale, fn_vf sk) {
    fn_vf z = (v - hi) * r - lr;
    return z * (scale - sk * z);
}

/* stream: whole vectors of y written with streaming stores once the head
 * (stored through the padded vector code) has aligned y: a large output
 * written without reading its lines first, 2 memory transfers per value, not
 * 3.  (An earlier form staged tiles aligned to the row: with y 16 bytes off
 * a page it split a cache line at every tile and took 1.35x the aligned
 * time on (8192, 4096) float32.) */
static inline __attribute__((always_inline)) void fn_sn_forward_v(int st, const void* x, void* y, ptrdiff_t n, double mean, double inv,
                          float scale, float kf, int stream) {
    fn_vf hi = fn_splat((float)mean), lo = fn_splat((float)(mean - (double)(float)mean));
    fn_vf r = fn_splat((float)inv), sc = fn_splat(scale), kv = fn_splat(scale * kf), lr = lo * r;
    ptrdiff_t head = fn_store_head(st, y, n, &stream), k = 0;
    if (head > 0) fn_stn(st, y, 0, head, fn_sn_value(fn_ldn(st, x, 0, head), hi, lr, r, sc, kv));
    for (k = head; k + FN_W <= n; k += FN_W)
        fn_stv(st, y, k, fn_sn_value(fn_ldv(st, x, k), hi, lr, r, sc, kv), stream);
    if (k < n) fn_stn(st, y, k, n - k, fn_sn_value(fn_ldn(st, x, k, n - k), hi, lr, r, sc, kv));
}

static void fn_sn_moments_d(const double* x, ptrdiff_t n, double* mean, double* m2) {
    double s = 0.0;
#pragma omp simd reduction(+:s)
    for (ptrdiff_t k = 0; k < n; k++) s += x[k];
    double mu = s / (double)n, q = 0.0;
#pragma omp simd reduction(+:q)
    for (ptrdiff_t k = 0; k < n; k++) q += (x[k] - mu) * (x[k] - mu);
    *mean = mu;
    *m2 = q;
}

static void fn_sn_forward_d(const double* x, double* y, ptrdiff_t n, double mean, double inv,
                            double scale, double kf) {
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; k++) {
        double z = (x[k] - mean) * inv;
        y[k] = scale * z * (1.0 - kf * z);
    }
}

/* coef = inv^2 / ((n - 1) s); 0 where s is 0 (a constant row: x - mean is 0
 * there, the term's limit) */
static inline double fn_sn_coef(double s, double inv, ptrdiff_t n) {
    return s > 0 ? inv * inv / ((double)(n - 1) * s) : 0.0;
}

/* with u = g * scale * (1 - k z): the tile sums of u and u * (x - mean)
 * (g's padded lanes are 0: so are u's), then dx */
static inline fn_vf fn_sn_u(fn_vf gv, fn_vf d, fn_vf r, fn_vf sc, fn_vf kv) {
    return gv * sc * (fn_splat(1.0f) - kv * (d * r));
}

static inline __attribute__((always_inline)) void fn_sn_backward_v(int st, const void* g, const void* x, void* dx, ptrdiff_t n, double mean,
                           double s, double inv, float scale, float kf) {
    fn_vf hi = fn_splat((float)mean), lo = fn_splat((float)(mean - (double)(float)mean));
    fn_vf r = fn_splat((float)inv), sc = fn_splat(scale), kv = fn_splat(kf);
    double su = 0.0, sux = 0.0;
    for (ptrdiff_t i = 0; i < n; i += FN_SN_TILE) {
        ptrdiff_t e = fn_sn_end(n, i);
        fn_vf tu = fn_splat(0.0f), tux = tu;
        for (ptrdiff_t k = i; k < e; k += FN_W) {
            fn_vf d = (fn_sn_ld(st, x, k, e) - hi) - lo;
            fn_vf u = fn_sn_u(fn_sn_ld(st, g, k, e), d, r, sc, kv);
            tu += u;
            tux += u * d;
        }
        su += fn_lane_sum(tu);
        sux += fn_lane_sum(tux);
    }
    /* dx = inv ((u - mean(u)) - (d inv) sux / ((n - 1) s)): the coefficient
     * inv^2 / s of d would leave float32's range for rows beyond 2^42 or
     * under 2^-42; here every factor but the first inv is O(1) */
    fn_vf mu = fn_splat((float)(su / (double)n));
    fn_vf c = fn_splat((float)(s > 0 ? sux / ((double)(n - 1) * s) : 0.0));
    ptrdiff_t k = 0;
    for (; k + FN_W <= n; k += FN_W) {
        fn_vf d = (fn_ldv(st, x, k) - hi) - lo;
        fn_vf u = fn_sn_u(fn_ldv(st, g, k), d, r, sc, kv);
        fn_stv(st, dx, k, r * ((u - mu) - (d * r) * c), 0);
    }
    if (k < n) {
        fn_vf d = (fn_ldn(st, x, k, n - k) - hi) - lo;
        fn_vf u = fn_sn_u(fn_ldn(st, g, k, n - k), d, r, sc, kv);
        fn_stn(st, dx, k, n - k, r * ((u - mu) - (d * r) * c));
    }
}

static void fn_sn_moments(int st, const void* x, ptrdiff_t n, double* mean, double* m2) {
    FN_ST_DISPATCH(fn_sn_moments_v(st_, x, n, mean, m2));
}

static void fn_sn_forward(int st, const void* x, void* y, ptrdiff_t n, double mean, double inv,
                          float scale, float kf, int stream) {
    FN_ST_DISPATCH(fn_sn_forward_v(st_, x, y, n, mean, inv, scale, kf, stream));
}

static void fn_sn_backward(int st, const void* g, const void* x, void* dx, ptrdiff_t n, double mean,
                           double s, double inv, float scale, float kf) {
    FN_ST_DISPATCH(fn_sn_backward_v(st_, g, x, dx, n, mean, s, inv, scale, kf));
}

static void fn_sn_backward_d(const double* g, const double* x, double* dx, ptrdiff_t n,
                             double mean, double s, double inv, double scale, double kf) {
    double su = 0.0, sux = 0.0;
#pragma omp simd reduction(+:su, sux)
    for (ptrdiff_t k = 0; k < n; k++) {
        double d = x[k] - mean;
        double u = g[k] * scale * (1.0 - kf * (d * inv));
        su += u;
        sux += u * d;
    }
    double mu = su / (double)n, c = fn_sn_coef(s, inv, n) * sux;
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; k++) {
        double d = x[k] - mean;
        double u = g[k] * scale * (1.0 - kf * (d * inv));
        dx[k] = inv * (u - mu) - d * c;
    }
}

#endif
