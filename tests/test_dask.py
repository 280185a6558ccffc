"""fastnorm.dask: every op equals the in-memory op whatever the chunking; the
graph grows with the number of chunks; the threaded scheduler, a real
LocalCluster with worker processes, and an out-of-core run."""
import os
import sys
import warnings

import numpy as np
import pytest

import fastnorm
from ml_dtypes import bfloat16

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import fastnorm.dask as fd  # noqa: E402

RNG = np.random.default_rng(1234)

CHUNKINGS_2D = [(-1, -1), (7, -1), (13, 3), (1, 2), (50, 1)]


def _close(a, b, dtype, scale=1.0):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b))
    tol = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 2e-5}.get(np.dtype(dtype), 3e-2)
    ok = ~np.isnan(a)
    np.testing.assert_allclose(a[ok], b[ok], rtol=tol, atol=tol * scale)


@pytest.fixture(autouse=True)
def _sync_scheduler():
    with dask.config.set(scheduler="synchronous"):
        yield


def _matrix(shape, dtype, nan=False, offset=0.0):
    x = (RNG.standard_normal(shape) * 3 + offset).astype(dtype)
    if nan:
        x[RNG.random(shape) < 0.05] = np.nan
        x[:, 0] = np.nan  # a feature of NaN only
    return x


# ---------------------------------------------------------------- reductions

@pytest.mark.parametrize("chunks", CHUNKINGS_2D)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, bfloat16])
@pytest.mark.parametrize("nan", [False, True])
def test_standardize_equals_in_memory(chunks, dtype, nan):
    x = _matrix((50, 6), dtype, nan, offset=1e3)
    X = da.from_array(x, chunks=chunks)
    z, m, s = fd.standardize(X, return_stats=True)
    z0, m0, s0 = fastnorm.standardize(x, return_stats=True)
    assert isinstance(z, da.Array) and z.dtype == x.dtype
    # the statistics of 16/32-bit data: float32-level agreement (the kernels'
    # tiles accumulate in float32, the merges in float64)
    sdt = np.float64 if dtype == np.float64 else np.float32
    _close(m.compute(), m0, sdt, 1e3)
    _close(s.compute(), s0, sdt)
    _close(z.compute(), z0, dtype, 3)


@pytest.mark.parametrize("chunks", [(4, 3, 2), (-1, 1, -1), (2, -1, 1)])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("ddof", [0, 1])
def test_standardize_any_axis(chunks, axis, ddof):
    x = _matrix((8, 5, 4), np.float32)
    z, m, s = fd.standardize(da.from_array(x, chunks=chunks), axis=axis, ddof=ddof, return_stats=True)
    z0, m0, s0 = fastnorm.standardize(x, axis=axis, ddof=ddof, return_stats=True)
    assert m.shape == m0.shape
    _close(m.compute(), m0, np.float32)
    _close(s.compute(), s0, np.float32)
    _close(z.compute(), z0, np.float32, 3)


