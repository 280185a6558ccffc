/* fastnorm's one SIMD header: vector widths, loads and streaming stores for
 * every instruction-set build (SSE2 / AVX2 / AVX-512, chosen by the -march
 * flags setup.py compiles each _core* module with), and the conversions
 * between the 16-bit storage types (float16, bfloat16) and float32.
 *
 * Included by the kernels (_kernels.pxi and the files it includes) and by
 * _panels.h.  Plain C: no Python objects, no allocation.
 */
#ifndef FASTNORM_SIMD_H
#define FASTNORM_SIMD_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#if defined(__SSE2__) || defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define FN_VBYTES 64
#elif defined(__AVX__)
#define FN_VBYTES 32
#else
#define FN_VBYTES 16
#endif

typedef float fn_vf __attribute__((vector_size(FN_VBYTES)));
typedef float fn_vfu __attribute__((vector_size(FN_VBYTES), aligned(4), may_alias));
typedef double fn_vd __attribute__((vector_size(FN_VBYTES)));
typedef double fn_vdu __attribute__((vector_size(FN_VBYTES), aligned(8), may_alias));

#define FN_LOAD(VU, p) (*(const VU*)(p))

/* non-temporal (streaming) store of one whole, aligned vector */
#if defined(__AVX512F__)
#define FN_STREAM_float(p, v) _mm512_stream_ps((p), (__m512)(v))
#define FN_STREAM_double(p, v) _mm512_stream_pd((p), (__m512d)(v))
#elif defined(__AVX__)
#define FN_STREAM_float(p, v) _mm256_stream_ps((p), (__m256)(v))
#define FN_STREAM_double(p, v) _mm256_stream_pd((p), (__m256d)(v))
#elif defined(__SSE2__)
#define FN_STREAM_float(p, v) _mm_stream_ps((p), (__m128)(v))
#define FN_STREAM_double(p, v) _mm_stream_pd((p), (__m128d)(v))
#else
#define FN_STREAM_float(p, v) (*(fn_vf*)(p) = (v))
#define FN_STREAM_double(p, v) (*(fn_vd*)(p) = (v))
#endif
#define FN_PUT(T, VU, p, v, stream) \
    do { if (stream) FN_STREAM_##T((p), (v)); else *(VU*)(p) = (v); } while (0)

/* ------------------------------------------------------------------ */
/* streaming stores                                                    */
/* ------------------------------------------------------------------ */
/* Streaming (non-temporal) stores write an output's cache lines without
   first reading them (no read-for-ownership): a memory-bound forward then
   moves 2 bytes per output byte, as memcpy does, instead of 3.  A thread
   fences its streaming stores before its part of the work ends. */
static void fastnorm_stream_fence(void) {
#if defined(__SSE2__) || defined(__AVX__) || defined(__AVX512F__)
    _mm_sfence();
#endif
}

/* n bytes from src to dst (not overlapping), with streaming stores of whole
   aligned vectors once dst is aligned when `stream`: the benchmarks'
   all-threads memory limit (a copy at the kernels' own store width). */
static void fn_copy_bytes(const char* src, char* dst, size_t n, int stream) {
#if defined(__SSE2__) || defined(__AVX__) || defined(__AVX512F__)
    if (stream) {
        size_t head = (FN_VBYTES - (uintptr_t)dst % FN_VBYTES) % FN_VBYTES, k;
        head = head < n ? head : n;
        __builtin_memcpy(dst, src, head);
        for (k = head; k + FN_VBYTES <= n; k += FN_VBYTES)
            FN_STREAM_float((float*)(dst + k), FN_LOAD(fn_vfu, src + k));
        __builtin_memcpy(dst + k, src + k, n - k);
        return;
    }
#endif
    (void)stream;
    __builtin_memcpy(dst, src, n);
}

/* Streaming-store versions of the channel kernels' elementwise loops,
   float32 only: y = ((x - hi) - lo) * a + b with scalar coefficients
   (_s) or per-element coefficient arrays (_v).  The scalar head up to
   y's vector alignment and the tail use plain stores; the arithmetic is
   the plain loop's (fused multiply-add where the plain loop is
   contracted to one), so results do not depend on the path. */
#if defined(__AVX512F__)
#define FN_V 16
#define FN_T __m512
#define FN_LD(p) _mm512_loadu_ps(p)
#define FN_SET(v) _mm512_set1_ps(v)
#define FN_SUB(a, b) _mm512_sub_ps(a, b)
#define FN_MUL(a, b) _mm512_mul_ps(a, b)
#define FN_ADD(a, b) _mm512_add_ps(a, b)
#define FN_MADD(a, b, c) _mm512_fmadd_ps(a, b, c)
#define FN_ST(p, v) _mm512_stream_ps(p, v)
#elif defined(__AVX__)
#define FN_V 8
#define FN_T __m256
#define FN_LD(p) _mm256_loadu_ps(p)
#define FN_SET(v) _mm256_set1_ps(v)
#define FN_SUB(a, b) _mm256_sub_ps(a, b)
#define FN_MUL(a, b) _mm256_mul_ps(a, b)
#define FN_ADD(a, b) _mm256_add_ps(a, b)
#if defined(__FMA__)
#define FN_MADD(a, b, c) _mm256_fmadd_ps(a, b, c)
#else
#define FN_MADD(a, b, c) _mm256_add_ps(_mm256_mul_ps(a, b), c)
#endif
#define FN_ST(p, v) _mm256_stream_ps(p, v)
#elif defined(__SSE2__)
#define FN_V 4
#define FN_T __m128
#define FN_LD(p) _mm_loadu_ps(p)
#define FN_SET(v) _mm_set1_ps(v)
#define FN_SUB(a, b) _mm_sub_ps(a, b)
#define FN_MUL(a, b) _mm_mul_ps(a, b)
#define FN_ADD(a, b) _mm_add_ps(a, b)
#define FN_MADD(a, b, c) _mm_add_ps(_mm_mul_ps(a, b), c)
#define FN_ST(p, v) _mm_stream_ps(p, v)
#endif
static void fastnorm_affine_stream_s(const float* x, float* y, Py_ssize_t n,
                                     float hi, float a, float b) {
    Py_ssize_t k = 0;
    if (hi == 0) {  /* as the plain loop: x * a + b */
#ifdef FN_V
        for (; k < n && ((uintptr_t)(y + k) % (FN_V * 4)) != 0; k++)
            y[k] = x[k] * a + b;
        FN_T va0 = FN_SET(a), vb0 = FN_SET(b);
        for (; k + FN_V <= n; k += FN_V)
            FN_ST(y + k, FN_MADD(FN_LD(x + k), va0, vb0));
#endif
        for (; k < n; k++)
            y[k] = x[k] * a + b;
        return;
    }
#ifdef FN_V
    for (; k < n && ((uintptr_t)(y + k) % (FN_V * 4)) != 0; k++)
        y[k] = (x[k] - hi) * a + b;
    FN_T vh = FN_SET(hi), va = FN_SET(a), vb = FN_SET(b);
    for (; k + FN_V <= n; k += FN_V)
        FN_ST(y + k, FN_MADD(FN_SUB(FN_LD(x + k), vh), va, vb));
#endif
    for (; k < n; k++)
        y[k] = (x[k] - hi) * a + b;
}
static void fastnorm_scale_shift_stream_v(const float* x, float* y, Py_ssize_t n,
                                          const float* a, const float* b) {
    Py_ssize_t k = 0;
#ifdef FN_V
    for (; k < n && ((uintptr_t)(y + k) % (FN_V * 4)) != 0; k++)
        y[k] = x[k] * a[k] + b[k];
    for (; k + FN_V <= n; k += FN_V)
        FN_ST(y + k, FN_MADD(FN_LD(x + k), FN_LD(a + k), FN_LD(b + k)));
#endif
    for (; k < n; k++)
        y[k] = x[k] * a[k] + b[k];
}
static void fastnorm_backward_stream_s(const float* g, const float* x, float* dx, Py_ssize_t n,
                                       float hi, float al, float be, float ga) {
    Py_ssize_t k = 0;
    if (be == 0 && ga == 0) {  /* as the plain loop: running statistics, dx = al * g */
#ifdef FN_V
        for (; k < n && ((uintptr_t)(dx + k) % (FN_V * 4)) != 0; k++)
            dx[k] = al * g[k];
        FN_T va0 = FN_SET(al);
        for (; k + FN_V <= n; k += FN_V)
            FN_ST(dx + k, FN_MUL(va0, FN_LD(g + k)));
#endif
        for (; k < n; k++)
            dx[k] = al * g[k];
        return;
    }
#ifdef FN_V
    for (; k < n && ((uintptr_t)(dx + k) % (FN_V * 4)) != 0; k++)
        dx[k] = al * g[k] + (be * (x[k] - hi) + ga);
    FN_T vh = FN_SET(hi), va = FN_SET(al), vb = FN_SET(be), vg = FN_SET(ga);
    for (; k + FN_V <= n; k += FN_V) {
        FN_T t = FN_SUB(FN_LD(x + k), vh);
        FN_ST(dx + k, FN_MADD(va, FN_LD(g + k), FN_MADD(vb, t, vg)));
    }
#endif
    for (; k < n; k++)
        dx[k] = al * g[k] + (be * (x[k] - hi) + ga);
}
static void fastnorm_backward_stream_v(const float* g, const float* x, float* dx, Py_ssize_t n,
                                       const float* hi, const float* al,
                                       const float* be, const float* ga) {
    Py_ssize_t k = 0;
#ifdef FN_V
    for (; k < n && ((uintptr_t)(dx + k) % (FN_V * 4)) != 0; k++)
        dx[k] = al[k] * g[k] + (be[k] * (x[k] - hi[k]) + ga[k]);
    for (; k + FN_V <= n; k += FN_V) {
        FN_T t = FN_SUB(FN_LD(x + k), FN_LD(hi + k));
        FN_ST(dx + k, FN_MADD(FN_LD(al + k), FN_LD(g + k), FN_MADD(FN_LD(be + k), t, FN_LD(ga + k))));
    }
#endif
    for (; k < n; k++)
        dx[k] = al[k] * g[k] + (be[k] * (x[k] - hi[k]) + ga[k]);
}
static void fastnorm_mul_stream_v(const float* g, float* dx, Py_ssize_t n, const float* al) {
    Py_ssize_t k = 0;
#ifdef FN_V
    for (; k < n && ((uintptr_t)(dx + k) % (FN_V * 4)) != 0; k++)
        dx[k] = al[k] * g[k];
    for (; k + FN_V <= n; k += FN_V)
        FN_ST(dx + k, FN_MUL(FN_LD(al + k), FN_LD(g + k)));
#endif
    for (; k < n; k++)
        dx[k] = al[k] * g[k];
}
/* LayerNorm / RMSNorm rows (w, b may be NULL), as their plain loops */
static void fastnorm_ln_stream(const float* x, float* y, Py_ssize_t n, const float* w,
                               const float* b, float hi, float rstd, float off) {
    Py_ssize_t k = 0;
#define FN_LN_SCALAR(k) do { float t_ = (x[k] - hi) * rstd + off; \
        y[k] = w ? (b ? t_ * w[k] + b[k] : t_ * w[k]) : (b ? t_ + b[k] : t_); } while (0)
#ifdef FN_V
    for (; k < n && ((uintptr_t)(y + k) % (FN_V * 4)) != 0; k++)
        FN_LN_SCALAR(k);
    FN_T vh = FN_SET(hi), vr = FN_SET(rstd), vo = FN_SET(off);
    if (w && b) {
        for (; k + FN_V <= n; k += FN_V)
            FN_ST(y + k, FN_MADD(FN_MADD(FN_SUB(FN_LD(x + k), vh), vr, vo), FN_LD(w + k), FN_LD(b + k)));
    } else if (w) {
        for (; k + FN_V <= n; k += FN_V)
            FN_ST(y + k, FN_MUL(FN_MADD(FN_SUB(FN_LD(x + k), vh), vr, vo), FN_LD(w + k)));
    } else if (b) {
        for (; k + FN_V <= n; k += FN_V)
            FN_ST(y + k, FN_ADD(FN_MADD(FN_SUB(FN_LD(x + k), vh), vr, vo), FN_LD(b + k)));
    } else {
        for (; k + FN_V <= n; k += FN_V)
            FN_ST(y + k, FN_MADD(FN_SUB(FN_LD(x + k), vh), vr, vo));
    }
#endif
    for (; k < n; k++)
        FN_LN_SCALAR(k);
#undef FN_LN_SCALAR
}
static void fastnorm_rms_stream(const float* x, float* y, Py_ssize_t n, const float* w, float rstd) {
    Py_ssize_t k = 0;
#ifdef FN_V
    for (; k < n && ((uintptr_t)(y + k) % (FN_V * 4)) != 0; k++)
        y[k] = w ? x[k] * rstd * w[k] : x[k] * rstd;
    FN_T vr = FN_SET(rstd);
    if (w) {
        for (; k + FN_V <= n; k += FN_V)
            FN_ST(y + k, FN_MUL(FN_MUL(FN_LD(x + k), vr), FN_LD(w + k)));
    } else {
        for (; k + FN_V <= n; k += FN_V)
            FN_ST(y + k, FN_MUL(FN_LD(x + k), vr));
    }
#endif
    for (; k < n; k++)
        y[k] = w ? x[k] * rstd * w[k] : x[k] * rstd;
}
static void fastnorm_affine_stream_v(const float* x, float* y, Py_ssize_t n, const float* hi,
                                     const float* a, const float* b) {
    Py_ssize_t k = 0;
#ifdef FN_V
    for (; k < n && ((uintptr_t)(y + k) % (FN_V * 4)) != 0; k++)
        y[k] = (x[k] - hi[k]) * a[k] + b[k];
    for (; k + FN_V <= n; k += FN_V)
        FN_ST(y + k, FN_MADD(FN_SUB(FN_LD(x + k), FN_LD(hi + k)), FN_LD(a + k), FN_LD(b + k)));
#endif
    for (; k < n; k++)
        y[k] = (x[k] - hi[k]) * a[k] + b[k];
}

