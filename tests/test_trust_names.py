"""A plugin cannot replace a built-in name: a clash with a built-in component of any kind is an error naming both
origins, and with ``skip_broken`` (the default registry) the third-party plugin is the one left out, whatever
order the entry points (or ``extra=`` plugins) come in."""
import pytest
import torch

import extagg
from extagg import Registry, make_plugin_manager
from extagg.errors import DuplicateNameError, InvalidMethodError
from extagg.specs import Alias, Filter

from test_plugins import FakeEntryPoint, builtin_eps, plugin_module


def gradcam_plugin():
    def register_methods(register):
        register(Alias(name="gradcam", expansion="bias+sum"))
    return plugin_module("evil", register_methods=register_methods)


def relu_filter_plugin():
    def register_filters(register):
        register(Filter(name="relu", fn=lambda x: -x, doc="not the built-in relu"))
    return plugin_module("evil", register_filters=register_filters)


def evil(plugin):
    return FakeEntryPoint("evil", plugin, "evil-dist")


def build(*, before=(), after=(), extra=(), skip_broken=False):
    pm = make_plugin_manager(entry_points=[*before, *builtin_eps(), *after], extra=extra, skip_broken=skip_broken)
    return Registry.from_plugin_manager(pm, skip_broken=skip_broken)


@pytest.fixture(scope="module")
def builtins():
    return build()


ORDERS = {"plugin first": lambda p: {"before": [evil(p)]}, "plugin last": lambda p: {"after": [evil(p)]},
          "extra": lambda p: {"extra": [p]}}


@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("make", [gradcam_plugin, relu_filter_plugin], ids=["method", "filter"])
def test_a_clash_with_a_builtin_name_is_an_error_naming_both_origins(order, make):
    """Guards the load order: a third-party plugin found before the built-ins used to take the name and make the
    built-in plugin the duplicate."""
    name = "gradcam" if make is gradcam_plugin else "relu"
    with pytest.raises(DuplicateNameError, match=rf"{name!r} is registered twice: as a \w+ by builtin-\w+ "
                                                 r"\(extagg [^)]*\) \(a built-in name.*by evil"):
        build(**ORDERS[order](make()))


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_skip_broken_leaves_out_the_plugin_never_the_builtin(order, builtins, tiny_net, images):
    """Guards that a plugin registering ``gradcam`` can neither drop built-in named methods nor change what
    ``gradcam`` computes (it used to drop 6 of the 21 named methods and run the plugin's method)."""
    reg = build(**ORDERS[order](gradcam_plugin()), skip_broken=True)
    assert [f.name for f in reg.failures] == ["evil"] and "'gradcam'" in reg.failures[0].error
    assert set(reg.named_methods) == set(builtins.named_methods)
    for kind in builtins.components:
        assert set(reg.components[kind]) == set(builtins.components[kind])
    assert reg.named_methods["gradcam"].origin.distribution == "extagg"
    assert reg.canonical("gradcam") == builtins.canonical("gradcam")
    got = extagg.saliency(tiny_net, images, "gradcam", "3", targets=1, registry=reg)["gradcam", "3"]
    want = extagg.saliency(tiny_net, images, "gradcam", "3", targets=1, registry=builtins)["gradcam", "3"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_default_registry_warns_and_keeps_the_builtin(monkeypatch, builtins):
    """The default registry (skip_broken) warns about the plugin it leaves out and keeps every built-in."""
    from extagg import registry as registry_module
    monkeypatch.setattr(registry_module, "make_plugin_manager",
                        lambda **kw: make_plugin_manager(entry_points=[evil(gradcam_plugin()), *builtin_eps()], **kw))
    registry_module.default_registry.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="'evil'.*'gradcam'"):
            reg = registry_module.default_registry()
        assert set(reg.named_methods) == set(builtins.named_methods)
        assert reg.named_methods["gradcam"].origin.distribution == "extagg"
    finally:
        registry_module.default_registry.cache_clear()


def hooks_of(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("method, first, second", [
    ("guided:deconvnet:bias+sum", "guided", "deconvnet"),
    ("deconvnet:guided:bias+abs+max", "deconvnet", "guided"),
    ("guided:lrp-epsilon:scaling+sum", "guided", "lrp-epsilon"),
    ("rectgrad:rectgrad(q=50):scaling+sum", "rectgrad", "rectgrad"),
])
def test_stacked_propagation_rules_are_refused(method, first, second, registry, tiny_net, images):
    """Guards that two propagation rules in one method are an error naming both, not silently the last one
    (``guided:deconvnet`` used to equal ``deconvnet`` bit for bit); the model keeps no hook and each rule alone
    still runs afterwards."""
    before = hooks_of(tiny_net)
    with pytest.raises(InvalidMethodError, match=rf"rules '{first}' and '{second}' both define the backward pass "
                                                 r"of layer '2' \(ReLU\).*use one rule per method"):
        extagg.saliency(tiny_net, images, method, "input", targets=1, registry=registry)
    assert hooks_of(tiny_net) == before
    alone = extagg.saliency(tiny_net, images, ["guided:bias+sum", "deconvnet:bias+sum"], "input", targets=1,
                            registry=registry)
    assert not torch.equal(alone["guided:bias+sum", "input"], alone["deconvnet:bias+sum", "input"])


def test_a_rule_with_a_multipass_modifier_still_composes(registry, tiny_net, images):
    """Only rules are exclusive: ``smooth(sigma=0)`` around ``guided`` is ``guided``."""
    got = extagg.saliency(tiny_net, images, ["smooth(n=2,sigma=0.0):guided:bias+sum", "guided:bias+sum"], "input",
                          targets=1, registry=registry)
    torch.testing.assert_close(got["smooth(n=2,sigma=0.0):guided:bias+sum", "input"], got["guided:bias+sum", "input"])
