"""Lazy public names of a package (PEP 562): ``import extagg`` imports no torch until a name is used.

A package lists its public names with the submodule that defines each; :func:`lazy_package` installs a module
``__getattr__`` that imports that submodule on first use (and caches the name), a ``__dir__`` that lists them, and
a guard for a public name that is also a submodule's name (``extagg.evaluation.faithfulness`` is the function, not
the module ``faithfulness.py``): importing the submodule does not replace the public name. This is what keeps
``extagg --help`` fast: the command line imports only what a command runs.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Iterable, Mapping


class _LazyModule(types.ModuleType):
    """A package module whose public names that shadow a submodule keep their public value."""

    def __setattr__(self, name, value):
        shadowed = self.__dict__.get("_lazy_shadowed", ())
        if name in shadowed and isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}":
            return  # the import system binding the submodule: the public name (a function) stays
        super().__setattr__(name, value)


def lazy_package(name: str, exports: Mapping[str, Iterable[str]]) -> None:
    """Make the public names of package ``name`` lazy: ``exports`` maps each submodule (relative, ``".engine"``)
    to the public names it defines (``"public=own"`` exports the submodule's ``own`` as ``public``). Other
    attributes fall back to the package's submodules (``extagg.models``)."""
    module = sys.modules[name]
    table = {public.partition("=")[0]: (where, public.partition("=")[2] or public)
             for where, names in exports.items() for public in names}
    shadowed = {n for n in table if _is_submodule(name, n)}

    def __getattr__(attr: str):
        if attr in table:
            where, own = table[attr]
            value = getattr(importlib.import_module(where, name), own)
            module.__dict__[attr] = value  # cached: the next access is a plain attribute
            return value
        if not attr.startswith("__") and _is_submodule(name, attr):
            return importlib.import_module(f"{name}.{attr}")
        raise AttributeError(f"module {name!r} has no attribute {attr!r}")

    def __dir__():
        return sorted(set(module.__dict__) | set(table))

    module.__getattr__ = __getattr__
    module.__dir__ = __dir__
    module._lazy_shadowed = frozenset(shadowed)
    module.__class__ = _LazyModule


def _is_submodule(package: str, attr: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(f"{package}.{attr}") is not None
    except (ImportError, ValueError):
        return False
