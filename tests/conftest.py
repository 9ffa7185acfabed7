import functools
import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

import extagg

# ci (the default): the same examples on every run (derandomize), so that a run's verdict is reproducible; the
# thorough profile explores with fresh random examples
settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          derandomize=True)
settings.register_profile("thorough", max_examples=300, deadline=None)
# scripts/mutation_sample.py: fewer examples and no shrinking, so that a caught mutant fails fast
settings.register_profile("mutation", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@functools.lru_cache(maxsize=1)
def builtin_registry() -> extagg.Registry:
    """The built-in components only (extagg's own entry points, with stand-ins for those an older editable install
    does not list yet: tests/rules_support.py), whatever else is installed: the core suite is hermetic; third-party
    plugins test themselves (see examples/extagg-hello/tests). Built on first use."""
    import rules_support

    return extagg.Registry.from_plugin_manager(rules_support.plugin_manager(autoload=False))


class LazyBuiltins:
    """:func:`builtin_registry`, built on first attribute access (module-level use without import-time work)."""

    def __getattr__(self, name):
        return getattr(builtin_registry(), name)


def pytest_generate_tests(metafunc):
    """Parametrise over the built-in registry at collection (never at import): ``builtin_method`` (every
    composition and named method), ``builtin_aggregator`` (every aggregator name), ``builtin_metric`` (every
    metric name)."""
    if "builtin_method" in metafunc.fixturenames:
        reg = builtin_registry()
        metafunc.parametrize("builtin_method", reg.methods() + sorted(reg.named_methods))
    if "builtin_metric" in metafunc.fixturenames:
        metafunc.parametrize("builtin_metric", sorted(builtin_registry().metrics))
    if "builtin_aggregator" in metafunc.fixturenames:
        metafunc.parametrize("builtin_aggregator", sorted(builtin_registry().aggregators))


@pytest.fixture(autouse=True, scope="module")
def hermetic_default_registry():
    """While a core test module runs, ``extagg.default_registry()`` (and so every call without ``registry=``)
    holds the built-ins only, whatever else is installed; afterwards it is rebuilt as usual."""
    extagg.registry.default_registry.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXTAGG_DISABLE_PLUGIN_AUTOLOAD", "1")
        extagg.default_registry()  # cached from here on
    yield
    extagg.registry.default_registry.cache_clear()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of many small model calls (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): several times faster where other work shares the cores (no timing is
    tested)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def registry():
    """The built-in registry (see :func:`builtin_registry`)."""
    return builtin_registry()


@pytest.fixture
def tiny_net():
    """conv -> bn -> relu(inplace) -> conv -> relu -> GAP -> linear, float64, eval."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(6, 5, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 4),
    ).double().eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2)
    return net


@pytest.fixture
def images():
    return torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
