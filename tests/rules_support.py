"""The newer built-in plugins (propagation rules, the CAM family, the multi-pass modifiers) as entry points of the
``extagg`` distribution, also before a reinstall.

``builtin-rules``, ``builtin-cams`` and ``builtin-multipass`` are declared in pyproject.toml, but an editable install
made before they were added does not list them. :func:`entry_points` returns the installed ``extagg`` entry points
plus a stand-in for each one the installed metadata lacks, so tests see exactly what a fresh install gives.
"""
import importlib
import importlib.metadata as md

import extagg

NAME = "builtin-rules"
STAND_INS = {"builtin-rules": "extagg_builtins.rules", "builtin-cams": "extagg_builtins.cams",
             "builtin-multipass": "extagg_builtins.multipass"}


class _Dist:
    metadata = {"Name": "extagg"}

    @property
    def version(self):
        return md.version("extagg")


class _StandIn:
    group = "extagg"
    dist = _Dist()

    def __init__(self, name: str, value: str):
        self.name, self.value = name, value

    def load(self):
        return importlib.import_module(self.value)


def entry_points() -> list:
    eps = list(md.entry_points(group="extagg"))
    have = {ep.name for ep in eps}
    return [*eps, *(_StandIn(name, value) for name, value in STAND_INS.items() if name not in have)]


def plugin_manager(**kwargs):
    return extagg.make_plugin_manager(entry_points=entry_points(), **kwargs)


def registry() -> extagg.Registry:
    return extagg.Registry.from_plugin_manager(plugin_manager())
