"""What identifies a sweep's numbers beyond its options: the model's weights, its preprocessing, and the whole
record (configuration, plan, versions) as one digest that ranks compare.

:func:`model_fingerprint` is a sha256 over the model's state dict (parameters and buffers) in sorted name order,
each entry hashed as its name, dtype, shape and raw bytes: the same weights give the same digest on any device,
a changed value, dtype, shape or name gives another. :func:`describe_preprocess` is a stable text for the
preprocessing callable (its ``repr`` without memory addresses, or its qualified name). :func:`first_difference`
names the first field (``section.key``, in sorted order) where two records differ.

:class:`KeptRandomState` saves the global random generators (Python, NumPy, torch CPU and initialised CUDA
devices) and puts them back: a sweep reseeds them for its own numbers and leaves the caller's state as it was.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any, Optional

import torch

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def model_fingerprint(model: torch.nn.Module) -> str:
    """``sha256:<hex>`` of the state dict's names, dtypes, shapes and bytes, in sorted name order."""
    digest = hashlib.sha256()
    state = model.state_dict(keep_vars=False)
    for name in sorted(state):
        value = state[name]
        digest.update(name.encode("utf-8", "surrogatepass") + b"\0")
        if not isinstance(value, torch.Tensor):  # extra state: its repr
            digest.update(b"extra\0" + repr(value).encode("utf-8", "backslashreplace") + b"\0")
            continue
        t = value.detach()
        digest.update(f"{t.dtype}|{tuple(t.shape)}\0".encode())
        flat = t.to("cpu").contiguous().reshape(-1)
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def describe_preprocess(preprocess: Any) -> Optional[str]:
    """A text that names ``preprocess`` stably across processes: its ``repr`` when the class defines one (e.g.
    a torchvision ``Compose`` with its sizes, means and deviations), else its module and qualified name; memory
    addresses are removed. None for no preprocessing."""
    if preprocess is None:
        return None
    kind = type(preprocess)
    own_repr = kind.__repr__ is not object.__repr__ and not hasattr(preprocess, "__code__")
    if own_repr:
        text = repr(preprocess)
    else:
        target = getattr(preprocess, "func", None) if kind.__name__ == "partial" else None
        base = target if target is not None else preprocess
        name = getattr(base, "__qualname__", None) or type(base).__qualname__
        text = f"{getattr(base, '__module__', None) or kind.__module__}.{name}"
        if target is not None:
            text += f" with {preprocess.args!r} {preprocess.keywords!r}"
    return _ADDRESS.sub("", text)


def model_record(model: torch.nn.Module, preprocess: Any) -> dict:
    """The ``model`` section of ``config.json``: ``fingerprint`` and ``preprocess``."""
    return {"fingerprint": model_fingerprint(model), "preprocess": describe_preprocess(preprocess)}


def digest(record: dict) -> str:
    """sha256 of the record's canonical JSON (sorted keys)."""
    text = json.dumps(record, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def first_difference(a: Any, b: Any, prefix: str = "") -> Optional[tuple[str, Any, Any]]:
    """``(field, value in a, value in b)`` of the first differing leaf, fields in sorted order (``config.steps``,
    ``plan.images``); None when equal. Lists are compared whole (``plan.images`` names the list)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = first_difference(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
            if found is not None:
                return found
        return None
    return None if a == b else (prefix or "record", a, b)


class KeptRandomState:
    """Save the global random generators now; :meth:`restore` puts them back (Python ``random``, NumPy if
    imported, torch's CPU generator and every CUDA device's generator when CUDA is initialised)."""

    def __init__(self):
        import sys

        self._python = random.getstate()
        self._numpy = sys.modules["numpy"].random.get_state() if "numpy" in sys.modules else None
        self._torch = torch.random.get_rng_state()
        self._cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None

    def restore(self) -> None:
        import sys

        random.setstate(self._python)
        if self._numpy is not None:
            sys.modules["numpy"].random.set_state(self._numpy)
        torch.random.set_rng_state(self._torch)
        if self._cuda is not None:
            torch.cuda.set_rng_state_all(self._cuda)
