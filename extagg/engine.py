"""``extagg.saliency``: every requested method at every requested layer from one forward and one backward pass.

The call reads as its data path: :func:`parse_request` (methods, layers, images, targets: each resolved once)
-> :func:`capture_pass` (forward with probes, one batched backward) -> :func:`extagg.phase2.evaluate_layer`
(maps per layer) -> :class:`SaliencyMaps`. Pass modifiers split the methods into passes, one per modifier set.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Optional, Sequence, Union

import attrs
import torch

from .capture import INPUT, LayerCapture, Probes
from .errors import InputError, LayerMismatchError, PluginContractError, ZeroGradientWarning
from .guard import compute_dtype, model_device_dtype, preserved
from .layer_request import resolve_requested_layers
from .layouts import told_per_layer
from .method import Method
from .multipass import evaluate_samples, multipass_of
from .phase2 import evaluate_layer
from .plugins import enter_modifier
from .registry import Registry, default_registry
from .result import SaliencyMaps
from .tokens import layer_form, spatial_capture, usable
from .targets import (Objective, Targets, as_target_matrix, check_call_options, check_in_range, num_classes_of,
                      forwarding, objective_scores, run_forward)
from .util import as_list

StrOrSeq = Union[str, Method, Sequence[Union[str, Method]]]


def check_images(images) -> torch.Tensor:
    """``images`` if it is a finite floating (N, C, H, W) tensor with N >= 1; an :class:`InputError` otherwise."""
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
    if module is None:
        return spec.applies_to is None or spec.applies_to_input
    return spec.applies_to is None or isinstance(module, spec.applies_to)


def check_layer_fit(registry: Registry, method: Method, layer: str, module: Optional[torch.nn.Module]) -> None:
    """Raise :class:`LayerMismatchError` if the method's extractor does not apply to the layer's module."""
    if not fits(registry, method, module):
        spec = registry.extractors[method.extractor.name]
        got = "the input image" if module is None else type(module).__name__
        want = " or ".join([t.__name__ for t in spec.applies_to] + (["'input'"] if spec.applies_to_input else []))
        raise LayerMismatchError(
            f"extractor {spec.name!r} (in {str(method)!r}) needs a {want} layer, but {layer!r} is {got}; "
            "use an extractor without a layer type (e.g. 'conv1x1', 'scaling') or choose a matching layer"
        )


@attrs.frozen
class Request:
    """One call of :func:`saliency`, resolved once: canonical methods, layers and their modules, the images on
    the model's device and dtype, the target matrix, and the (method, layer) pairs grouped into passes."""

    names: dict  # Method -> canonical string, each distinct method once, in order
    spelled: dict  # as the user wrote it -> canonical string
    modules: dict  # layer -> module (None: the input)
    pairs: list  # (Method, layer) in result order
    passes: dict  # modifiers -> [(Method, layer)]
    images: torch.Tensor
    targets: Optional[torch.Tensor]  # (N, T) long, range not yet checked; None: the predicted class
    size: Optional[tuple]
    forward_kwargs: Optional[dict] = None
    told: dict = attrs.field(factory=dict)  # layer -> extagg.layouts.Told: the layout / token grid the call states
    mismatched: str = "raise"


