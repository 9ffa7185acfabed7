"""An exception raised inside plugin code reaches the user with its own type and a note naming the component,
what of it raised, and its plugin (so a traceback deep in a plugin says whose code it is)."""
import re

import pytest

from extagg.specs import Aggregator, Extractor, Filter, Modifier
from tests.test_seams import registry_with, run

PLUGIN = r"from plugin 'extagg-oops \(extagg-oops 1.0\)'"


def boom(*args, **kwargs):
    raise ValueError("boom")


def _notes(info) -> str:
    return "\n".join(getattr(info.value, "__notes__", []))


def filters(register):
    register(Filter(name="oops", fn=boom))


@pytest.mark.parametrize("method", ["scaling+oops+sum", "conv1x1+oops+sum", "scaling+sum+oops"])
def test_a_filter_that_raises_is_named_with_its_plugin(tiny_net, images, method):
    """Guards the notes at the filter call sites (pre-filters on the dense and the chunked path, post-filters):
    without them the ValueError said only "boom"."""
    with pytest.raises(ValueError, match="boom") as info:
        run(tiny_net, images, registry_with(register_filters=filters), method)
    assert info.type is ValueError  # the plugin's own type, not wrapped
    assert len(info.value.__notes__) == 1
    assert re.search(r"raised in filter 'oops'\.fn " + PLUGIN, _notes(info))


def test_an_aggregator_extractor_and_modifier_that_raise_are_named(tiny_net, images):
    """The same note at the reduce, closed_form, extractor fn, modifier fn and multi-pass samples call sites."""
    def aggregators(register):
        register(Aggregator(name="oops", reduce=boom))
        register(Aggregator(name="oopsclosed", reduce=lambda x, dim: x.sum(dim), closed_form=boom))

    def extractors(register):
        register(Extractor(name="oopsx", fn=boom))

    def modifiers(register):
        register(Modifier(name="oopsm", fn=boom))
        register(Modifier(name="oopsmany", samples=boom))

    reg = registry_with(register_aggregators=aggregators, register_extractors=extractors,
                        register_modifiers=modifiers)
    for method, note in [("scaling+oops", r"aggregator 'oops'\.reduce"),
                         ("scaling+oopsclosed", r"aggregator 'oopsclosed'\.closed_form"),
                         ("oopsx+sum", r"extractor 'oopsx'\.fn"),
                         ("oopsm:scaling+sum", r"modifier 'oopsm'\.fn"),
                         ("oopsmany:scaling+sum", r"modifier 'oopsmany'\.samples")]:
        with pytest.raises(ValueError, match="boom") as info:
            run(tiny_net, images, reg, method)
        assert re.search(r"raised in " + note + " " + PLUGIN, _notes(info)), (method, _notes(info))
