"""The typed kernel dispatch: the one kernel build every op calls.

fastnorm._config chose it at import (the best instruction-set build this CPU
runs, or FASTNORM_ISA's); the family modules of fastnorm.functional call
``_dispatch.kernels.<entry>`` at call time, so swapping ``kernels`` (as the
tests do, once per ISA build) reroutes every op at once.
"""
from . import _config

kernels = _config.kernels
