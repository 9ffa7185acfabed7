"""Modified backward rules, installed on a model for one ``with`` block and removed exactly (Zennit-style lifetime).

A :class:`Rule` decides, for every leaf module of the model, how the backward pass through it is changed:

* ``None``: the module keeps its ordinary gradient;
* a :class:`Swap`: the module's gradient with respect to its input is *replaced* by ``Swap.backward``;
* a :class:`Modulate`: the gradient arriving at the module's output is transformed before the module's ordinary
  backward runs (LRP-epsilon's ``g z / (z + eps sign z)``);
* or it raises :class:`UnsupportedLayerError` naming the layer, before anything runs.

The forward pass is never changed: each hooked module's output is replaced by a copy with the same values
(bit for bit) whose ``grad_fn`` is the rule. A module called several times in one forward pass is handled per
call. In-place modules (``ReLU(inplace=True)``) get a copy of their input, so the rule sees the value before the
in-place change. Functional activations (``torch.relu(x)`` in a ``forward``) cannot carry a rule; while the
model runs, a :class:`torch.overrides.TorchFunctionMode` watches for the functions the rule names in
``refused_functions`` and raises :class:`UnsupportedLayerError` naming the module whose ``forward`` called it.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Callable, Iterator, Optional, Sequence

import attrs
import torch
from torch.overrides import TorchFunctionMode

from .errors import InputError, InvalidMethodError


class UnsupportedLayerError(InputError):
    """A propagation rule met a layer (module or functional call) it has no backward rule for. An
    :class:`~extagg.errors.InputError`: the model, as given, cannot be explained with that rule."""


@attrs.frozen
class Swap:
    """Replace the module's input gradient: ``state = prepare(module, x, y)`` during the forward pass (a tuple of
    tensors and other objects, taken before anything can change ``x`` or ``y`` in place), then
    ``backward(grad_y, *state) -> grad_x``. ``backward`` must be written with vmap-able torch operations (several
    targets are back-propagated at once with ``is_grads_batched``).
    """

    prepare: Callable[..., tuple]
    backward: Callable[..., torch.Tensor]


@attrs.frozen
class Modulate:
    """Transform the gradient at the module's output, then let the module's own backward run:
    ``state = prepare(module, x, y)`` during the forward pass, ``backward(grad_y, *state) -> new grad_y``
    (LRP-epsilon's ``g * z / (z + eps sign z)``; guided backprop's ``max(g, 0)`` before ReLU's own mask)."""

    prepare: Callable[..., tuple]
    backward: Callable[..., torch.Tensor]


KEEP = attrs.make_class("Keep", [], repr=False)()
"""Handler for a module the rule knows and leaves with its ordinary gradient (functions it calls are trusted)."""

Handler = Optional[object]


@attrs.frozen
class Rule:
    """A propagation rule: ``handler(name, module) -> None | KEEP | Swap | Modulate`` for every leaf module (may
    raise :class:`UnsupportedLayerError`), and the functions that must not be called while the model runs outside
    a module the rule knows (``{function: why}``; the error names the calling module). ``None`` means "not the
    rule's business": the module keeps its gradient, but refused functions it calls are still refused."""

    name: str
    handler: Callable[[str, torch.nn.Module], Handler]
    refused_functions: dict = attrs.field(factory=dict)
    units: tuple = ()


class _Replace(torch.autograd.Function):
    """Forward: a copy of ``y``. Backward: ``backward(grad, *state)`` becomes the gradient of ``x``; ``state``
    may mix tensors (saved for backward) and other objects (kept as they are)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, y, backward, *state):
        return y.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        state = inputs[3:]
        ctx.rule_backward = inputs[2]
        ctx.layout = [None if isinstance(s, torch.Tensor) else s for s in state]
        ctx.save_for_backward(*(s for s in state if isinstance(s, torch.Tensor)))

    @staticmethod
    def backward(ctx, grad):
        tensors = iter(ctx.saved_tensors)
        state = [next(tensors) if s is None else s for s in ctx.layout]
        return (ctx.rule_backward(grad, *state), None, None) + (None,) * len(state)


class _Calls:
    """Per-module stack of the inputs seen by the pre-hook (one entry per call in progress)."""

    def __init__(self):
        self.inputs: dict[int, list] = {}


class _Watch(TorchFunctionMode):
    """Raise on refused functions called while the model runs outside a module that handles them."""

    def __init__(self, refused: dict, where: Callable[[], Optional[str]]):
        super().__init__()
        self.refused = refused
        self.where = where

    def __torch_function__(self, func, types, args=(), kwargs=None):
        why = self.refused.get(func)
        if why is not None:
            layer = self.where()
            if layer is not None:
                raise UnsupportedLayerError(why(layer, func))
        return func(*args, **(kwargs or {}))


def _function_name(func) -> str:
    module = getattr(func, "__module__", None) or ""
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    if module.startswith("torch.nn.functional"):
        return f"torch.nn.functional.{qual}"
    if qual.startswith("TensorBase.") or qual.startswith("Tensor."):
        return "Tensor." + qual.split(".", 1)[1]
    if qual.startswith("_VariableFunctionsClass."):
        return "torch." + qual.split(".", 1)[1]
    return f"torch.{qual}" if not module or module == "torch" or module.startswith("torch._C") else f"{module}.{qual}"


_ACTIVE: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()
_ACTIVE_LOCK = threading.Lock()


def _claim(rule: Rule, handled: dict) -> list:
    """Mark the modules ``rule`` decides as taken for the block; a module another rule already decides is an
    :class:`InvalidMethodError`: two rules (``guided:deconvnet:...``, or one rule twice) cannot both define its
    backward, and installing the second would silently override or compound the first."""
    with _ACTIVE_LOCK:
        for name, (module, _) in handled.items():
            other = _ACTIVE.get(module)
            if other is not None:
                raise InvalidMethodError(
                    f"propagation rules {other!r} and {rule.name!r} both define the backward pass of layer "
                    f"{name or type(module).__name__!r} ({type(module).__name__}); rules cannot be stacked in one "
                    f"method (as in '{other}:{rule.name}:...'): use one rule per method")
        modules = [module for module, _ in handled.values()]
        for module in modules:
            _ACTIVE[module] = rule.name
    return modules


def _release(modules: list) -> None:
    with _ACTIVE_LOCK:
        for module in modules:
            _ACTIVE.pop(module, None)


def plan(rule: Rule, model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, object]]:
    """``{name: (module, handler)}`` for the modules the rule knows (``KEEP`` included); raises before anything
    is installed. Leaf modules are asked, and so are modules of ``rule.units`` whatever their children (a conv
    subclass that pads through a child module); the children of a unit are the unit's business."""
    out: dict = {}
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(unit + ".") for unit in inside):
            continue
        if next(module.children(), None) is not None and not isinstance(module, rule.units):
            continue
        handler = rule.handler(name or type(model).__name__, module)
        if next(module.children(), None) is not None:
            inside.append(name)
        if handler is not None:
            out[name] = (module, handler)
    return out