/* ------------------------------------------------------------------ */
/* 16-bit storage types <-> float32                                    */
/* ------------------------------------------------------------------ */
/* float16 (IEEE binary16) and bfloat16 (the top half of a float32) are
 * storage types: kernels widen them to float32 on load and narrow float32
 * results on store, rounding to nearest even; NaN stays NaN (quiet), inf
 * stays inf, subnormals are kept (no flush to zero).
 *
 * float16 uses F16C (vcvtph2ps / vcvtps2ph, in the AVX2 and AVX-512 builds);
 * the baseline build and the tails use the portable scalar routines below,
 * which give the same bits.  bfloat16 uses integer rounding in vector
 * registers on every build; the AVX-512 BF16 build (CPUs that have it)
 * narrows with vcvtneps2bf16, which gives the same bits except that it
 * flushes subnormals to zero (PyTorch's and ml_dtypes' conversions do not),
 * so a vector holding a subnormal takes the integer rounding. */

static inline float fn_bits_to_float(uint32_t u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
static inline uint32_t fn_float_to_bits(float f) { uint32_t u; __builtin_memcpy(&u, &f, 4); return u; }

static inline float fn_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    if (em >= 0x7c00u)                      /* inf, NaN (payload kept, made quiet) */
        return fn_bits_to_float(sign | 0x7f800000u | (em & 0x3ffu ? 0x400000u : 0u) | ((em & 0x3ffu) << 13));
    if (em >= 0x0400u)                      /* normal: rebias the exponent 15 -> 127 */
        return fn_bits_to_float(sign | ((em << 13) + 0x38000000u));
    /* zero or subnormal: em units of 2^-24, exact in float */
    return fn_bits_to_float(sign | fn_float_to_bits((float)em * 5.9604644775390625e-08f));
}

