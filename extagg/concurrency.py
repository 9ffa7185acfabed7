"""One call at a time per model: the lock that serialises extagg's use of a model across threads.

Thread contract (see ``docs/security.md``): calls on *different* models run in parallel; calls on the *same* model
from several threads are serialised while the model is being changed and restored (each call sees the model
exactly as the user left it, and leaves it so); the phase-2 work on captured tensors runs in parallel. The lock is
re-entrant, so a call made from inside another on the same thread (a modifier, meta-saliency) does not deadlock.
Code outside extagg that changes the model while extagg runs on it is not protected.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator

import torch

_locks: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_guard = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The re-entrant lock of ``model`` (made on first use, dropped with the model)."""
    with _guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def exclusive(model: torch.nn.Module) -> Iterator[None]:
    """Hold ``model``'s lock for the block."""
    with model_lock(model):
        yield
