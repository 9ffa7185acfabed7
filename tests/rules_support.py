"""The built-in propagation rules as an entry point of the ``extagg`` distribution, also before a reinstall.

``builtin-rules = "extagg_builtins.rules"`` is declared in pyproject.toml, but an editable install made before it
was added does not list it. :func:`entry_points` returns the installed ``extagg`` entry points plus a stand-in
for ``builtin-rules`` when the installed metadata lacks it, so tests see exactly what a fresh install gives.
"""
import importlib.metadata as md

import extagg
import extagg_builtins.rules

NAME = "builtin-rules"


class _Dist:
    metadata = {"Name": "extagg"}

    @property
    def version(self):
        return md.version("extagg")


class _RulesEntryPoint:
    name, group, value = NAME, "extagg", "extagg_builtins.rules"
    dist = _Dist()

    def load(self):
        return extagg_builtins.rules


def entry_points() -> list:
    eps = list(md.entry_points(group="extagg"))
    return eps if any(ep.name == NAME for ep in eps) else [*eps, _RulesEntryPoint()]


def plugin_manager(**kwargs):
    return extagg.make_plugin_manager(entry_points=entry_points(), **kwargs)


def registry() -> extagg.Registry:
    return extagg.Registry.from_plugin_manager(plugin_manager())