static inline uint16_t fn_float_to_half(float f) {
    uint32_t x = fn_float_to_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)                   /* NaN: quiet, top payload bits kept */
        return sign | 0x7e00u | (uint16_t)((ax >> 13) & 0x3ffu);
    if (ax >= 0x477ff000u)                  /* >= 65520 rounds to inf (and inf) */
        return sign | 0x7c00u;
    if (ax >= 0x38800000u) {                /* normal half: round at bit 13, to even */
        uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u);
        return sign | (uint16_t)((r - 0x38000000u) >> 13);
    }
    /* subnormal half or zero: adding 0.5 rounds |f| (to nearest even) to a
       multiple of 2^-24, the ulp of float in [0.5, 1); the result's low bits
       count those units (0x400 when it rounds up to the smallest normal) */
    return sign | (uint16_t)(fn_float_to_bits(fn_bits_to_float(ax) + 0.5f) - 0x3f000000u);
}

static inline float fn_bf16_to_float(uint16_t h) { return fn_bits_to_float((uint32_t)h << 16); }

static inline uint16_t fn_float_to_bf16(float f) {
    uint32_t x = fn_float_to_bits(f);
    uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    uint32_t nan = (x >> 16) | 0x40u;
    return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

static void fn_widen_f16(const uint16_t* src, float* dst, Py_ssize_t n) {
    Py_ssize_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + i))));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
