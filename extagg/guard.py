"""Leave the user's model exactly as it was: mode flags, requires_grad, .grad, buffers, hooks."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

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
    tensor object), buffers (values copied back in place), and the registered hooks (hooks added inside the block
    are removed, hooks removed inside it are put back). The module structure is restored too: a parameter, buffer
    or submodule that was reassigned, added or deleted inside the block (``module.weight = nn.Parameter(...)``)
    is put back as the original object. With ``weights=True`` parameter values and the values of pre-existing
    ``.grad`` tensors are also copied back bit for bit (for code that updates them, such as meta-saliency).
    """
    modules = list(model.modules())
    training = [m.training for m in modules]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    grad_values = [None if g is None else g.detach().clone() for g in grads] if weights else None
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    values = [p.detach().clone() for p in params] if weights else None
    hooks = [{name: dict(getattr(m, name)) for name in _HOOK_DICTS if hasattr(m, name)} for m in modules]
    structure = [{name: dict(getattr(m, name)) for name in _STRUCTURE_DICTS} for m in modules]
    non_persistent = [set(getattr(m, "_non_persistent_buffers_set", ())) for m in modules]
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, saved, names in zip(modules, structure, non_persistent):
                for name, before in saved.items():
                    _restore_dict(getattr(m, name), before)
                if hasattr(m, "_non_persistent_buffers_set") and m._non_persistent_buffers_set != names:
                    m._non_persistent_buffers_set.clear()
                    m._non_persistent_buffers_set.update(names)
            for m, flag in zip(modules, training):
                m.training = flag
            for i, p in enumerate(params):
                if values is not None:
                    p.copy_(values[i])
                p.requires_grad_(flags[i])
                p.grad = grads[i]
                if grad_values is not None and grads[i] is not None:
                    grads[i].copy_(grad_values[i])
            for b, v in buffers:
                if b.shape == v.shape:
                    b.copy_(v)
            for m, saved in zip(modules, hooks):
                for name, before in saved.items():
                    _restore_dict(getattr(m, name), before)


def _restore_dict(current: dict, before: dict) -> None:
    """Make ``current`` hold exactly the entries of ``before`` (same objects, same order), in place."""
    if list(current) == list(before) and all(current[k] is v for k, v in before.items()):
        return
    current.clear()
    current.update(before)


def model_device_dtype(model: torch.nn.Module, fallback: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the model's first floating parameter or buffer (else the input's)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return fallback.device, fallback.dtype if fallback.is_floating_point() else torch.get_default_dtype()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Maps are computed in float32 for half and bfloat16 models, in the model's dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
