"""Cluster-based normalization (CB-Norm, Faye et al.) and its unsupervised,
Gaussian-mixture form (Mixture Normalization, Kalayeh and Shah 2019).

Both act on (B, D) rows (any leading dims are flattened) with K components
of D features.  The per-component work is small matrix products (BLAS):
the rows against the K components' means and inverse scales, so the cost is
a few passes over x whatever K is.  float16 / bfloat16 are computed in
float32 (cast once: the products need it) and rounded once."""
import numpy as np

from .._args import check_eps
from .._buffers import empty as _empty
from .._dtypes import cast, check_param_dtype, native_order
from .._validation import as_float_array, check_out, into_out, out_aliases, same_shape_input

__all__ = ["cluster_norm", "cluster_norm_backward", "mixture_norm", "mixture_norm_backward"]


def _rows(x):
    x, cdt = as_float_array(x, "x")
    if x.ndim < 1:
        raise ValueError("x must have at least 1 dimension (..., features), got a 0-d array")
    return x, cdt, cast(np.ascontiguousarray(x), cdt).reshape(-1, x.shape[-1])


def _components(p, name, K, D, dtype, cdt):
    if p is None:
        raise TypeError(f"{name} must be an array of shape (K, {D}), got None")
    a = np.asarray(p)
    if a.ndim != 2 or a.shape[1] != D or a.shape[0] < 1 or (K is not None and a.shape[0] != K):
        want = f"({K}, {D})" if K is not None else f"(K, {D}) with K >= 1"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    return cast(np.ascontiguousarray(check_param_dtype(native_order(a), name, dtype, cdt)), cdt)


def _cluster_ids(cluster, B, K):
    c = np.asarray(cluster)
    if c.dtype.kind not in "iu":
        raise TypeError(f"cluster must be an array of integer cluster ids, got dtype {c.dtype}")
    c = c.reshape(-1)
    if c.size != B:
        raise ValueError(f"cluster must have one id per row of x ({B}), got {c.size}")
    if c.size and (c.min() < 0 or c.max() >= K):
        raise ValueError(f"cluster ids must be in [0, {K}) (K = the rows of mean), got ids from {c.min()} to {c.max()}")
    return c.astype(np.intp)


def _finish(y, x, out):
    y = cast(y, x.dtype).reshape(x.shape)
    if out is not None:
        np.copyto(out, y)
        return out
    return y


# ---------------------------------------------------------------- supervised: CB-Norm

def cluster_norm(x, cluster, mean, log_scale, *, out=None, n_threads=None, return_stats=False):
    """Supervised cluster-based normalization (CB-Norm; the reference
    b-faye/cluster-based-norm's SCBNorm): each row of x (..., D) is
    normalized by the learned mean and scale of its cluster,
    y = (x - mean[c]) / (exp(log_scale[c]) + 1e-3), with cluster ids c (one
    per row, in [0, K)) and mean / log_scale of shape (K, D).  The same in
    training and eval (no batch statistics).

    Returns y, or (y,) with return_stats (nothing to save).
    """
    if out_aliases(out, (mean, log_scale)):
        return into_out(out, cluster_norm(x, cluster, mean, log_scale, return_stats=return_stats))
    x, cdt, X = _rows(x)
    B, D = X.shape
    mu = _components(mean, "mean", None, D, x.dtype, cdt)
    K = mu.shape[0]
    ls = _components(log_scale, "log_scale", K, D, x.dtype, cdt)
    c = _cluster_ids(cluster, B, K)
    if out is not None:
        check_out(out, x, x.dtype)
    inv = (1.0 / (np.exp(ls.astype(np.float64)) + 1e-3)).astype(cdt)
    y = _empty(X.shape, cdt)
    np.subtract(X, mu[c], out=y)
    np.multiply(y, inv[c], out=y)
    y = _finish(y, x, out)
    return (y,) if return_stats else y


def _cluster_sums(onehot, c, V):
    """(K, D) sums of V's rows by cluster, as one matrix product; rows with
    a NaN or inf are left out of it and added to their own cluster only (in
    the product, 0 * NaN would reach every cluster)."""
    bad = ~np.isfinite(V).all(axis=1)
    if not bad.any():
        return onehot.T @ V
    sums = onehot.T @ np.where(bad[:, None], 0, V)
    np.add.at(sums, c[bad], V[bad])
    return sums


