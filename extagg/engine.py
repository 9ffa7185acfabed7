"""``extagg.saliency``: every requested method at every requested layer from one forward and one backward pass."""
from __future__ import annotations

import contextlib
import warnings
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .aggregate import LayerEvaluator
from .capture import INPUT, LayerCapture, Probes, resolve_layers
from .errors import InputError, LayerMismatchError
from .guard import compute_dtype, model_device_dtype, preserved
from .method import Method
from .plugins import enter_modifier
from .registry import Registry, default_registry
from .result import SaliencyMaps
from .targets import (Objective, Targets, as_target_matrix, check_call_options, num_classes_of, objective_scores,
                      run_forward)

StrOrSeq = Union[str, Method, Sequence[Union[str, Method]]]


def _as_list(x: StrOrSeq, what: str) -> list:
    items = [x] if isinstance(x, (str, Method)) else list(x)
    if not items:
        raise InputError(f"no {what} given")
    return items


def check_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise InputError(f"images must be a torch.Tensor of shape (N, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise InputError(f"images must be 4-D (N, C, H, W), got shape {tuple(images.shape)}"
                         + ("; add a batch dimension with images[None]" if images.ndim == 3 else ""))
    if not images.is_floating_point():
        raise InputError(f"images must be floating point, got {images.dtype}; convert e.g. with images.float() / 255")
    if images.shape[0] == 0:
        raise InputError("images has an empty batch (N = 0)")
    if not torch.isfinite(images).all():
        bad = (~torch.isfinite(images)).nonzero()[0].tolist()
        raise InputError(f"images contain NaN or inf (first at index {tuple(bad)})")
    return images


def fits(registry: Registry, method: Method, module: Optional[torch.nn.Module]) -> bool:
    """Whether the method's extractor applies to the layer's module (None: the input image)."""
    spec = registry.extractors[method.extractor.name]
    return spec.applies_to is None or (module is not None and isinstance(module, spec.applies_to))


def check_layer_fit(registry: Registry, method: Method, layer: str, module: Optional[torch.nn.Module]) -> None:
    """Raise :class:`LayerMismatchError` if the method's extractor does not apply to the layer's module."""
    if not fits(registry, method, module):
        spec = registry.extractors[method.extractor.name]
        got = "the input image" if module is None else type(module).__name__
        want = " or ".join(t.__name__ for t in spec.applies_to)
        raise LayerMismatchError(
            f"extractor {spec.name!r} (in {str(method)!r}) needs a {want} layer, but {layer!r} is {got}; "
            "use an identity extractor (e.g. 'conv1x1', 'scaling') or choose a matching layer"
        )


