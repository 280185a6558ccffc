/* fastnorm's OpenMP layer: the one place that knows which OpenMP runtime the
 * kernels were built against.
 *
 * 1. Without OpenMP the omp_* queries report a single thread, so every prange
 *    compiles to a serial loop.
 *
 * 2. Serial regions without the runtime's team set-up.  Every prange of the
 *    kernels carries `use_threads_if=nth > 1`, which gcc lowers to
 *    GOMP_parallel(fn, data, 1, flags) when the condition is false.  libgomp
 *    then still builds (malloc) and frees a team of one thread for the region:
 *    about 350 ns per region on the 2-core EPYC build machine (a C loop of 10^6
 *    `#pragma omp parallel for if(0)` regions), against 8 ns for a direct call.
 *    A tiny BatchNorm forward runs three regions, which was a third of its time.
 *
 *    So each kernel module defines its own, hidden GOMP_parallel: the calls
 *    gcc emits inside the module bind to it (hidden symbols resolve inside
 *    their own object), and nothing outside the module sees it.  It runs a
 *    one-thread region as a plain call to the outlined body when the calling
 *    thread is not inside any OpenMP region (omp_get_level() == 0): there
 *    omp_get_num_threads() is 1 and omp_get_thread_num() 0, orphaned
 *    worksharing loops give the whole range to the caller and orphaned barriers
 *    return at once, exactly what a team of one does.  Inside an enclosing
 *    region (fastnorm called from a user's OpenMP team), and for every region
 *    of two or more threads, it forwards to libgomp's GOMP_parallel, found once
 *    through dlsym; a module whose lookup fails refuses to import
 *    (fastnorm_parallel_runtime_found).
 *
 *    Only gcc on glibc lowers regions to GOMP_parallel; other compilers and
 *    runtimes (clang with libomp) never call the shim and keep their own path.
 */
#ifndef FASTNORM_PARALLEL_H
#define FASTNORM_PARALLEL_H

#ifdef _OPENMP
#include <omp.h>
#define FASTNORM_HAVE_OPENMP 1
#else
#define FASTNORM_HAVE_OPENMP 0
static int omp_get_max_threads(void) { return 1; }
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

#if defined(_OPENMP) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) \
    && !defined(FASTNORM_NO_SERIAL_FASTPATH)
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>

#define FASTNORM_SERIAL_FASTPATH 1

typedef void (*fn_gomp_parallel_t)(void (*)(void *), void *, unsigned, unsigned);
static fn_gomp_parallel_t fn_gomp_parallel_real = 0;
static int fn_gomp_parallel_looked_up = 0;

static fn_gomp_parallel_t fn_gomp_parallel_lookup(void) {
    if (!__atomic_load_n(&fn_gomp_parallel_looked_up, __ATOMIC_ACQUIRE)) {
        fn_gomp_parallel_t f = (fn_gomp_parallel_t)dlsym(RTLD_NEXT, "GOMP_parallel");
        if (f == 0) {
            void *lib = dlopen("libgomp.so.1", RTLD_LAZY | RTLD_NOLOAD);
            if (lib != 0)
                f = (fn_gomp_parallel_t)dlsym(lib, "GOMP_parallel");
        }
        __atomic_store_n(&fn_gomp_parallel_real, f, __ATOMIC_RELAXED);
        __atomic_store_n(&fn_gomp_parallel_looked_up, 1, __ATOMIC_RELEASE);
    }
    return __atomic_load_n(&fn_gomp_parallel_real, __ATOMIC_RELAXED);
}

__attribute__((visibility("hidden"))) void GOMP_parallel(void (*fn)(void *), void *data,
                                                         unsigned num_threads, unsigned flags) {
    fn_gomp_parallel_t real;
    if (num_threads == 1 && omp_get_level() == 0) {
        fn(data);
        return;
    }
    real = fn_gomp_parallel_lookup();
    if (real == 0) {
        /* unreachable once the module has imported (it checks the lookup) */
        fn(data);
        return;
    }
    real(fn, data, num_threads, flags);
}

/* 1 when multi-thread regions reach libgomp (the import-time check). */
static int fastnorm_parallel_runtime_found(void) { return fn_gomp_parallel_lookup() != 0; }
#else
#define FASTNORM_SERIAL_FASTPATH 0
static int fastnorm_parallel_runtime_found(void) { return 1; }
#endif

#endif /* FASTNORM_PARALLEL_H */
