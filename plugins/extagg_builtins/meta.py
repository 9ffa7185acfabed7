"""The built-in ``meta`` pass modifier: meta-saliency (Rebuffi et al. 2020, Sec. 4.3): the method evaluated on weights after one SGD step.

``meta(lr=0.002):normgrad`` takes one plain SGD step on the cross-entropy of the class being explained,
``theta' = theta - lr * grad_theta CE(model(x), c)`` (``negative=true``: ``theta + lr * grad``, an ascent step),
with the model in eval mode (BatchNorm uses and keeps its running statistics), then runs the method on ``theta'``.
The paper's ``theta - 2 eps grad`` with ``eps = 0.001`` is ``lr = 0.002``, the default. The step costs one extra
forward and backward pass, shared by every method and layer of the call that carries the same modifier.

One step explains one (image, class) pair: the updated weights depend on the class, so one pass cannot serve
several. The modifier is registered with ``per_example=True``: :func:`extagg.saliency` refuses a batch for it
and :func:`extagg.saliency_per_example` (and :func:`meta_saliency`) loop over the pairs and stack the maps, at one
step and one pass per pair. The step is functional (``stateless=True``): the stepped weights are new tensors the
pass reads through :func:`torch.func.functional_call`, and the model's own tensors are never written.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F

import extagg
from extagg.plugin import InputError, call_model, class_logits

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
              lr: float = DEFAULT_LR, negative: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Context manager yielding the stepped parameters ``{name: theta -/+ lr * grad CE}``; the model's own tensors
    are never written (so a graph the caller holds stays valid).

    The ``fn`` of the ``meta`` modifier: extagg runs the pass with these parameters through
    :func:`torch.func.functional_call`. ``images`` is (1, C, H, W); ``targets`` a (1, 1) long tensor or None for
    the predicted class (taken from the step's own forward pass, so no extra pass is spent on it; if the step
    changes the predicted class, a pass inside the block raises :class:`InputError`, since it would explain
    another class than the one the step used). Every floating parameter takes the step, also those with
    ``requires_grad=False``; gradients come from :func:`torch.autograd.grad` on detached copies, so ``.grad`` and
    ``requires_grad`` are never touched. The step runs in eval mode; module modes are restored before the block.
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
            f"image(s) x {t} target(s); use extagg.saliency_per_example(...) (or extagg_builtins.meta.meta_saliency) "
            "which runs one step and one pass per pair, or pass one image and one target"
        )
    leaves = {name: p.detach().requires_grad_(True) for name, p in model.named_parameters() if p.is_floating_point()}
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.enable_grad():
            output = call_model(model, images, leaves)
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
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    finally:
        for m, mode in modes:
            m.training = mode
    stepped = {name: p.detach() if g is None else p.detach() - lr * g for (name, p), g in zip(leaves.items(), grads)}
    handle = model.register_forward_hook(_same_class_check(target) if targets is None else _noop)
    try:
        yield stepped
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


def meta_call(lr: float = DEFAULT_LR, negative: bool = False) -> str:
    """The modifier prefix for these settings, e.g. ``"meta(lr=0.0025):"`` (defaults left out)."""
    problem = check_lr(lr)
    if problem:
        raise InputError(f"meta-saliency lr {problem}, got {lr!r}")
    params = [f"lr={float(lr)!r}"] if float(lr) != DEFAULT_LR else []
    params += ["negative=true"] if negative else []
    return "meta" + (f"({','.join(params)})" if params else "") + ":"


def meta_saliency(model: torch.nn.Module, images: torch.Tensor, methods, layers: Union[str, Sequence[str]] = "input",
                  targets=None, *, lr: float = DEFAULT_LR, negative: bool = False, **kwargs):
    """Meta-saliency of every method at every layer for a batch: ``meta(lr, negative):method`` per example.

    ``methods`` are written without the modifier (``"normgrad"``); the result is keyed by the canonical meta
    strings (``"meta:conv1x1+norm"``) and also answers to the spelling given. Cost: one step and one pass per
    (image, target) pair. With one image and one target this is exactly ``extagg.saliency`` on the meta strings.
    """
    registry = kwargs.get("registry") or extagg.default_registry()
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
    result = extagg.saliency_per_example(model, images, prefixed, layers, targets, **kwargs)
    return result.with_spellings({str(m): registry.canonical(p) for m, p in zip(items, prefixed)})
