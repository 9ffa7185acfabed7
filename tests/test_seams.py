"""What plugin code returns or declares is checked where it enters extagg: each mistake is an extagg error that
names the component, its plugin and distribution, and what was expected."""
import pytest
import torch

from extagg import Registry, make_plugin_manager, saliency
from extagg.errors import PluginContractError, PluginLoadError
from extagg.phase2 import Dense, factored_norm, factored_sum, reads_norm, reads_sum
from extagg.specs import Aggregator, Extractor, Filter, Param
from tests.test_plugins import FakeEntryPoint, builtin_eps, plugin_module


def registry_with(**hooks) -> Registry:
    """The built-ins plus one plugin ``extagg-oops`` (distribution ``extagg-oops``) implementing ``hooks``."""
    eps = [*builtin_eps(), FakeEntryPoint("extagg-oops", plugin_module("oops", **hooks), "extagg-oops")]
    return Registry.from_plugin_manager(make_plugin_manager(entry_points=eps))


def aggregator(**fields):
    def register_aggregators(register):
        register(Aggregator(name="oops", **fields))
    return registry_with(register_aggregators=register_aggregators)


def run(tiny_net, images, registry, method, **kwargs):
    return saliency(tiny_net, images, method, layers="2", targets=0, registry=registry, **kwargs)


def test_a_reduce_that_keeps_its_dimension_is_named(tiny_net, images):
    reg = aggregator(reduce=lambda x, dim: x.sum(dim, keepdim=True))
    with pytest.raises(PluginContractError, match=r"aggregator 'oops' \(from extagg-oops \(extagg-oops 1.0\)\).*"
                                                  r"shape \(2, 1, 1, 10, 10\), expected \(2, 1, 10, 10\).*keepdim"):
        run(tiny_net, images, reg, "scaling+oops")
    with pytest.raises(PluginContractError, match="reduce returned shape"):  # the chunked path too
        run(tiny_net, images, reg, "conv1x1+oops")


def test_a_correct_plugin_aggregator_passes_the_same_checks(tiny_net, images):
    """The checks above can pass: the same plugin with a reduce that removes its dimension runs."""
    reg = aggregator(reduce=lambda x, dim: x.sum(dim))
    maps = run(tiny_net, images, reg, ["scaling+oops", "scaling+sum"])
    torch.testing.assert_close(maps["scaling+oops", "2"], maps["scaling+sum", "2"])
    # counter-case: a plugin reduce that computes something else (the max) is told apart by the same comparison
    other = run(tiny_net, images, aggregator(reduce=lambda x, dim: x.amax(dim)), ["scaling+oops"])
    with pytest.raises(AssertionError):
        torch.testing.assert_close(other["scaling+oops", "2"], maps["scaling+sum", "2"])


def test_a_closed_form_of_the_wrong_shape_is_named(tiny_net, images):
    reg = aggregator(reduce=lambda x, dim: x.sum(dim), closed_form=lambda c, profile: c.total_sum()[:, :, :1])
    with pytest.raises(PluginContractError, match=r"'oops'.*extagg-oops.*closed_form returned shape \(2, 1, 1, 10\)"):
        run(tiny_net, images, reg, "conv1x1+oops")


def test_a_closed_form_returning_a_non_tensor_is_named(tiny_net, images):
    reg = aggregator(reduce=lambda x, dim: x.sum(dim), closed_form=lambda c, profile: 0.0)
    with pytest.raises(PluginContractError, match="closed_form returned float"):
        run(tiny_net, images, reg, "conv1x1+oops")


def test_a_typo_in_reads_is_named_with_a_suggestion(tiny_net, images):
    reg = aggregator(reduce=lambda x, dim: x.amax(dim), closed_form=lambda c, p: c.extremes()[0],
                     reads=lambda profile: ("extreme",))
    with pytest.raises(PluginContractError, match=r"'oops'.*extagg-oops.*'extreme'.*did you mean 'extremes'"):
        run(tiny_net, images, reg, "conv1x1+oops")


def test_a_closed_form_reading_an_unknown_statistic_is_named(tiny_net, images):
    reg = aggregator(reduce=lambda x, dim: x.amax(dim), closed_form=lambda c, p: c.stat("extreme")[0])
    with pytest.raises(PluginContractError, match=r"'oops'.*read 'extreme'.*did you mean 'extremes'"):
        run(tiny_net, images, reg, "conv1x1+oops")


