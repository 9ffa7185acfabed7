"""Small helpers shared by the public entry points."""
from __future__ import annotations

from typing import Any

from .errors import InputError


def as_list(x: Any, what: str, atoms: tuple = (str,)) -> list:
    """``x`` as a non-empty list: one ``atoms`` instance becomes a list of one; an :class:`InputError` names
    ``what`` if nothing is given."""
    items = [] if x is None else [x] if isinstance(x, atoms) else list(x)
    if not items:
        raise InputError(f"no {what} given")
    return items