def parse_request(registry: Registry, model: torch.nn.Module, images, methods: StrOrSeq, layers, targets: Targets,
                  *, objective: Optional[Objective], resize, mismatched: str,
                  forward_kwargs: Optional[dict] = None, token_grid=None, layout=None,
                  eval_mode: bool = True) -> Request:
    """Parse and check everything about a call before the model runs."""
    spelled, names = {}, {}
    for m in as_list(methods, "methods", atoms=(str, Method)):
        method = registry.parse(m)
        spelled[m if isinstance(m, str) else str(m)] = names.setdefault(method, str(method))
    if mismatched not in ("raise", "skip"):
        raise InputError(f"mismatched must be 'raise' or 'skip', got {mismatched!r}")
    images = check_images(images)
    check_call_options(targets, objective, resize, forward_kwargs, eval_mode)
    device, dtype = model_device_dtype(model, images)
    images = images.to(device=device, dtype=dtype)
    layer_list, modules = resolve_requested_layers(model, layers, images, forward_kwargs)
    pairs = []
    for method in names:
        for layer in layer_list:
            if fits(registry, method, modules[layer]):
                pairs.append((method, layer))
            elif mismatched == "raise":
                check_layer_fit(registry, method, layer, modules[layer])
    passes: dict = {}
    for method, layer in pairs:
        passes.setdefault(method.modifiers, []).append((method, layer))
    for modifiers in passes:
        multipass_of(registry, modifiers)  # at most one multi-pass modifier per method
    matrix = as_target_matrix(targets, images.shape[0], None) if objective is None else None
    size = tuple(images.shape[-2:]) if resize is True else (tuple(resize) if resize else None)
    return Request(names, spelled, modules, pairs, passes, images, matrix, size, forward_kwargs,
                   told_per_layer(layer_list, token_grid, layout), mismatched)


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
        return [g.movedim(0, 1) for g in fill(list(grads))]
    except RuntimeError:  # an op without a batching rule: one backward per target on the same graph
        per_target = [fill(torch.autograd.grad(scores[:, k].sum(), probes, allow_unused=True, retain_graph=True))
                      for k in range(t)]
        return [torch.stack(gs, 1) for gs in zip(*per_target)]


def _warn_zero(layers: list, grads: list, scores: torch.Tensor) -> None:
    """A :class:`~extagg.errors.ZeroGradientWarning` naming the layers where the gradient is exactly zero on the
    map's grid (a token layer: its patch tokens)."""
    zero = [layer for layer, grad in zip(layers, grads) if grad is not None and not bool(grad.any())]
    if zero:
        shown = ", ".join(map(repr, zero[:6])) + (", ..." if len(zero) > 6 else "")
        head = "at every requested layer" if len(zero) == len(layers) else f"at {len(zero)} of {len(layers)} layers"
        warnings.warn(ZeroGradientWarning(
            f"the gradient of the explained score (scores {scores.detach().flatten()[:4].tolist()}) is exactly zero "
            f"{head} ({shown}), so their maps are all zero and say nothing about the input: a classifier head "
            "whose weights are all zero (a randomly initialised torchvision ViT's), the last block of a ViT whose "
            "head reads only the class token (its patch tokens get no gradient), or a score that does not depend "
            "on the layer; load trained weights, choose an earlier layer or explain another score", zero),
            stacklevel=4)


def run_pass(model, images, needs: dict[str, set[str]], targets: Optional[torch.Tensor],
             objective: Optional[Objective], modules: Optional[dict] = None, replacements: Optional[dict] = None,
             forward_kwargs: Optional[dict] = None, told: Optional[dict] = None, backward: bool = True):
    """One forward and one backward; returns ({layer: LayerCapture}, scores (N, T), targets (N, T) or None).

    The model must already be in the desired mode with parameter gradients off (see :func:`saliency`);
    ``targets`` is an (N, T) matrix from :func:`extagg.targets.as_target_matrix`, or None. ``replacements``
    (``{name: tensor}``) run the forward through :func:`torch.func.functional_call` with those tensors;
    ``forward_kwargs`` are the model's other keyword arguments. A channels-last layer's capture is permuted to
    (N, C, h, w) and a token layer's put on its patch grid, as ``told`` (``{layer: extagg.layouts.Told}``) states
    or the model declares (:mod:`extagg.layouts`, :mod:`extagg.tokens`).
    """
    cdtype = compute_dtype(images.dtype)
    told = told or {}
    with torch.enable_grad() if backward else torch.no_grad():
        with Probes(model, needs, modules, witness=True) as probes:
            x = probes.input_probe(images)
            output = run_forward(model, x, forward_kwargs, replacements)
        probes.check()
        n, shape = images.shape[0], tuple(images.shape)
        forms = {layer: layer_form(LayerCapture(layer, probes.modules[layer], probes.raw[layer]["output"]), n, shape,
                                   told.get(layer), model, probes.witness) for layer in needs}  # before the backward
        if objective is None:
            check_in_range(targets, num_classes_of(output))
        scores, matrix = objective_scores(output, None if objective is not None else targets, objective,
                                          n=images.shape[0])
        layers = list(needs)
        if layers and backward:
            grads = _backward(scores, [probes.probes[layer] for layer in layers])
        else:  # activations only (a multi-pass modifier that brings its own gradients)
            grads = [None] * len(layers)
    captures = {}
    for layer, grad in zip(layers, grads):
        raw = probes.raw[layer]
        captures[layer] = spatial_capture(LayerCapture(
            name=layer,
            module=probes.modules[layer],
            output=raw["output"].to(cdtype),
            input=raw["input"].to(cdtype) if "input" in raw else None,
            grad=None if grad is None else grad.to(cdtype),
            training=raw.get("training"),
        ), forms[layer])
    _warn_zero(layers, [captures[layer].grad for layer in layers], scores)
    return captures, scores.detach(), (None if objective is not None else matrix)


