"""Plugin discovery: one entry-point group, ``extagg``, for the built-in components and third-party plugins.

Environment switches:

``EXTAGG_DISABLE_PLUGIN_AUTOLOAD=1``
    load only the entry points of the ``extagg`` distribution itself (the built-ins).
``EXTAGG_BLOCK_PLUGINS=name,name``
    never load the named entry points (built-in ones included).
"""
from __future__ import annotations

import importlib.metadata as md
import os
from typing import Iterable, Optional

import attrs
import pluggy

from . import hookspecs
from .errors import DuplicateNameError, PluginLoadError

GROUP = "extagg"
DISTRIBUTION = "extagg"
AUTOLOAD_ENV = "EXTAGG_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "EXTAGG_BLOCK_PLUGINS"


@attrs.frozen
class PluginInfo:
    """One loaded plugin: its entry-point name, the module it loaded, and its distribution."""

    name: str
    module: str
    distribution: Optional[str]
    version: Optional[str]


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for the ``extagg`` project, with ``infos``: each loaded plugin's :class:`PluginInfo`,
    filled as :func:`make_plugin_manager` loads them and read by the registry and the CLI."""

    def __init__(self):
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}


def _dist_of(ep) -> tuple[Optional[str], Optional[str]]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _env_list(name: str) -> set[str]:
    return {x.strip() for x in os.environ.get(name, "").split(",") if x.strip()}


def make_plugin_manager(
    *,
    autoload: Optional[bool] = None,
    block: Iterable[str] = (),
    entry_points: Optional[Iterable] = None,
    extra: Iterable = (),
    require_builtins: bool = True,
) -> PluginManager:
    """A fresh plugin manager with every ``extagg`` entry point loaded and checked.

    :param autoload: load third-party entry points; defaults to True unless ``EXTAGG_DISABLE_PLUGIN_AUTOLOAD``
        is set. The ``extagg`` distribution's own entry points (the built-ins) always load.
    :param block: entry-point names never to load, added to ``EXTAGG_BLOCK_PLUGINS``.
    :param entry_points: the entry points to consider (default: the installed ``extagg`` group); tests pass fakes.
    :param extra: plugin objects (modules) to register directly, after the entry points (for tests and notebooks).
    :param require_builtins: raise if no entry point of the ``extagg`` distribution is found.
    :raises DuplicateNameError: two entry points share a name.
    :raises PluginLoadError: a plugin fails to import or register, or implements a hook that does not exist.
    """
    if autoload is None:
        autoload = not _env_flag(AUTOLOAD_ENV)
    blocked = set(block) | _env_list(BLOCK_ENV)
    eps = list(md.entry_points(group=GROUP) if entry_points is None else entry_points)

    pm = PluginManager()
    infos = pm.infos
    seen: dict[str, object] = {}
    found_builtin = False
    for ep in eps:
        dist, version = _dist_of(ep)
        if ep.name in seen:
            other = seen[ep.name]
            raise DuplicateNameError(
                f"two extagg plugins share the entry-point name {ep.name!r}: {other.value!r} from "
                f"{_dist_of(other)[0]!r} and {ep.value!r} from {dist!r}; rename one of them"
            )
        seen[ep.name] = ep
        builtin = dist == DISTRIBUTION
        found_builtin |= builtin
        if ep.name in blocked or (not autoload and not builtin):
            pm.set_blocked(ep.name)
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import error is reported with the plugin's name
            raise PluginLoadError(
                f"extagg plugin {ep.name!r} ({ep.value}) from distribution {dist!r} failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        _register(pm, plugin, ep.name)
        infos[ep.name] = PluginInfo(ep.name, getattr(plugin, "__name__", repr(plugin)), dist, version)
    if require_builtins and not found_builtin and "builtin" not in blocked:
        raise PluginLoadError(
            "extagg's built-in entry points were not found (group 'extagg', distribution 'extagg'); "
            "install the package, e.g. `pip install -e .` in the repository"
        )
    for plugin in extra:
        name = getattr(plugin, "__name__", None) or repr(plugin)
        _register(pm, plugin, name)
        infos[name] = PluginInfo(name, name, None, None)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or getattr(exc.plugin, "__name__", repr(exc.plugin))
        dist = infos[name].distribution if name in infos else None
        raise PluginLoadError(f"extagg plugin {name!r} (distribution {dist!r}) is invalid: {exc}") from exc
    return pm


def _register(pm: pluggy.PluginManager, plugin, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"extagg plugin {name!r} is invalid: {exc}") from exc
    except ValueError as exc:
        raise DuplicateNameError(f"extagg plugin {name!r} is registered twice: {exc}") from exc
