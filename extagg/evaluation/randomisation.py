"""Model-parameter randomisation test (Adebayo et al. 2018), on a deep copy: the user's model is never touched.

For each named block (default: the model's top-level children that hold parameters, from the output back to
the input in forward-call order):

* **cascading**: blocks are re-initialised cumulatively, from the logits down;
* **independent**: one block at a time, all others trained.

After each step the maps for the class the *trained* model predicts are compared with the trained model's maps:
``spearman`` (signed), ``spearman_abs``, ``ssim`` and ``hog`` (see :func:`~extagg.evaluation.similarity.map_similarities`),
at the input resolution. A **random-map baseline** per (method, layer) compares the trained maps with uniform
noise (subset ``"random-map"``). Re-initialisation uses each module's own ``reset_parameters()`` (the layer's
default initialiser; Adebayo et al. re-draw with the layer's initialiser) with a fixed seed per block, so every
batch and both modes see the same random weights; BatchNorm running statistics (buffers) are kept.
"""
from __future__ import annotations

import copy
import fnmatch
import math
from typing import Callable, Optional, Sequence, Union

import torch

from ..errors import InputError, UnknownNameError
from .common import any_pattern, batches, expand_layers, expand_methods, iterate, logits, model_inputs, run_saliency
from .common import progress as bar
from .records import Record, summarise
from .similarity import map_similarities

Init = Union[str, Callable[[torch.nn.Module, torch.Generator], None]]
MODES = ("cascading", "independent", "both")


def _normal_(params, generator_seed: int) -> None:
    for i, p in enumerate(params):
        g = torch.Generator(device=p.device).manual_seed(generator_seed + i)
        std = math.sqrt(2.0 / p[0].numel()) if p.ndim >= 2 else 0.01
        p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype) * std)


def randomise_module(module: torch.nn.Module, seed: int, init: Init = "reset") -> None:
    """Re-initialise every parameter under ``module`` in place, deterministically from ``seed``; buffers kept.

    ``init``: ``"reset"`` (each submodule's ``reset_parameters()``; parameters no submodule resets get
    ``"normal"``), ``"normal"`` (He-normal for weights with >= 2 dims, N(0, 0.01^2) for 1-D parameters), or
    ``callable(module, generator)``. The global RNG state is left unchanged.
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
        elif init == "normal":
            _normal_(list(module.parameters()), seed)
        else:
            raise InputError(f"init must be 'reset', 'normal' or a callable(module, generator), got {init!r}")
        for b, v in buffers:
            b.copy_(v)


def _blocks(work: torch.nn.Module, randomise, x: torch.Tensor) -> list[str]:
    """Block names in cascading order (output first)."""
    modules = dict(work.named_modules())
    with_params = [n for n, m in modules.items() if n and any(True for _ in m.parameters())]
    if randomise is None:
        names = [n for n, m in work.named_children() if any(True for _ in m.parameters())]
        explicit = False
    else:
        items = [randomise] if isinstance(randomise, str) else list(randomise)
        names, explicit = [], not any_pattern(items)
        for p in items:
            found = [n for n in with_params if fnmatch.fnmatchcase(n, p)] if any_pattern([p]) else [p]
            if p not in modules and not found:
                raise UnknownNameError("layer to randomise", p, with_params)
            for n in found:
                if n not in modules:
                    raise UnknownNameError("layer to randomise", n, with_params)
                if n not in with_params:
                    raise InputError(f"layer {n!r} ({type(modules[n]).__name__}) has no parameters to randomise")
                if n not in names:
                    names.append(n)
    if not names:
        raise InputError("no layer with parameters to randomise; pass randomise=[names]")
    if explicit:
        return names
    order: list[str] = []
    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: order.append(n) if n not in order else None)
               for n in names]
    try:
        logits(work, x)
    finally:
        for h in handles:
            h.remove()
    return sorted(names, key=lambda n: -order.index(n) if n in order else math.inf)


def parameter_randomisation(model: torch.nn.Module, data, methods, layers="input", *,
                            randomise: Optional[Union[str, Sequence[str]]] = None, mode: str = "both",
                            init: Init = "reset", seed: int = 0, preprocess=None, batch_size: int = 8,
                            limit: Optional[int] = None, hog_cell: int = 16, baseline: bool = True,
                            progress: bool = False, registry=None, mismatched: Optional[str] = None) -> list[Record]:
    """Similarity of every (method, layer) map to the trained model's map under parameter randomisation.

    :param randomise: block names or patterns (cascading order as given for explicit names; output-first
        forward order for the default and for patterns).
    :param mode: ``"cascading"``, ``"independent"`` or ``"both"``. :param init: see :func:`randomise_module`.
    :param hog_cell: HOG cell size in pixels (maps need at least 3 cells per side).
    :returns: records with subsets ``"cascading:<block>"`` (cumulative through that block),
        ``"independent:<block>"`` and ``"random-map"``; metrics ``spearman``, ``spearman_abs``, ``ssim``,
        ``hog`` (each with ``_std`` and ``_nan``, see :func:`~extagg.evaluation.records.summarise`).
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    method_list = expand_methods(methods, registry)
    layer_list = expand_layers(model, layers)
    mismatched = mismatched or ("skip" if any_pattern(methods, layers) else "raise")
    work = copy.deepcopy(model)
    trained = copy.deepcopy(work.state_dict())
    order: Optional[list[str]] = None
    noise: Optional[torch.Generator] = None
    values: dict[tuple[str, str, str], dict[str, list[torch.Tensor]]] = {}

    def run(x, targets):
        return run_saliency(work, x, method_list, layer_list, targets=targets, resize=True,
                            mismatched=mismatched, registry=registry)

    def compare(subset, base, other):
        for key, m in base.items():
            sims = map_similarities(m, other[key], hog_cell=hog_cell)
            slot = values.setdefault((*key, subset), {})
            for metric, v in sims.items():
                slot.setdefault(metric, []).append(v.flatten().cpu())

    for group in bar(batches(iterate(data, limit), batch_size), progress, None, "randomisation"):
        work.load_state_dict(trained)
        x = model_inputs(work, [s.image for s in group], preprocess)
        if order is None:
            order = _blocks(work, randomise, x)
        base, targets = run(x, None)
        if baseline:
            if noise is None:
                noise = torch.Generator(device=x.device).manual_seed(seed)
            compare("random-map", base, {k: torch.rand(m.shape, generator=noise, device=m.device, dtype=m.dtype)
                                         for k, m in base.items()})
        if mode in ("cascading", "both"):
            for i, block in enumerate(order):
                randomise_module(work.get_submodule(block), seed + 7919 * (i + 1), init)
                compare(f"cascading:{block}", base, run(x, targets)[0])
        if mode in ("independent", "both"):
            for i, block in enumerate(order):
                work.load_state_dict(trained)
                randomise_module(work.get_submodule(block), seed + 7919 * (i + 1), init)
                compare(f"independent:{block}", base, run(x, targets)[0])
    records: list[Record] = []
    for (method, layer, subset), slot in values.items():
        for metric, parts in slot.items():
            records += summarise(torch.cat(parts), method, layer, subset, metric)
    return records
