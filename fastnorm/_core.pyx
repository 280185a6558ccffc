# cython: language_level=3
# The baseline build of fastnorm's kernels (see _kernels.pxi), plus the CPU
# feature checks that choose among the instruction-set builds at import.
# It is compiled without -march flags, so it is safe to import on any CPU of
# its architecture.
include "_kernels.pxi"

cdef extern from "cpu.h":
    int fastnorm_cpu_level() noexcept nogil


def cpu_isa_level():
    """x86-64 micro-architecture level of this CPU (5 = AVX-512 with AVX-512
    BF16, 4 = AVX-512, 3 = AVX2+FMA, 1 = baseline), or 0 when not an x86 CPU."""
    return fastnorm_cpu_level()
