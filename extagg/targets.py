"""Objectives: which score is explained. By default the logit of the target class, ``+d logit / d activation``."""
from __future__ import annotations

import contextlib
import contextvars
import numbers
import sys
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

from .errors import ForwardError, InputError

Targets = Union[None, int, Sequence[int], torch.Tensor]
Objective = Callable[[torch.Tensor], torch.Tensor]


def as_target_matrix(targets: Targets, n: int, num_classes: Optional[int]) -> Optional[torch.Tensor]:
    """Targets as an (N, T) long tensor (CPU), validated; None stays None (explain the predicted class).

    Accepted: an int (same class for every image), a sequence or 1-D tensor of N ints (one per image), or an
    (N, T) tensor (T classes per image, giving (N, T, h, w) maps). NumPy integer scalars and integer arrays count
    as ints and tensors; floats and bools (Python's, NumPy's or torch's) are refused.
    """
    if targets is None:
        return None
    if isinstance(targets, bool):
        raise InputError(f"targets must be class indices, got {targets!r}")
    if isinstance(targets, numbers.Integral):  # a Python int or a NumPy integer scalar (np.int64(3))
        targets = int(targets)
        _check_long(targets)
        t = torch.full((n, 1), targets, dtype=torch.long)
    else:
        if _is_ndarray(targets):
            targets = _from_numpy(targets)
        if not isinstance(targets, torch.Tensor):
            try:
                targets = list(targets)
            except TypeError as exc:
                raise InputError(f"targets must be an int, N ints or an (N, T) tensor, got {targets!r}") from exc
            for v in targets:
                if isinstance(v, int) and not isinstance(v, bool):
                    _check_long(v)
            try:
                targets = torch.as_tensor(targets)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise InputError(f"targets must be an int, N ints or an (N, T) tensor, got {targets!r}") from exc
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise InputError(f"targets must be integer class indices, got dtype {targets.dtype}")
        t = targets.detach().to("cpu", torch.long)
        if t.ndim == 0:
            t = t.expand(n).reshape(n, 1)
        elif t.ndim == 1:
            if t.shape[0] != n:
                raise InputError(f"targets has {t.shape[0]} entries for {n} images; give one per image, "
                                 "an int for all, or an (N, T) tensor")
            t = t[:, None]
        elif t.ndim == 2:
            if t.shape[0] != n or t.shape[1] == 0:
                raise InputError(f"targets of shape {tuple(t.shape)} does not fit {n} images; expected ({n}, T), T >= 1")
        else:
            raise InputError(f"targets must be 0-, 1- or 2-D, got shape {tuple(t.shape)}")
    check_in_range(t, num_classes)
    return t


def check_in_range(t: Optional[torch.Tensor], num_classes: Optional[int]) -> None:
    """Raise :class:`InputError` if a target of the (N, T) matrix ``t`` is not a class of the model."""
    if t is None or num_classes is None:
        return
    bad = (t < 0) | (t >= num_classes)
    if bad.any():
        raise InputError(f"target {int(t[bad][0])} is out of range: the model has {num_classes} classes "
                         f"(valid 0..{num_classes - 1})")


def class_logits(output: torch.Tensor) -> torch.Tensor:
    """(N, C) class scores: the output itself, or summed over spatial dims for fully convolutional nets."""
    return output.flatten(2).sum(2) if output.ndim > 2 else output


