"""The native kernels (extagg/native_kernels.c) equal the PyTorch path and the materialised definitions, take over
only where they apply, and fall back (with one warning) where they cannot be built."""
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import depthwise, factored, signed

import extagg
from extagg import native
from extagg.contributions import Dense, Factored, PatchGeometry, Product, Scaled

STATS = ("sum", "sq", "signed", "signed_sq", "extremes", "min_abs")
needs_kernels = pytest.mark.skipif(not native.available(), reason="native kernels not built (no C compiler)")


def stats_of(c, on: bool) -> dict:
    """Every statistic of a fresh copy of contribution ``c``, prefetched with the kernels on or off."""
    with native.enabled(on):
        fresh = c()
        fresh.prefetch(list(STATS))
        return {name: fresh.stat(name) for name in STATS}


def assert_same(got: dict, want: dict, rtol=1e-10, atol=1e-12):
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=name)


def test_kernels_build_where_a_c_compiler_exists():
    """Guards the skips below: on a machine with a compiler (CI's included) the kernels must load."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler here")
    assert native.available()


@needs_kernels
@settings(max_examples=60)
@given(c=depthwise())
def test_depthwise_kernel_equals_pytorch_path(c):
    """Any kernel, stride, dilation, asymmetric zero padding, several images and targets, every sign pattern."""
    assert native.depthwise_stats(c.g, c.x, c.geometry) is not None  # the kernel, not a fallback
    assert_same(stats_of(lambda: Factored(c.g, c.x, c.geometry), True),
                stats_of(lambda: Factored(c.g, c.x, c.geometry), False))


@needs_kernels
@settings(max_examples=40)
@given(c=factored())
def test_every_factored_form_same_with_and_without_kernels(c):
    """Ungrouped (side kernels), grouped and depthwise forms, every padding mode (non-zero modes fall back)."""
    assert_same(stats_of(lambda: Factored(c.g, c.x, c.geometry), True),
                stats_of(lambda: Factored(c.g, c.x, c.geometry), False))


@needs_kernels
@settings(max_examples=30)
@given(c=depthwise(dtype=torch.float32))
def test_depthwise_kernel_in_float32(c):
    want = stats_of(lambda: Factored(c.g.double(), c.x.double(), c.geometry), False)
    got = stats_of(lambda: Factored(c.g, c.x, c.geometry), True)
    assert all(t.dtype == torch.float32 for v in got.values() for t in (v if isinstance(v, tuple) else (v,)))
    assert_same({k: tuple(t.double() for t in v) if isinstance(v, tuple) else v.double() for k, v in got.items()},
                want, rtol=1e-4, atol=1e-5)


@st.composite
def side_cases(draw):
    """A shape, an axis, the statistics asked for, and optional broadcast/product/scale factors."""
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=3, max_size=5)))
    names = draw(st.lists(st.sampled_from(native.SIDE_NAMES), min_size=1, unique=True))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 999)))
    kind = draw(st.sampled_from(["plain", "product", "scaled", "both"]))
    if kind == "plain":
        v = signed(draw, torch.randn(shape, generator=gen, dtype=torch.float64))
        return shape, draw(st.integers(0, len(shape) - 1)), names, v, {}, v
    dim = 2  # as Product and Scaled use it: (N, T, D, ...) reduced over D, x (N, D, ...) shared by the T targets
    x = signed(draw, torch.randn((shape[0],) + shape[2:], generator=gen, dtype=torch.float64))
    factors, full = {}, x[:, None].expand(shape)
    if kind in ("product", "both"):
        factors["other"] = signed(draw, torch.randn(shape, generator=gen, dtype=torch.float64))
        full = full * factors["other"]
    if kind in ("scaled", "both"):
        factors["scale"] = signed(draw, torch.randn(shape[:3], generator=gen, dtype=torch.float64))
        full = full * factors["scale"].reshape(shape[:3] + (1,) * (len(shape) - 3))
    return shape, dim, names, x, factors, full


DEFINITIONS = {
    "sum": lambda v, d: v.sum(d), "sq": lambda v, d: (v * v).sum(d),
    "pos": lambda v, d: v.clamp(min=0).sum(d), "neg": lambda v, d: (-v).clamp(min=0).sum(d),
    "pos_sq": lambda v, d: v.clamp(min=0).square().sum(d), "neg_sq": lambda v, d: v.clamp(max=0).square().sum(d),
    "max": lambda v, d: v.amax(d), "min": lambda v, d: v.amin(d), "min_abs": lambda v, d: v.abs().amin(d),
}


@needs_kernels
@settings(max_examples=80)
@given(case=side_cases())
def test_side_kernel_equals_the_definitions(case):
    """Statistics along any axis, of a plain tensor, of x * other (x broadcast over targets) and of x * scale."""
    shape, dim, names, v, factors, full = case
    got = native.side_stats(v, shape, dim, names, **factors)
    assert set(got) == set(names)
    for name in names:
        torch.testing.assert_close(got[name], DEFINITIONS[name](full, dim), rtol=1e-10, atol=1e-12, msg=name)


@needs_kernels
@settings(max_examples=30)
@given(seed=st.integers(0, 999), data=st.data())
def test_dense_product_scaled_same_with_and_without_kernels(seed, data):
    gen = torch.Generator().manual_seed(seed)
    x = signed(data.draw, torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64))
    g = signed(data.draw, torch.randn(2, 3, 5, 3, 4, generator=gen, dtype=torch.float64))
    w = signed(data.draw, torch.randn(2, 3, 5, generator=gen, dtype=torch.float64))
    for make in (lambda: Dense(g), lambda: Product(x, g), lambda: Scaled(x, w)):
        assert_same(stats_of(make, True), stats_of(make, False))
    for make in (lambda: Product(x, g), lambda: Scaled(x, w)):  # the kernels ran: nothing was materialised
        fresh = make()
        fresh.prefetch(list(STATS))
        assert fresh._values is None
    # and Product's statistics are those of its materialised values
    assert_same(stats_of(lambda: Product(x, g), True), stats_of(lambda: Dense(x[:, None] * g), False))


@needs_kernels
def test_results_do_not_depend_on_the_thread_count():
    """Each output is summed by one thread in a fixed order: bitwise the same for any number of threads."""
    gen = torch.Generator().manual_seed(0)
    g, x = torch.randn(2, 2, 7, 9, 9, generator=gen), torch.randn(2, 7, 9, 9, generator=gen)
    geo = PatchGeometry.identity(3, groups=7)
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append((native.depthwise_stats(g, x, geo), native.side_stats(g, g.shape, 2, native.SIDE_NAMES)))
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert all(torch.equal(a[k], b[k]) for k in a)


@needs_kernels
def test_the_comparison_can_fail():
    """The equivalence checks above are not vacuous: a kernel fed another geometry or axis disagrees."""
    gen = torch.Generator().manual_seed(0)
    g, x = torch.randn(1, 1, 4, 6, 6, generator=gen, dtype=torch.float64), torch.randn(1, 4, 6, 6, generator=gen,
                                                                                      dtype=torch.float64)
    want = stats_of(lambda: Factored(g, x, PatchGeometry.identity(3, groups=4)), False)
    shifted = native.depthwise_stats(g, x, PatchGeometry((3, 3), (1, 1), (0, 2, 1, 1), (1, 1), 4))
    with pytest.raises(AssertionError):
        torch.testing.assert_close(shifted["sum"], want["sum"])
    v = torch.randn(2, 3, 3, 4, generator=gen, dtype=torch.float64)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(native.side_stats(v, v.shape, 1, ["sum"])["sum"], v.sum(2))


@needs_kernels
def test_the_kernels_step_aside_where_they_do_not_apply():
    g, x = torch.randn(1, 1, 3, 5, 5), torch.randn(1, 3, 5, 5)
    geo = PatchGeometry.identity(3, groups=3)
    assert native.depthwise_stats(g.half(), x.half(), geo) is None  # half precision: the PyTorch path upcasts
    assert native.depthwise_stats(g, x.double(), geo) is None  # mixed dtypes
    reflect = PatchGeometry((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 3, "reflect")
    assert native.depthwise_stats(g, x, reflect) is None
    assert native.depthwise_stats(torch.randn(1, 1, 6, 5, 5), torch.randn(1, 3, 5, 5),
                                  PatchGeometry.identity(3, groups=3)) is None  # two gradient entries per block
    with torch.enable_grad():
        assert native.side_stats(g.requires_grad_(), g.shape, 2, ["sum"]) is None  # autograd must see the ops
    with native.enabled(False):
        assert native.side_stats(x, x.shape, 1, ["sum"]) is None
    strided = torch.randn(1, 3, 5, 10)[..., ::2]  # non-contiguous input: copied, still right
    torch.testing.assert_close(native.side_stats(strided, strided.shape, 1, ["sum"])["sum"], strided.sum(1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_take_the_pytorch_path():
    g = torch.randn(1, 1, 3, 5, 5, device="cuda")
    assert native.side_stats(g, g.shape, 2, ["sum"]) is None


@pytest.fixture
def fresh_state(monkeypatch, tmp_path):
    """An unloaded kernel library with an empty cache directory (restored afterwards)."""
    monkeypatch.setattr(native, "_state", {"lib": None, "tried": False, "on": True})
    monkeypatch.setenv("EXTAGG_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_no_compiler_warns_once_and_uses_the_pytorch_path(fresh_state, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-extagg")
    g = torch.randn(1, 1, 3, 5, 5, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="no C compiler found.*no-such-compiler-extagg"):
        assert native.side_stats(g, g.shape, 2, ["sum"]) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per process, not one per call
        assert not native.available()
    c = Factored(g, torch.randn(1, 3, 5, 5, dtype=torch.float64), PatchGeometry.identity(3, groups=3))
    assert_same(stats_of(lambda: c, True), stats_of(lambda: Factored(c.g, c.x, c.geometry), False))


def test_a_failing_build_warns_with_the_compiler_message(fresh_state, monkeypatch):
    if shutil.which("false") is None:
        pytest.skip("no `false` command")
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with pytest.warns(RuntimeWarning, match="native kernels unavailable"):
        assert not native.available()
    assert not list(fresh_state.glob("*.so"))  # nothing half-written left behind


@needs_kernels
def test_the_build_is_cached(fresh_state):
    assert native.available()
    built = list(fresh_state.glob("extagg_native_*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    native._state.update(lib=None, tried=False)
    assert native.available()
    assert [p.stat().st_mtime_ns for p in fresh_state.glob("extagg_native_*.so")] == [stamp]


@needs_kernels
def test_an_unwritable_cache_falls_back_to_a_temp_directory(fresh_state, monkeypatch):
    blocker = fresh_state / "not-a-directory"
    blocker.write_text("")
    monkeypatch.delenv("EXTAGG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # ~/.cache/extagg cannot be made under a file
    monkeypatch.setattr(native.tempfile, "tempdir", str(fresh_state))
    assert native.available()
    assert len(list(fresh_state.glob("extagg-*/extagg_native_*.so"))) == 1


def test_environment_variable_turns_the_kernels_off():
    code = "import extagg.native as n; print(n.available(), n._state['tried'])"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "EXTAGG_NATIVE": "0"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]  # off, and not even built


def test_saliency_is_the_same_with_and_without_kernels(tiny_net, images):
    """Every built-in method at a conv layer and a ReLU layer of a small net: the switch changes nothing."""
    methods = extagg.methods()
    layers = ["0", "2"]

    def run(on):
        with native.enabled(on):
            return extagg.saliency(tiny_net, images, methods, layers, mismatched="skip")

    with_kernels, without = run(True), run(False)
    assert list(with_kernels) == list(without) and len(without) > 100
    for key in without:
        torch.testing.assert_close(with_kernels[key], without[key], rtol=1e-9, atol=1e-12, msg=str(key))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("factors", ["plain", "other", "scale", "both"])
def test_side_kernel_over_many_tiles(dtype, factors):
    """Maps wider than one tile of the kernel (512 float32 / 256 float64 entries), in both precisions."""
    gen = torch.Generator().manual_seed(3)
    n, t, d, h, w = 2, 2, 9, 23, 41
    x = torch.randn(n, d, h, w, generator=gen, dtype=torch.float64)
    other = torch.randn(n, t, d, h, w, generator=gen, dtype=torch.float64)
    scale = torch.randn(n, t, d, generator=gen, dtype=torch.float64)
    full, kw = x[:, None].expand(n, t, d, h, w), {}
    if factors in ("other", "both"):
        full, kw["other"] = full * other, other.to(dtype)
    if factors in ("scale", "both"):
        full, kw["scale"] = full * scale[..., None, None], scale.to(dtype)
    got = native.side_stats(x.to(dtype), (n, t, d, h, w), 2, native.SIDE_NAMES, **kw)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    for name in native.SIDE_NAMES:
        torch.testing.assert_close(got[name].double(), DEFINITIONS[name](full, 2), msg=name, **tol)


@needs_kernels
@pytest.mark.parametrize("where", ["g", "x"])
def test_nan_propagates_as_in_torch(where):
    gen = torch.Generator().manual_seed(4)
    g, x = torch.randn(1, 2, 3, 5, 5, generator=gen, dtype=torch.float64), torch.randn(1, 3, 5, 5, generator=gen,
                                                                                      dtype=torch.float64)
    (g if where == "g" else x)[0, ..., 1, 1, 2] = float("nan")
    geo = PatchGeometry.identity(3, groups=3)
    cases = [(lambda: Factored(g, x, geo), "gx"), (lambda: Factored(g, x, PatchGeometry.identity(3)), "gx"),
             (lambda: Product(x, g), "gx"), (lambda: Dense(g), "g")]
    for make, reads in cases:
        got, want = stats_of(make, True), stats_of(make, False)
        for name in STATS:
            torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, equal_nan=True, msg=name)
        has_nan = any(t.isnan().any() for v in got.values() for t in (v if isinstance(v, tuple) else (v,)))
        assert has_nan == (where in reads)


@needs_kernels
def test_padding_wider_than_the_patch_grid():
    """Left padding beyond the slab (stride 64, padding 30 on a 1-pixel map): only padding is read."""
    c = 3
    conv = torch.nn.Conv2d(c, c, 1, stride=(1, 64), padding=(0, 30), groups=c)
    geo = PatchGeometry.of_conv(conv)
    x = torch.randn(2, c, 1, 1, dtype=torch.float64)
    g = torch.randn(2, 1, c, *conv(x.float()).shape[-2:], dtype=torch.float64)
    assert native.depthwise_stats(g, x, geo) is not None
    assert_same(stats_of(lambda: Factored(g, x, geo), True), stats_of(lambda: Factored(g, x, geo), False))


@needs_kernels
def test_the_build_without_openmp_gives_the_same_results(fresh_state, monkeypatch):
    """The POSIX-threads build (where the compiler has no OpenMP) against the default build."""
    gen = torch.Generator().manual_seed(5)
    g, x = torch.randn(2, 2, 5, 9, 9, generator=gen, dtype=torch.float64), torch.randn(2, 5, 9, 9, generator=gen,
                                                                                      dtype=torch.float64)
    geo = PatchGeometry.identity(3, groups=5)
    want = native.depthwise_stats(g, x, geo), native.side_stats(g, g.shape, 2, native.SIDE_NAMES)
    monkeypatch.setattr(native, "_FLAG_SETS", (["-O2"],))
    native._state.update(lib=None, tried=False)
    got = native.depthwise_stats(g, x, geo), native.side_stats(g, g.shape, 2, native.SIDE_NAMES)
    built = list(fresh_state.glob("extagg_native_*.so"))
    assert len(built) == 2  # the default build and the -O2 one
    for a, b in zip(got, want):
        assert_same(a, b)
