"""The registry: an immutable view of every component that the loaded plugins registered.

Build it explicitly with :meth:`Registry.from_plugin_manager`; :func:`default_registry` caches the one built
from the installed entry points. Nothing registers on import.
"""
from __future__ import annotations

import functools
import threading
import warnings
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Union

import attrs

from . import hookspecs
from .errors import (DuplicateNameError, InvalidMethodError, PluginLoadError, UnknownNameError, close_matches,
                     did_you_mean)
from .method import Call, Method, ParseCache, RawCall, scan
from .metric_spec import Metric, metric_problems
from .plugins import DISTRIBUTION, PluginFailure, PluginInfo, block_hint, make_plugin_manager
from .specs import COMPONENT_TYPES, Aggregator, Extractor, Filter, Modifier, NamedMethod, Origin, Param, record_problems

_NAME_OK = __import__("re").compile(r"^[a-z][a-z0-9_-]*$")
RECORD_TYPES = {**COMPONENT_TYPES, Metric.kind: Metric}
"""Record class of every kind a hook registers: the method components and metrics."""

MethodLike = Union[str, Method]
_expanding = threading.local()  # the named methods being expanded by this thread (to catch cycles)


def _convert(param: Param, value: Any, owner: str) -> Any:
    kind = param.type
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (kind is str and isinstance(value, str))
    )
    if not ok:
        raise InvalidMethodError(
            f"parameter {param.name!r} of {owner!r} must be {kind.__name__}, got {value!r}"
        )
    value = kind(value)
    if param.choices and value not in param.choices:
        raise InvalidMethodError(
            f"parameter {param.name!r} of {owner!r} must be one of {', '.join(map(str, param.choices))}, got "
            f"{value!r}" + did_you_mean(close_matches(str(value), map(str, param.choices))))
    if param.check is not None:
        problem = param.check(value)
        if problem:
            raise InvalidMethodError(f"parameter {param.name!r} of {owner!r}: {problem} (got {value!r})")
    return value