def class_scores(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The (N, T) scores ``output[n, targets[n, t]]`` of :func:`class_logits`."""
    return class_logits(output).gather(1, targets.to(output.device))


def num_classes_of(output) -> Optional[int]:
    return output.shape[1] if isinstance(output, torch.Tensor) and output.ndim >= 2 else None


def objective_scores(output, targets: Optional[torch.Tensor], objective: Optional[Objective],
                     n: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (N, T), targets (N, T)) from the model's output; targets default to the predicted class. ``n``, the
    number of images, is checked against the objective's scores."""
    if objective is not None:
        scores = objective(output)
        if not isinstance(scores, torch.Tensor):
            raise InputError(f"objective must return a tensor of shape (N,) or (N, T), got {type(scores).__name__}")
        got = tuple(scores.shape)
        if scores.ndim == 1:
            scores = scores[:, None]
        if scores.ndim != 2 or (n is not None and scores.shape[0] != n) or scores.shape[1] == 0:
            raise InputError(f"objective must return one score per image, shape ({n or 'N'},) or ({n or 'N'}, T) "
                             f"with T >= 1, for {n or 'N'} images; got shape {got}")
        return scores, torch.arange(scores.shape[1]).expand(scores.shape[0], -1)
    if not isinstance(output, torch.Tensor) or output.ndim < 2:
        raise InputError(
            f"the model returned {type(output).__name__}"
            + (f" of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else "")
            + "; class targets need (N, C) logits; pass objective=callable(output) -> (N,) scores instead"
        )
    if targets is None:
        with torch.no_grad():
            targets = class_logits(output).argmax(1, keepdim=True).cpu()
    return class_scores(output, targets), targets


def _is_ndarray(x) -> bool:
    np = sys.modules.get("numpy")  # only where NumPy is already imported (the targets could not be arrays else)
    return np is not None and isinstance(x, np.ndarray)


def _from_numpy(a) -> torch.Tensor:
    """An integer NumPy array as a long tensor; any other dtype an :class:`InputError` naming it."""
    if a.dtype.kind not in "iu":
        raise InputError(f"targets must be integer class indices, got a NumPy array of dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and int(a.max()) >= 1 << 63:
        _check_long(int(a.max()))
    return torch.from_numpy(a.astype("int64"))


def _check_long(v: int) -> None:
    if not -(1 << 63) <= v < (1 << 63):
        raise InputError(f"target {v} is not a class index (out of the 64-bit integer range)")


def check_call_options(targets: Targets, objective: Optional[Objective], resize, forward_kwargs,
                       eval_mode=True) -> None:
    """The options of a saliency call that can be checked before any forward pass."""
    if not isinstance(eval_mode, bool):
        raise InputError(f"eval_mode must be True (eval mode, restored afterwards) or False (the model's own mode), "
                         f"got {type(eval_mode).__name__} {str(eval_mode)[:40]!r}")
    if objective is not None and targets is not None:
        raise InputError("give targets or objective, not both: with objective= the objective's (N, T) scores are "
                         "what is explained (select classes inside it), and targets would be ignored")
    if objective is not None and not callable(objective):
        raise InputError(f"objective must be callable(output) -> (N,) or (N, T) scores, got {type(objective).__name__}")
    if not isinstance(resize, bool):
        ok = isinstance(resize, (tuple, list)) and len(resize) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 15 for v in resize)
        if not ok:
            raise InputError(f"resize must be False, True or an (H, W) pair of sizes in 1..{1 << 15}, got {resize!r}")
    if forward_kwargs is not None and not (isinstance(forward_kwargs, dict)
                                           and all(isinstance(k, str) for k in forward_kwargs)):
        raise InputError(f"forward_kwargs must be a dict of keyword arguments, got {forward_kwargs!r}")


def run_forward(model: torch.nn.Module, x: torch.Tensor, forward_kwargs: Optional[dict] = None,
                replacements: Optional[dict] = None):
    """``model(x, **forward_kwargs)``, through :func:`torch.func.functional_call` with ``replacements``
    (``{name: tensor}``) where given; a forward pass that rejects the input (wrong channel count, a missing
    keyword argument) is a :class:`~extagg.errors.ForwardError` that says so."""
    try:
        if replacements:
            return torch.func.functional_call(model, replacements, (x,), dict(forward_kwargs or {}))
        return model(x, **(forward_kwargs or {}))
    except InputError:
        raise
    except (RuntimeError, TypeError) as e:
        hint = ("; pass the model's other arguments with forward_kwargs={...}" if isinstance(e, TypeError)
                and "argument" in str(e) else "")
        raise ForwardError(f"the model's forward pass failed on images of shape {tuple(x.shape)} "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:300]}){hint}") from e


_CALL_FORWARD_KWARGS: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("extagg_forward_kwargs",
                                                                                      default=None)


@contextlib.contextmanager
def forwarding(forward_kwargs: Optional[dict]) -> Iterator[None]:
    """Within the block, :func:`call_model` passes ``forward_kwargs`` (the saliency call's) to the model."""
    token = _CALL_FORWARD_KWARGS.set(forward_kwargs)
    try:
        yield
    finally:
        _CALL_FORWARD_KWARGS.reset(token)


def call_model(model: torch.nn.Module, x: torch.Tensor, replacements: Optional[dict] = None):
    """Run the model as the current :func:`extagg.saliency` call does: with its ``forward_kwargs`` and, where
    given, the ``replacements`` ``{name: tensor}`` through :func:`torch.func.functional_call`. For modifiers that
    run the model themselves (meta-saliency's SGD step), so that a model needing other arguments works."""
    return run_forward(model, x, _CALL_FORWARD_KWARGS.get(), replacements)