def cluster_norm_backward(grad_out, x, cluster, mean, log_scale, *, n_threads=None):
    """Gradients of `cluster_norm`: (grad_x, grad_mean, grad_log_scale).
    With s = exp(log_scale) and inv = 1 / (s + 1e-3): grad_x = g inv[c];
    grad_mean[k] = -sum over the rows of cluster k of g inv; grad_log_scale[k]
    = -sum of g (x - mean) inv^2 s."""
    x, cdt, X = _rows(x)
    g = cast(np.ascontiguousarray(same_shape_input(grad_out, "grad_out", x)), cdt).reshape(X.shape)
    B, D = X.shape
    mu = _components(mean, "mean", None, D, x.dtype, cdt)
    K = mu.shape[0]
    ls = _components(log_scale, "log_scale", K, D, x.dtype, cdt)
    c = _cluster_ids(cluster, B, K)
    s = np.exp(ls.astype(np.float64))
    inv = (1.0 / (s + 1e-3)).astype(cdt)
    gx = g * inv[c]
    onehot = np.zeros((B, K), cdt)
    onehot[np.arange(B), c] = 1
    gm = -_cluster_sums(onehot, c, gx)
    gs = -_cluster_sums(onehot, c, gx * (X - mu[c])) * (inv * s).astype(cdt)

    def like(v, p):
        return cast(np.ascontiguousarray(v), native_order(np.asarray(p)).dtype)
    return cast(gx, x.dtype).reshape(x.shape), like(gm, mean), like(gs, log_scale)


# ---------------------------------------------------------------- unsupervised: Mixture Normalization

def _softplus(v):
    return np.logaddexp(0.0, v)


def _sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def _mixture_params(prior_logits, means, var_params, D, dtype, cdt):
    E = _components(means, "means", None, D, dtype, cdt).astype(np.float64)
    K = E.shape[0]
    rho = np.asarray(prior_logits)
    if rho.shape != (K,):
        raise ValueError(f"prior_logits must have shape ({K},) (one per component), got {rho.shape}")
    rho = check_param_dtype(native_order(rho), "prior_logits", dtype, cdt).astype(np.float64)
    nu = _components(var_params, "var_params", K, D, dtype, cdt).astype(np.float64)
    e = np.exp(rho - rho.max())
    return e / e.sum(), E, _softplus(nu), rho, nu


def _posteriors(X, pi, E, V):
    """tau (B, K): the posterior of each component for each row, with the
    full diagonal Gaussian density over the D features (the paper's), by
    products: sum_d (x - E)^2 / V = x^2 @ (1/V)^T - 2 x @ (E/V)^T + sum E^2/V."""
    iv = 1.0 / V
    X64 = X.astype(np.float64, copy=False)
    quad = (X64 * X64) @ iv.T - 2.0 * (X64 @ (E * iv).T) + (E * E * iv).sum(1)
    logp = np.log(pi) - 0.5 * (quad + np.log(2 * np.pi * V).sum(1))
    logp -= logp.max(1, keepdims=True)
    t = np.exp(logp)
    return t / t.sum(1, keepdims=True)


def mixture_norm(x, prior_logits, means, var_params, eps=1e-5, *, out=None, n_threads=None, return_stats=False):
    """Unsupervised cluster-based normalization: Mixture Normalization
    (Kalayeh and Shah 2019) with learned components, the unsupervised form
    of CB-Norm.  K Gaussian components with priors pi = softmax(prior_logits)
    (K,), means (K, D) and variances V = softplus(var_params) (K, D); tau_k(x)
    the posterior of component k for the row x; per row
    y = sum_k tau_k / sqrt(pi_k + eps) * (x - E_k) / sqrt(V_k + eps).

    The posterior is the paper's: one per row, from the full diagonal
    Gaussian density over the D features (normalizing constant included).
    The reference code (b-faye/cluster-based-norm, UCBNorm) computes a
    posterior per feature without the normalizing constant; here the paper
    is followed, as the issue asks where the code departs from it.

    Returns y, or (y, tau) with return_stats (tau (B, K), for the backward).
    """
    if out_aliases(out, (prior_logits, means, var_params)):
        return into_out(out, mixture_norm(x, prior_logits, means, var_params, eps, return_stats=return_stats))
    x, cdt, X = _rows(x)
    eps = check_eps(eps)
    pi, E, V, _, _ = _mixture_params(prior_logits, means, var_params, X.shape[1], x.dtype, cdt)
    if out is not None:
        check_out(out, x, x.dtype)
    tau = _posteriors(X, pi, E, V)
    a = 1.0 / np.sqrt(pi + eps)
    r = 1.0 / np.sqrt(V + eps)
    T = (tau * a).astype(cdt)
    # y = x * (T @ r) - T @ (E r): two (B, K) x (K, D) products
    y = _empty(X.shape, cdt)
    np.matmul(T, r.astype(cdt), out=y)
    np.multiply(y, X, out=y)
    y -= T @ (E * r).astype(cdt)
    y = _finish(y, x, out)
    return (y, tau.astype(cdt).reshape(x.shape[:-1] + (tau.shape[1],))) if return_stats else y


