"""An extractor declares the form of its contribution (``Extractor.factored``): planning reads the declaration
instead of calling the extractor, and phase 2 holds the extractor to it."""
import pytest

from extagg.errors import PluginContractError, PluginLoadError
from extagg.phase2 import Dense, Factored, PatchGeometry
from extagg.specs import Aggregator, Extractor
from extagg.sweep.plan import is_slow
from tests.conftest import builtin_registry
from tests.test_seams import registry_with, run


def _with(*extractors):
    """The built-ins, ``extractors`` and an aggregator ``plain`` without a closed form (so only the form decides)."""
    def register_extractors(register):
        for e in extractors:
            register(e)

    def register_aggregators(register):
        register(Aggregator(name="plain", reduce=lambda x, dim: x.sum(dim)))
    return registry_with(register_extractors=register_extractors, register_aggregators=register_aggregators)


def test_is_slow_reads_the_declaration_without_calling_the_extractor():
    """Guards reading ``factored`` in is_slow: the probe called ``fn`` on a synthetic Conv2d capture, so an
    extractor for other layers (here one that fails on it) counted as slow although it declares a dense form."""
    calls = []

    def picky(c):
        calls.append(1)
        raise TypeError("only for my own layer type")

    reg = _with(Extractor(name="picky", fn=picky, factored=False), Extractor(name="outer", fn=picky, factored=True))
    assert is_slow(reg, "picky+plain") is False
    assert is_slow(reg, "outer+plain") is True
    assert calls == []


def test_an_undeclared_extractor_is_still_probed():
    """The documented fallback: factored=None (undeclared) calls fn once on a synthetic capture."""
    reg = _with(Extractor(name="dense", fn=lambda c: Dense(c.grad, store=c.store)),
                Extractor(name="outer", fn=lambda c: Factored(c.grad, c.output, PatchGeometry.identity(1))))
    assert is_slow(reg, "dense+plain") is False
    assert is_slow(reg, "outer+plain") is True


def test_every_builtin_extractor_declares_its_form():
    reg = builtin_registry()
    assert {name: e.factored for name, e in reg.extractors.items() if e.factored is None} == {}
    assert reg.extractors["conv1x1"].factored and not reg.extractors["scaling"].factored


def test_a_form_that_contradicts_the_declaration_is_refused(tiny_net, images):
    """The declaration is checked where the contribution enters phase 2, both ways."""
    reg = _with(Extractor(name="liar", fn=lambda c: Dense(c.grad, store=c.store), factored=True),
                Extractor(name="liar2", fn=lambda c: Factored(c.grad, c.output, PatchGeometry.identity(1)),
                          factored=False))
    with pytest.raises(PluginContractError, match=r"extractor 'liar' .*returned a Dense contribution but declares "
                                                  r"factored=True"):
        run(tiny_net, images, reg, "liar+sum")
    with pytest.raises(PluginContractError, match=r"extractor 'liar2' .*declares factored=False"):
        run(tiny_net, images, reg, "liar2+sum")


def test_a_declaration_that_is_not_a_bool_is_refused_at_registration():
    with pytest.raises(PluginLoadError, match="factored must be None, True or False, got 'yes'"):
        _with(Extractor(name="odd", fn=abs, factored="yes"))
