"""A :class:`extagg.phase2.Plan` resolves its filters once; the chunk loops only apply them."""
import pytest
import torch

from extagg import Registry, saliency
from extagg.phase2 import evaluate
from tests.conftest import builtin_registry


def _lookups(monkeypatch, tiny_net, images, method: str, budget: int):
    """(maps, how often ``registry.filters`` was read) for one generic-path run with chunks of ``budget``, on a
    fresh registry (a registry keeps its parsed methods and plans between calls)."""
    builtins = builtin_registry()
    registry = Registry(components=builtins.components, plugins=builtins.plugins)
    original = Registry.filters
    reads = []

    def counting(self):
        reads.append(1)
        return original.fget(self)

    monkeypatch.setattr(evaluate, "CHUNK_BUDGET", budget)
    monkeypatch.setattr(Registry, "filters", property(counting))
    try:
        maps = saliency(tiny_net, images, method, layers="2", targets=0, registry=registry, closed_forms=False)
    finally:
        monkeypatch.setattr(Registry, "filters", original)
    return maps[method, "2"], len(reads)


@pytest.mark.parametrize("method", ["scaling+relu+abs+sum", "conv1x1+relu+abs+sum"])
def test_filter_lookups_do_not_grow_with_the_number_of_chunks(monkeypatch, tiny_net, images, method):
    """Guards resolving ``Plan.pre`` once per plan: when the pre-filters were looked up in the registry on every
    band/chunk, cutting the work into ~10x more chunks multiplied the lookups; the maps stay the same."""
    one, few = _lookups(monkeypatch, tiny_net, images, method, 1 << 24)
    many, lots = _lookups(monkeypatch, tiny_net, images, method, 240)
    assert lots == few
    torch.testing.assert_close(many, one)