@pytest.mark.parametrize("chunks", CHUNKINGS_2D)
@pytest.mark.parametrize("with_mean,with_std,fitted", [(True, True, True), (True, False, True),
                                                       (False, True, True), (False, False, True),
                                                       (True, True, False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_standardize_backward_equals_in_memory(chunks, with_mean, with_std, fitted, dtype):
    x = _matrix((50, 6), dtype)
    x[:, 3] = 2.5  # a constant feature
    g = RNG.standard_normal(x.shape).astype(dtype)
    _, m, s = fastnorm.standardize(x, return_stats=True, ddof=1)
    kw = dict(ddof=1, with_mean=with_mean, with_std=with_std, fitted=fitted)
    d = fd.standardize_backward(da.from_array(g, chunks=chunks), da.from_array(x, chunks=chunks), m, s, **kw)
    d0 = fastnorm.standardize_backward(g, x, m, s, **kw)
    _close(d.compute(), d0, dtype, 1)


@pytest.mark.parametrize("chunks", CHUNKINGS_2D)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, bfloat16])
@pytest.mark.parametrize("nan", [False, True])
def test_min_max_scale_and_backward(chunks, dtype, nan):
    x = _matrix((50, 6), dtype, nan)
    x[:, 2] = 1.0  # constant: min == max
    x[[3, 40], 4] = x[:, 4].max()  # the max twice: the first row gets the term
    X = da.from_array(x, chunks=chunks)
    y, mn, mx = fd.min_max_scale(X, feature_range=(-1, 2), return_stats=True)
    y0, mn0, mx0 = fastnorm.min_max_scale(x, feature_range=(-1, 2), return_stats=True)
    _close(mn.compute(), mn0, np.float64)  # exact: a min of x's values is one of them
    _close(mx.compute(), mx0, np.float64)
    _close(y.compute(), y0, dtype, 3)
    g = RNG.standard_normal(x.shape).astype(dtype)
    for fitted in (True, False):
        d = fd.min_max_scale_backward(da.from_array(g, chunks=chunks), X, mn0, mx0, feature_range=(-1, 2),
                                      fitted=fitted)
        d0 = fastnorm.min_max_scale_backward(g, x, mn0, mx0, feature_range=(-1, 2), fitted=fitted)
        _close(d.compute(), d0, dtype, 10)


def test_given_statistics_are_lazy_or_numpy():
    x = _matrix((30, 4), np.float64)
    X = da.from_array(x, chunks=(7, 2))
    m, s = X.mean(axis=0), X.std(axis=0)
    z = fd.standardize(X, mean=m, std=s)
    _close(z.compute(), (x - x.mean(0)) / x.std(0), np.float64, 3)
    z2 = fd.standardize(X, mean=x.mean(0), std=x.std(0))
    _close(z2.compute(), z.compute(), np.float64, 3)


def test_moments_merge_is_accurate_with_a_large_offset():
    x = (RNG.standard_normal((4000, 3)) + 1e6).astype(np.float32)
    count, mean, var = fd.compute_moments(da.from_array(x, chunks=(97, 2)))
    ref = x.astype(np.float64)
    assert np.array_equal(count, np.full(3, 4000.0))
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(var, ref.var(0), rtol=1e-6)


def test_moments_near_the_float64_limit_do_not_overflow():
    # column 1: squares of the values beyond the float64 range, and count * var too
    scale, offset = np.array([1e152, 1e153]), np.array([0.0, 1e300])
    x = RNG.standard_normal((4000, 2)) * scale + offset
    count, mean, var = fd.compute_moments(da.from_array(x, chunks=(333, 1)))
    assert np.isfinite(mean).all() and np.isfinite(var).all()
    unit = (x - offset) / scale
    np.testing.assert_allclose((mean - offset) / scale, unit.mean(0), atol=1e-9)
    np.testing.assert_allclose(var / scale ** 2, unit.var(0), rtol=1e-9)


def test_two_ops_in_one_graph_do_not_share_keys():
    x = RNG.standard_normal((60, 4))
    X = da.from_array(x, chunks=(10, 2))
    both = fd.feature_affine(X, 1.0, 2.0) + fd.feature_affine(X, 0.0, 10.0)
    np.testing.assert_allclose(both.compute(), (x - 1) * 2 + x * 10, rtol=1e-12)
    rows = fd.layer_norm(X, 4) + fd.layer_norm(X * 3, 4)
    np.testing.assert_allclose(rows.compute(), fastnorm.layer_norm(x, 4) + fastnorm.layer_norm(x * 3, 4),
                               rtol=1e-12)
    m = fd.feature_moments(X)[1] + fd.feature_moments(X * 2)[1]
    np.testing.assert_allclose(m.compute(), 3 * x.mean(0), rtol=1e-12)


def test_graph_grows_with_chunk_count_not_chunk_size():
    def tasks(n_rows, chunk):
        X = da.zeros((n_rows, 8), chunks=(chunk, 8), dtype=np.float32)
        return len(dict(fd.standardize(X).__dask_graph__()))
    # the same number of chunks, 100x larger chunks: the same graph
    assert tasks(1000, 100) == tasks(100_000, 10_000)
    # 4x the chunks: between 2x and 6x the tasks (a task per chunk and a tree)
    small, large = tasks(1000, 100), tasks(4000, 100)
    assert 2 * small < large < 6 * small


# ---------------------------------------------------------------- BatchNorm

@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("chunks", [(3, 2), (1, -1), (-1, 1), (5, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, bfloat16])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_train_eval_backward(channel_axis, chunks, dtype, affine):
    shape = (16, 5, 4, 3) if channel_axis == 1 else (16, 4, 3, 5)
    cax = 1 if channel_axis == 1 else 3
    x = RNG.standard_normal(shape).astype(dtype)
    full = [-1] * 4
    full[0], full[cax] = chunks
    full[2] = 2  # a chunked spatial axis: brought to one chunk
    X = da.from_array(x, chunks=tuple(full))
    w = RNG.standard_normal(5).astype(dtype) if affine else None
    b = RNG.standard_normal(5).astype(dtype) if affine else None
    rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, invstd = fd.batch_norm(X, rm, rv, w, b, training=True, momentum=0.3,
                                    channel_axis=channel_axis, return_stats=True)
    y0, mean0, invstd0 = fastnorm.batch_norm(x, rm0, rv0, w, b, training=True, momentum=0.3,
                                             channel_axis=channel_axis, return_stats=True)
    # the running statistics are updated once, at the call, as in memory
    np.testing.assert_allclose(rm, rm0, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv, rv0, rtol=1e-6, atol=1e-7)
    y.compute()
    np.testing.assert_allclose(rm, rm0, rtol=1e-6, atol=1e-7)
    _close(mean, mean0, np.float32)
    _close(invstd, invstd0, np.float32)
    _close(y.compute(), y0, dtype, 3)
    ye = fd.batch_norm(X, rm, rv, w, b, training=False, channel_axis=channel_axis)
    _close(ye.compute(), fastnorm.batch_norm(x, rm, rv, w, b, channel_axis=channel_axis), dtype, 3)
    g = RNG.standard_normal(shape).astype(dtype)
    for training in (True, False):
        dx, gw, gb = fd.batch_norm_backward(da.from_array(g, chunks=(4, -1, -1, -1)), X, mean0, invstd0, w, b,
                                            training=training, channel_axis=channel_axis)
        dx0, gw0, gb0 = fastnorm.batch_norm_backward(g, x, mean0, invstd0, w, b, training=training,
                                                     channel_axis=channel_axis)
        _close(dx.compute(), dx0, dtype, 3)
        if affine:
            _close(gw.compute(), gw0, dtype, 30)
            _close(gb.compute(), gb0, dtype, 30)
        else:
            assert gw is None and gb is None and gw0 is None and gb0 is None


def test_batch_norm_errors():
    X = da.zeros((1, 3), chunks=1, dtype=np.float32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fd.batch_norm(X, None, None, training=True)
    with pytest.raises(ValueError, match="required when training=False"):
        fd.batch_norm(da.zeros((4, 3), dtype=np.float32), None, None)
    with pytest.raises(ValueError, match="channel_axis"):
        fd.batch_norm(da.zeros((4, 3, 2), dtype=np.float32), None, None, training=True, channel_axis=0)


# ---------------------------------------------------------------- blockwise ops

W8 = RNG.standard_normal(8).astype(np.float32)
B8 = RNG.standard_normal(8).astype(np.float32)
W6 = RNG.standard_normal(6).astype(np.float32)
B6 = RNG.standard_normal(6).astype(np.float32)

# (name, dask call, in-memory call, input shape); chunkings below split every axis
BLOCKWISE = [
    ("layer_norm", lambda m, x: m.layer_norm(x, 8, W8, B8), lambda x: fastnorm.layer_norm(x, 8, W8, B8), (10, 3, 8)),
    ("layer_norm_2d", lambda m, x: m.layer_norm(x, (3, 8)), lambda x: fastnorm.layer_norm(x, (3, 8)), (10, 3, 8)),
    ("rms_norm", lambda m, x: m.rms_norm(x, 8, W8), lambda x: fastnorm.rms_norm(x, 8, W8), (10, 3, 8)),
    ("normalize", lambda m, x: m.normalize(x, p=3.0, dim=1), lambda x: fastnorm.normalize(x, p=3.0, dim=1),
     (10, 3, 8)),
    ("add_layer_norm", lambda m, x: m.add_layer_norm(x, x * 2, 8, W8, B8),
     lambda x: fastnorm.add_layer_norm(x, x * 2, 8, W8, B8), (10, 3, 8)),
    ("add_rms_norm", lambda m, x: m.add_rms_norm(x, x + 1, 8, W8),
     lambda x: fastnorm.add_rms_norm(x, x + 1, 8, W8), (10, 3, 8)),
    ("group_norm", lambda m, x: m.group_norm(x, 3, W6, B6), lambda x: fastnorm.group_norm(x, 3, W6, B6),
     (5, 6, 4, 3)),
    ("group_norm_cl", lambda m, x: m.group_norm(x, 2, W6, B6, channel_axis=-1),
     lambda x: fastnorm.group_norm(x, 2, W6, B6, channel_axis=-1), (5, 4, 3, 6)),
    ("instance_norm", lambda m, x: m.instance_norm(x, W6, B6),
     lambda x: fastnorm.instance_norm(x, weight=W6, bias=B6), (5, 6, 4, 3)),
    ("instance_norm_cl", lambda m, x: m.instance_norm(x, W6, B6, channel_axis=-1),
     lambda x: fastnorm.instance_norm(x, weight=W6, bias=B6, channel_axis=-1), (5, 4, 3, 6)),
    ("filter_response_norm", lambda m, x: m.filter_response_norm(x, W6, B6, B6),
     lambda x: fastnorm.filter_response_norm(x, W6, B6, B6), (5, 6, 4, 3)),
    ("local_response_norm", lambda m, x: m.local_response_norm(x, 3, channel_axis=-1),
     lambda x: fastnorm.local_response_norm(x, 3, channel_axis=-1), (5, 4, 3, 6)),
]


@pytest.mark.parametrize("name,dask_call,np_call,shape", BLOCKWISE, ids=[b[0] for b in BLOCKWISE])
@pytest.mark.parametrize("split", [1, 2, 3])
def test_blockwise_equals_in_memory(name, dask_call, np_call, shape, split):
    x = RNG.standard_normal(shape).astype(np.float32)
    X = da.from_array(x, chunks=tuple(max(1, d // split) for d in shape))
    got = dask_call(fd, X)
    want = np_call(x)
    if isinstance(want, tuple):
        for g, w in zip(got, want):
            assert isinstance(g, da.Array)
            np.testing.assert_array_equal(g.compute(), w)
    else:
        assert isinstance(got, da.Array)
        np.testing.assert_array_equal(got.compute(), want)


def test_every_registry_op_has_a_dask_form():
    from fastnorm._registry import OPS
    for op in OPS:
        if op.name in fd.NOT_DISTRIBUTED:
            assert fd.NOT_DISTRIBUTED[op.name]
            continue
        assert op.name in fd.__all__, op.name
        assert callable(getattr(fd, op.name))
        if op.name == "batch_norm" or op.family == "features":
            assert op.backward_name in fd.__all__  # the backwards whose sums span chunks


def test_blockwise_keeps_the_free_axes_chunked():
    X = da.zeros((1000, 64), chunks=(100, 16), dtype=np.float32)
    y = fd.layer_norm(X, 64)
    assert y.chunks[1] == (64,)          # the normalized axis in one chunk
    assert len(y.chunks[0]) >= 1
    z = fd.instance_norm(da.zeros((8, 6, 5, 5), chunks=(2, 3, 5, 5), dtype=np.float32))
    assert z.chunks[:2] == ((2, 2, 2, 2), (3, 3))  # samples and channels stay chunked


def test_input_errors():
    with pytest.raises(TypeError, match="dask.array"):
        fd.standardize([[1.0, 2.0]])
    with pytest.raises(TypeError, match="floating-point"):
        fd.standardize(da.zeros((3, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="ddof"):
        fd.standardize(da.zeros((3, 2)), ddof=3)
    with pytest.raises(ValueError, match="mean and std"):
        fd.standardize(da.zeros((3, 2)), mean=np.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        fd.standardize(da.zeros((3, 2)), mean=np.zeros(3), std=np.ones(3))
    with pytest.raises(ValueError, match="grad_out"):
        fd.standardize_backward(da.zeros((3, 3)), da.zeros((3, 2)), np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="feature_range"):
        fd.min_max_scale(da.zeros((3, 2)), feature_range=(1, 0))


# ---------------------------------------------------------------- schedulers

def test_threaded_scheduler_many_tasks_at_once():
    x = _matrix((20_000, 16), np.float32, nan=True, offset=50)
    X = da.from_array(x, chunks=(1000, 8))
    with dask.config.set(scheduler="threads", num_workers=4):
        z, m, s = dask.compute(*fd.standardize(X, return_stats=True))
        mn, mx = fd.compute_minmax(X)
    z0, m0, s0 = fastnorm.standardize(x, return_stats=True)
    _close(m, m0, np.float32, 50)
    _close(s, s0, np.float32)
    _close(z, z0, np.float32, 3)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's all-NaN column warning
        want_min, want_max = np.nanmin(x, 0), np.nanmax(x, 0)
    _close(mn, want_min, np.float32)
    _close(mx, want_max, np.float32)


distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster_client():
    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       memory_limit="400MiB", dashboard_address=None,
                                       silence_logs=40)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _worker_pids(client):
    return sorted(client.run(os.getpid).values())


def test_local_cluster_matches_in_memory(cluster_client):
    x = _matrix((5000, 12), np.float32, nan=True, offset=10)
    X = da.from_array(x, chunks=(512, 5))
    z, m, s = dask.compute(*fd.standardize(X, return_stats=True))
    z0, m0, s0 = fastnorm.standardize(x, return_stats=True)
    _close(m, m0, np.float32, 10)
    _close(s, s0, np.float32)
    _close(z, z0, np.float32, 3)
    xb = RNG.standard_normal((64, 6, 5, 5)).astype(np.float32)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    rm0, rv0 = rm.copy(), rv.copy()
    y = fd.batch_norm(da.from_array(xb, chunks=(10, 3, 5, 5)), rm, rv, training=True).compute()
    _close(y, fastnorm.batch_norm(xb, rm0, rv0, training=True), np.float32, 3)
    np.testing.assert_allclose(rm, rm0, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- out of core

OOC_ROWS, OOC_F, OOC_BLOCKS = 4096, 512, 320     # 8 MiB chunks, 2.5 GiB in all (float32)


def _ooc_block(block_id=None):
    rng = np.random.default_rng([7, block_id[0]])
    x = rng.standard_normal((OOC_ROWS, OOC_F), dtype=np.float32)
    x *= np.float32(2.0)
    x += np.float32(100.0) + np.arange(OOC_F, dtype=np.float32)
    return x


def test_out_of_core_fit_and_standardize(cluster_client):
    """A dataset over 3x the memory limit of the two workers together, generated
    chunk by chunk on the workers, fitted and standardized without a worker
    being restarted; the statistics match a float64 NumPy pass chunk by chunk."""
    from fastnorm.sklearn import StandardScaler

    workers = cluster_client.scheduler_info()["workers"]
    limit = sum(w["memory_limit"] for w in workers.values())
    X = da.map_blocks(_ooc_block, dtype=np.float32, chunks=((OOC_ROWS,) * OOC_BLOCKS, (OOC_F,)),
                      meta=np.empty((0, 0), np.float32))
    assert X.nbytes > 3 * limit
    pids = _worker_pids(cluster_client)
    scaler = StandardScaler().fit(X)
    z = scaler.transform(X)
    zmean, zsq = dask.compute(z.mean(axis=0, dtype=np.float64), (z.astype(np.float64) ** 2).mean(axis=0))
    assert _worker_pids(cluster_client) == pids  # no worker was killed and restarted
    # the reference: float64 moments chunk by chunk in this process, merged exactly
    n, s1, s2 = 0, np.zeros(OOC_F), np.zeros(OOC_F)
    shift = 100.0 + np.arange(OOC_F)
    for i in range(OOC_BLOCKS):
        b = _ooc_block(block_id=(i, 0)).astype(np.float64) - shift
        n += b.shape[0]
        s1 += b.sum(0)
        s2 += (b * b).sum(0)
    mean = s1 / n
    var = s2 / n - mean * mean
    assert scaler.n_samples_seen_ == n
    np.testing.assert_allclose(scaler.mean_, mean + shift, rtol=1e-12)
    np.testing.assert_allclose(scaler.var_, var, rtol=1e-5)
    np.testing.assert_allclose(zmean, 0.0, atol=1e-5)
    np.testing.assert_allclose(zsq, 1.0, rtol=1e-4)


def test_bfloat16_first_seen_in_a_task():
    """A fresh process whose first bfloat16 array reaches fastnorm inside a
    Dask task (as in a worker) still gets the native bfloat16 kernels."""
    import subprocess
    code = (
        "import numpy as np, dask, dask.array as da, fastnorm.dask as fd, fastnorm\n"
        "import ml_dtypes\n"
        "x = np.random.default_rng(0).standard_normal((8, 3, 2, 2)).astype(ml_dtypes.bfloat16)\n"
        "with dask.config.set(scheduler='synchronous'):\n"
        "    y = fd.batch_norm(da.from_array(x, chunks=(3, 3, 2, 2)), None, None, training=True).compute()\n"
        "ref = fastnorm.batch_norm(x, None, None, training=True)\n"
        "assert y.dtype == x.dtype and np.allclose(y.astype(float), ref.astype(float), atol=0.05)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_newer_members_match_in_memory(rng):
    """dynamic_tanh and ada_norm blockwise, batch_renorm with its statistics
    merged across chunks: the in-memory results and running updates."""
    x = (rng.standard_normal((40, 6, 5)) * 2 + 1).astype(np.float32)
    X = da.from_array(x, chunks=(7, 3, 2))
    w = (1 + 0.2 * rng.standard_normal(5)).astype(np.float32)
    np.testing.assert_array_equal(fd.dynamic_tanh(X, 0.6, w, w).compute(), fastnorm.dynamic_tanh(x, 0.6, w, w))
    w6 = w[:1].repeat(6)
    np.testing.assert_array_equal(fd.dynamic_tanh(X, 0.6, w6, channel_axis=1).compute(),
                                  fastnorm.dynamic_tanh(x, 0.6, w6, channel_axis=1))
    np.testing.assert_array_equal(fd.ada_norm(X, (6, 5), 2.0).compute(), fastnorm.ada_norm(x, (6, 5), 2.0))
    rm, rv = np.full(6, 0.5, np.float32), np.full(6, 2.0, np.float32)
    rm2, rv2 = rm.copy(), rv.copy()
    y, *stats = fd.batch_renorm(X, rm, rv, w6, w6, True, r_max=1.2, d_max=0.3, return_stats=True)
    want, *want_stats = fastnorm.batch_renorm(x, rm2, rv2, w6, w6, True, r_max=1.2, d_max=0.3, return_stats=True)
    np.testing.assert_allclose(y.compute(), want, rtol=1e-5, atol=1e-5)
    for a, b in zip(stats + [rm, rv], want_stats + [rm2, rv2]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