@contextlib.contextmanager
def rules_installed(model: torch.nn.Module, rule: Rule) -> Iterator[None]:
    """Inside the block, every forward pass of ``model`` builds a graph whose backward follows ``rule``.

    Hooks are registered on entry and removed on exit, also when the block raises; nothing else about the model
    changes (parameters, buffers, flags, modes are not touched). The forward output is unchanged bit for bit.
    A rule entered while another one decides some of the same modules (``KEEP`` included) is an
    :class:`InvalidMethodError` naming both: stacked rules have no defined composition.
    """
    handled = plan(rule, model)
    claimed = _claim(rule, handled)
    calls = _Calls()
    handles: list = []
    running: list[str] = []   # the stack of modules whose forward is executing (names)
    inside_handled = [0]
    handled_ids = {id(m) for m, _ in handled.values()}

    def pre_for(handler):
        copy = isinstance(handler, Swap)   # a Swap routes to x: an in-place module must not overwrite it

        def pre(module, args):
            if not args or not isinstance(args[0], torch.Tensor):
                return None
            x = args[0]
            calls.inputs.setdefault(id(module), []).append(x)
            if copy and getattr(module, "inplace", False):
                return (x.clone(), *args[1:])
            return None
        return pre

    def post_for(handler):
        def post(module, args, y):
            stack = calls.inputs.get(id(module))
            x = stack.pop() if stack else None
            if x is None or not isinstance(y, torch.Tensor) or not y.is_floating_point():
                return None
            if isinstance(handler, Modulate):
                if not y.requires_grad:
                    return None
                with torch.no_grad():
                    state = tuple(handler.prepare(module, x.detach(), y.detach()))
                return _Replace.apply(y, y.detach(), handler.backward, *state)
            if not x.requires_grad:
                return None
            with torch.no_grad():
                state = tuple(handler.prepare(module, x.detach(), y.detach()))
            return _Replace.apply(x, y.detach(), handler.backward, *state)
        return post

    def enter(name):
        def hook(module, args):
            running.append(name)
            if id(module) in handled_ids:
                inside_handled[0] += 1
        return hook

    def leave(module, args, output):
        if running:
            running.pop()
        if id(module) in handled_ids:
            inside_handled[0] -= 1

    def where() -> Optional[str]:
        if not running or inside_handled[0]:
            return None
        return running[-1]

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(enter(name or f"<{type(model).__name__}>")))
        for module, handler in handled.values():
            if handler is KEEP:
                continue
            # prepended: the rule sees the module's own output and input before any other hook (a layer probe
            # added earlier must receive the rule's output, not be cut off by it), whatever the order of entry
            handles.append(module.register_forward_pre_hook(pre_for(handler), prepend=True))
            handles.append(module.register_forward_hook(post_for(handler), prepend=True))
        for module in model.modules():
            handles.append(module.register_forward_hook(leave, always_call=True))
        with _Watch(_describe(rule), where) if rule.refused_functions else contextlib.nullcontext():
            yield
    finally:
        for h in handles:
            h.remove()
        handles.clear()
        calls.inputs.clear()
        _release(claimed)


def _describe(rule: Rule) -> dict:
    def message(reason: str):
        def text(layer, func):
            return (f"propagation rule {rule.name!r}: layer {layer!r} calls {_function_name(func)} in its forward, "
                    f"which cannot carry the rule ({reason}); use the module form (e.g. torch.nn.ReLU) in the "
                    "model, or a method without this rule")
        return text
    return {f: message(reason) for f, reason in rule.refused_functions.items()}


def refuse_modules(rule_name: str, name: str, module: torch.nn.Module, supported: Sequence[type]) -> None:
    """Raise :class:`UnsupportedLayerError` for ``module``, listing what the rule supports."""
    listed = ", ".join(sorted({t.__name__ for t in supported}))
    raise UnsupportedLayerError(
        f"propagation rule {rule_name!r} has no backward rule for layer {name!r} ({type(module).__name__}); "
        f"it handles: {listed}. Use a method without this rule for this model, or replace the layer"
    )
