"""Model-parameter randomisation test (Adebayo et al. 2018), on a deep copy: the user's model is never touched.

For each named block (default: the model's top-level children that hold parameters, a container whose forward
never runs, such as a ``ModuleList`` of blocks, replaced by its children; ordered from the output back to the
input by the last time a parameterised module inside each block runs in one forward pass):

* **cascading**: blocks are re-initialised cumulatively, from the logits down;
* **independent**: one block at a time, all others trained.

After each step the maps for the class the *trained* model predicts are compared with the trained model's maps:
``spearman`` (signed), ``spearman_abs``, ``ssim`` and ``hog`` (see :func:`~extagg.evaluation.similarity.map_similarities`),
at the input resolution, next to two floors: the same similarity between trained maps of different images and
against a surrogate map of the same smoothness (``floor:cross-image``, ``floor:smooth-noise``; the built-in
``randomisation`` metric, :mod:`extagg_builtins.metrics`). Re-initialisation uses each module's own ``reset_parameters()`` (the layer's
default initialiser; Adebayo et al. re-draw with the layer's initialiser) with a fixed seed per block, so every
batch and both modes see the same random weights; normalisation layers get random gamma and beta (truncated
standard normal); BatchNorm running statistics (buffers) are kept.
"""
from __future__ import annotations

import math
from typing import Callable, Union

import torch

from ..errors import InputError, UnknownNameError
from ..guard import model_device_dtype
from ..layer_patterns import layer_filter
from ..layers import execution_order
from .common import any_pattern

Init = Union[str, Callable[[torch.nn.Module, torch.Generator], None]]
MODES = ("cascading", "independent", "both")


def _normal_(params, generator_seed: int) -> None:
    for i, p in enumerate(params):
        g = torch.Generator(device=p.device).manual_seed(generator_seed + i)
        std = math.sqrt(2.0 / p[0].numel()) if p.ndim >= 2 else 0.01
        p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype) * std)


NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
"""Normalisation layers whose affine parameters get random values (their ``reset_parameters`` sets 1 and 0)."""


def _randomise_norms(module: torch.nn.Module, seed: int) -> None:
    """Affine weight and bias of every normalisation layer under ``module``: truncated N(0, 1) in [-2, 2]."""
    i = 0
    for sub in module.modules():
        if not isinstance(sub, NORMS):
            continue
        for p in (sub.weight, sub.bias):
            if isinstance(p, torch.nn.Parameter):
                g = torch.Generator(device=p.device).manual_seed(seed + 104729 + i)
                p.copy_(torch.nn.init.trunc_normal_(torch.empty(p.shape, device=p.device, dtype=torch.float32),
                                                    generator=g).to(p.dtype))
                i += 1


def randomise_module(module: torch.nn.Module, seed: int, init: Init = "reset") -> None:
    """Re-initialise every parameter under ``module`` in place, deterministically from ``seed``; buffers kept.

    ``init``: ``"reset"`` (each submodule's ``reset_parameters()``; parameters no submodule resets get
    ``"normal"``), ``"normal"`` (He-normal for weights with >= 2 dims, N(0, 0.01^2) for 1-D parameters), or
    ``callable(module, generator)``. With ``"reset"`` and ``"normal"``, the affine weight and bias (gamma, beta)
    of normalisation layers (BatchNorm, InstanceNorm, GroupNorm, LayerNorm) are drawn from a standard normal
    truncated to [-2, 2] (their own ``reset_parameters`` would set the constants 1 and 0, which is not random).
    Buffers (BatchNorm running mean and variance) keep their trained values. The global RNG state is left
    unchanged.
    """
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    with torch.no_grad():
        if callable(init):
            devices = {p.device for p in module.parameters()} or {torch.device("cpu")}
            init(module, torch.Generator(device=next(iter(devices))).manual_seed(seed))
        elif init == "reset":
            covered: set[int] = set()
            with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
                torch.manual_seed(seed)
                for sub in module.modules():
                    reset = getattr(sub, "reset_parameters", None)
                    if callable(reset):
                        reset()
                        covered |= {id(p) for p in sub.parameters(recurse=False)}
            _normal_([p for p in module.parameters() if id(p) not in covered], seed)
            _randomise_norms(module, seed)
        elif init == "normal":
            _normal_(list(module.parameters()), seed)
            _randomise_norms(module, seed)
        else:
            raise InputError(f"init must be 'reset', 'normal' or a callable(module, generator), got {init!r}")
        for b, v in buffers:
            b.copy_(v)


def _has_params(module: torch.nn.Module) -> bool:
    return any(True for _ in module.parameters())


def execution_positions(model: torch.nn.Module, x: torch.Tensor) -> tuple[dict[str, int], set[str]]:
    """From one gradient-free forward pass of ``x`` (:func:`extagg.layers.execution_order`):
    ``({name: position}, called)``.

    ``position`` of a module with parameters is the last place in the pass at which a module with its own
    parameters at or under it finished running; modules nothing under which ran are absent. ``called`` holds
    the names of all modules whose ``forward`` ran (a ``ModuleList`` never does). The model is left as it was.
    """
    own = {n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    _, dtype = model_device_dtype(model, x)
    calls = [name.split("@")[0] for name, _ in execution_order(model, x.to(dtype))]
    positions: dict[str, int] = {}
    for pos, name in enumerate(n for n in calls if n in own):
        parts = name.split(".")
        for i in range(len(parts) + 1):
            positions[".".join(parts[:i])] = pos
    return positions, set(calls)


def _default_blocks(model: torch.nn.Module, called: set[str]) -> list[str]:
    """Top-level children with parameters; a container whose forward never runs (a ``ModuleList`` of blocks)
    is replaced by its children, recursively."""
    out: list[str] = []

    def visit(prefix: str, module: torch.nn.Module) -> None:
        for n, child in module.named_children():
            name = f"{prefix}{n}"
            if not _has_params(child):
                continue
            if name not in called and any(True for _ in child.children()):
                visit(name + ".", child)
            else:
                out.append(name)

    visit("", model)
    return out


def cascading_order(work: torch.nn.Module, randomise, x: torch.Tensor) -> list[str]:
    """Block names in cascading order: explicit names as given; the default blocks (see
    :func:`parameter_randomisation`) and pattern matches output first, by their :func:`execution_positions` on
    the input batch ``x`` (blocks nothing in which runs come last)."""
    modules = dict(work.named_modules())
    with_params = [n for n, m in modules.items() if n and _has_params(m)]
    items = None if randomise is None else ([randomise] if isinstance(randomise, str) else list(randomise))
    names: list[str] = []

    def add(n: str) -> None:
        if n not in modules:
            raise UnknownNameError("layer to randomise", n, with_params)
        if n not in with_params:
            raise InputError(f"layer {n!r} ({type(modules[n]).__name__}) has no parameters to randomise")
        if n not in names:
            names.append(n)

    if items is not None and not any_pattern(items):
        for n in items:
            add(n)
        return names
    positions, called = execution_positions(work, x)
    if items is None:
        names = _default_blocks(work, called)
    else:
        for p in items:
            found = layer_filter(with_params, p) if any_pattern([p]) else [p]
            if p not in modules and not found:
                raise UnknownNameError("layer to randomise", p, with_params)
            for n in found:
                add(n)
    if not names:
        raise InputError("no layer with parameters to randomise; pass randomise=[names]")
    return sorted(names, key=lambda n: -positions[n] if n in positions else math.inf)
