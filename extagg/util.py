"""Small helpers shared by the public entry points: lists of names, seeds and device strings checked."""
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


MAX_SEED = (1 << 63) - 1
"""Largest seed accepted: seeds are whole numbers in 0..2**63-1 (what every torch generator takes)."""


def check_seed(value: Any, what: str = "seed") -> int:
    """``value`` as a seed (a whole number, NumPy's included, in 0..:data:`MAX_SEED`), or an :class:`InputError`
    naming it."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= MAX_SEED:
        raise InputError(f"{what} must be a whole number in 0..2**63-1 = {MAX_SEED}, got {str(value)[:60]!r}")
    return int(value)


def check_device(value: Any, what: str = "device") -> str:
    """``value`` (a string or a ``torch.device``) if torch reads it as a device, else an :class:`InputError` naming it
    and what is accepted. Whether that device exists here is found where it is used."""
    import torch

    if isinstance(value, torch.device):
        return str(value)
    try:
        if not isinstance(value, str):
            raise TypeError
        torch.device(value)
    except (TypeError, RuntimeError, ValueError):
        raise InputError(f"{what} must be a torch device string such as 'cpu', 'cuda', 'cuda:0' or 'mps' "
                         f"(a device type, optionally ':' and an index), got {str(value)[:60]!r}") from None
    return value
