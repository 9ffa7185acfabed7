"""The plugin contract: every hook a plugin may implement.

A plugin is a module (or object) whose functions are marked with :data:`extagg.hookimpl` and whose name matches
a hook below. Each hook receives a ``register`` callback and calls it once per component; extagg validates and
stores what it receives. Plugins are discovered through the ``extagg`` entry-point group, the built-in
components included (see ``plugins/extagg_builtins``)::

    # pyproject.toml of a third-party distribution
    [project.entry-points.extagg]
    my-plugin = "my_plugin"

    # my_plugin.py
    from extagg.plugin import Filter, hookimpl

    @hookimpl
    def register_filters(register):
        register(Filter(name="square", fn=lambda x: x * x, doc="Elementwise square."))

Component names are lower case, start with a letter and use letters, digits, ``-`` and ``_``. A name registered twice
(by one plugin or two) is an error that names both origins. :mod:`extagg.plugin` is the one import place for
what plugins need.
"""
from __future__ import annotations

from typing import Callable

import pluggy

from .metric_spec import Metric
from .specs import Aggregator, Extractor, Filter, Modifier, NamedMethod

PROJECT = "extagg"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marker to be imported and used in plugins (and for extagg's own built-in components)."""


@hookspec
def register_extractors(register: Callable[[Extractor], None]) -> None:
    """Register phase-1 extractors: ``register(extagg.specs.Extractor(...))``.

    An extractor maps a layer capture (activation, gradient, module) to the per-location contribution to the
    gradient of a spatially shared parameter, as a dense tensor or a factored outer product.
    """


@hookspec
def register_filters(register: Callable[[Filter], None]) -> None:
    """Register elementwise filters: ``register(extagg.specs.Filter(...))``, usable before or after the aggregator."""


@hookspec
def register_aggregators(register: Callable[[Aggregator], None]) -> None:
    """Register phase-2 aggregators: ``register(extagg.specs.Aggregator(...))``, one number per location."""


@hookspec
def register_methods(register: Callable[[NamedMethod], None]) -> None:
    """Register named methods: ``register(extagg.specs.NamedMethod(name=..., expansion="scaling+sum"))``."""


@hookspec
def register_modifiers(register: Callable[[Modifier], None]) -> None:
    """Register pass modifiers: ``register(extagg.specs.Modifier(...))``, written ``name(...):method``."""


@hookspec
def register_metrics(register: Callable[[Metric], None]) -> None:
    """Register metrics: ``register(extagg.plugin.Metric(...))``, scored by ``extagg evaluate`` and ``extagg sweep``.

    A metric declares its measures (each with a direction and range), parameters, needs and cost, and computes
    per-image values from a batch context (see :mod:`extagg.metric_spec`).
    """


HOOK_KINDS = {
    "register_extractors": "extractor",
    "register_filters": "filter",
    "register_aggregators": "aggregator",
    "register_methods": "method",
    "register_modifiers": "modifier",
    "register_metrics": "metric",
}
"""The component kind each hook registers. A new kind is one hookspec, one record class and one entry here."""