@attrs.frozen
class Registry:
    """Every registered component, by kind and name. Hand it to :func:`extagg.saliency` as ``registry=``."""

    components: Mapping[str, Mapping[str, Any]]
    plugins: tuple[PluginInfo, ...] = ()
    failures: tuple[PluginFailure, ...] = ()
    _cache: ParseCache = attrs.field(factory=ParseCache, eq=False, repr=False)
    _derived: dict = attrs.field(factory=dict, eq=False, repr=False)

    def memo(self, kind: str) -> dict:
        """A dict for records derived from this registry (``"plans"``: each method's phase-2 plan), kept while
        the registry lives; valid because a registry never changes after it is built."""
        return self._derived.setdefault(kind, {})

    # ----------------------------------------------------------------- building
    @classmethod
    def from_plugin_manager(cls, pm, *, skip_broken: bool = False) -> "Registry":
        """Call every registration hook of ``pm`` and collect the records, checking names and duplicates.

        A hook that raises (anything, ``sys.exit`` included), a bad record or a name taken by another plugin is a
        :class:`PluginLoadError` / :class:`DuplicateNameError` naming the plugin; with ``skip_broken`` that plugin's
        records are all left out instead and the failure is kept in :attr:`failures`. The built-ins (entry points
        of the ``extagg`` distribution) claim their names first, in any load order: a clash with a built-in name,
        of any kind, is always the other plugin's failure, so a built-in name always means the built-in.
        """
        infos: dict[str, PluginInfo] = dict(getattr(pm, "infos", {}))  # a plain pluggy manager has none
        failures: list[PluginFailure] = list(getattr(pm, "failures", ()))
        pending: dict[str, list[tuple[str, Any]]] = {}

        def fail(name: str, error: Exception) -> None:
            if not skip_broken:
                raise error
            pending.pop(name, None)
            info = infos.pop(name, None)
            failures.append(PluginFailure(name, info.distribution if info else None, str(error)))

        for hook_name, kind in hookspecs.HOOK_KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                name = impl.plugin_name
                if any(f.name == name for f in failures):
                    continue
                info = infos.get(name)
                origin = Origin(name, info.distribution if info else None, info.version if info else None)
                got: list[tuple[str, Any]] = []
                register = _registrar(got, kind, hook_name, origin)
                try:
                    impl.function(**{arg: register for arg in impl.argnames})
                except PluginLoadError as exc:
                    fail(name, exc)
                except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported with the plugin's name
                    fail(name, PluginLoadError(f"plugin {str(origin)!r} failed in its {hook_name} hook: "
                                               f"{type(exc).__name__}: {exc}; {block_hint(name)}"))
                else:
                    pending.setdefault(name, []).extend(got)
        store: dict[str, dict[str, Any]] = {kind: {} for kind in hookspecs.HOOK_KINDS.values()}
        owner: dict[str, tuple[str, Origin]] = {}
        # the built-ins claim their names first, whatever order the entry points were found in: a third-party
        # plugin that reuses a built-in name is the one that fails (or is left out), never the built-in
        builtin = {name for name, info in infos.items() if info.distribution == DISTRIBUTION}
        for name, records in sorted(pending.items(), key=lambda item: item[0] not in builtin):
            mine: dict[str, tuple[str, Origin]] = {}
            clash = None
            for kind, record in records:
                if record.name in owner or record.name in mine:
                    other_kind, other = owner.get(record.name) or mine[record.name]
                    taken = " (a built-in name, which no plugin can replace)" if other.plugin in builtin else ""
                    clash = DuplicateNameError(
                        f"the name {record.name!r} is registered twice: as a {other_kind} by {other}{taken} and "
                        f"as a {kind} by {record.origin}; {block_hint(name)}")
                    break
                mine[record.name] = (kind, record.origin)
            if clash is not None:
                fail(name, clash)
                continue
            owner.update(mine)
            for kind, record in records:
                store[kind][record.name] = record
        frozen = {k: MappingProxyType(dict(sorted(v.items()))) for k, v in store.items()}
        return cls(MappingProxyType(frozen), tuple(infos.values()), tuple(failures))

    # ----------------------------------------------------------------- lookup
    def names(self, kind: str) -> list[str]:
        """Sorted names of one kind (``extractor``, ``filter``, ``aggregator``, ``method``, ``modifier``)."""
        return sorted(self.components[kind])

    def get(self, kind: str, name: str) -> Any:
        """The record of ``kind`` called ``name``; an :class:`UnknownNameError` with suggestions otherwise."""
        if kind not in self.components:
            raise UnknownNameError("component kind", kind, self.components)
        try:
            return self.components[kind][name.strip().lower()]
        except KeyError:
            raise UnknownNameError(kind, name, self.components[kind]) from None

    @property
    def extractors(self) -> Mapping[str, Extractor]:
        return self.components["extractor"]

    @property
    def filters(self) -> Mapping[str, Filter]:
        return self.components["filter"]

    @property
    def aggregators(self) -> Mapping[str, Aggregator]:
        return self.components["aggregator"]

    @property
    def named_methods(self) -> Mapping[str, NamedMethod]:
        """Named methods (``normgrad`` -> ``conv1x1+norm``), registered through ``register_methods``."""
        return self.components["method"]

    aliases = named_methods  # the former name

    @property
    def modifiers(self) -> Mapping[str, Modifier]:
        return self.components["modifier"]

    @property
    def metrics(self) -> Mapping[str, Any]:
        """Metrics (:class:`extagg.plugin.Metric`), registered through ``register_metrics``."""
        return self.components["metric"]

    # ----------------------------------------------------------------- method strings
    def parse(self, method: MethodLike) -> Method:
        """Parse and resolve a method string (or pass a :class:`Method` through)."""
        if isinstance(method, Method):
            return method
        if not isinstance(method, str):
            raise TypeError(f"a method must be a string or extagg.Method, got {type(method).__name__}: {method!r}")
        return self._cache.get(method, self._resolve)

    def per_example(self, method: MethodLike) -> bool:
        """Whether a modifier of ``method`` is declared ``per_example`` (one pass per (image, target) pair)."""
        return any(self.modifiers[c.name].per_example for c in self.parse(method).modifiers)

    def canonical(self, method: MethodLike) -> str:
        """The canonical string of ``method``."""
        return str(self.parse(method))

    def _call(self, spec: Any, raw: RawCall, text: str) -> Call:
        params = {p.name: p for p in spec.params}
        values: dict[str, Any] = {}
        for key, value, _pos in raw.args:
            if key not in params:
                raise UnknownNameError(f"parameter of {spec.kind} {spec.name!r}", key, params, context=text)
            values[key] = _convert(params[key], value, spec.name)
        for p in spec.params:
            if p.required and p.name not in values:
                raise InvalidMethodError(
                    f"{spec.kind} {spec.name!r} needs parameter {p.name!r} ({p.doc or p.type.__name__}), "
                    f"e.g. '{spec.name}({p.name}=...)', in {text!r}"
                )
        kept = tuple(sorted((k, v) for k, v in values.items() if params[k].required or v != params[k].default))
        return Call(spec.name, kept)

    def _resolve(self, text: str) -> Method:
        raw = scan(text)
        modifiers = tuple(self._call(self._lookup("modifier", c, text), c, text) for c in raw.modifiers)
        head, rest = raw.calls[0], raw.calls[1:]
        named = None
        stages: list[tuple[str, Call]] = []
        if head.name in self.named_methods:
            if head.args:
                raise InvalidMethodError(f"named method {head.name!r} takes no parameters, in {text!r}")
            named = head.name
            base = self._expand(self.named_methods[head.name])
            extractor = base.extractor
            modifiers = modifiers + base.modifiers
            stages += [("filter", c) for c in base.pre] + [("aggregator", base.aggregator)]
            stages += [("filter", c) for c in base.post]
        elif head.name in self.extractors:
            extractor = self._call(self.extractors[head.name], head, text)
        else:
            choices = {**self.extractors, **self.named_methods}
            if head.name in self.filters or head.name in self.aggregators:
                raise InvalidMethodError(
                    f"a method starts with an extractor or a named method, not {head.name!r}, in {text!r}; "
                    f"e.g. 'scaling+{head.name}'; extractors: {', '.join(sorted(self.extractors))}"
                )
            raise UnknownNameError("extractor or named method", head.name, choices, context=text)
        for c in rest:
            if c.name in self.filters:
                stages.append(("filter", self._call(self.filters[c.name], c, text)))
            elif c.name in self.aggregators:
                stages.append(("aggregator", self._call(self.aggregators[c.name], c, text)))
            else:
                choices = {**self.filters, **self.aggregators}
                if c.name in self.extractors:
                    raise InvalidMethodError(
                        f"extractor {c.name!r} can only come first, in {text!r} (column {c.position})"
                    )
                raise UnknownNameError("filter or aggregator", c.name, choices, context=text)
        aggs = [i for i, (kind, _) in enumerate(stages) if kind == "aggregator"]
        if len(aggs) != 1:
            what = "no aggregator" if not aggs else "more than one aggregator (" + ", ".join(
                str(stages[i][1]) for i in aggs) + ")"
            raise InvalidMethodError(
                f"method {text!r} has {what}; it needs exactly one of: {', '.join(sorted(self.aggregators))}"
            )
        i = aggs[0]
        return Method(
            extractor=extractor,
            aggregator=stages[i][1],
            pre=tuple(c for _, c in stages[:i]),
            post=tuple(c for _, c in stages[i + 1:]),
            modifiers=modifiers,
            named=named,
        )

    def _expand(self, alias: NamedMethod) -> Method:
        """The method a named method stands for; one that expands to itself (directly or not) is an error."""
        chain = _expanding.__dict__.setdefault("chain", [])
        if alias.name in chain:
            path = " -> ".join(chain[chain.index(alias.name):] + [alias.name])
            plugin = alias.origin.plugin if alias.origin else alias.name
            raise InvalidMethodError(f"named method {alias.name!r} from plugin {str(alias.origin)!r} expands to "
                                     f"itself ({path}); {block_hint(plugin)}")
        chain.append(alias.name)
        try:
            return self.parse(alias.expansion)
        finally:
            chain.pop()

    def _lookup(self, kind: str, raw: RawCall, text: str) -> Any:
        table = self.components[kind]
        if raw.name not in table:
            raise UnknownNameError(kind, raw.name, table, context=text)
        return table[raw.name]

    # ----------------------------------------------------------------- the design space
    def methods(self, pattern: Union[str, Iterable[str]] = "*", exclude: Union[str, Iterable[str]] = ()) -> list[str]:
        """Every valid composition as canonical strings, filtered with fnmatch wildcards; see :mod:`extagg.space`."""
        from .space import enumerate_methods

        return enumerate_methods(self, pattern, exclude)

    def describe(self, method: MethodLike) -> str:
        """A human-readable account of a method: composition, formula of each part, origins."""
        from .description import describe

        return describe(self, method)