#endif
    for (; i < n; i++)
        dst[i] = fn_half_to_float(src[i]);
}

static void fn_narrow_f16(const float* src, uint16_t* dst, Py_ssize_t n) {
    Py_ssize_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i*)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; i < n; i++)
        dst[i] = fn_float_to_half(src[i]);
}

static void fn_widen_bf16(const uint16_t* src, float* dst, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        dst[i] = fn_bf16_to_float(src[i]);
}


/* ---- vector loads of FN_VBYTES / 4 16-bit values widened to a float
 * vector (fn_vf), and packing a float vector to 16 bits (fn_vh) ---- */
#define FN_W ((Py_ssize_t)(FN_VBYTES / 4))   /* floats per vector */

typedef uint16_t fn_vh __attribute__((vector_size(FN_VBYTES / 2), aligned(2), may_alias));
typedef uint32_t fn_vu __attribute__((vector_size(FN_VBYTES)));
typedef int32_t fn_vi __attribute__((vector_size(FN_VBYTES)));

/* ---- vector loads of FN_W values, and packing FN_W floats to 16 bits ---- */

static inline fn_vf fn_vload_bf16(const uint16_t* p) {
#if defined(__AVX512F__)
    return (fn_vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16);
#elif defined(__AVX2__)
    /* one vpmovzxwd from memory (gcc's generic conversion below splits it
       into two halves and an insert: 5 instructions instead of 2) */
    return (fn_vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16);
#else
    fn_vu u = __builtin_convertvector(*(const fn_vh*)p, fn_vu) << 16;
    return (fn_vf)u;
#endif
}