def group_needs(registry: Registry, group: list) -> dict[str, set[str]]:
    """``{layer: what its extractors need}`` for (method, layer) pairs."""
    needs: dict[str, set[str]] = {}
    for method, layer in group:
        needs.setdefault(layer, set()).update(registry.extractors[method.extractor.name].needs)
    return needs


def capture_pass(registry: Registry, model, request: Request, modifiers: tuple, group: list, *,
                 objective: Optional[Objective], eval_mode: bool, runs=None):
    """The captures of one pass: the model in eval mode (if asked), the pass modifiers entered, parameter
    gradients off; the model is restored afterwards, also after an exception.

    ``runs`` (multi-pass modifiers, :mod:`extagg.multipass`): called as ``runs(run)`` inside the same context,
    where ``run(images, targets, needs, backward=True)`` is :func:`run_pass` on the entered modifiers; its value is returned."""
    needs = group_needs(registry, group)
    specs = [registry.modifiers[call.name] for call in modifiers]
    for spec in specs:
        _check_pairs(spec, request)
    if runs is not None and request.targets is None and objective is None:
        # the samples explain each real image's predicted class (by the model as given), and the one-pass
        # modifiers are entered with it, so none of them re-derives a class from a noisy copy
        request = attrs.evolve(request, targets=_predicted_targets(model, request, eval_mode))
    with preserved(model, weights=not all(spec.stateless for spec in specs)), contextlib.ExitStack() as stack:
        if eval_mode:
            model.eval()
        replacements: dict = {}
        stack.enter_context(forwarding(request.forward_kwargs))
        for spec, call in zip(specs, modifiers):
            if spec.fn is None:
                continue
            replaced = enter_modifier(stack, spec, model, request.images, request.targets, **call.kwargs)
            if replaced is not None:
                replacements.update(_check_replacements(spec, replaced, model))
        for p in model.parameters():
            p.requires_grad_(False)

        def run(images, targets, layer_needs, backward=True):
            return run_pass(model, images, layer_needs, targets, objective, request.modules, replacements,
                            request.forward_kwargs, request.told, backward)

        if runs is not None:
            return runs(run)
        return run(request.images, request.targets, needs)


def _predicted_targets(model, request: Request, eval_mode: bool) -> torch.Tensor:
    """(N, 1) predicted classes of the real images: one no-grad forward, the model restored afterwards."""
    with preserved(model, weights=False), torch.no_grad():
        if eval_mode:
            model.eval()
        output = run_forward(model, request.images, request.forward_kwargs)
        _, matrix = objective_scores(output, None, None, n=request.images.shape[0])
    return matrix


def _check_replacements(spec, replaced, model) -> dict:
    """What a modifier's context yielded: ``{parameter or buffer name: tensor}`` of the model, else an error."""
    if not isinstance(replaced, dict):
        raise PluginContractError(f"modifier {spec.name!r} (from {spec.origin}) yielded {type(replaced).__name__}; "
                                  "expected None or a dict {parameter or buffer name: tensor}")
    known = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    for name, value in replaced.items():
        if name not in known or not isinstance(value, torch.Tensor):
            raise PluginContractError(
                f"modifier {spec.name!r} (from {spec.origin}) yielded {name!r}: "
                f"{type(value).__name__}; expected tensors for the model's own parameter or buffer names")
    return replaced


