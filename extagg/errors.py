"""Exceptions raised by extagg. Every message names the bad value and what would be accepted."""
from __future__ import annotations

import contextlib
import difflib
from typing import Iterable, Iterator, Sequence


class ExtaggError(Exception):
    """Base class of every error extagg raises on purpose."""


def close_matches(name: str, available: Iterable[str], n: int = 3) -> list[str]:
    """The names in ``available`` closest to ``name`` (difflib ratio >= 0.6), best first."""
    return difflib.get_close_matches(name, list(available), n=n, cutoff=0.6)


def did_you_mean(suggestions: Sequence[str]) -> str:
    if not suggestions:
        return ""
    return "; did you mean " + " or ".join(repr(s) for s in suggestions) + "?"


class UnknownNameError(ExtaggError, LookupError):
    """A name (component, method, layer, plugin) that is not known.

    Attributes: ``kind`` (what was looked up), ``name``, ``available`` (sorted), ``suggestions``.
    """

    def __init__(self, kind: str, name: str, available: Iterable[str], context: str = ""):
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        self.suggestions = close_matches(name, self.available)
        where = f" in {context!r}" if context else ""
        shown = ", ".join(self.available[:40]) + (", ..." if len(self.available) > 40 else "")
        msg = f"unknown {kind} {name!r}{where}{did_you_mean(self.suggestions)} available: {shown or '(none)'}"
        super().__init__(msg)

    def __str__(self) -> str:  # LookupError would not quote, but be explicit
        return self.args[0]


class MethodSyntaxError(ExtaggError, ValueError):
    """A method string that cannot be parsed; ``position`` is the 0-based column of the problem."""

    def __init__(self, text: str, position: int, problem: str):
        self.text = text
        self.position = position
        self.problem = problem
        pointer = " " * position + "^"
        super().__init__(f"{problem} at position {position} of method string:\n  {text}\n  {pointer}")


class InvalidMethodError(ExtaggError, ValueError):
    """A method string that parses but does not form a valid composition (e.g. two aggregators)."""


class DuplicateNameError(ExtaggError):
    """Two plugins registered the same component name, or two entry points share a name."""


class PluginLoadError(ExtaggError):
    """A plugin failed to import or register; the message names the plugin and its distribution."""


class PluginError(ExtaggError, TypeError):
    """A plugin's component broke its contract when called (e.g. a modifier that returns no context manager);
    the message names the component, its plugin and distribution."""


class LayerMismatchError(ExtaggError, TypeError):
    """An extractor that does not apply to the chosen layer (e.g. ``conv`` on a ReLU)."""


class InputError(ExtaggError, ValueError):
    """Bad images, targets or options given to a computation."""


class ForwardError(InputError, RuntimeError, TypeError):
    """The model's forward pass failed on the input extagg gave it (wrong channel count, a missing keyword
    argument); still a RuntimeError / TypeError for code that caught the original."""


class MissingDependencyError(ExtaggError, ImportError):
    """An optional package a feature needs is not installed; the message names the install command."""


class PluginContractError(ExtaggError, TypeError):
    """Plugin code returned or declared something the contract does not allow (a map of the wrong shape, an
    unknown statistic in ``reads``, an extractor result that is not a contribution); the message names the
    component, its plugin and distribution, and what was expected."""


class ZeroGradientWarning(UserWarning):
    """The explained score's gradient is exactly zero at a layer, so every map there is all zero and says nothing
    about the input (a classifier head whose weights are all zero, as a randomly initialised torchvision ViT's;
    a target that does not depend on the layer). Attribute ``layers``: the layers concerned."""

    def __init__(self, message: str, layers: Sequence[str] = ()):
        super().__init__(message)
        self.layers = tuple(layers)


@contextlib.contextmanager
def raised_in(spec, what: str) -> Iterator[None]:
    """Blame plugin code for what it raises: an exception escaping the block (plugin code of the component record
    ``spec`` doing ``what``, e.g. ``"fn"``) gets the note ``raised in <kind> '<name>'.<what> from plugin
    '<origin>'`` (:meth:`BaseException.add_note`, shown under the traceback) and is re-raised unchanged, so code
    that catches the plugin's own exception types (a ``ValueError``, an extagg error) still catches them."""
    try:
        yield
    except Exception as exc:
        origin = str(spec.origin) if getattr(spec, "origin", None) else "an unregistered plugin"
        exc.add_note(f"raised in {spec.kind} {spec.name!r}.{what} from plugin {origin!r}")
        raise
