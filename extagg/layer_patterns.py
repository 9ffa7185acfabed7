"""Layer-name patterns: wildcards that respect the dots of ``named_modules()`` names.

A layer name is a dotted path (``layer3.1.conv2``), so its wildcards work like a file path's:

* ``*`` matches any run of characters **within one dot-separated part**: ``layer*`` is ``layer1`` ..
  ``layer4`` on a torchvision ResNet, not ``layer1.0.conv1``; ``layer3.*`` is the children of ``layer3``.
* ``**`` matches any run of characters, dots included: ``layer3.**`` is every descendant of ``layer3``,
  ``**.conv*`` every module below the top level whose last part starts with ``conv``, ``**`` every module.
* ``?`` matches one character that is not a dot; ``[seq]`` / ``[!seq]`` one character in / not in ``seq``
  (never a dot), as in :mod:`fnmatch`.

Matching is case-sensitive and covers the whole name. ``name@k`` call suffixes are not part of what a pattern
matches in :func:`extagg.layer_select.select_layers` (a module matched by name expands to its calls).
"""
from __future__ import annotations

import functools
import re

WILDCARDS = frozenset("*?[")


def is_layer_pattern(text: str) -> bool:
    """True if ``text`` holds a wildcard (``*``, ``?``, ``[``)."""
    return bool(WILDCARDS & set(text))


@functools.lru_cache(maxsize=512)
def _compile(pattern: str) -> re.Pattern:
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                while i < n and pattern[i] == "*":
                    i += 1
                continue
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal '[' (as fnmatch)
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                negate = body[:1] in ("!", "^")
                body = body[1:] if negate else body
                body = body.replace("\\", "\\\\")
                out.append(f"(?!\\.)[{'^' if negate else ''}{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def layer_match(name: str, pattern: str) -> bool:
    """Whether the layer ``name`` matches ``pattern`` (see the module docstring: ``*`` stops at a dot, ``**`` does
    not)."""
    return _compile(pattern).match(name) is not None


def layer_filter(names, pattern: str) -> list[str]:
    """The ``names`` that match ``pattern``, in their order."""
    rx = _compile(pattern)
    return [n for n in names if rx.match(n) is not None]