def _check_pairs(spec, request: Request) -> None:
    """A per-example modifier explains one (image, target) pair per pass."""
    n = request.images.shape[0]
    t = 1 if request.targets is None else request.targets.shape[1]
    if spec.per_example and n * t != 1:
        raise InputError(
            f"modifier {spec.name!r} ({spec.origin}) takes one (image, target) pair per pass (per_example), but "
            f"this pass explains {n} image(s) x {t} target(s); use extagg.saliency_per_example(...), which runs "
            "one pass per pair, or pass one image and one target")


def saliency(
    model: torch.nn.Module,
    images: torch.Tensor,
    methods: StrOrSeq,
    layers: Union[str, torch.nn.Module, Sequence[Union[str, torch.nn.Module]]] = INPUT,
    targets: Targets = None,
    *,
    objective: Optional[Objective] = None,
    resize: Union[bool, tuple[int, int]] = False,
    eval_mode: bool = True,
    registry: Optional[Registry] = None,
    closed_forms: bool = True,
    mismatched: str = "raise",
    forward_kwargs: Optional[dict] = None,
    token_grid: Union[None, tuple, dict] = None,
    layout: Union[None, str, dict] = None,
) -> SaliencyMaps:
    """Saliency maps of every method at every layer, from one forward and one backward pass per pass modifier.

    :param model: any ``torch.nn.Module``; it is left exactly as it was (see :func:`extagg.guard.preserved`).
    :param images: (N, C, H, W) floating tensor; moved to the model's device and dtype.
    :param methods: method strings (``"scaling+sum"``, a named method, ``"conv3x3+relu+norm"``) or one string;
        ``extagg.methods()`` lists the compositions, ``extagg.default_registry().named_methods`` the names.
    :param layers: ``named_modules()`` names, ``"input"`` for the image, ``"name@k"`` for the k-th call of a module
        called several times per forward pass, layer patterns (``"layer*"``: ``*`` stops at a dot, ``**`` does not),
        named groups (``"stages"``,
        ``"blocks"``, ``"spatial"``, ``"last"``; see :mod:`extagg.layer_select`) or module objects of the model
        (``model.layer4``); one or a sequence (see :mod:`extagg.layer_request`).
    :param targets: None (the predicted class), an int, N ints, or an (N, T) tensor (T maps per image).
    :param objective: ``callable(output) -> (N,) or (N, T)`` scores to explain instead of class logits.
    :param resize: False (layer resolution), True (the input's H, W) or an (H, W) size; bilinear,
        ``align_corners=False``. Maps are never normalised.
    :param eval_mode: True (default): run the model in eval mode (restored afterwards), as the paper and TorchRay
        do; False: in the mode it is in. Only a bool (a string such as ``'no'`` is an InputError).
    :param mismatched: ``"raise"`` (default) if an extractor does not fit a layer (``conv`` on a ReLU), or
        ``"skip"`` to leave such (method, layer) pairs out of the result (for sweeps over many layers).
    :param closed_forms: False forces the generic path that materialises contributions in chunks (for tests).
    :param forward_kwargs: keyword arguments passed to every ``model(images, **forward_kwargs)`` call.
    :param token_grid: ``(h, w)``, ``(h, w, prefix)`` or ``(h, w, prefix, suffix)``: the patch grid of token
        layers (N, L, D) and how many leading / trailing tokens are not patches (a class token: prefix 1), or
        ``{layer: grid}``; None takes what the model declares, exactly, or refuses (:mod:`extagg.tokens`).
    :param layout: ``"nchw"``, ``"nhwc"`` (channels last, e.g. Swin) or ``"nld"`` (batch-first tokens) for every
        layer but ``"input"``, or ``{layer: layout}``; None decides it only where the module's kind or the
        modules reading its output settle it, and refuses otherwise (:mod:`extagg.layouts`).
    :returns: :class:`SaliencyMaps` of (N, T, h, w) tensors in float32 (half/bfloat16 models) or the model's dtype.
    """
    registry = registry or default_registry()
    request = parse_request(registry, model, images, methods, layers, targets, objective=objective, resize=resize,
                            mismatched=mismatched, forward_kwargs=forward_kwargs, token_grid=token_grid,
                            layout=layout, eval_mode=eval_mode)
    return _evaluate(registry, model, request, objective=objective, eval_mode=eval_mode, closed_forms=closed_forms)