def _backward(scores: torch.Tensor, probes: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of each target's summed score w.r.t. each probe, as (N, T, ...) tensors (one batched backward)."""
    if not scores.requires_grad:
        raise InputError("the objective does not depend on any requested layer (no gradient reaches it)")
    n, t = scores.shape

    def fill(grads):
        return [torch.zeros_like(p) if g is None else g for p, g in zip(probes, grads)]

    if t == 1:
        return [g[:, None] for g in fill(torch.autograd.grad(scores.sum(), probes, allow_unused=True))]
    seeds = torch.eye(t, dtype=scores.dtype, device=scores.device)[:, None, :].expand(t, n, t)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grads = torch.autograd.grad(scores, probes, grad_outputs=seeds, is_grads_batched=True,
                                        allow_unused=True, retain_graph=True)
        return [g.movedim(0, 1) for g in fill([None if g is None else g for g in grads])]
    except RuntimeError:  # an op without a batching rule: one backward per target on the same graph
        per_target = [fill(torch.autograd.grad(scores[:, k].sum(), probes, allow_unused=True, retain_graph=True))
                      for k in range(t)]
        return [torch.stack(gs, 1) for gs in zip(*per_target)]


def run_pass(model, images, needs: dict[str, set[str]], targets: Targets, objective: Optional[Objective],
             forward_kwargs: Optional[dict] = None):
    """One forward and one backward; returns ({layer: LayerCapture}, scores (N, T), targets (N, T) or None).

    The model must already be in the desired mode with parameter gradients off (see :func:`saliency`).
    """
    _, dtype = model_device_dtype(model, images)
    cdtype = compute_dtype(dtype)
    with torch.enable_grad():
        with Probes(model, needs) as probes:
            output = run_forward(model, probes.input_probe(images), forward_kwargs)
        probes.check()
        matrix = None if objective is not None else as_target_matrix(targets, images.shape[0], num_classes_of(output))
        scores, matrix = objective_scores(output, matrix, objective, n=images.shape[0])
        layers = list(needs)
        grads = _backward(scores, [probes.probes[layer] for layer in layers])
    captures = {}
    for layer, grad in zip(layers, grads):
        raw = probes.raw[layer]
        captures[layer] = LayerCapture(
            name=layer,
            module=probes.modules[layer],
            output=raw["output"].to(cdtype),
            input=raw["input"].to(cdtype) if "input" in raw else None,
            grad=grad.to(cdtype),
        )
    return captures, scores.detach(), (None if objective is not None else matrix)


def saliency(
    model: torch.nn.Module,
    images: torch.Tensor,
    methods: StrOrSeq = "linear-approx",
    layers: Union[str, Sequence[str]] = INPUT,
    targets: Targets = None,
    *,
    objective: Optional[Objective] = None,
    resize: Union[bool, tuple[int, int]] = False,
    eval_mode: bool = True,
    registry: Optional[Registry] = None,
    closed_forms: bool = True,
    mismatched: str = "raise",
    forward_kwargs: Optional[dict] = None,
) -> SaliencyMaps:
    """Saliency maps of every method at every layer, from one forward and one backward pass per pass modifier.

    :param model: any ``torch.nn.Module``; it is left exactly as it was (see :func:`extagg.guard.preserved`).
    :param images: (N, C, H, W) floating tensor; moved to the model's device and dtype.
    :param methods: method strings (``"scaling+sum"``, ``"normgrad"``, ``"conv3x3+relu+norm"``) or one string.
    :param layers: ``named_modules()`` names, ``"input"`` for the image, ``"name@k"`` for the k-th call of a module
        called several times per forward pass; one string or a sequence.
    :param targets: None (the predicted class), an int, N ints, or an (N, T) tensor (T maps per image).
    :param objective: ``callable(output) -> (N,) or (N, T)`` scores to explain instead of class logits.
    :param resize: False (layer resolution), True (the input's H, W) or an (H, W) size; bilinear,
        ``align_corners=False``. Maps are never normalised.
    :param eval_mode: run the model in eval mode (restored afterwards), as the paper and TorchRay do.
    :param mismatched: ``"raise"`` (default) if an extractor does not fit a layer (``conv`` on a ReLU), or
        ``"skip"`` to leave such (method, layer) pairs out of the result (for sweeps over many layers).
    :param closed_forms: False forces the generic path that materialises contributions in chunks (for tests).
    :param forward_kwargs: keyword arguments for every ``model(images, **forward_kwargs)`` call.
    :returns: :class:`SaliencyMaps` of (N, T, h, w) tensors in float32 (half/bfloat16 models) or the model's dtype.
    """
    registry = registry or default_registry()
    spelled = {}
    names: dict[Method, str] = {}  # each distinct method once, in order, with its canonical name
    for m in _as_list(methods, "methods"):
        method = registry.parse(m)
        name = names.setdefault(method, str(method))
        spelled[m if isinstance(m, str) else str(m)] = name
    layer_list = list(dict.fromkeys(_as_list(layers, "layers")))
    modules = resolve_layers(model, layer_list)
    if mismatched not in ("raise", "skip"):
        raise InputError(f"mismatched must be 'raise' or 'skip', got {mismatched!r}")
    pairs = []
    for method in names:
        for layer in layer_list:
            if fits(registry, method, modules[layer]):
                pairs.append((method, layer))
            elif mismatched == "raise":
                check_layer_fit(registry, method, layer, modules[layer])
    images = check_images(images)
    check_call_options(targets, objective, resize, forward_kwargs)
    device, dtype = model_device_dtype(model, images)
    images = images.to(device=device, dtype=dtype)

    passes: dict[tuple, list[tuple[Method, str]]] = {}
    for method, layer in pairs:
        passes.setdefault(method.modifiers, []).append((method, layer))

    maps: dict[tuple[str, str], torch.Tensor] = {}
    out_targets, out_scores = None, None
    size = tuple(images.shape[-2:]) if resize is True else (tuple(resize) if resize else None)
    plans = registry.memo("plans")  # each method's phase-2 plan, shared by all layers and calls
    for modifiers, group in passes.items():
        needs: dict[str, set[str]] = {}
        for method, layer in group:
            needs.setdefault(layer, set()).update(registry.extractors[method.extractor.name].needs)
        with preserved(model, weights=bool(modifiers)), contextlib.ExitStack() as stack:
            if eval_mode:
                model.eval()
            matrix = as_target_matrix(targets, images.shape[0], None) if objective is None else None
            for call in modifiers:
                enter_modifier(stack, registry.modifiers[call.name], model, images, matrix, **call.kwargs)
            for p in model.parameters():
                p.requires_grad_(False)
            captures, scores, matrix = run_pass(model, images, needs, targets, objective, forward_kwargs)
        out_targets = matrix if out_targets is None else out_targets
        out_scores = scores if out_scores is None else out_scores
        for layer in list(captures):  # one layer at a time, freeing its capture and caches when done
            evaluator = LayerEvaluator(registry, captures.pop(layer), closed_forms=closed_forms, plans=plans)
            by_extractor: dict = {}
            for method, at in group:
                if at == layer:
                    by_extractor.setdefault(method.extractor, []).append(method)
            for extractor, methods_here in by_extractor.items():
                evaluator.prefetch(extractor, methods_here)
                for method in methods_here:
                    m = evaluator.map(method)
                    if size is not None:
                        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                    maps[evaluator.plan(method).name, layer] = m
                evaluator.release(extractor)
            del evaluator
    ordered = {(names[m], layer): maps[names[m], layer] for m, layer in pairs}
    return SaliencyMaps(registry, ordered, spelled, out_targets, out_scores)
