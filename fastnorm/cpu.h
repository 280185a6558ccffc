/* The CPU's x86-64 feature level, for choosing a kernel build at import
 * (fastnorm/_config.py): 5 = AVX-512 with AVX-512 BF16, 4 = AVX-512
 * (x86-64-v4), 3 = AVX2 + FMA (x86-64-v3), 1 = baseline, 0 = not x86.
 * Included only by the baseline build (_core.pyx), which runs on any CPU. */
#ifndef FASTNORM_CPU_H
#define FASTNORM_CPU_H

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
static int fastnorm_cpu_level(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return __builtin_cpu_supports("avx512bf16") ? 5 : 4;
    if (__builtin_cpu_supports("x86-64-v3")) return 3;
    return 1;
}
#else
static int fastnorm_cpu_level(void) { return 0; }
#endif

#endif /* FASTNORM_CPU_H */
