"""Scalar arguments: one check per kind (eps, momentum, p, dims and axes,
group counts, LRN's window), each raising a TypeError / ValueError that
names the argument.  Every op validates its scalars here."""
import numbers

import numpy as np

__all__ = ["check_eps", "check_momentum", "check_p", "check_dim", "check_groups", "check_lrn_args",
           "check_count"]


def _as_float(v, name):
    """A real number as a Python float; a ValueError naming the argument when
    it does not fit a float64 (an int like 10**400), not the conversion's
    OverflowError."""
    try:
        return float(v)
    except OverflowError:
        raise ValueError(f"{name} must fit a float64, got {v!r}") from None


def check_count(v, name, minimum=1):
    """A count (channels, groups, features, a dimension): an int >= minimum,
    not a bool, a float or a string."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v!r}")
    return int(v)


def check_eps(eps, name="eps"):
    if type(eps) is float and eps >= 0.0:  # fast path
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {eps!r}")
    eps = _as_float(eps, name)
    if not eps >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {eps!r}")
    return eps


def check_momentum(momentum):
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)):
        raise TypeError(f"momentum must be a number, got {momentum!r}")
    return _as_float(momentum, "momentum")


def check_p(p):
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"p must be a real number, got {p!r}")
    p = _as_float(p, "p")
    if not p > 0:  # also NaN
        raise ValueError(f"p must be > 0 (or inf), got {p!r}")
    return p


def check_dim(dim, ndim, name="dim"):
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {dim!r}")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name}={dim} is out of range for an array of {ndim} dimensions")
    return int(dim) % ndim


def check_groups(num_groups, C):
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if C % num_groups:
        raise ValueError(f"num_channels ({C}) must be divisible by num_groups ({num_groups})")
    return C // int(num_groups)


def check_lrn_args(x, size, alpha, beta, k):
    if x.ndim < 3:
        raise ValueError(f"x must have 3 or more dimensions (N, C, *spatial), got shape {x.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size must be an int, got {size!r}")
    if not 1 <= size <= 2**63 - 1:
        raise ValueError(f"size must be in [1, 2**63 - 1], got {size}")
    for name, v in (("alpha", alpha), ("beta", beta), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a real number, got {v!r}")
    return int(size), _as_float(alpha, "alpha"), _as_float(beta, "beta"), _as_float(k, "k")