def _registrar(got: list, kind: str, hook_name: str, origin: Origin):
    """The ``register`` callable handed to one plugin's hook: checks each record and collects it in ``got``."""
    record_type = RECORD_TYPES[kind]

    def register(record):
        if not isinstance(record, record_type):
            raise PluginLoadError(
                f"plugin {str(origin)!r} registered {record!r} through {hook_name}; "
                f"expected an extagg.specs.{record_type.__name__}; {block_hint(origin.plugin)}"
            )
        if not isinstance(record.name, str) or not _NAME_OK.match(record.name):
            raise PluginLoadError(
                f"plugin {str(origin)!r} registered the {kind} name {record.name!r}; names are lower "
                f"case strings, start with a letter and use letters, digits, '-' and '_'; {block_hint(origin.plugin)}"
            )
        problems = record_problems(record) + (metric_problems(record) if isinstance(record, Metric) else [])
        if problems:
            raise PluginLoadError(
                f"plugin {str(origin)!r} registered the {kind} {record.name!r} through {hook_name}, which is "
                f"invalid: " + "; ".join(problems) + f"; {block_hint(origin.plugin)}"
            )
        got.append((kind, attrs.evolve(record, origin=origin)))

    return register


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry built from the installed entry points (cached; :func:`reload_plugins` rebuilds it). A plugin
    that fails to load or register is left out with one warning and listed in ``Registry.failures``."""
    registry = Registry.from_plugin_manager(make_plugin_manager(skip_broken=True), skip_broken=True)
    for failure in registry.failures:
        warnings.warn(f"extagg: plugin {failure}; it is left out", RuntimeWarning, stacklevel=2)
    return registry


def reload_plugins() -> Registry:
    """Forget the cached default registry and build it again (after installing a plugin in a running session)."""
    default_registry.cache_clear()
    return default_registry()