static inline fn_vh fn_pack_bf16(fn_vf v) {
#if defined(__AVX512BF16__)
    /* vcvtneps2bf16 rounds to nearest even and quiets NaN as the integer
       rounding below does, but flushes subnormal inputs to zero: a vector
       holding one (rare in normalized data) takes the integer rounding */
    if (__builtin_expect(_mm512_fpclass_ps_mask((__m512)v, 0x20) == 0, 1))
        return (fn_vh)_mm512_cvtneps_pbh((__m512)v);
#endif
#if defined(__AVX512F__)
    const __m512i x = _mm512_castps_si512((__m512)v);
    const __m512i hi = _mm512_srli_epi32(x, 16);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)),
                                                   _mm512_and_si512(hi, _mm512_set1_epi32(1))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
    return (fn_vh)_mm512_cvtepi32_epi16(r);
#elif defined(__AVX2__)
    /* the same bits as the generic form below (checked over all 2^32
       inputs) in 10 instructions, not 14: NaN found by an unordered compare
       and put in by one blend.  With the load above, measured in cache on a
       Zen 3 (1 thread): a bfloat16 per-statistic affine pass 0.36 -> 0.23
       ns/value, DyT forward 1.13 -> 0.90 (float32: 0.50) */
    const __m256i x = _mm256_castps_si256((__m256)v);
    const __m256i hi = _mm256_srli_epi32(x, 16);
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)),
                                                         _mm256_and_si256(hi, _mm256_set1_epi32(1))), 16);
    const __m256 nan = _mm256_cmp_ps((__m256)v, (__m256)v, _CMP_UNORD_Q);
    const __m256i q = _mm256_castps_si256(_mm256_blendv_ps(
        _mm256_castsi256_ps(r), _mm256_castsi256_ps(_mm256_or_si256(hi, _mm256_set1_epi32(0x40))), nan));
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(q, q), 0xD8);
    return (fn_vh)_mm256_castsi256_si128(packed);
#else
    fn_vu x = (fn_vu)v;
    fn_vu rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    fn_vu nan = (x >> 16) | 0x40u;
    fn_vu is_nan = (fn_vu)((x & 0x7fffffffu) > 0x7f800000u);   /* all ones where NaN */
    fn_vu r = (nan & is_nan) | (rounded & ~is_nan);
    return __builtin_convertvector(r, fn_vh);
#endif
}

/* the vector pack over whole vectors (the kernels' own store path), the
   scalar rounding for the tail: the same bits */
static void fn_narrow_bf16(const float* src, uint16_t* dst, Py_ssize_t n) {
    Py_ssize_t i = 0;
    for (; i + FN_W <= n; i += FN_W) {
        fn_vh h = fn_pack_bf16(FN_LOAD(fn_vfu, src + i));
        __builtin_memcpy(dst + i, &h, sizeof(h));
    }
    for (; i < n; i++)
        dst[i] = fn_float_to_bf16(src[i]);
}