def _evaluate(registry: Registry, model, request: Request, *, objective, eval_mode: bool,
              closed_forms: bool) -> SaliencyMaps:
    """Every pass of ``request``, then phase 2 layer by layer."""
    maps: dict[tuple[str, str], torch.Tensor] = {}
    out_targets = out_scores = None
    plans = registry.memo("plans")  # each method's phase-2 plan, shared by all layers and calls
    for modifiers, group in request.passes.items():
        sampler = multipass_of(registry, modifiers)
        if sampler is not None:
            found, scores, matrix = capture_pass(
                registry, model, request, modifiers, group, objective=objective, eval_mode=eval_mode,
                runs=lambda run, g=group, s=sampler: evaluate_samples(registry, run, request, s, g, plans=plans,
                                                                      closed_forms=closed_forms))
            maps.update(found)
            out_targets = matrix if out_targets is None else out_targets
            out_scores = scores if out_scores is None else out_scores
            continue
        captures, scores, matrix = capture_pass(registry, model, request, modifiers, group, objective=objective,
                                                eval_mode=eval_mode)
        out_targets = matrix if out_targets is None else out_targets
        out_scores = scores if out_scores is None else out_scores
        for layer in list(captures):  # one layer at a time, freeing its capture and caches when done
            capture = captures.pop(layer)
            here = usable(registry, capture, [method for method, at in group if at == layer], request.mismatched)
            for name, m in evaluate_layer(registry, capture, here, plans=plans,
                                          closed_forms=closed_forms, size=request.size).items():
                maps[name, layer] = m
    ordered = {(request.names[m], layer): maps[request.names[m], layer] for m, layer in request.pairs
               if (request.names[m], layer) in maps}  # token layers may skip neighbourhood extractors
    return SaliencyMaps(registry, ordered, request.spelled, out_targets, out_scores)


def saliency_per_example(model: torch.nn.Module, images: torch.Tensor, methods: StrOrSeq,
                         layers=INPUT, targets: Targets = None, **kwargs) -> SaliencyMaps:
    """:func:`saliency` run once per (image, target) pair, the maps stacked to (N, T, h, w).

    For pass modifiers declared ``per_example`` (one pass explains one pair, as meta-saliency's SGD step):
    every pair gets its own pass. Methods, layers and targets are parsed and resolved once; keyword arguments
    are those of :func:`saliency`. Returns a :class:`SaliencyMaps` as that does.
    """
    registry = kwargs.pop("registry", None) or default_registry()
    objective = kwargs.pop("objective", None)
    eval_mode, closed_forms = kwargs.pop("eval_mode", True), kwargs.pop("closed_forms", True)
    request = parse_request(registry, model, images, methods, layers, targets, objective=objective,
                            resize=kwargs.pop("resize", False), mismatched=kwargs.pop("mismatched", "raise"),
                            forward_kwargs=kwargs.pop("forward_kwargs", None),
                            token_grid=kwargs.pop("token_grid", None), layout=kwargs.pop("layout", None),
                            eval_mode=eval_mode)
    if kwargs:
        raise InputError(f"unknown keyword argument(s) {sorted(kwargs)}; see extagg.saliency")
    n = request.images.shape[0]
    cols = 1 if request.targets is None else request.targets.shape[1]
    rows = []
    for i in range(n):
        rows.append([_evaluate(registry, model, attrs.evolve(
            request, images=request.images[i:i + 1],
            targets=None if request.targets is None else request.targets[i:i + 1, k:k + 1]),
            objective=objective, eval_mode=eval_mode, closed_forms=closed_forms) for k in range(cols)])
    first = rows[0][0]

    def stack(get):
        return torch.cat([torch.cat([get(r) for r in row], 1) for row in rows], 0)

    maps = {key: stack(lambda r, key=key: r[key]) for key in first}
    targets_out = None if first.targets is None else stack(lambda r: r.targets)
    return SaliencyMaps(registry, maps, request.spelled, targets_out, stack(lambda r: r.scores))
