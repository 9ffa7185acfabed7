"""Plugin discovery: one entry-point group, ``extagg``, for the built-in components and third-party plugins.

Environment switches:

``EXTAGG_DISABLE_PLUGIN_AUTOLOAD=1``
    load only the entry points of the ``extagg`` distribution itself (the built-ins).
``EXTAGG_BLOCK_PLUGINS=name,name``
    never load the named entry points (built-in ones included).

A plugin that fails to import or register (an exception, ``sys.exit`` at import, a faulty registration hook) is
an error naming it, its distribution and the ``EXTAGG_BLOCK_PLUGINS`` setting that skips it; the default registry
(:func:`extagg.default_registry`) instead leaves it out with one warning and records it (``Registry.failures``,
shown by ``extagg plugins``), so that one broken plugin never breaks the rest.
"""
from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
from typing import Iterable, Optional

import attrs
import pluggy

from . import hookspecs
from .errors import DuplicateNameError, PluginError, PluginLoadError, raised_in

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


@attrs.frozen
class PluginFailure:
    """A plugin left out because it failed to load or register: its entry-point name, distribution and why."""

    name: str
    distribution: Optional[str]
    error: str

    def __str__(self) -> str:
        return f"{self.name!r} (distribution {self.distribution!r}): {self.error}"


def block_hint(name: str) -> str:
    """How to skip the plugin ``name``."""
    return f"to run without it, set {BLOCK_ENV}={name}"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for the ``extagg`` project, with ``infos``: each loaded plugin's :class:`PluginInfo`,
    filled as :func:`make_plugin_manager` loads them, and ``failures``: the plugins left out as broken (with
    ``skip_broken``); both read by the registry and the CLI."""

    def __init__(self):
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.failures: tuple[PluginFailure, ...] = ()


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
    skip_broken: bool = False,
) -> PluginManager:
    """A fresh plugin manager with every ``extagg`` entry point loaded and checked.

    :param autoload: load third-party entry points; defaults to True unless ``EXTAGG_DISABLE_PLUGIN_AUTOLOAD``
        is set. The ``extagg`` distribution's own entry points (the built-ins) always load.
    :param block: entry-point names never to load, added to ``EXTAGG_BLOCK_PLUGINS``.
    :param entry_points: the entry points to consider (default: the installed ``extagg`` group); tests pass fakes.
    :param extra: plugin objects (modules) to register directly, after the entry points (for tests and notebooks).
    :param require_builtins: raise if no entry point of the ``extagg`` distribution is found.
    :param skip_broken: leave out a plugin that fails to import or register (or shares another's entry-point
        name) and record it in ``pm.failures`` instead of raising.
    :raises DuplicateNameError: two entry points share a name.
    :raises PluginLoadError: a plugin fails to import or register, or implements a hook that does not exist.
    """
    if autoload is None:
        autoload = not _env_flag(AUTOLOAD_ENV)
    blocked = set(block) | _env_list(BLOCK_ENV)
    eps = list(md.entry_points(group=GROUP) if entry_points is None else entry_points)

    pm = PluginManager()
    infos = pm.infos
    failures: list[PluginFailure] = []
    seen: dict[str, object] = {}
    found_builtin = False
    for ep in eps:
        dist, version = _dist_of(ep)
        builtin = dist == DISTRIBUTION
        found_builtin |= builtin
        try:
            if ep.name in seen:
                other = seen[ep.name]
                raise DuplicateNameError(
                    f"two extagg plugins share the entry-point name {ep.name!r}: {other.value!r} from "
                    f"{_dist_of(other)[0]!r} and {ep.value!r} from {dist!r}; rename one of them"
                )
            seen[ep.name] = ep
            if ep.name in blocked or (not autoload and not builtin):
                pm.set_blocked(ep.name)
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported with the plugin's name
                raise PluginLoadError(
                    f"extagg plugin {ep.name!r} ({ep.value}) from distribution {dist!r} failed to import: "
                    f"{type(exc).__name__}: {exc}; {block_hint(ep.name)}"
                ) from exc
            _register(pm, plugin, ep.name, dist)
        except (PluginLoadError, DuplicateNameError) as exc:
            if not skip_broken:
                raise
            failures.append(PluginFailure(ep.name, dist, str(exc)))
            continue
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
    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or getattr(exc.plugin, "__name__", repr(exc.plugin))
            dist = infos[name].distribution if name in infos else None
            error = PluginLoadError(f"extagg plugin {name!r} (distribution {dist!r}) is invalid: {exc}; "
                                    f"{block_hint(name)}")
            if not skip_broken:
                raise error from exc
            pm.unregister(exc.plugin)
            infos.pop(name, None)
            failures.append(PluginFailure(name, dist, str(error)))
    pm.failures = tuple(failures)
    return pm


def _register(pm: pluggy.PluginManager, plugin, name: str, dist: Optional[str] = None) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"extagg plugin {name!r} (distribution {dist!r}) is invalid: {exc}; "
                              f"{block_hint(name)}") from exc
    except ValueError as exc:
        raise DuplicateNameError(f"extagg plugin {name!r} is registered twice: {exc}") from exc


def enter_modifier(stack: contextlib.ExitStack, spec, *args, **kwargs):
    """Enter the context manager that the modifier record ``spec`` returns, checking that it is one."""
    with raised_in(spec, "fn"):
        cm = spec.fn(*args, **kwargs)
    if not (hasattr(cm, "__enter__") and hasattr(cm, "__exit__")):
        raise PluginError(f"modifier {spec.name!r} from plugin {str(spec.origin)!r} returned "
                          f"{type(cm).__name__}, not a context manager; a modifier's fn(model, images, targets, "
                          f"**params) must return one (e.g. a @contextlib.contextmanager function); "
                          f"{block_hint(spec.origin.plugin if spec.origin else spec.name)}")
    with raised_in(spec, "fn (entering its context)"):
        return stack.enter_context(cm)