static inline fn_vf fn_vload_f16(const uint16_t* p) {
#if defined(__AVX512F__)
    return (fn_vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
#elif defined(__F16C__)
    return (fn_vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
#else
    float t[FN_VBYTES / 4];
    for (int j = 0; j < FN_W; j++) t[j] = fn_half_to_float(p[j]);
    return FN_LOAD(fn_vfu, t);
#endif
}

static inline fn_vh fn_pack_f16(fn_vf v) {
#if defined(__AVX512F__)
    return (fn_vh)_mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#elif defined(__F16C__)
    return (fn_vh)_mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    float t[FN_VBYTES / 4];
    uint16_t h[FN_VBYTES / 4];
    *(fn_vfu*)t = v;
    for (int j = 0; j < FN_W; j++) h[j] = fn_float_to_half(t[j]);
    return *(fn_vh*)h;
#endif
}

/* store FN_W 16-bit values; stream: a non-temporal store (p aligned to
   FN_VBYTES / 2), which spares a large output's read-for-ownership */
static inline void fn_put_h(uint16_t* p, fn_vh h, int stream) {
#if defined(__AVX512F__)
    if (stream) { _mm256_stream_si256((__m256i*)p, (__m256i)h); return; }
#elif defined(__AVX__)
    if (stream) { _mm_stream_si128((__m128i*)p, (__m128i)h); return; }
#elif defined(__SSE2__) && defined(__x86_64__)
    if (stream) { long long q; __builtin_memcpy(&q, &h, 8); _mm_stream_si64((long long*)p, q); return; }
#endif
    *(fn_vh*)p = h;
}

/* running statistics: buf = buf * (1 - m) + (m * v * factor) rounded to
   buf's type, as NumPy evaluates `buf *= 1 - m; buf += (m * v).astype(...)`
   (two roundings: no fused multiply-add) */
__attribute__((optimize("fp-contract=off")))
static void fn_blend_f(float* buf, const double* v, Py_ssize_t n, double m, double factor) {
    const float keep = (float)(1.0 - m);
    for (Py_ssize_t i = 0; i < n; i++) {
        float scaled = buf[i] * keep;
        buf[i] = scaled + (float)(m * (v[i] * factor));
    }
}

__attribute__((optimize("fp-contract=off")))
static void fn_blend_d(double* buf, const double* v, Py_ssize_t n, double m, double factor) {
    for (Py_ssize_t i = 0; i < n; i++) {
        double scaled = buf[i] * (1.0 - m);
        buf[i] = scaled + m * (v[i] * factor);
    }
}

/* out[c] = sum over n of (v[n * C + c] * factor), in order, divided by N: a
   NumPy mean over axis 0 of v * factor, rounded the same way (no fused
   multiply-add) */
__attribute__((optimize("fp-contract=off")))
static void fn_mean_rows(const double* v, Py_ssize_t N, Py_ssize_t C, double factor, double* out) {
    for (Py_ssize_t c = 0; c < C; c++) out[c] = v[c] * factor;
    for (Py_ssize_t n = 1; n < N; n++)
        for (Py_ssize_t c = 0; c < C; c++) {
            double t = v[n * C + c] * factor;
            out[c] = out[c] + t;
        }
    for (Py_ssize_t c = 0; c < C; c++) out[c] = out[c] / (double)N;
}

/* storage codes shared with the Cython kernels (enum Storage in _kernels.pxi) */
#define FN_ST_NATIVE 0
#define FN_ST_F16 1
#define FN_ST_BF16 2

static inline void fn_widen(int storage, const void* src, float* dst, Py_ssize_t n) {
    if (storage == FN_ST_F16) fn_widen_f16((const uint16_t*)src, dst, n);
    else fn_widen_bf16((const uint16_t*)src, dst, n);
}

static inline void fn_narrow(int storage, const float* src, void* dst, Py_ssize_t n) {
    if (storage == FN_ST_F16) fn_narrow_f16(src, (uint16_t*)dst, n);
    else fn_narrow_bf16(src, (uint16_t*)dst, n);
}

/* Moments about a row's first value (sums sd of d = x - shift and sq of
   d^2 over n values) are trusted unless that value lies far out (more than
   about 4 std from the mean), where E[d^2] - E[d]^2 would cancel more than
   FN_CANCELLATION-fold; NaN rows also fail it.  _kernels.pxi's
   _one_pass_ok, in C. */
#define FN_CANCELLATION 16                     /* = CANCELLATION_LIMIT */
static inline int fn_one_pass_ok(double sq, double sd, ptrdiff_t n) {
    return (sq / n - (sd / n) * (sd / n)) * FN_CANCELLATION >= sq / n;
}

/* ---- one storage dtype's values as float vectors ---- */
static inline fn_vf fn_splat(float c) { return (fn_vf){0} + c; }

/* the lanes' total, in one fixed order: a halving tree (lane j plus lane
   j + width), log2(FN_W) vector steps.  (Adding the lanes one after
   another was a 15-add dependency chain per call: in stdnorm's moments,
   once per tile of 512 values, it cost more than the tile's own loads.) */
static inline float fn_lane_sum(fn_vf v) {
#if defined(__AVX__)
    /* the same tree in registers: a store and narrower reloads stall store
       forwarding */
#if defined(__AVX512F__)
    __m256 h = _mm512_castps512_ps256((__m512)v)
             + _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd((__m512)v), 1));
#else
    __m256 h = (__m256)v;
#endif
    __m128 q = _mm256_castps256_ps128(h) + _mm256_extractf128_ps(h, 1);
    q = q + _mm_movehl_ps(q, q);
    q = q + _mm_shuffle_ps(q, q, 1);
    return _mm_cvtss_f32(q);
#else
    float lanes[FN_VBYTES / 4] __attribute__((aligned(64)));
    *(fn_vf*)lanes = v;
    for (ptrdiff_t width = FN_W / 2; width > 0; width /= 2)
        for (ptrdiff_t j = 0; j < width; j++)
            lanes[j] += lanes[j + width];
    return lanes[0];
#endif
}