def test_a_reads_with_typed_names_is_accepted(tiny_net, images):
    reg = aggregator(reduce=lambda x, dim: x.sum(dim), closed_form=factored_sum, reads=reads_sum)
    maps = run(tiny_net, images, reg, ["conv1x1+oops", "conv1x1+sum"])
    torch.testing.assert_close(maps["conv1x1+oops", "2"], maps["conv1x1+sum", "2"])
    # counter-case: the closed form of another aggregator (the norm) is told apart by the same comparison
    other = run(tiny_net, images, aggregator(reduce=lambda x, dim: x.sum(dim), closed_form=factored_norm,
                                             reads=reads_norm), ["conv1x1+oops"])
    with pytest.raises(AssertionError):
        torch.testing.assert_close(other["conv1x1+oops", "2"], maps["conv1x1+sum", "2"])


def test_an_extractor_returning_a_tensor_is_named(tiny_net, images):
    def register_extractors(register):
        register(Extractor(name="oops", fn=lambda c: c.grad))
    reg = registry_with(register_extractors=register_extractors)
    with pytest.raises(PluginContractError, match=r"extractor 'oops'.*extagg-oops.*returned Tensor; expected a "
                                                  r"contribution form"):
        run(tiny_net, images, reg, "oops+sum")


def test_an_extractor_of_the_wrong_batch_is_named(tiny_net, images):
    def register_extractors(register):
        register(Extractor(name="oops", fn=lambda c: Dense(c.grad[:1])))
    reg = registry_with(register_extractors=register_extractors)
    with pytest.raises(PluginContractError, match=r"extractor 'oops'.*shape \(1, 1, 10, 10\); expected"):
        run(tiny_net, images, reg, "oops+sum")


def test_a_filter_that_changes_the_shape_is_named(tiny_net, images):
    def register_filters(register):
        register(Filter(name="oops", fn=lambda x: x.flatten()))
    reg = registry_with(register_filters=register_filters)
    with pytest.raises(PluginContractError, match=r"filter 'oops'.*extagg-oops"):
        run(tiny_net, images, reg, "scaling+oops+sum")
    with pytest.raises(PluginContractError, match=r"filter 'oops'.*extagg-oops"):
        run(tiny_net, images, reg, "scaling+sum+oops")


@pytest.mark.parametrize("record, match", [
    (Filter(name="oops", fn=abs, params=[Param("k", list, [1])]), r"type list; a method string can give int"),
    (Filter(name="oops", fn=abs, params=[Param("k", int, 1.5)]), r"type int has the default 1.5"),
    (Filter(name="oops", fn=abs, sign_profile=(2, -2)), r"sign_profile must be .* got \(2, -2\)"),
    (Filter(name="oops", fn=abs, sign_profile=(True, 0)), r"sign_profile"),
    (Filter(name="oops", fn="abs"), r"fn must be callable"),
    (Extractor(name="oops", fn=abs, needs={"grad", "weights"}), r"needs \['grad', 'weights'\] may only name"),
    (Extractor(name="oops", fn=abs, applies_to=torch.nn.Conv2d), r"applies_to must be"),
    (Aggregator(name="oops", reduce=sum, reads=reads_sum), r"reads but no closed_form"),
])
def test_bad_records_are_refused_at_registration(record, match):
    kind = {Filter: "register_filters", Extractor: "register_extractors", Aggregator: "register_aggregators"}

    def hook(register):
        register(record)
    with pytest.raises(PluginLoadError, match=r"plugin 'extagg-oops \(extagg-oops 1.0\)' registered the .* 'oops'.*"
                                              + match):
        registry_with(**{kind[type(record)]: hook})


def test_valid_params_and_profiles_register():
    """The checks above can pass: every accepted type and profile value registers."""
    def hook(register):
        register(Filter(name="oops", fn=abs, sign_profile=(-1, 1),
                        params=[Param("a", int, 1), Param("b", float, 1), Param("c", bool, False), Param("d", str, "x"),
                                Param("e", int)]))
    assert "oops" in registry_with(register_filters=hook).filters


@pytest.mark.parametrize("yielded, match", [([1], "yielded list"), ({"nope": torch.zeros(1)}, "yielded 'nope'"),
                                            ({"0.weight": 1.0}, "yielded '0.weight': float")])
def test_a_modifier_yielding_something_else_than_replacement_tensors_is_named(tiny_net, images, yielded, match):
    import contextlib

    from extagg.specs import Modifier

    @contextlib.contextmanager
    def bad(model, images, targets):
        yield yielded

    def register_modifiers(register):
        register(Modifier(name="oops", fn=bad, stateless=True))
    reg = registry_with(register_modifiers=register_modifiers)
    with pytest.raises(PluginContractError, match=r"modifier 'oops' \(from extagg-oops.*" + match):
        run(tiny_net, images, reg, "oops:scaling+sum")
