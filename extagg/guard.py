"""Leave the user's model exactly as it was: mode flags, requires_grad, .grad, buffers, hooks, and a graph the user
holds (pending backward) still valid."""
from __future__ import annotations

import contextlib
import itertools
from typing import Iterator

import torch

from .concurrency import exclusive
from .errors import InputError

_HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)
_STRUCTURE_DICTS = ("_parameters", "_buffers", "_modules")


@contextlib.contextmanager
def preserved(model: torch.nn.Module, *, weights: bool = False) -> Iterator[torch.nn.Module]:
    """Snapshot the model's mutable state on entry and restore it on exit, also when the block raises.

    Restored: every module's ``training`` flag, every parameter's ``requires_grad`` and ``.grad`` (the same
    tensor object), buffers, and the registered hooks (hooks added inside the block are removed, hooks removed
    inside it are put back). The module structure is restored too: a parameter, buffer or submodule that was
    reassigned, added or deleted inside the block (``module.weight = nn.Parameter(...)``) is put back as the
    original object. With ``weights=True`` parameter values and the values of pre-existing ``.grad`` tensors are
    also copied back bit for bit (for code that updates them, such as meta-saliency).

    A graph the user holds stays valid: inside the block every buffer is replaced by a copy (a forward pass in
    train mode updates BatchNorm's copies, never the user's tensors, whose version counters autograd checks), the
    originals are put back on exit, and a tensor is written back only where its value changed. The block holds the
    model's lock (:mod:`extagg.concurrency`), so threads using one model take turns. A model with uninitialised
    (lazy) parameters, or a call inside ``torch.inference_mode()``, is refused with an :class:`InputError`.
    """
    check_usable(model)
    with exclusive(model):
        modules = list(model.modules())
        training = [m.training for m in modules]
        params = list(model.parameters())
        flags = [p.requires_grad for p in params]
        grads = [p.grad for p in params]
        grad_values = [None if g is None else g.detach().clone() for g in grads] if weights else None
        buffers = _Buffers(model)
        values = [p.detach().clone() for p in params] if weights else None
        hooks = [_snapshot(m, _HOOK_DICTS) for m in modules]
        structure = [_snapshot(m, _STRUCTURE_DICTS) for m in modules]
        non_persistent = [set(getattr(m, "_non_persistent_buffers_set", ())) for m in modules]
        try:
            _swap_buffers(modules)
            yield model
        finally:
            with torch.no_grad():
                for m, saved, names in zip(modules, structure, non_persistent):
                    _restore(m, saved)
                    if hasattr(m, "_non_persistent_buffers_set") and m._non_persistent_buffers_set != names:
                        m._non_persistent_buffers_set.clear()
                        m._non_persistent_buffers_set.update(names)
                for m, flag in zip(modules, training):
                    m.training = flag
                for i, p in enumerate(params):
                    if values is not None:
                        _write_back(p, values[i])
                    if p.requires_grad != flags[i]:
                        p.requires_grad_(flags[i])
                    if p.grad is not grads[i]:
                        p.grad = grads[i]
                    if grad_values is not None and grads[i] is not None:
                        _write_back(grads[i], grad_values[i])
                buffers.restore()
                for m, saved in zip(modules, hooks):
                    _restore(m, saved)


def check_usable(model: torch.nn.Module) -> None:
    """Refuse what extagg cannot run on: uninitialised (lazy) parameters or buffers, and inference mode."""
    if torch.is_inference_mode_enabled():
        raise InputError("saliency needs autograd, which torch.inference_mode() switches off; call extagg outside "
                         "the inference_mode block (torch.no_grad() around the call is fine: extagg turns grad "
                         "on where it needs it)")
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if torch.nn.parameter.is_lazy(t):
            raise InputError(f"the model has an uninitialised (lazy) parameter or buffer {name!r}; run one forward "
                             "pass on an input of the right shape first (model(example)) so that it gets its shape")


def _swap_buffers(modules: list[torch.nn.Module]) -> None:
    """Put a copy in place of every buffer (a buffer shared by several modules stays shared)."""
    copies: dict[int, torch.Tensor] = {}
    for m in modules:
        for name, b in m._buffers.items():
            if b is not None:
                if id(b) not in copies:
                    copies[id(b)] = b.detach().clone()
                m._buffers[name] = copies[id(b)]


def _write_back(tensor: torch.Tensor, value: torch.Tensor) -> None:
    """Copy ``value`` into ``tensor`` only where it changed (an unchanged tensor keeps its version counter)."""
    if tensor.shape != value.shape or not torch.equal(tensor, value):
        tensor.copy_(value)


class _Buffers:
    """A copy of every buffer's values, taken as one flat tensor per dtype and device; on restore, a group whose
    values are unchanged costs one comparison, a changed one is copied back buffer by buffer (where the buffer
    still has its original shape)."""

    def __init__(self, model: torch.nn.Module):
        self.groups: dict = {}
        for b in model.buffers():
            self.groups.setdefault((b.dtype, b.device), []).append((b, b.shape))
        self.flat = {key: _flat([b for b, _ in group]).clone() for key, group in self.groups.items()}

    def restore(self) -> None:
        for key, group in self.groups.items():
            before = self.flat[key]
            if torch.equal(_flat([b for b, _ in group]), before):
                continue
            start = 0
            for b, shape in group:
                n = shape.numel()
                if b.shape == shape:
                    b.copy_(before[start:start + n].view(shape))
                start += n


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _snapshot(module: torch.nn.Module, names: tuple[str, ...]) -> list[tuple[str, tuple]]:
    """The entries of the module's dicts ``names`` (those it has), as (name, items) pairs."""
    state = module.__dict__
    return [(name, tuple(state[name].items())) for name in names if name in state]


def _restore(module: torch.nn.Module, saved: list[tuple[str, tuple]]) -> None:
    """Make each saved dict of ``module`` hold exactly its saved entries (same objects, same order), in place."""
    for name, items in saved:
        current = getattr(module, name)
        if not items:
            if current:
                current.clear()
            continue
        if len(current) == len(items) and all(a == k and current[k] is v for a, (k, v) in zip(current, items)):
            continue
        current.clear()
        current.update(items)


def model_device_dtype(model: torch.nn.Module, fallback: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the model's first floating parameter or buffer (else the input's)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return fallback.device, fallback.dtype if fallback.is_floating_point() else torch.get_default_dtype()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Maps are computed in float32 for half and bfloat16 models, in the model's dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