/* The total of 32 double lanes (the row kernels' LANES) in one fixed
   order, a halving tree (lane j plus lane j + width, width 16, 8, 4, 2, 1),
   in vector registers: 8 loads and 7 vector adds.  (The same tree over the
   array in memory, each step's stores reloaded by the next at another
   width, stalled store forwarding: with two such totals a row it was most
   of a 32-wide LayerNorm row's time.) */
typedef double fn_v4d __attribute__((vector_size(32), aligned(8), may_alias));
static inline double fn_lanes_total32(const double* lanes) {
    fn_v4d a[8];
    for (int i = 0; i < 8; i++) a[i] = FN_LOAD(fn_v4d, lanes + 4 * i);
    for (int i = 0; i < 4; i++) a[i] += a[i + 4];         /* width 16 */
    for (int i = 0; i < 2; i++) a[i] += a[i + 2];         /* width 8 */
    a[0] += a[1];                                         /* width 4 */
    const double p0 = a[0][0] + a[0][2], p1 = a[0][1] + a[0][3];   /* width 2 */
    return p0 + p1;                                       /* width 1 */
}

/* Loads and stores of one storage dtype (FN_ST_NATIVE: float32; FN_ST_F16,
 * FN_ST_BF16: 16-bit values widened in registers and rounded once when
 * stored, as simd.h's conversions).  `stream`: whole-vector streaming
 * stores, from the head (fn_store_head values stored one at a time) that
 * aligns the destination. */
static inline float fn_ld1(int st, const void* p, ptrdiff_t k) {
    if (st == FN_ST_NATIVE) return ((const float*)p)[k];
    uint16_t h = ((const uint16_t*)p)[k];
    return st == FN_ST_BF16 ? fn_bf16_to_float(h) : fn_half_to_float(h);
}

static inline void fn_st1(int st, void* p, ptrdiff_t k, float v) {
    if (st == FN_ST_NATIVE) ((float*)p)[k] = v;
    else ((uint16_t*)p)[k] = st == FN_ST_BF16 ? fn_float_to_bf16(v) : fn_float_to_half(v);
}

static inline ptrdiff_t fn_store_head(int st, const void* y, ptrdiff_t n, int* stream) {
    size_t align = st == FN_ST_NATIVE ? FN_VBYTES : FN_VBYTES / 2;
    size_t item = st == FN_ST_NATIVE ? 4 : 2;
    if (*stream && ((uintptr_t)y % item)) *stream = 0;
    if (!*stream) return 0;
    ptrdiff_t head = (ptrdiff_t)(((align - (uintptr_t)y % align) % align) / item);
    return head < n ? head : n;
}

static inline fn_vf fn_ldv(int st, const void* p, ptrdiff_t k) {
    if (st == FN_ST_NATIVE) return FN_LOAD(fn_vfu, (const float*)p + k);
    if (st == FN_ST_BF16) return fn_vload_bf16((const uint16_t*)p + k);
    return fn_vload_f16((const uint16_t*)p + k);
}

static inline void fn_stv(int st, void* p, ptrdiff_t k, fn_vf v, int stream) {
    if (st == FN_ST_NATIVE) {
        if (stream) FN_STREAM_float((float*)p + k, v);
        else *(fn_vfu*)((float*)p + k) = v;
        return;
    }
    fn_put_h((uint16_t*)p + k, st == FN_ST_BF16 ? fn_pack_bf16(v) : fn_pack_f16(v), stream);
}

/* one specialized copy of a kernel per storage code: CALL names st_, a
   constant, so the loads and stores inline without a test per vector (gcc
   does not unswitch the storage tests out of the loops by itself) */
#define FN_ST_DISPATCH(CALL)                                              \
    do {                                                                  \
        if (st == FN_ST_NATIVE) { const int st_ = FN_ST_NATIVE; CALL; }   \
        else if (st == FN_ST_BF16) { const int st_ = FN_ST_BF16; CALL; }  \
        else { const int st_ = FN_ST_F16; CALL; }                         \
    } while (0)

