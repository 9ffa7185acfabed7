"""Meta-saliency (Rebuffi et al. 2020, Sec. 4.3): the method evaluated on weights after one SGD step.

``meta(lr=0.002):normgrad`` takes one plain SGD step on the cross-entropy of the class being explained,
``theta' = theta - lr * grad_theta CE(model(x), c)`` (``negative=true``: ``theta + lr * grad``, an ascent step),
with the model in eval mode (BatchNorm uses and keeps its running statistics), then runs the method on ``theta'``.
The paper's ``theta - 2 eps grad`` with ``eps = 0.001`` is ``lr = 0.002``, the default. The step costs one extra
forward and backward pass, shared by every method and layer of the call that carries the same modifier.

One step explains one (image, class) pair: the updated weights depend on the class, so one pass cannot serve
several. :func:`meta_step` therefore accepts exactly one image and one target and raises
:class:`~extagg.errors.InputError` otherwise; :func:`saliency_per_example` (and :func:`meta_saliency`) loop over
the pairs and stack the maps, at one step and one pass per pair.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .errors import InputError
from .guard import preserved
from .targets import class_logits

DEFAULT_LR = 0.002
"""The paper's ``theta - 2 eps grad`` with ``eps = 0.001`` (TorchRay's function defaults to 1e-4, its scripts to 0.0025)."""


def check_lr(lr) -> Optional[str]:
    """None if ``lr`` is a usable learning rate, else what is wrong (used by the ``meta`` modifier's Param)."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        return "must be a finite number > 0 (use negative=true for a gradient-ascent step)"
    return None


def cross_entropy_of(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``target`` (N,) under ``output``: (N, C) logits, or (N, C, *spatial) for fully
    convolutional nets, where the target is repeated at every position and the CE averaged (as TorchRay does)."""
    if not isinstance(output, torch.Tensor) or output.ndim < 2:
        shape = f" of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else ""
        raise InputError(f"meta-saliency needs class logits (N, C) from the model, got {type(output).__name__}{shape}")
    target = target.to(output.device)
    if output.ndim > 2:
        target = target.view(-1, *([1] * (output.ndim - 2))).expand(output.shape[0], *output.shape[2:])
    return F.cross_entropy(output, target)


def _predicted(output: torch.Tensor) -> torch.Tensor:
    return class_logits(output).argmax(1)


@contextlib.contextmanager
def meta_step(model: torch.nn.Module, images: torch.Tensor, targets: Optional[torch.Tensor] = None, *,
              lr: float = DEFAULT_LR, negative: bool = False) -> Iterator[torch.nn.Module]:
    """Context manager: inside it the model holds ``theta -/+ lr * grad CE``; on exit it is restored bit for bit.

    The ``fn`` of the ``meta`` modifier. ``images`` is (1, C, H, W); ``targets`` a (1, 1) long tensor or None for
    the predicted class (taken from the step's own forward pass, so no extra pass is spent on it; if the step
    changes the predicted class, the pass inside the block raises :class:`InputError`, since it would explain
    another class than the one the step used). Every floating parameter takes the step, also those with
    ``requires_grad=False``; ``.grad`` is never written (gradients come from :func:`torch.autograd.grad`).
    The module modes inside the block are those on entry; the step itself runs in eval mode.
    """
    problem = check_lr(lr)
    if problem:
        raise InputError(f"meta-saliency lr {problem}, got {lr!r}")
    if not isinstance(negative, bool):
        raise InputError(f"meta-saliency negative must be True or False, got {negative!r}")
    if not isinstance(images, torch.Tensor) or images.ndim < 1:
        raise InputError(f"images must be a (1, C, H, W) tensor, got {type(images).__name__}")
    n = images.shape[0]
    t = 1 if targets is None else (targets.shape[1] if targets.ndim == 2 else 1)
    if n * t != 1:
        raise InputError(
            f"meta-saliency takes one SGD step per explained (image, class) pair, but this pass explains {n} "
            f"image(s) x {t} target(s); use extagg.meta.saliency_per_example(...) (or extagg.meta.meta_saliency) "
            "which runs one step and one pass per pair, or pass one image and one target"
        )
    with preserved(model, weights=True):
        params = [p for p in model.parameters() if p.is_floating_point()]
        modes = [(m, m.training) for m in model.modules()]
        flags = [p.requires_grad for p in params]
        try:
            model.eval()
            for p in params:
                p.requires_grad_(True)
            with torch.enable_grad():
                output = model(images)
                if not isinstance(output, torch.Tensor) or output.ndim < 2:
                    cross_entropy_of(output, torch.zeros(1, dtype=torch.long))  # raises the explanatory error
                if targets is None:
                    target = _predicted(output.detach())
                else:
                    target = targets.reshape(-1)[:1].to(device=output.device, dtype=torch.long)
                    if not 0 <= int(target) < output.shape[1]:
                        raise InputError(f"target {int(target)} is out of range: the model has {output.shape[1]} "
                                         f"classes (valid 0..{output.shape[1] - 1})")
                loss = cross_entropy_of(output, target)
                if negative:
                    loss = -loss
                grads = torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            for m, mode in modes:
                m.training = mode
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p.copy_(p - lr * g)
        handle = model.register_forward_hook(_same_class_check(target) if targets is None else _noop)
        try:
            yield model
        finally:
            handle.remove()


def _noop(*_args):
    return None


def _same_class_check(stepped: torch.Tensor):
    def hook(_module, _args, output):
        if isinstance(output, torch.Tensor) and output.ndim >= 2:
            now = _predicted(output.detach())
            if int(now) != int(stepped):
                raise InputError(
                    f"meta-saliency with targets=None: the step on the predicted class {int(stepped)} changed the "
                    f"prediction to {int(now)}; pass targets={int(stepped)} explicitly to explain that class"
                )
    return hook


def saliency_per_example(model: torch.nn.Module, images: torch.Tensor, methods="linear-approx",
                         layers: Union[str, Sequence[str]] = "input", targets=None, **kwargs):
    """:func:`extagg.saliency` run once per (image, target) pair, maps stacked to (N, T, h, w).

    For pass modifiers that take one example at a time (``meta``): each pair gets its own step and its own
    pass. Keyword arguments go to :func:`extagg.saliency`. Returns a :class:`~extagg.SaliencyMaps` as that does.
    """
    from .engine import check_images, saliency
    from .registry import default_registry
    from .result import SaliencyMaps
    from .targets import as_target_matrix

    images = check_images(images)
    n = images.shape[0]
    registry = kwargs.get("registry") or default_registry()
    matrix = as_target_matrix(targets, n, None) if kwargs.get("objective") is None else None
    rows = []
    for i in range(n):
        cols = [None] if matrix is None else [matrix[i:i + 1, k:k + 1] for k in range(matrix.shape[1])]
        rows.append([saliency(model, images[i:i + 1], methods, layers, col, **kwargs) for col in cols])
    first = rows[0][0]
    maps = {key: torch.cat([torch.cat([r[key] for r in row], 1) for row in rows], 0) for key in first}

    def stack(attr):
        if getattr(first, attr) is None:
            return None
        return torch.cat([torch.cat([getattr(r, attr) for r in row], 1) for row in rows], 0)

    return SaliencyMaps(registry, maps, dict(first._spelled), stack("targets"), stack("scores"))


def meta_call(lr: float = DEFAULT_LR, negative: bool = False) -> str:
    """The modifier prefix for these settings, e.g. ``"meta(lr=0.0025):"`` (defaults left out)."""
    problem = check_lr(lr)
    if problem:
        raise InputError(f"meta-saliency lr {problem}, got {lr!r}")
    params = [f"lr={float(lr)!r}"] if float(lr) != DEFAULT_LR else []
    params += ["negative=true"] if negative else []
    return "meta" + (f"({','.join(params)})" if params else "") + ":"


def meta_saliency(model: torch.nn.Module, images: torch.Tensor, methods="linear-approx",
                  layers: Union[str, Sequence[str]] = "input", targets=None, *, lr: float = DEFAULT_LR,
                  negative: bool = False, **kwargs):
    """Meta-saliency of every method at every layer for a batch: ``meta(lr, negative):method`` per example.

    ``methods`` are written without the modifier (``"normgrad"``); the result is keyed by the canonical meta
    strings (``"meta:conv1x1+norm"``) and also answers to the spelling given. Cost: one step and one pass per
    (image, target) pair. With one image and one target this is exactly ``extagg.saliency`` on the meta strings.
    """
    from .registry import default_registry

    registry = kwargs.get("registry") or default_registry()
    items = [methods] if isinstance(methods, str) else list(methods)
    if not items:
        raise InputError("no methods given")
    prefix = meta_call(lr, negative)
    prefixed = []
    for m in items:
        method = registry.parse(m)
        if any(c.name == "meta" for c in method.modifiers):
            raise InputError(f"method {str(m)!r} already has a meta modifier; give it to extagg.saliency, or drop "
                             "the 'meta:' prefix here")
        prefixed.append(prefix + str(method))
    result = saliency_per_example(model, images, prefixed, layers, targets, **kwargs)
    for m, p in zip(items, prefixed):
        result._spelled[str(m)] = registry.canonical(p)
    return result
