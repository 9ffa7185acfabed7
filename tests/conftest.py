import functools
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import extagg

settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@functools.lru_cache(maxsize=1)
def builtin_registry() -> extagg.Registry:
    """The built-in components only (extagg's own entry points), whatever else is installed: the core suite is
    hermetic; third-party plugins test themselves (see examples/extagg-hello/tests). Built on first use."""
    return extagg.Registry.from_plugin_manager(extagg.make_plugin_manager(autoload=False, extra=missing_builtins()))


def missing_builtins() -> list:
    """Built-in plugin modules declared in pyproject.toml whose entry point the installed metadata lacks yet
    (a checkout newer than its editable install), registered directly so the suite tests them."""
    import importlib
    import importlib.metadata as md

    installed = {ep.name for ep in md.entry_points(group="extagg")}
    wanted = {"builtin-multipass": "extagg_builtins.multipass"}
    return [importlib.import_module(module) for name, module in wanted.items() if name not in installed]


class LazyBuiltins:
    """:func:`builtin_registry`, built on first attribute access (module-level use without import-time work)."""

    def __getattr__(self, name):
        return getattr(builtin_registry(), name)


def pytest_generate_tests(metafunc):
    """Parametrise over the built-in registry at collection (never at import): ``builtin_method`` (every
    composition and named method), ``builtin_aggregator`` (every aggregator name)."""
    if "builtin_method" in metafunc.fixturenames:
        reg = builtin_registry()
        metafunc.parametrize("builtin_method", reg.methods() + sorted(reg.named_methods))
    if "builtin_aggregator" in metafunc.fixturenames:
        metafunc.parametrize("builtin_aggregator", sorted(builtin_registry().aggregators))


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