def mixture_norm_backward(grad_out, x, tau, prior_logits, means, var_params, eps=1e-5, *, n_threads=None):
    """Gradients of `mixture_norm` through the posteriors, the priors, the
    means and the variances: (grad_x, grad_prior_logits, grad_means,
    grad_var_params)."""
    x, cdt, X = _rows(x)
    g = same_shape_input(grad_out, "grad_out", x)
    eps = check_eps(eps)
    B, D = X.shape
    pi, E, V, rho, nu = _mixture_params(prior_logits, means, var_params, D, x.dtype, cdt)
    K = E.shape[0]
    t = np.asarray(tau, np.float64).reshape(-1, K) if np.asarray(tau).dtype.kind == "f" else None
    if t is None or t.shape[0] != B:
        raise ValueError(f"tau must be the (..., {K}) posteriors mixture_norm returned")
    # the (B, D) arrays stay in the compute dtype (products on the BLAS); the
    # (B, K) and (K, D) ones, small, in float64
    G = cast(np.ascontiguousarray(g), cdt).reshape(B, D)
    a = 1.0 / np.sqrt(pi + eps)
    r = 1.0 / np.sqrt(V + eps)
    iv = 1.0 / V
    T = t * a
    Tc = T.astype(cdt)
    GX = _empty(X.shape, cdt)
    np.multiply(G, X, out=GX)
    # y = x (T r) - T (E r)
    dT = (GX @ r.T.astype(cdt)).astype(np.float64) - (G @ (E * r).T.astype(cdt))
    da = (dT * t).sum(0)
    dtau = dT * a
    dl = t * (dtau - (t * dtau).sum(1, keepdims=True))  # through the softmax over components
    dlc = dl.astype(cdt)
    TG, TGX = (Tc.T @ G).astype(np.float64), (Tc.T @ GX).astype(np.float64)
    dlX = (dlc.T @ X).astype(np.float64)                 # (K, D)
    np.multiply(X, X, out=GX)                           # GX is free now: x^2
    dlX2 = (dlc.T @ GX).astype(np.float64)
    del GX
    if not (np.isfinite(dlX2).all() and np.isfinite(dlX).all()) and np.isfinite(X).all():
        # x^2 (or the product) beyond float32's range (|x| > 2^64): those
        # two (K, D) products again in float64, where they are representable
        X64 = X.astype(np.float64)
        dlX = dl.T @ X64
        dlX2 = dl.T @ (X64 * X64)
        del X64
    # grad_x = g (T r) - (x (dl / V) - dl (E / V)), from l = log pi - 0.5 sum_d ((x - E)^2 / V + log 2 pi V)
    gx = np.matmul(Tc, r.astype(cdt), out=_empty(X.shape, cdt))
    gx *= G
    m = np.matmul(dlc, iv.astype(cdt), out=_empty(X.shape, cdt))
    m *= X
    gx -= m
    np.matmul(dlc, (E * iv).astype(cdt), out=m)
    gx += m
    del m
    sl = dl.sum(0)                                      # (K,)
    gE = (dlX - sl[:, None] * E) * iv - r * TG
    dr = TGX - E * TG
    gV = 0.5 * iv * iv * (dlX2 - 2 * E * dlX + E * E * sl[:, None]) - 0.5 * iv * sl[:, None] - 0.5 * r ** 3 * dr
    dpi = -0.5 * a ** 3 * da + sl / pi
    grho = pi * (dpi - (pi * dpi).sum())
    gnu = gV * _sigmoid(nu)

    def like(v, p):
        return cast(np.ascontiguousarray(v), native_order(np.asarray(p)).dtype)
    return (cast(gx, x.dtype).reshape(x.shape), like(grho, prior_logits), like(gE, means),
            like(gnu, var_params))
