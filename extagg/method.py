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
"""
from __future__ import annotations

import re
from typing import Any, Optional

import attrs

from .errors import MethodSyntaxError

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?)")


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
            self.pos = m.end()
            token = m.group()
            return float(token) if any(c in token for c in ".eE") else int(token)
        word, _ = self.name("value")
        return {"true": True, "false": False}.get(word, word)

    def call(self, what: str) -> RawCall:
        name, start = self.name(what)
        args: list[tuple[str, Any, int]] = []
        if self.peek() == "(":
            self.pos += 1
            if self.peek() != ")":
                while True:
                    key, kpos = self.name("parameter")
                    if any(k == key for k, _, _ in args):
                        raise self.error(f"parameter {key!r} given twice", kpos)
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
            continue
        calls.append(call)
        nxt = s.peek()
        if not nxt:
            break
        if nxt != "+":
            raise s.error(f"expected '+' between components, found {nxt!r}")
        s.pos += 1
    return RawMethod(tuple(modifiers), tuple(calls), text)