/* m < FN_W values at p + k as a vector (the other lanes 0), and back:
 * the heads and tails go through the vector code too, so that a value's
 * result does not depend on where it falls (gcc contracts multiply-adds
 * differently in scalar and vector code: results would differ by an ulp
 * between the body and the tails, i.e. with the thread split and the
 * output's alignment) */
static inline fn_vf fn_ldn(int st, const void* p, ptrdiff_t k, ptrdiff_t m) {
    float t[FN_VBYTES / 4] __attribute__((aligned(64))) = {0};
    for (ptrdiff_t j = 0; j < m; j++) t[j] = fn_ld1(st, p, k + j);
    return *(fn_vf*)t;
}

static inline void fn_stn(int st, void* p, ptrdiff_t k, ptrdiff_t m, fn_vf v) {
    float t[FN_VBYTES / 4] __attribute__((aligned(64)));
    *(fn_vf*)t = v;
    for (ptrdiff_t j = 0; j < m; j++) fn_st1(st, p, k + j, t[j]);
}

/* ---- the floating-point range of float32-lane sums ----
 * The vector kernels sum d and d^2 (d = x - shift) in float32 lanes, added
 * to double once per block: exact to float32 rounding while every d^2 lies
 * in float32's normal range.  A square overflows once |d| > 2^64 (the sum
 * turns inf) and loses digits to underflow once |d| < 2^-63 (the sum falls
 * below n * 2^-100).  fn_sums_in_range tells from the sums whether either
 * may have happened (NaN sums too: a NaN row takes the exact path and stays
 * NaN); rows that fail are summed again by fn_exact_moments in double, where
 * the square of every float32 value, denormal to max, is a normal double:
 * the whole float32 / bfloat16 / float16 range gives the representable
 * answer, at the cost of one more pass over those rows only.  A sum of
 * exactly 0 is redone too: an all-zero (or constant) row cannot be told from
 * one whose squares all underflowed (even the sum of d can be exactly 0
 * there, about a shift that is the exact mean), so it pays the exact pass. */
#define FN_SQ_TINY 0x1p-100

static inline int fn_sums_in_range(double sq, ptrdiff_t n) {
    /* one value: d = x - x is 0 exactly for every finite x (inf gives NaN) */
    return (sq < INFINITY && sq >= (double)n * FN_SQ_TINY) || (n == 1 && sq == 0);
}

/* mean and sum of squared deviations of n values `stride` elements apart
 * (storage code st), two passes in double */
static void fn_exact_moments(int st, const void* x, ptrdiff_t n, ptrdiff_t stride,
                             double* mean, double* m2) {
    double s = 0.0, q = 0.0, c = 0.0;
    for (ptrdiff_t k = 0; k < n; k++) s += (double)fn_ld1(st, x, k * stride);
    const double mu = n > 0 ? s / (double)n : 0.0;
    for (ptrdiff_t k = 0; k < n; k++) {
        double d = (double)fn_ld1(st, x, k * stride) - mu;
        q += d * d;
        c += d;
    }
    /* c / n corrects mu's rounding; with an inf among the values c is NaN
     * (inf - inf) and the mean is mu itself, the +-inf it is */
    *mean = n > 0 ? (isfinite(c) ? mu + c / (double)n : mu) : 0.0;
    q = n > 0 ? q - c * c / (double)n : 0.0;
    *m2 = q > 0 ? q : (q == q ? 0.0 : q);
}

/* sum of x^2 over n values `stride` elements apart, in double */
static double fn_exact_sum_squares(int st, const void* x, ptrdiff_t n, ptrdiff_t stride) {
    double q = 0.0;
    for (ptrdiff_t k = 0; k < n; k++) {
        double v = (double)fn_ld1(st, x, k * stride);
        q += v * v;
    }
    return q;
}

/* sums of d and d^2 (d = x - shift) redone in double where fn_sums_in_range
 * fails: the form the shifted-sum kernels return */
static inline void fn_guard_shifted_sums(int st, const void* x, ptrdiff_t n, ptrdiff_t stride,
                                         double shift, double* sd, double* sq) {
    if (fn_sums_in_range(*sq, n)) return;
    double mean, m2;
    fn_exact_moments(st, x, n, stride, &mean, &m2);
    const double dm = mean - shift;
    *sd = dm * (double)n;
    *sq = m2 + dm * dm * (double)n;
}

#endif /* FASTNORM_SIMD_H */
