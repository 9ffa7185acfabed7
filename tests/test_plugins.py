"""Plugin loading: entry points (faked, hermetic), duplicates, misspelled hooks, import failures, env switches."""
import types

import pytest
import torch

import extagg
from extagg import Registry, hookimpl, make_plugin_manager
from extagg.errors import DuplicateNameError, PluginLoadError
from extagg.specs import Aggregator, Filter


class FakeDist:
    def __init__(self, name, version="1.0"):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    group = "extagg"

    def __init__(self, name, plugin, dist, value=None):
        self.name, self._plugin, self.dist = name, plugin, FakeDist(dist)
        self.value = value or f"{dist.replace('-', '_')}_module"

    def load(self):
        if isinstance(self._plugin, Exception):
            raise self._plugin
        return self._plugin


def builtin_eps():
    """extagg's own entry points, with stand-ins for built-ins the installed metadata does not list yet."""
    from tests import rules_support
    return [ep for ep in rules_support.entry_points() if ep.dist.metadata["Name"] == "extagg"]


def plugin_module(name, **hooks):
    mod = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(mod, hook_name, hookimpl(fn))
    return mod


def square_plugin(name="square"):
    def register_filters(register):
        register(Filter(name=name, fn=lambda x: x * x, doc="square"))
    return plugin_module("square_plugin", register_filters=register_filters)


def test_builtins_arrive_through_the_entry_point_group():
    reg = Registry.from_plugin_manager(make_plugin_manager(entry_points=builtin_eps()))
    for kind in ("extractor", "filter", "aggregator", "method"):
        for spec in reg.components[kind].values():
            assert spec.origin.distribution == "extagg" and spec.origin.plugin.startswith("builtin-")
    assert {"bias", "scaling", "conv1x1", "conv3x3", "conv", "bn-scale"} <= set(reg.extractors)


def test_a_third_party_plugin_extends_the_space_and_runs(tiny_net, images):
    eps = [*builtin_eps(), FakeEntryPoint("extagg-square", square_plugin(), "extagg-square")]
    reg = Registry.from_plugin_manager(make_plugin_manager(entry_points=eps))
    spec = reg.filters["square"]
    assert spec.origin.distribution == "extagg-square" and spec.origin.version == "1.0"
    assert "scaling+square+sum" in reg.methods("scaling+*")
    maps = extagg.saliency(tiny_net, images, "conv1x1+square+sum", layers="2", targets=1, registry=reg)
    ref = extagg.saliency(tiny_net, images, "conv1x1+norm", layers="2", targets=1, registry=reg)
    # sum of squares of the outer product = squared Frobenius norm (generic path vs closed form)
    torch.testing.assert_close(maps["conv1x1+square+sum", "2"], ref["conv1x1+norm", "2"] ** 2)


def test_duplicate_entry_point_names_name_both_origins():
    eps = [*builtin_eps(), FakeEntryPoint("dup", square_plugin("a"), "dist-one"),
           FakeEntryPoint("dup", square_plugin("b"), "dist-two")]
    with pytest.raises(DuplicateNameError, match="dist-one.*dist-two"):
        make_plugin_manager(entry_points=eps)


def test_duplicate_component_names_name_both_origins():
    eps = [*builtin_eps(), FakeEntryPoint("extagg-relu", square_plugin("relu"), "extagg-relu")]
    with pytest.raises(DuplicateNameError, match="'relu'.*builtin-filters.*extagg-relu"):
        Registry.from_plugin_manager(make_plugin_manager(entry_points=eps))


def test_misspelled_hook_is_an_error():
    def register_aggregator(register):  # missing "s"
        register(Aggregator(name="x", reduce=lambda c, dim: c.sum(dim)))
    eps = [*builtin_eps(), FakeEntryPoint("typo", plugin_module("typo_mod", register_aggregator=register_aggregator), "typo-dist")]
    with pytest.raises(PluginLoadError, match=r"'typo' \(distribution 'typo-dist'\).*register_aggregator"):
        make_plugin_manager(entry_points=eps)


def test_wrong_hook_arguments_are_an_error():
    def register_filters(register, extra):
        pass
    eps = [*builtin_eps(), FakeEntryPoint("bad-args", plugin_module("m", register_filters=register_filters), "bad")]
    with pytest.raises(PluginLoadError, match="bad-args"):
        make_plugin_manager(entry_points=eps)


def test_import_failure_names_plugin_and_distribution():
    eps = [*builtin_eps(), FakeEntryPoint("broken", ModuleNotFoundError("No module named 'nope'"), "broken-dist")]
    with pytest.raises(PluginLoadError, match="'broken'.*'broken-dist'.*No module named 'nope'"):
        make_plugin_manager(entry_points=eps)


def test_wrong_record_type_and_bad_names_are_rejected():
    def register_filters(register):
        register(Aggregator(name="oops", reduce=lambda c, dim: c))
    eps = [*builtin_eps(), FakeEntryPoint("wrong", plugin_module("m", register_filters=register_filters), "w")]
    with pytest.raises(PluginLoadError, match="expected an extagg.specs.Filter"):
        Registry.from_plugin_manager(make_plugin_manager(entry_points=eps))
    eps = [*builtin_eps(), FakeEntryPoint("caps", square_plugin("Bad Name"), "c")]
    with pytest.raises(PluginLoadError, match="'Bad Name'"):
        Registry.from_plugin_manager(make_plugin_manager(entry_points=eps))


def test_disable_autoload_env_keeps_builtins_only(monkeypatch):
    eps = [*builtin_eps(), FakeEntryPoint("extagg-square", square_plugin(), "extagg-square")]
    monkeypatch.setenv("EXTAGG_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = Registry.from_plugin_manager(make_plugin_manager(entry_points=eps))
    assert "square" not in reg.filters and "relu" in reg.filters


def test_block_env_blocks_named_plugins(monkeypatch):
    eps = [*builtin_eps(), FakeEntryPoint("extagg-square", square_plugin(), "extagg-square")]
    monkeypatch.setenv("EXTAGG_BLOCK_PLUGINS", "extagg-square, builtin-methods")
    reg = Registry.from_plugin_manager(make_plugin_manager(entry_points=eps))
    assert "square" not in reg.filters and "relu" in reg.filters
    assert not [a for a in reg.aliases.values() if a.origin.plugin == "builtin-methods"] and "gradcam" not in reg.aliases


def test_missing_builtins_is_an_error_not_an_empty_registry():
    with pytest.raises(PluginLoadError, match="pip install -e"):
        make_plugin_manager(entry_points=[])


def test_records_are_frozen_and_registry_is_read_only(registry):
    spec = registry.filters["relu"]
    with pytest.raises(AttributeError, match="can't set attribute"):
        spec.name = "x"
    assert spec.name == "relu"
    with pytest.raises(TypeError):
        registry.components["filter"]["x"] = spec


def test_unknown_component_lookup_is_a_lookup_error(registry):
    with pytest.raises(LookupError, match="did you mean 'norm'"):
        registry.get("aggregator", "nrom")
