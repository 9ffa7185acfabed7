"""The identity metric's default real-layer extractor is defined once, by the metric's parameter; the sweep's
``identity_extractor`` defers to it (None) and records the resolved value."""
import attrs
from types import MappingProxyType

from extagg import Registry
from extagg.evaluation.driver import parse_metric
from extagg.sweep import SweepConfig
from tests.conftest import builtin_registry


def _identity_default(registry: Registry, extractor: str) -> Registry:
    """``registry`` with the identity metric's ``extractor`` parameter defaulting to ``extractor``."""
    metric = registry.metrics["identity"]
    params = tuple(attrs.evolve(p, default=extractor) if p.name == "extractor" else p for p in metric.params)
    metrics = {**registry.metrics, "identity": attrs.evolve(metric, params=params)}
    return Registry(components=MappingProxyType({**registry.components, "metric": MappingProxyType(metrics)}),
                    plugins=registry.plugins)


def test_the_sweep_uses_the_metrics_own_default_extractor():
    """Guards the single definition: the sweep config wrote its own ``"conv"``, so a metric whose parameter
    defaults to another extractor was still compared with ``conv`` in a sweep."""
    registry = _identity_default(builtin_registry(), "bn-scale")
    config = SweepConfig()
    call = parse_metric(registry, "identity", config.metric_defaults().get("identity"))
    assert call.kwargs["extractor"] == "bn-scale"
    assert config.resolved(registry).identity_extractor == "bn-scale"  # what a run directory records


def test_the_builtin_default_is_conv_and_an_explicit_choice_wins():
    registry = builtin_registry()
    assert SweepConfig().resolved(registry).result_dict()["identity_extractor"] == "conv"
    config = SweepConfig(identity_extractor="linear")
    assert config.resolved(registry) is config
    call = parse_metric(registry, "identity", config.metric_defaults().get("identity"))
    assert call.kwargs["extractor"] == "linear"
