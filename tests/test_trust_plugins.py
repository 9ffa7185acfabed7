"""One broken plugin is named, with the setting that skips it, and never takes the rest down: import failures
(``sys.exit`` included), faulty registration hooks, bad names, recursive named methods, a modifier that returns no
context manager; ``extagg plugins`` always runs and shows what failed."""
import sys

import pytest

import extagg
from extagg import Registry, make_plugin_manager, registry as registry_module
from extagg.cli import main
from extagg.errors import DuplicateNameError, InvalidMethodError, PluginError, PluginLoadError
from extagg.specs import Alias, Filter, Modifier

from test_plugins import FakeEntryPoint, builtin_eps, plugin_module, square_plugin


def registry_with(*eps, skip_broken=False):
    pm = make_plugin_manager(entry_points=[*builtin_eps(), *eps], skip_broken=skip_broken)
    return Registry.from_plugin_manager(pm, skip_broken=skip_broken)


def hook(kind, fn):
    return plugin_module(f"{kind}_mod", **{f"register_{kind}": fn})


class ExitsAtImport(FakeEntryPoint):
    def load(self):
        sys.exit(3)


def exits(*_):
    sys.exit(3)


def raises(register):
    register(Filter(name="half", fn=lambda x: x / 2))
    raise ZeroDivisionError("in the hook")


def none_name(register):
    register(Filter(name=None, fn=lambda x: x))


BROKEN = {
    "import": (FakeEntryPoint("broken", ModuleNotFoundError("No module named 'nope'"), "broken-dist"),
               "failed to import: ModuleNotFoundError"),
    "exit at import": (ExitsAtImport("broken", None, "broken-dist"), "failed to import: SystemExit"),
    "hook raises": (FakeEntryPoint("broken", hook("filters", raises), "broken-dist"),
                    "failed in its register_filters hook: ZeroDivisionError"),
    "hook exits": (FakeEntryPoint("broken", hook("filters", exits), "broken-dist"),
                   "failed in its register_filters hook: SystemExit"),
    "name None": (FakeEntryPoint("broken", hook("filters", none_name), "broken-dist"), "name None"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_is_named_with_how_to_block_it(case):
    ep, what = BROKEN[case]
    with pytest.raises(PluginLoadError, match=rf"'broken.*broken-dist.*{what}.*EXTAGG_BLOCK_PLUGINS=broken"):
        registry_with(ep, FakeEntryPoint("extagg-square", square_plugin(), "extagg-square"))


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_is_left_out_and_the_rest_works(case, tiny_net, images):
    ep, what = BROKEN[case]
    reg = registry_with(ep, FakeEntryPoint("extagg-square", square_plugin(), "extagg-square"), skip_broken=True)
    assert [f.name for f in reg.failures] == ["broken"] and reg.failures[0].distribution == "broken-dist"
    assert what.split(":")[0] in reg.failures[0].error
    assert "half" not in reg.filters                    # nothing of the broken plugin, not even what it registered
    assert "square" in reg.filters and "relu" in reg.filters
    assert "broken" not in {p.name for p in reg.plugins}
    extagg.saliency(tiny_net, images, "conv1x1+square+sum", "3", registry=reg)


def test_a_duplicate_name_leaves_out_the_later_plugin():
    eps = [FakeEntryPoint("extagg-relu", square_plugin("relu"), "extagg-relu"),
           FakeEntryPoint("extagg-square", square_plugin(), "extagg-square")]
    with pytest.raises(DuplicateNameError, match="EXTAGG_BLOCK_PLUGINS=extagg-relu"):
        registry_with(*eps)
    reg = registry_with(*eps, skip_broken=True)
    assert [f.name for f in reg.failures] == ["extagg-relu"]
    assert reg.filters["relu"].origin.plugin == "builtin-filters" and "square" in reg.filters


@pytest.mark.parametrize("aliases, cycle", [
    ({"loop": "loop"}, "loop -> loop"),
    ({"ping": "pong", "pong": "ping+sum"}, "ping -> pong -> ping"),
])
def test_recursive_named_methods_are_an_error(aliases, cycle):
    def register_methods(register):
        for name, expansion in aliases.items():
            register(Alias(name=name, expansion=expansion))
    reg = registry_with(FakeEntryPoint("loops", hook("methods", register_methods), "loops-dist"))
    first = next(iter(aliases))
    with pytest.raises(InvalidMethodError,
                       match=rf"from plugin 'loops \(loops-dist 1.0\)' expands to itself \({cycle}\)"):
        reg.parse(first)
    assert str(reg.parse("normgrad"))                   # the rest still parses


def test_a_modifier_that_is_not_a_context_manager(tiny_net, images):
    from model_state import assert_unchanged, snapshot

    def register_modifiers(register):
        register(Modifier(name="nocm", fn=lambda model, images, targets: "not a context manager"))
    reg = registry_with(FakeEntryPoint("nocm-plugin", hook("modifiers", register_modifiers), "nocm-dist"))
    before = snapshot(tiny_net)
    with pytest.raises(PluginError,
                       match=r"modifier 'nocm' from plugin 'nocm-plugin \(nocm-dist 1.0\)'.*not a context manager"):
        extagg.saliency(tiny_net, images, "nocm:normgrad", "3", registry=reg)
    assert_unchanged(before, tiny_net)


@pytest.fixture
def broken_installed(monkeypatch):
    """The installed entry points plus one that fails to import; the default registry rebuilt around it."""
    eps = [*builtin_eps(), FakeEntryPoint("broken", ModuleNotFoundError("No module named 'nope'"), "broken-dist")]
    monkeypatch.setattr(extagg.plugins.md, "entry_points", lambda group: eps)
    registry_module.default_registry.cache_clear()
    yield
    registry_module.default_registry.cache_clear()


def test_the_default_registry_survives_a_broken_plugin(broken_installed, tiny_net, images):
    with pytest.warns(RuntimeWarning, match="plugin 'broken'.*broken-dist.*EXTAGG_BLOCK_PLUGINS=broken"):
        reg = extagg.default_registry()
    assert [f.name for f in reg.failures] == ["broken"]
    extagg.saliency(tiny_net, images, "normgrad", "3")   # every later call works


def test_extagg_plugins_shows_the_failure(broken_installed, capsys):
    with pytest.warns(RuntimeWarning):
        code = main(["plugins"])
    out = capsys.readouterr().out
    assert code == 0
    assert "broken  [broken-dist]  FAILED:" in out and "No module named 'nope'" in out
    assert "builtin-extractors" in out
