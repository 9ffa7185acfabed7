"""The design space: every valid composition of the registered components, as canonical strings.

A composition is ``extractor [+ pre-filter] + aggregator [+ post-filter]`` (at most one filter on each side;
longer chains are valid method strings but are not enumerated). Components with a required parameter are
left out (write them by hand, e.g. ``iconv(k=5)+norm``); the others appear at their defaults, and once for each
combination of the values of parameters that declare ``choices`` (``pooled-scaling(g=relu,pool=alpha)+sum``).
Modifier variants (``meta:scaling+sum``, each modifier at its defaults) are listed only when a pattern
contains ``:`` (``"*:*"`` lists them all, ``"meta:*+norm"`` some). Compositions in which a filter provably does nothing are left out:

* an ``abs``-like pre-filter (sign profile ``(1, 1)``) before an ``abs_invariant`` aggregator (``norm``);
* a post-filter that is the identity or zero on nonnegative numbers (profile ``(1, b)`` or ``(0, b)``) after a
  map that is nonnegative: an aggregator marked ``nonnegative``, or one that ``preserves_nonnegative`` after a nonnegative pre-filter.
"""
from __future__ import annotations

import fnmatch
import itertools
import re
from typing import Iterable, Optional, Union

from .method import format_value
from .specs import Aggregator, Filter


def _patterns(p: Union[str, Iterable[str]]) -> list[str]:
    return [p] if isinstance(p, str) else list(p)


def natural_key(text: str) -> list:
    """Sort key that orders ``conv3x3`` before ``conv11x11`` (digits compare as numbers)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _nonnegative_profile(f: Optional[Filter]) -> bool:
    return f is not None and f.sign_profile is not None and min(f.sign_profile) >= 0


def is_redundant(pre: Optional[Filter], agg: Aggregator, post: Optional[Filter]) -> bool:
    """True if ``pre`` or ``post`` provably changes nothing in ``extractor+pre+agg+post``."""
    if pre is not None and pre.sign_profile == (1, 1) and agg.abs_invariant:
        return True
    if post is not None and post.sign_profile is not None and post.sign_profile[0] in (0, 1):
        if agg.nonnegative or (agg.preserves_nonnegative and _nonnegative_profile(pre)):
            return True
    return False


def spellings(spec) -> list[str]:
    """Canonical spellings of ``spec`` over its parameters' ``choices`` (defaults left out): ``["scaling",
    "scaling(g=abs)", "scaling(g=relu)"]``; just the name for a component without choices."""
    options = [[(p.name, v) for v in p.choices] for p in sorted(spec.params, key=lambda p: p.name) if p.choices]
    defaults = {p.name: p.default for p in spec.params}
    out = []
    for combo in itertools.product(*options):
        given = [f"{k}={format_value(v)}" for k, v in combo if v != defaults[k]]
        out.append(spec.name + (f"({','.join(given)})" if given else ""))
    return out


def enumerate_methods(registry, pattern: Union[str, Iterable[str]] = "*",
                      exclude: Union[str, Iterable[str]] = ()) -> list[str]:
    """Canonical strings of the design space matching any of ``pattern`` and none of ``exclude``.

    Patterns are :func:`fnmatch.fnmatchcase` wildcards over canonical strings (``"scaling+*"``, ``"*+norm"``);
    a named method in a pattern (``"gradcam"``) matches its expansion. Sorted naturally, deterministic.
    """
    include = [_expand(registry, p) for p in _patterns(pattern)]
    excluded = [_expand(registry, p) for p in _patterns(exclude)]
    def ready(spec) -> bool:  # components with a required parameter cannot be enumerated
        return not any(p.required for p in spec.params)

    filters = [None, *(f for f in registry.filters.values() if ready(f))]
    aggregators = [a for a in registry.aggregators.values() if ready(a)]
    prefixes = [""]
    if any(":" in p for p in include):  # modifier variants are listed only when a pattern asks for them
        prefixes += [f"{m.name}:" for m in registry.modifiers.values() if not any(p.required for p in m.params)]
    out = []
    spelled = {id(x): spellings(x) for x in [*registry.extractors.values(), *filters[1:], *aggregators]}
    for ext in registry.extractors.values():
        if not ready(ext):
            continue
        for pre, agg, post in itertools.product(filters, aggregators, filters):
            if is_redundant(pre, agg, post):
                continue
            parts = [spelled[id(x)] for x in (ext, pre, agg, post) if x is not None]
            for body in map("+".join, itertools.product(*parts)):
                for prefix in prefixes:
                    text = prefix + body
                    if any(fnmatch.fnmatchcase(text, p) for p in include) and not any(
                        fnmatch.fnmatchcase(text, p) for p in excluded
                    ):
                        out.append(text)
    return sorted(out, key=natural_key)


def _expand(registry, pattern: str) -> str:
    pattern = pattern.strip().lower().replace(" ", "")
    head, _, tail = pattern.rpartition(":")
    if tail in registry.named_methods:
        return (head + ":" if head else "") + str(registry.parse(tail))
    return pattern
