"""Build script for fastnorm's Cython kernels.

What it decides, and why:

* OpenMP is probed with a compile-and-run test.  ``FASTNORM_OPENMP=1`` forces it
  on, ``FASTNORM_OPENMP=0`` forces it off.  Without OpenMP the build still
  succeeds, single-threaded, with a loud warning; ``fastnorm.show_config()``
  reports the outcome (recorded in ``fastnorm/_build_info.py``).
* The kernels are compiled once per instruction set and the best one the CPU
  supports is chosen at import (as NumPy's runtime dispatch does): on x86-64 a
  baseline (SSE2) ``_core``, an AVX2+FMA ``_core_avx2`` (x86-64-v3), an
  AVX-512 ``_core_avx512`` (x86-64-v4) and ``_core_avx512bf16`` (x86-64-v4
  plus AVX-512 BF16, whose conversion instruction narrows bfloat16).  All three come from the same source,
  ``fastnorm/_kernels.pxi``.  ``FASTNORM_NATIVE=1`` instead builds a single
  ``_core`` with ``-march=native`` for the build machine only.
* ``-O3`` lets gcc vectorize the hot loops (and a larger runtime alias-check
  budget lets it vectorize the fused backward loops).  ``-ffast-math`` is never used: it
  would break NaN/inf propagation and reorder the compensated sums.
  ``FASTNORM_VEC_REPORT=1`` adds ``-fopt-info-vec-optimized`` to show which
  loops vectorized.
"""
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int hits = 0;
        #pragma omp parallel num_threads(2) reduction(+:hits)
        hits += 1;
        printf("%d %d\\n", hits, omp_get_max_threads());
        return hits == 2 ? 0 : 1;
    }
    """
)


def _compiler_command():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()


def _try_compile(source, flags, run=False):
    """Compile (and optionally run) a C snippet; True on success."""
    tmp = tempfile.mkdtemp(prefix="fastnorm-probe-")
    try:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(source)
        cmd = _compiler_command() + flags + [src, "-o", exe]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            return False
        if run:
            res = subprocess.run([exe], capture_output=True, text=True, timeout=60)
            return res.returncode == 0
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _decide_openmp():
    forced = os.environ.get("FASTNORM_OPENMP", "").strip().lower()
    if forced in ("0", "off", "false", "no"):
        return False, "disabled by FASTNORM_OPENMP=0"
    if forced in ("1", "on", "true", "yes"):
        return True, "forced on by FASTNORM_OPENMP=1"
    if _try_compile(OPENMP_PROBE, ["-fopenmp"], run=True):
        return True, "compile-and-run probe succeeded"
    return False, "compile-and-run probe failed"


def _warn_loudly(message):
    bar = "!" * 78
    sys.stderr.write(f"\n{bar}\n!! fastnorm: {message}\n{bar}\n\n")


use_openmp, openmp_reason = _decide_openmp()
if not use_openmp:
    _warn_loudly(
        "building WITHOUT OpenMP (" + openmp_reason + "). "
        "Every kernel will run single-threaded. Install a compiler with OpenMP "
        "support (e.g. gcc) or set FASTNORM_OPENMP=1 to force it."
    )

BASE_FLAGS = ["-O3", "-fno-math-errno", "-Wno-unused-function", "-Wno-unreachable-code"]
# The fused backward loops read 3 arrays and update 3; gcc's default budget of
# 10 runtime alias checks leaves such a loop scalar.  (gcc only; probed.)
ALIAS_CHECKS = ["--param", "vect-max-version-for-alias-checks=64"]
if _try_compile("int main(void){return 0;}\n", ALIAS_CHECKS):
    BASE_FLAGS += ALIAS_CHECKS
# Small fixed-size zeroings (a row's 32 double lanes, `= {0}` arrays) inline
# as vector stores, not `rep stosq`: its start-up cost was half the moments
# time of a 64-wide row (perf, Zen 3: 174 ns per row).  (gcc only; probed.)
MEMSET = ["-mmemset-strategy=vector_loop:2048:noalign,libcall:-1:noalign"]
if _try_compile("int main(void){return 0;}\n", MEMSET):
    BASE_FLAGS += MEMSET
if os.environ.get("FASTNORM_VEC_REPORT") == "1":
    BASE_FLAGS.append("-fopt-info-vec-optimized")
OMP_FLAGS = ["-fopenmp"] if use_openmp else []
# FASTNORM_SANITIZE=1: AddressSanitizer + UndefinedBehaviorSanitizer build (.ci/sanitize)
SANITIZE = os.environ.get("FASTNORM_SANITIZE", "") == "1"
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
if SANITIZE:  # at -O3 too: the tests' bitwise checks rely on the release build's fma contractions
    BASE_FLAGS = BASE_FLAGS + SANITIZE_FLAGS
LINK_FLAGS = SANITIZE_FLAGS[:1] if SANITIZE else []

native = os.environ.get("FASTNORM_NATIVE", "") == "1"
machine = platform.machine().lower()
if native:
    variants = [("_core", "native", ["-march=native"])]
elif machine in ("x86_64", "amd64"):
    variants = [
        ("_core", "baseline", []),
        ("_core_avx2", "avx2", ["-march=x86-64-v3"]),
        ("_core_avx512", "avx512", ["-march=x86-64-v4", "-mprefer-vector-width=512"]),
        # the AVX-512 kernels again, bfloat16 narrowed by vcvtneps2bf16 (simd.h)
        ("_core_avx512bf16", "avx512bf16",
         ["-march=x86-64-v4", "-mavx512bf16", "-mprefer-vector-width=512"]),
    ]
    # Drop an instruction-set variant the compiler does not know (old gcc).
    variants = [v for v in variants if not v[2] or _try_compile("int main(void){return 0;}\n", v[2])]
else:
    variants = [("_core", "baseline", [])]

# The variant modules are one-line wrappers around the shared kernel source.
for module, _, _ in variants:
    if module == "_core":
        continue
    path = os.path.join(HERE, "fastnorm", module + ".pyx")
    text = (
        "# Generated by setup.py, do not edit: the kernels of _kernels.pxi compiled\n"
        "# for another instruction set (see setup.py).\n"
        "# cython: language_level=3\n"
        'include "_kernels.pxi"\n'
    )
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)

with open(os.path.join(HERE, "fastnorm", "_build_info.py"), "w") as f:
    f.write(
        "# Generated by setup.py at build time, do not edit.\n"
        f"OPENMP = {use_openmp!r}\n"
        f"OPENMP_REASON = {openmp_reason!r}\n"
        f"COMPILE_FLAGS = {' '.join(BASE_FLAGS + OMP_FLAGS)!r}\n"
        f"VARIANTS = {[(m, isa, ' '.join(fl)) for m, isa, fl in variants]!r}\n"
        f"BUILD_MACHINE = {machine!r}\n"
    )

extensions = [
    Extension(
        f"fastnorm.{module}",
        sources=[f"fastnorm/{module}.pyx"],
        # C included by the kernels (the .pxi are tracked by Cython)
        depends=["fastnorm/_panels.h", "fastnorm/simd.h", "fastnorm/rows16.h", "fastnorm/parallel.h",
                 "fastnorm/cpu.h", "fastnorm/pointwise.h", "fastnorm/stdnorm.h"],
        include_dirs=[np.get_include(), os.path.join(HERE, "fastnorm")],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=BASE_FLAGS + OMP_FLAGS + isa_flags,
        extra_link_args=OMP_FLAGS + LINK_FLAGS,
        # parallel.h looks libgomp's GOMP_parallel up with dlsym (libc has it from glibc 2.34)
        libraries=["dl"] if use_openmp and sys.platform.startswith("linux") else [],
    )
    for module, _, isa_flags in variants
] + [
    Extension(
        "fastnorm._buffers",
        sources=["fastnorm/_buffers.pyx"],
        depends=["fastnorm/pages.h"],
        include_dirs=[np.get_include(), os.path.join(HERE, "fastnorm")],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=BASE_FLAGS,
        extra_link_args=LINK_FLAGS,
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
