"""Phase-2 machinery: separable pooling equals unfold, fused chunked sweeps equal the lazy per-statistic path,
and every aggregator reads exactly the statistics it declares. The PyTorch path only: the native kernels, which
replace the chunked sweeps where they load, are compared with it in ``test_native.py``."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import factored, signed

import extagg
from extagg import native
from extagg.phase2 import Dense, Factored, PatchGeometry, Scaled, Store, depthwise, pooling, sweeps
from extagg.phase2.pooling import pad_zeros, pool_extreme, pool_sum
from extagg.phase2.stats import as_stat

STATS = ("sum", "sq", "signed", "signed_sq", "extremes", "min_abs")
PROFILES = list(itertools.product([-1, 0, 1], repeat=2))


def windows(x, k, stride, dilation):
    """(N, C, k*k, L) patches of an already padded map, by unfold: the definition the pools must match."""
    n, c = x.shape[:2]
    return F.unfold(x, k, dilation=dilation, stride=stride).reshape(n, c, k[0] * k[1], -1)


@st.composite
def padded_maps(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride, dilation = (draw(st.integers(1, 3)),) * 2, (draw(st.integers(1, 2)),) * 2
    h, w = draw(st.integers(5, 9)), draw(st.integers(5, 9))
    seed = draw(st.integers(0, 999))
    x = torch.randn(2, draw(st.integers(1, 3)), h, w, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    return x, k, stride, dilation


@given(case=padded_maps(), small=st.booleans())
def test_pools_equal_reductions_of_the_unfolded_windows(case, small, monkeypatch_module):
    x, k, stride, dilation = case
    monkeypatch_module.setattr(pooling, "SMALL_MAP", 1 << 30 if small else 0)  # slices, or the convolution
    cols = windows(x, k, stride, dilation)
    oh = (x.shape[-2] - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
    shape = (*x.shape[:2], oh, -1)
    torch.testing.assert_close(pool_sum(x, k, stride, dilation), cols.sum(2).reshape(shape))
    assert torch.equal(pool_extreme(x, k, stride, dilation, largest=True), cols.amax(2).reshape(shape))
    assert torch.equal(pool_extreme(x, k, stride, dilation, largest=False), cols.amin(2).reshape(shape))


@given(pad=st.tuples(*[st.integers(0, 3)] * 4), h=st.integers(1, 5), w=st.integers(1, 5))
def test_pad_zeros_equals_constant_padding(pad, h, w):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    assert torch.equal(pad_zeros(x, pad), F.pad(x, pad))


def test_sum_pool_with_implicit_zero_padding_equals_padding_first():
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    want = pool_sum(F.pad(x, (2, 2, 1, 1)), (3, 5), (1, 1), (1, 1))
    torch.testing.assert_close(pool_sum(x, (3, 5), (1, 1), (1, 1), padding=(1, 2)), want)


def test_pool_and_padding_counter_cases():
    """Counter-cases of the three equivalences above, through the same functions: the pools of a mirrored map,
    the other extreme, zero padding with its sides swapped, and the implicit padding against a map padded
    one column differently (same output shape) are all refused by the same comparisons."""
    x = torch.randn(2, 3, 7, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    k, stride, dilation = (2, 3), (1, 2), (1, 1)
    cols = windows(x, k, stride, dilation)
    shape = (2, 3, 6, -1)
    assert pool_sum(x, k, stride, dilation).shape == cols.sum(2).reshape(shape).shape
    with pytest.raises(AssertionError):
        torch.testing.assert_close(pool_sum(x.flip(-1), k, stride, dilation), cols.sum(2).reshape(shape))
    assert not torch.equal(pool_extreme(x, k, stride, dilation, largest=False), cols.amax(2).reshape(shape))
    assert not torch.equal(pool_extreme(x.flip(-2), k, stride, dilation, largest=True), cols.amax(2).reshape(shape))
    assert not torch.equal(pad_zeros(x, (1, 2, 0, 3)), F.pad(x, (2, 1, 3, 0)))
    # a one-row window (k = 1 along an axis) is its own extreme: the pool must not read a second view
    one_row = windows(x, (1, 3), (1, 1), (1, 1)).amax(2).reshape(2, 3, 7, -1)
    assert torch.equal(pool_extreme(x, (1, 3), (1, 1), (1, 1), largest=True), one_row)
    # each axis reads its own kernel, stride and dilation (the property above draws equal ones)
    k, stride, dilation = (2, 3), (2, 1), (2, 1)
    cols = windows(x, k, stride, dilation)
    shape = (2, 3, (7 - 2 - 1) // 2 + 1, -1)
    torch.testing.assert_close(pool_sum(x, k, stride, dilation), cols.sum(2).reshape(shape))
    assert torch.equal(pool_extreme(x, k, stride, dilation, largest=True), cols.amax(2).reshape(shape))
    assert torch.equal(pool_extreme(x, k[::-1], stride[::-1], dilation[::-1], largest=False),
                       windows(x, k[::-1], stride[::-1], dilation[::-1]).amin(2).reshape(2, 3, 5, -1))
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    want = pool_sum(F.pad(x, (1, 3, 1, 1)), (3, 5), (1, 1), (1, 1))
    got = pool_sum(x, (3, 5), (1, 1), (1, 1), padding=(1, 2))
    assert got.shape == want.shape
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, want)


@pytest.fixture(autouse=True, scope="module")
def pytorch_path():
    with native.enabled(False):
        yield


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _lazy_and_fused(make, names, chunk, monkeypatch):
    """Statistics of two equal contributions: one read lazily, one prefetched in chunks of ``chunk`` elements."""
    lazy = make()
    want = {name: lazy.stat(name) for name in names}
    monkeypatch.setattr(sweeps, "CHUNK", chunk)
    fused = make()
    fused.prefetch(list(names))
    return want, {name: fused.stat(name) for name in names}


def _assert_same(want, got):
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, msg=name)


@settings(max_examples=60)
@given(c=factored(), names=st.lists(st.sampled_from(STATS), min_size=1, unique=True), chunk=st.sampled_from([1, 7, 1 << 19]))
def test_fused_factored_statistics_equal_lazy_ones(c, names, chunk, monkeypatch_module):
    """Every form of Factored (ungrouped, grouped, depthwise), any set of statistics, one to many chunks."""
    def make():
        return Factored(c.g, c.x, c.geometry, store=Store(pinned=(c.g, c.x)))  # as the evaluator shares them

    monkeypatch_module.setattr(sweeps, "CHUNK", 1 << 19)
    want, got = _lazy_and_fused(make, names, chunk, monkeypatch_module)
    _assert_same(want, got)


@settings(max_examples=40)
@given(seed=st.integers(0, 999), names=st.lists(st.sampled_from(STATS), min_size=1, unique=True),
       chunk=st.sampled_from([1, 9, 1 << 19]), data=st.data())
def test_fused_dense_and_scaled_statistics_equal_lazy_ones(seed, names, chunk, data, monkeypatch_module):
    gen = torch.Generator().manual_seed(seed)
    x = signed(data.draw, torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64))
    w = signed(data.draw, torch.randn(2, 2, 5, generator=gen, dtype=torch.float64))
    values = signed(data.draw, torch.randn(2, 2, 5, 3, 4, generator=gen, dtype=torch.float64))
    for make in (lambda: Dense(values), lambda: Scaled(x, w)):
        monkeypatch_module.setattr(sweeps, "CHUNK", 1 << 19)
        want, got = _lazy_and_fused(make, names, chunk, monkeypatch_module)
        _assert_same(want, got)
    # and Scaled's statistics are those of its materialised values
    _assert_same({n: Dense(Scaled(x, w).values).stat(n) for n in names}, {n: Scaled(x, w).stat(n) for n in names})


def test_the_fused_sweep_detects_a_wrong_statistic(monkeypatch):
    """The comparison above can fail: a sweep that drops the last chunk gives different statistics."""
    g, x = torch.randn(1, 1, 6, 4, 4, dtype=torch.float64), torch.randn(1, 6, 4, 4, dtype=torch.float64)
    want = Factored(g, x, PatchGeometry.identity(3, groups=6)).stat("sum")
    monkeypatch.setattr(sweeps, "CHUNK", 16 * 2)  # one block per chunk
    real = depthwise.one_per_block_stats

    def drop_last(g, x, blocks, *args, **kwargs):
        return real(g[:, :, :-1], x[:, :-1], blocks - 1, *args, **kwargs)

    monkeypatch.setattr(extagg.phase2.backend, "one_per_block_stats", drop_last)
    broken = Factored(g, x, PatchGeometry.identity(3, groups=6))
    broken.prefetch(["sum"])
    assert not torch.allclose(broken.stat("sum"), want)


def test_scaled_statistics_counter_case():
    """Counter-case of Scaled's statistics against its materialised values: a Scaled whose weights are permuted
    over the channels gives other statistics than the materialised original."""
    gen = torch.Generator().manual_seed(4)
    x, w = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64), torch.randn(2, 2, 5, generator=gen,
                                                                                     dtype=torch.float64)
    want = Dense(Scaled(x, w).values)
    for name in ("sum", "sq", "extremes"):
        torch.testing.assert_close(Scaled(x, w).stat(name), want.stat(name), rtol=1e-10, atol=1e-12)
        with pytest.raises(AssertionError):
            torch.testing.assert_close(Scaled(x, w.roll(1, -1)).stat(name), want.stat(name), rtol=1e-10,
                                       atol=1e-12)


class _Spy(Dense):
    """Records which statistics a closed form reads (through ``stat``, the one way a closed form reads them)."""

    def __init__(self, values):
        super().__init__(values)
        self.read = set()

    def stat(self, stat):
        self.read.add(as_stat(stat))
        return super().stat(stat)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_aggregator_reads_what_it_declares(registry, builtin_aggregator, profile):
    """``reads`` must cover what ``closed_form`` uses, or a sweep would prefetch too little (and silently
    recompute); here both sides are checked for every registered aggregator that declares it."""
    name = builtin_aggregator
    spec = registry.aggregators[name]
    if spec.reads is None or spec.closed_form is None:
        pytest.skip(f"{name} declares no reads")
    c = _Spy(torch.randn(1, 1, 4, 2, 2, dtype=torch.float64))
    spec.closed_form(c, profile)
    assert c.read <= {as_stat(r) for r in spec.reads(profile)}, (c.read, spec.reads(profile))


def test_a_reads_declaration_that_leaves_out_a_statistic_is_caught(registry):
    """Counter-case of the check above: the built-in closed forms read statistics, so a declaration that leaves
    one out (here: an empty one) fails the same subset check. (The spy once overrode a method the forms no longer
    call, so it recorded nothing and the check above could not fail.)"""
    for name in ("sum", "norm", "max"):
        c = _Spy(torch.randn(1, 1, 4, 2, 2, dtype=torch.float64))
        registry.aggregators[name].closed_form(c, (1, 0))
        assert c.read and not c.read <= set(), name


def test_side_statistics_are_computed_once_and_full_size_fresh_ones_left_to_the_caller():
    """A side statistic is cached where it is reduced along a real axis (a second read is the same tensor);
    along an axis of one entry, the full-size fresh ones (squares, min |x|) are handed to the caller to pool and
    cache, not kept twice. Guards the caching test in ``SideStats.get``."""
    from extagg.phase2 import Side

    many = Dense(torch.randn(1, 1, 4, 3, 3, dtype=torch.float64)).side()
    for side in (Side.SUM, Side.SQ, Side.MAX):
        first = many.get(side)
        assert many.known(side) and many.get(side) is first
    one = Dense(torch.randn(1, 1, 1, 3, 3, dtype=torch.float64)).side()
    assert one.single
    one.get(Side.SQ)
    one.get(Side.SUM)
    assert not one.known(Side.SQ) and one.known(Side.SUM)


def test_the_depthwise_pytorch_path_writes_into_a_buffer_of_the_broadcast_shape():
    """``fold`` multiplies broadcast terms into a scratch buffer of their broadcast shape: no output is resized
    behind the caller's back (PyTorch warns when it must), and the statistics equal the materialised ones.
    Guards the buffer shape in ``sweeps.fold`` (a smaller one still gives the right numbers, with a resize)."""
    import warnings

    g = torch.randn(2, 2, 6, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x = torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    c = Factored(g, x, PatchGeometry.identity(3, groups=6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c.prefetch(list(STATS))
        got = {name: c.stat(name) for name in STATS}
    want = Dense(c.dense().values)
    for name in ("sum", "sq", "extremes"):
        torch.testing.assert_close(got[name], want.stat(name), rtol=1e-10, atol=1e-12, msg=name)


def test_a_contribution_without_entries_sums_to_zero_on_the_chunked_path():
    """D = 0 entries: the chunked sweep's sums are the empty sums (zeros), as torch's own reduction gives, and not
    a division by the empty axis. Guards the guard of ``sweeps.chunks`` against an empty axis."""
    values = torch.randn(1, 2, 0, 3, 3, dtype=torch.float64)
    d = Dense(values)
    d.prefetch(["sum", "sq"])
    assert torch.equal(d.stat("sum"), values.sum(2)) and torch.equal(d.stat("sq"), values.pow(2).sum(2))
