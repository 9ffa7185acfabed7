"""Progress ticks from inside long computations to whoever listens (the sweep's progress bar).

Code that does a unit of heavy work calls :func:`tick` (a saliency pass, a batch of curve images); nothing
happens unless a caller listens with :func:`listening`. The listener is held in a context variable, so it is
per thread and costs one look-up when nobody listens.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Optional

Listener = Callable[[str, float], None]
_listener: contextvars.ContextVar[Optional[Listener]] = contextvars.ContextVar("extagg_progress", default=None)


def tick(kind: str, amount: float = 1.0) -> None:
    """Report ``amount`` of work of ``kind`` done: ``"saliency"`` (one forward+backward pass of a batch of
    ``amount`` images) or ``"curve"`` (``amount`` images through a gradient-free forward)."""
    listener = _listener.get()
    if listener is not None:
        listener(kind, amount)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener(kind, amount)`` for every :func:`tick` inside the ``with`` block (this thread)."""
    token = listen(listener)
    try:
        yield
    finally:
        stop(token)


def listen(listener: Listener) -> contextvars.Token:
    """Start calling ``listener`` for every :func:`tick` of this thread; give the token to :func:`stop`."""
    return _listener.set(listener)


def stop(token: contextvars.Token) -> None:
    """Stop the listener :func:`listen` started (and restore the one before it)."""
    _listener.reset(token)
