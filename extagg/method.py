"""Method strings: syntax, the :class:`Method` record and its one canonical form.

Grammar (case- and whitespace-insensitive)::

    method    := (modifier ":")* head ("+" stage)*
    head      := an extractor, or a named method (alias) whose expansion is spliced in
    stage     := a filter or an aggregator; exactly one aggregator overall
    component := name [ "(" key=value ("," key=value)* ")" ]
    name      := letter (letter | digit | "-" | "_")*
    value     := integer | float | true | false | name

Filters before the aggregator act elementwise on each location's contribution; filters after it act on the
map. ``scaling+relu+norm`` and ``scaling+norm+relu`` are different methods. The canonical form is lower case,
without spaces, with parameters sorted by name and parameters equal to their default left out; named methods
are replaced by their expansion. ``str(parse(s))`` is canonical and ``parse(str(m)) == m``.

Bounds: a method string has at most :data:`MAX_LENGTH` characters and :data:`MAX_MODIFIERS` modifiers (a clear
:class:`~extagg.errors.MethodSyntaxError` past them); parsing takes time linear in the length.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any, Callable, Optional

import attrs

from .errors import MethodSyntaxError

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?)")
MAX_LENGTH = 2000
"""Longest method string accepted (characters)."""
MAX_MODIFIERS = 4
"""Most modifiers one method may stack (each runs its own step before the pass)."""
MAX_DIGITS = 30
"""Longest number accepted as a parameter value (digits)."""


def format_value(value: Any) -> str:
    """The canonical spelling of a parameter value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


@attrs.frozen(cache_hash=True)
class Call:
    """One component in a method string: its name and its non-default parameters, sorted by name."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}(" + ",".join(f"{k}={format_value(v)}" for k, v in self.params) + ")"

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@attrs.frozen(cache_hash=True)
class Method:
    """A parsed, resolved method: ``modifiers : extractor + pre-filters + aggregator + post-filters``.

    Build one with :meth:`extagg.Registry.parse` (or :func:`extagg.parse_method`); ``str(method)`` is canonical.
    ``named`` records the named method the user wrote, if any; it does not take part in equality.
    """

    extractor: Call
    aggregator: Call
    pre: tuple[Call, ...] = ()
    post: tuple[Call, ...] = ()
    modifiers: tuple[Call, ...] = ()
    named: Optional[str] = attrs.field(default=None, eq=False, repr=False)

    def __str__(self) -> str:
        body = "+".join(str(c) for c in (self.extractor, *self.pre, self.aggregator, *self.post))
        return "".join(f"{m}:" for m in self.modifiers) + body

    @property
    def alias(self) -> Optional[str]:
        """The former name of :attr:`named`."""
        return self.named


@attrs.frozen
class RawCall:
    """A component as written, before the registry knows what it is: ``position`` is its column."""

    name: str
    args: tuple[tuple[str, Any, int], ...]
    position: int


@attrs.frozen
class RawMethod:
    modifiers: tuple[RawCall, ...]
    calls: tuple[RawCall, ...]
    text: str


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def error(self, problem: str, pos: Optional[int] = None) -> MethodSyntaxError:
        return MethodSyntaxError(self.text, self.pos if pos is None else pos, problem)

    def expect(self, char: str) -> None:
        if self.peek() != char:
            found = repr(self.peek()) if self.peek() else "end of string"
            raise self.error(f"expected {char!r}, found {found}")
        self.pos += 1

    def name(self, what: str) -> tuple[str, int]:
        self.skip()
        m = _NAME.match(self.text, self.pos)
        if not m:
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "end of string"
            raise self.error(f"expected {what} name, found {found}")
        self.pos = m.end()
        return m.group().lower(), m.start()

    def value(self) -> Any:
        self.skip()
        m = _NUMBER.match(self.text, self.pos)
        if m:
            token = m.group()
            if sum(c.isdigit() for c in token) > MAX_DIGITS:
                raise self.error(f"a number with more than {MAX_DIGITS} digits", m.start())
            self.pos = m.end()
            return float(token) if any(c in token for c in ".eE") else int(token)
        word, _ = self.name("value")
        return {"true": True, "false": False}.get(word, word)

    def call(self, what: str) -> RawCall:
        name, start = self.name(what)
        args: list[tuple[str, Any, int]] = []
        keys: set[str] = set()
        if self.peek() == "(":
            self.pos += 1
            if self.peek() != ")":
                while True:
                    key, kpos = self.name("parameter")
                    if key in keys:
                        raise self.error(f"parameter {key!r} given twice", kpos)
                    keys.add(key)
                    self.expect("=")
                    args.append((key, self.value(), kpos))
                    if self.peek() == ",":
                        self.pos += 1
                        continue
                    break
            self.expect(")")
        return RawCall(name, tuple(args), start)


def scan(text: str) -> RawMethod:
    """Split a method string into its written components; raises :class:`MethodSyntaxError` with a position."""
    if not isinstance(text, str):
        raise TypeError(f"a method must be a string, got {type(text).__name__}: {text!r}")
    if len(text) > MAX_LENGTH:
        raise MethodSyntaxError(text[:60] + "...", 60, f"method string of {len(text)} characters, longer than the "
                                f"{MAX_LENGTH} accepted (extagg.method.MAX_LENGTH)")
    s = _Scanner(text)
    if not s.peek():
        raise s.error("empty method string (write e.g. 'scaling+sum')")
    modifiers: list[RawCall] = []
    calls: list[RawCall] = []
    while True:
        call = s.call("component")
        if s.peek() == ":":
            if calls:
                raise s.error("a modifier ('name:') must come before the method's components")
            s.pos += 1
            modifiers.append(call)
            if len(modifiers) > MAX_MODIFIERS:
                raise s.error(f"more than {MAX_MODIFIERS} modifiers (extagg.method.MAX_MODIFIERS)", call.position)
            continue
        calls.append(call)
        nxt = s.peek()
        if not nxt:
            break
        if nxt != "+":
            raise s.error(f"expected '+' between components, found {nxt!r}")
        s.pos += 1
    return RawMethod(tuple(modifiers), tuple(calls), text)


class ParseCache:
    """A thread-safe least-recently-used map from method strings to parsed methods, of at most ``size`` entries."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._items: "OrderedDict[str, Any]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, make: Callable[[str], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make(key)
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)
