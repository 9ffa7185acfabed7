"""The core names no built-in: with all built-in plugins but one blocked, what remains works, and what is
missing fails with an error that names it."""
import pytest
import torch

import extagg
from extagg import Registry, hookimpl, make_plugin_manager
from extagg.errors import UnknownNameError
from extagg.phase2 import Dense
from extagg.specs import Extractor
from tests import rules_support
from tests.test_plugins import builtin_eps

BUILTINS = sorted(ep.name for ep in builtin_eps())


def only(keep: str, extra=()) -> Registry:
    """The registry with every built-in entry point blocked except ``keep``."""
    block = [name for name in BUILTINS if name != keep]
    return Registry.from_plugin_manager(make_plugin_manager(autoload=False, block=block, extra=extra,
                                                            entry_points=rules_support.entry_points()))


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
    with pytest.raises(AssertionError):  # counter-case: the plugin's max is not the built-in sum
        torch.testing.assert_close(maps["grad+max", "2"], full["bias+sum", "2"])
    assert not reg.named_methods and not reg.modifiers


def test_saliency_needs_methods_named_by_the_caller(tiny_net, images):
    """No built-in default: the method is a required argument."""
    with pytest.raises(TypeError, match="methods"):
        extagg.saliency(tiny_net, images)


def test_a_third_party_per_example_modifier_gets_what_meta_gets(tiny_net, images):
    """per_example is a record field: any plugin's modifier is refused a batch and run once per pair."""
    import contextlib

    from extagg.errors import InputError
    from extagg.evaluation.common import run_saliency
    from extagg.specs import Modifier

    seen = []

    @contextlib.contextmanager
    def one(model, images, targets):
        seen.append((images.shape[0], None if targets is None else tuple(targets.shape)))
        yield None

    mod = type(extagg)("one_plugin")
    mod.register_modifiers = hookimpl(lambda register: register(
        Modifier(name="one", fn=one, per_example=True, stateless=True)))
    reg = Registry.from_plugin_manager(make_plugin_manager(autoload=False, extra=[mod]))
    targets = torch.tensor([[0, 1], [2, 3]])
    with pytest.raises(InputError, match=r"modifier 'one' .*2 image\(s\) x 2 target\(s\).*saliency_per_example"):
        extagg.saliency(tiny_net, images, "one:normgrad", "2", targets, registry=reg)
    got = extagg.saliency_per_example(tiny_net, images, "one:normgrad", "2", targets, registry=reg)
    assert seen == [(1, (1, 1))] * 4
    plain = extagg.saliency(tiny_net, images, "normgrad", "2", targets, registry=reg)
    torch.testing.assert_close(got["one:normgrad", "2"], plain["normgrad", "2"])  # "one" changes nothing
    with pytest.raises(AssertionError):  # counter-case: per-example maps against the plain maps' other column
        torch.testing.assert_close(got["one:normgrad", "2"], plain["normgrad", "2"].flip(1))
    assert torch.equal(got.targets, targets)
    seen.clear()
    maps, _ = run_saliency(tiny_net, images, ["one:normgrad", "normgrad"], ["2"], targets=targets, registry=reg)
    assert len(seen) == 4 and set(maps) == {("one:conv1x1+norm", "2"), ("conv1x1+norm", "2")}
