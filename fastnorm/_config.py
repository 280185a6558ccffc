"""Build and run-time configuration: which kernel build runs, threads, show_config."""
import os
import sys

import numpy as np

from . import _buffers, _build_info, _dtypes
from . import _core

__all__ = ["show_config", "get_config", "kernels", "max_threads"]

# Instruction-set builds, best first: (module, ISA name, minimum CPU level).
_ISA_LEVEL = {"avx512bf16": 5, "avx512": 4, "avx2": 3, "baseline": 0, "native": 0}


def _select_kernels():
    """Import the best kernel build this CPU runs.

    FASTNORM_ISA=baseline|avx2|avx512|avx512bf16 forces a build (an error if it was not
    built or the CPU lacks it)."""
    built = {isa: module for module, isa, _ in _build_info.VARIANTS}
    level = _core.cpu_isa_level()
    forced = os.environ.get("FASTNORM_ISA", "").strip().lower()
    if forced:
        if forced not in built:
            raise ImportError(f"FASTNORM_ISA={forced!r}: this build has {sorted(built)}")
        if _ISA_LEVEL[forced] > level:
            raise ImportError(f"FASTNORM_ISA={forced!r}: this CPU does not support it")
        candidates = [forced]
    else:
        candidates = sorted(built, key=lambda isa: -_ISA_LEVEL[isa])
    for isa in candidates:
        if _ISA_LEVEL[isa] <= level or isa in ("baseline", "native"):
            module = __import__(f"fastnorm.{built[isa]}", fromlist=["_"])
            return isa, module
    raise ImportError("fastnorm: no kernel build fits this CPU")  # pragma: no cover


ISA, kernels = _select_kernels()


def _kernel_modules():
    return [m for name, m in list(sys.modules.items())
            if name.startswith("fastnorm._core") and hasattr(m, "set_bfloat16_typenum")]


def register_bfloat16(typenum):
    """Tell every loaded kernel module bfloat16's type number (load_isa tells
    those loaded later, from fastnorm._dtypes' registered dtype)."""
    for m in _kernel_modules():
        m.set_bfloat16_typenum(typenum)


def available_isas():
    """The instruction-set builds this CPU can run, best first."""
    level = _core.cpu_isa_level()
    return [isa for _, isa, _ in reversed(_build_info.VARIANTS)
            if _ISA_LEVEL[isa] <= level or isa in ("baseline", "native")]


def load_isa(isa):
    """The kernel module of one instruction-set build (for tests and benchmarks)."""
    for module, name, _ in _build_info.VARIANTS:
        if name == isa:
            m = __import__(f"fastnorm.{module}", fromlist=["_"])
            if _dtypes._bf16 is not None:
                m.set_bfloat16_typenum(_dtypes._bf16.num)
            return m
    raise ValueError(f"isa {isa!r} was not built; built: {[v[1] for v in _build_info.VARIANTS]}")


def max_threads():
    """Threads a large call uses with n_threads=None (OMP_NUM_THREADS / threadpoolctl aware)."""
    return kernels.max_threads()


def get_config():
    """The facts show_config prints, as a dict."""
    from . import __version__
    flags = dict((isa, fl) for _, isa, fl in _build_info.VARIANTS)
    return {
        "version": __version__,
        "openmp": bool(_build_info.OPENMP and kernels.have_openmp()),
        "openmp_build_note": _build_info.OPENMP_REASON,
        "serial_fastpath": bool(kernels.serial_fastpath()),
        "max_threads": max_threads(),
        "isa": ISA,
        "isa_flags": flags[ISA] or "(compiler default for the architecture)",
        "isas_built": [v[1] for v in _build_info.VARIANTS],
        "compile_flags": _build_info.COMPILE_FLAGS,
        "output_cache": _buffers.output_cache_info(),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def show_config(file=None):
    """Print fastnorm's version, OpenMP status and thread count, the SIMD
    instruction set the kernels run with, the compile flags and NumPy's version."""
    c = get_config()
    openmp = (f"on ({c['max_threads']} threads by default"
              + ("; one-thread regions skip the runtime" if c["serial_fastpath"] else "") + ")"
              if c["openmp"] else f"OFF, single-threaded ({c['openmp_build_note']})")
    lines = [
        f"fastnorm {c['version']}",
        f"  OpenMP:       {openmp}",
        f"  kernels:      {c['isa']}  [{c['isa_flags']}]   (built: {', '.join(c['isas_built'])})",
        f"  compile flags: {c['compile_flags']}",
        f"  output cache: {c['output_cache'][0] >> 20} MiB held, limit {c['output_cache'][1] >> 20} MiB "
        "(large outputs reuse memory; fastnorm.set_output_cache)",
        f"  NumPy:        {c['numpy']}",
        f"  Python:       {c['python']}",
    ]
    print("\n".join(lines), file=file if file is not None else sys.stdout)
