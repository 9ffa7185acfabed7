"""The core names no built-in: with all built-in plugins but one blocked, what remains works, and what is
missing fails with an error that names it."""
import pytest
import torch

import extagg
from extagg import Registry, hookimpl, make_plugin_manager
from extagg.errors import UnknownNameError
from extagg.phase2 import Dense
from extagg.specs import Extractor
from tests.test_plugins import builtin_eps

BUILTINS = sorted(ep.name for ep in builtin_eps())


def only(keep: str, extra=()) -> Registry:
    """The registry with every built-in entry point blocked except ``keep``."""
    block = [name for name in BUILTINS if name != keep]
    return Registry.from_plugin_manager(make_plugin_manager(autoload=False, block=block, extra=extra))


def test_the_builtins_are_several_plugins():
    assert {"builtin-extractors", "builtin-aggregators", "builtin-filters", "builtin-methods",
            "builtin-modifiers"} <= set(BUILTINS)


@pytest.mark.parametrize("keep", BUILTINS)
def test_each_builtin_alone_loads_and_the_rest_is_named_when_missing(keep, tiny_net, images):
    reg = only(keep)
    present = {kind for kind, table in reg.components.items() if table}
    assert present, keep
    with pytest.raises(UnknownNameError) as err:
        extagg.saliency(tiny_net, images, "scaling+relu+sum", "2", targets=0, registry=reg)
    assert err.value.kind in ("extractor or named method", "filter or aggregator")
    assert err.value.name in ("scaling", "relu", "sum") and "available:" in str(err.value)


def test_the_core_runs_on_a_third_party_extractor_with_only_the_builtin_aggregators(tiny_net, images):
    """No built-in extractor, filter, named method or modifier: the engine, phase 2 and the space still work."""
    mod = type(extagg)("grad_plugin")
    mod.register_extractors = hookimpl(lambda register: register(
        Extractor(name="grad", fn=lambda c: Dense(c.grad, store=c.store))))
    reg = only("builtin-aggregators", extra=[mod])
    assert reg.methods() == ["grad+max", "grad+min", "grad+norm", "grad+sum"]
    maps = extagg.saliency(tiny_net, images, reg.methods(), ["input", "2"], targets=[0, 1], registry=reg)
    full = extagg.saliency(tiny_net, images, "bias+sum", ["input", "2"], targets=[0, 1])
    torch.testing.assert_close(maps["grad+sum", "2"], full["bias+sum", "2"])
    assert not reg.named_methods and not reg.modifiers


def test_saliency_needs_methods_named_by_the_caller(tiny_net, images):
    """No built-in default: the method is a required argument."""
    with pytest.raises(TypeError, match="methods"):
        extagg.saliency(tiny_net, images)
