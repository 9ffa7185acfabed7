"""Layer combination (Rebuffi et al. 2020, Sec. 4.2): maps of several layers, normalised and combined.

For layers ``j = 1..J`` with maps ``m_j`` (resized to one size), each min-max normalised per image and target,
``m^_j = (m_j - min m_j) / (max m_j - min m_j)`` (a constant map gives ``m^_j = 0``), and weights
``gamma_j = w_j / sum_j w_j``::

    sum:      M = sum_j gamma_j m^_j
    product:  M = prod_j m^_j ** gamma_j      (0 wherever any layer with gamma_j > 0 is at its minimum)

Weightings: ``"uniform"`` (``w_j = 1``), ``"linear"`` (``w_j = j`` in the model's layer order, see
:func:`layer_order`), a ``{layer: w}`` dict, or a :class:`LayerWeights` computed from data by
:func:`feature_spread_weights` or :func:`probe_accuracy_weights`. :func:`combination_sweep` computes every single
layer and every combination of a set of methods in one call (the paper's Table 3 comparison); see
``docs/combination_and_meta.md``.

Functions that take a model take ``layers`` as :func:`extagg.saliency` does (names, ``name@k``, layer patterns,
groups such as ``"stages"``, module objects; see :mod:`extagg.layer_request`). :func:`combine` works on maps
already computed: its ``layers`` are names or layer patterns (``*`` within a dotted part, ``**`` across; see
:mod:`extagg.layer_patterns`) over the layers those maps hold.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence, Union

import attrs
import torch
import torch.nn.functional as F

from .capture import INPUT, Probes, split_layer
from .engine import check_images, saliency, saliency_per_example
from .errors import InputError, UnknownNameError
from .guard import model_device_dtype, preserved
from .layer_request import resolve_requested_layers
from .layer_patterns import layer_filter
from .layers import execution_order
from .registry import default_registry
from .targets import as_target_matrix
from .maps import normalise, resize_maps

MODES = ("sum", "product")
NAMED_WEIGHTINGS = ("uniform", "linear")


@attrs.frozen
class LayerWeights:
    """Unnormalised per-layer weights and how they were obtained; :func:`combine` normalises them.

    ``values``: ``{layer: w >= 0}``; ``strategy``: e.g. ``"feature-spread"``; ``details``: per-layer diagnostics.
    """

    values: Mapping[str, float] = attrs.field(converter=lambda v: {str(k): float(x) for k, x in dict(v).items()})
    strategy: str = "user"
    details: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    def normalised(self, layers: Optional[Sequence[str]] = None) -> dict[str, float]:
        """``gamma_j = w_j / sum w`` over ``layers`` (default: all of them)."""
        return normalise_weights(dict(self.values), list(layers) if layers is not None else list(self.values))


WeightsLike = Union[str, Mapping[str, float], LayerWeights]


def minmax_normalise(maps: torch.Tensor) -> torch.Tensor:
    """``(m - min) / (max - min)`` over the last two dims, per image and target; a constant map gives zeros."""
    if not isinstance(maps, torch.Tensor) or maps.ndim < 2 or not maps.is_floating_point():
        raise InputError(f"maps must be floating tensors (..., h, w), got {getattr(maps, 'shape', type(maps))}")
    if not torch.isfinite(maps).all():
        raise InputError("maps contain NaN or inf; min-max normalisation needs finite values")
    return normalise(maps)


def normalise_weights(weights: Mapping[str, float], layers: Sequence[str]) -> dict[str, float]:
    """``{layer: w_j / sum w}`` for ``layers``; weights must be finite, >= 0 and not all zero."""
    missing = [layer for layer in layers if layer not in weights]
    if missing:
        raise InputError(f"no weight for layer(s) {missing}; weights are given for {sorted(weights)}")
    out = {}
    for layer in layers:
        w = weights[layer]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise InputError(f"weight of layer {layer!r} must be a finite number >= 0, got {w!r}")
        out[layer] = float(w)
    total = math.fsum(out.values())
    if total <= 0:
        raise InputError(f"the weights of layers {list(layers)} sum to 0; give at least one positive weight")
    return {layer: w / total for layer, w in out.items()}


def resolve_weights(weights: WeightsLike, layers: Sequence[str], order: Optional[Sequence[str]] = None) -> dict[str, float]:
    """Normalised weights ``gamma`` of ``layers``. ``"linear"`` needs ``order`` (shallow to deep, see :func:`layer_order`)."""
    layers = list(layers)
    if isinstance(weights, LayerWeights):
        return weights.normalised(layers)
    if isinstance(weights, Mapping):
        return normalise_weights(weights, layers)
    if weights == "uniform":
        return normalise_weights({layer: 1.0 for layer in layers}, layers)
    if weights == "linear":
        if order is None:
            raise InputError("weights='linear' needs the model's layer order: pass "
                             "order=extagg.combine.layer_order(model, layers, images)")
        order = list(order)
        unknown = [layer for layer in layers if layer not in order]
        if unknown:
            raise InputError(f"layer(s) {unknown} are not in order={order}")
        ranked = sorted(layers, key=order.index)
        return normalise_weights({layer: float(j + 1) for j, layer in enumerate(ranked)}, layers)
    raise InputError(f"weights must be 'uniform', 'linear', a {{layer: weight}} dict or a LayerWeights, got {weights!r}")


def _expand(layers: Optional[Sequence[str]], present: list[str]) -> Optional[list[str]]:
    """``layers`` with layer patterns (:mod:`extagg.layer_patterns`) replaced by the matching layers of ``present``
    (in their order)."""
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    out: list[str] = []
    for item in layers:
        if not isinstance(item, str):
            raise InputError(f"combine(layers=...) takes layer names or layer patterns of the maps' layers, got "
                             f"{type(item).__name__} {item!r}")
        if any(c in item for c in "*?["):
            found = layer_filter(present, item)
            if not found:
                raise UnknownNameError("layer pattern", item, present)
        else:
            found = [item]
        out += [layer for layer in found if layer not in out]
    return out


def _select(maps, layers: Optional[Sequence[str]], method: Optional[str]) -> dict[str, torch.Tensor]:
    """``{layer: map}`` from a SaliencyMaps-like (method, layer) mapping or a {layer: map} dict."""
    if not isinstance(maps, Mapping) or not maps:
        raise InputError(f"maps must be an extagg.saliency result or a non-empty {{layer: map}} dict, got {type(maps).__name__}")
    keys = list(maps.keys())
    present = list(dict.fromkeys(k[1] if isinstance(k, tuple) and len(k) == 2 else k for k in keys))
    layers = _expand(layers, present)
    if all(isinstance(k, tuple) and len(k) == 2 for k in keys):
        present = list(dict.fromkeys(m for m, _ in keys))
        if method is None:
            if len(present) != 1:
                raise InputError(f"the maps hold several methods {present}; choose one with method=...")
            method = present[0]
        if layers is None:
            canonical = maps._key((method, keys[0][1]))[0] if hasattr(maps, "_key") else method
            layers = [layer for m, layer in keys if m == canonical]
        try:
            return {layer: maps[method, layer] for layer in layers}
        except KeyError as exc:
            raise InputError(f"no map for method {method!r}: {exc}; available: {keys[:20]}") from None
    if method is not None:
        raise InputError("method= applies to a (method, layer)-keyed result; these maps are keyed by layer only")
    layers = keys if layers is None else list(layers)
    missing = [layer for layer in layers if layer not in maps]
    if missing:
        raise InputError(f"no map for layer(s) {missing}; available: {keys}")
    return {layer: maps[layer] for layer in layers}


def combine(maps, weights: WeightsLike = "uniform", mode: str = "sum", *, layers: Optional[Sequence[str]] = None,
            method: Optional[str] = None, order: Optional[Sequence[str]] = None,
            size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Combine per-layer maps into one (N, T, H, W) map.

    :param maps: an :func:`extagg.saliency` result (choose ``method`` if it holds several) or ``{layer: map}``.
    :param weights: ``"uniform"``, ``"linear"`` (needs ``order``), ``{layer: w}`` or :class:`LayerWeights`.
    :param mode: ``"sum"`` (weighted sum) or ``"product"`` (weighted geometric product, weights as exponents).
    :param layers: which layers: names or layer patterns over the maps' layers (default: all, for ``method``).
    :param order: the model's layers shallow to deep, for ``"linear"`` (see :func:`layer_order`).
    :param size: (H, W) to resize every map to (bilinear, ``align_corners=False``); needed if sizes differ.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    selected = _select(maps, layers, method)
    if not selected:
        raise InputError("no layers to combine")
    shapes = {layer: tuple(m.shape) for layer, m in selected.items()}
    if any(len(s) != 4 for s in shapes.values()) or len({s[:2] for s in shapes.values()}) != 1:
        raise InputError(f"maps must all be (N, T, h, w) with the same N and T, got {shapes}")
    if size is None:
        sizes = {s[-2:] for s in shapes.values()}
        if len(sizes) != 1:
            raise InputError(f"the maps have different sizes {shapes}; pass size=(H, W) (e.g. images.shape[-2:]) "
                             "or compute them with extagg.saliency(..., resize=True)")
        size = next(iter(sizes))
    size = tuple(int(v) for v in size)
    gamma = resolve_weights(weights, list(selected), order)
    out = None
    for layer, m in selected.items():
        m = minmax_normalise(resize_maps(m, size))
        term = gamma[layer] * m if mode == "sum" else m.pow(gamma[layer])
        out = term if out is None else (out + term if mode == "sum" else out * term)
    return out


def requested_layers(model: torch.nn.Module, layers, images: Optional[torch.Tensor] = None,
                     forward_kwargs: Optional[dict] = None) -> list[str]:
    """Layer names for a ``layers`` argument as :func:`extagg.saliency` takes it: names, ``name@k``, layer
    patterns, groups (``"stages"``, ...) and module objects, in the order given, without duplicates. Patterns and
    groups need ``images`` (one no-grad forward pass of its first image)."""
    return resolve_requested_layers(model, layers, images, forward_kwargs)[0]


def layer_order(model: torch.nn.Module, layers, images: Optional[torch.Tensor] = None) -> list[str]:
    """``layers`` sorted shallow to deep: by when their output is computed in one no-grad forward pass of
    ``images[:1]`` (``"input"`` first); without ``images``, by ``named_modules()`` registration order
    (the same for models that register modules in the order they run, like torchvision's)."""
    layers = requested_layers(model, layers, images)
    if images is None:
        rank = {name: i for i, (name, _) in enumerate(model.named_modules())}

        def key(layer):
            base, at = split_layer(layer)
            return (-1, 0) if layer == INPUT else (rank[base], at or 0)

        return sorted(layers, key=key)
    position = {name: i for i, (name, _) in enumerate(execution_order(model, images[:1]))}
    position[INPUT] = -1

    def when(layer):
        base, at = split_layer(layer)
        for name in (layer, base if not at else None):
            if name in position:
                return position[name]
        raise InputError(f"layer {layer!r} was not called in the forward pass; choose a layer the model uses")

    return sorted(layers, key=when)


def pooled_features(model: torch.nn.Module, images: torch.Tensor, layers,
                    batch_size: int = 64) -> dict[str, torch.Tensor]:
    """``{layer: (M, K)}`` spatial means of each layer's output (the image itself for ``"input"``), eval mode, no grad."""
    images = check_images(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
    device, dtype = model_device_dtype(model, images)
    layers = requested_layers(model, layers, images)
    chunks: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    with preserved(model), torch.no_grad():
        model.eval()
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device=device, dtype=dtype)
            with Probes(model, {layer: {"output"} for layer in layers}) as probes:
                model(probes.input_probe(x))
            probes.check()
            for layer in layers:
                out = probes.raw[layer]["output"]
                chunks[layer].append(out.flatten(2).mean(2) if out.ndim > 2 else out.reshape(out.shape[0], -1))
    return {layer: torch.cat(parts) for layer, parts in chunks.items()}


def feature_spread_weights(model: torch.nn.Module, images: torch.Tensor, layers, *,
                           relative: bool = True, batch_size: int = 64) -> LayerWeights:
    """Feature spread of each layer over M >= 2 images (the paper's "activation" weights, computed from data).

    With ``f_i`` the spatial mean of image i's activation (K channels) and ``mu = mean_i f_i``:
    ``spread = mean_i mean_k |f_ik - mu_k|``, divided by ``mean_i mean_k |f_ik|`` when ``relative`` (default),
    which makes layers of different activation scale comparable (0 for an all-zero layer).
    """
    if images.shape[0] < 2:
        raise InputError(f"feature spread needs M >= 2 images, got {images.shape[0]}")
    feats = pooled_features(model, images, layers, batch_size)
    values, details = {}, {}
    for layer, f in feats.items():
        f = f.double()
        spread = (f - f.mean(0)).abs().mean().item()
        scale = f.abs().mean().item()
        details[layer] = {"spread": spread, "mean_abs": scale}
        values[layer] = (spread / scale if scale > 0 else 0.0) if relative else spread
    return LayerWeights(values, "feature-spread" + ("" if relative else "-absolute"), details)


def _probe_accuracy(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, val: torch.Tensor, classes: int,
                    seed: int, steps: int, l2: float) -> tuple[float, float]:
    mean, std = x[train].mean(0), x[train].std(0, unbiased=False)
    x = (x - mean) / torch.where(std > 0, std, torch.ones_like(std))
    g = torch.Generator(device="cpu").manual_seed(seed)
    weight = (0.01 * torch.randn(x.shape[1], classes, generator=g, dtype=x.dtype)).to(x.device).requires_grad_(True)
    bias = torch.zeros(classes, dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x[train] @ weight + bias, y[train]) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (x @ weight + bias).argmax(1)
    return (pred[train] == y[train]).double().mean().item(), (pred[val] == y[val]).double().mean().item()


def probe_accuracy_weights(model: torch.nn.Module, images: torch.Tensor, labels, layers, *,
                           seed: int = 0, val_fraction: float = 0.5, steps: int = 100, l2: float = 1e-3,
                           batch_size: int = 64) -> LayerWeights:
    """Linear-probe accuracy of each layer (the paper's "accuracy" weights, computed from data).

    A multinomial logistic regression on the spatially mean-pooled, standardised features, trained with
    full-batch L-BFGS (``steps`` iterations, L2 penalty ``l2``, initial weights from ``seed``) on a seeded random
    split of the M images; the weight is the accuracy on the held-out ``val_fraction`` (training accuracy when
    ``val_fraction=0``). ``details[layer]`` holds train and validation accuracy; ``details["split"]`` the indices.
    """
    m = images.shape[0] if isinstance(images, torch.Tensor) else 0
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != m or labels.is_floating_point() or labels.dtype == torch.bool:
        raise InputError(f"labels must be {m} integer class indices (one per image), got shape "
                         f"{tuple(labels.shape)} dtype {labels.dtype}")
    if m and labels.min() < 0:
        raise InputError(f"labels must be >= 0, got {int(labels.min())}")
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an int >= 1, got {steps!r}")
    n_val = round(val_fraction * m) if val_fraction > 0 else 0
    if m < 2 or m - n_val < 1 or (val_fraction > 0 and n_val < 1):
        raise InputError(f"the probe needs at least one training and one validation image; got M={m} images "
                         f"with val_fraction={val_fraction}")
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed))
    val = perm[:n_val] if n_val else perm
    train = perm[n_val:]
    feats = pooled_features(model, images, layers, batch_size)
    values, details = {}, {"split": {"train": train.tolist(), "val": val.tolist()}}
    classes = int(labels.max()) + 1
    for layer, f in feats.items():
        x = f.to(torch.float64 if f.dtype == torch.float64 else torch.float32)
        tr, va = _probe_accuracy(x, labels.to(x.device), train.to(x.device), val.to(x.device),
                                 classes, seed, steps, l2)
        details[layer] = {"train_accuracy": tr, "val_accuracy": va}
        values[layer] = va
    return LayerWeights(values, "probe-accuracy", details)


@attrs.frozen
class SweepEntry:
    """One map of a :func:`combination_sweep`: a single layer (``weighting is None``) or a combination."""

    method: str
    layers: tuple[str, ...]
    weighting: Optional[str]
    mode: Optional[str]
    map: torch.Tensor = attrs.field(eq=False, repr=False)
    score: Optional[float] = None

    @property
    def label(self) -> str:
        return self.layers[0] if self.weighting is None else f"{self.mode}[{self.weighting}]"


@attrs.frozen
class CombinationSweep:
    """Every single-layer map and every combination per method; ``gammas[weighting]`` the normalised weights."""

    entries: tuple[SweepEntry, ...]
    gammas: Mapping[str, Mapping[str, float]]
    targets: Optional[torch.Tensor] = attrs.field(eq=False, repr=False)

    def best(self, method: str) -> tuple[SweepEntry, Optional[SweepEntry]]:
        """(best single layer, best combination) of ``method`` by score (needs a ``scorer``); first wins ties."""
        mine = [e for e in self.entries if e.method == method]
        if not mine:
            raise InputError(f"no entries for method {method!r}; methods: {sorted({e.method for e in self.entries})}")
        if any(e.score is None for e in mine):
            raise InputError("entries have no scores; give combination_sweep a scorer=callable(map, targets) -> float")
        single = [e for e in mine if e.weighting is None]
        combos = [e for e in mine if e.weighting is not None]
        pick = lambda es: max(es, key=lambda e: e.score) if es else None  # noqa: E731 - max keeps the first
        return pick(single), pick(combos)

    def table(self) -> list[dict]:
        """One row per entry: method, label, layers, weighting, mode, score."""
        return [{"method": e.method, "label": e.label, "layers": e.layers, "weighting": e.weighting,
                 "mode": e.mode, "score": e.score} for e in self.entries]


def _weighting(w, model, images, layers, labels) -> tuple[str, Any]:
    """(name, weights) with data-driven weightings computed once, on all ``layers``."""
    if isinstance(w, tuple) and len(w) == 2 and isinstance(w[0], str):
        return w
    if w == "probe-accuracy" and labels is None:
        raise InputError("weighting 'probe-accuracy' needs labels=... (one class index per image)")
    if w == "feature-spread":
        return w, feature_spread_weights(model, images, layers)
    if w == "probe-accuracy":
        return w, probe_accuracy_weights(model, images, labels, layers)
    if isinstance(w, LayerWeights):
        return w.strategy, w
    if isinstance(w, Mapping):
        return "user", w
    if w in NAMED_WEIGHTINGS:
        return w, w
    raise InputError(f"a weighting is 'uniform', 'linear', 'feature-spread', 'probe-accuracy', a LayerWeights, "
                     f"a {{layer: w}} dict or a (name, weights) pair, got {w!r}")


def combination_sweep(model: torch.nn.Module, images: torch.Tensor, methods, layers, targets=None, *,
                      weightings: Sequence = ("uniform", "linear"), modes: Sequence[str] = MODES, labels=None,
                      scorer: Optional[Callable[[torch.Tensor, Optional[torch.Tensor]], float]] = None,
                      size: Optional[tuple[int, int]] = None, **saliency_kwargs) -> CombinationSweep:
    """Best single layer vs. best combination in one call: every method at every layer, resized to ``size``
    (default: the input's), plus every (weighting, mode) combination of its layers.

    ``weightings`` items: ``"uniform"``, ``"linear"`` (model layer order, :func:`layer_order`), ``"feature-spread"``
    (computed on ``images``), ``"probe-accuracy"`` (on ``images`` and ``labels``), a :class:`LayerWeights`, a dict,
    or ``(name, weights)``. ``scorer(map (N, T, H, W), targets (N, T)) -> float`` (higher is better) scores every
    entry, e.g. a pointing game closed over the masks. Methods with a ``per_example`` modifier run one pass per
    (image, target) when the batch has several. Single-layer maps are raw (not normalised); combinations are in [0, 1].
    """
    images = check_images(images)
    layers = requested_layers(model, layers, images, saliency_kwargs.get("forward_kwargs"))
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise InputError(f"modes must be a non-empty subset of {MODES}, got {list(modes)!r}")
    size = tuple(images.shape[-2:]) if size is None else tuple(size)
    registry = saliency_kwargs.get("registry") or default_registry()
    items = [methods] if isinstance(methods, str) else list(methods)
    canon = [registry.canonical(m) for m in items]
    saliency_kwargs["resize"] = size
    matrix = as_target_matrix(targets, images.shape[0], None) if saliency_kwargs.get("objective") is None else None
    n_pairs = images.shape[0] * (1 if matrix is None else matrix.shape[1])
    per_example = [c for c in canon if n_pairs > 1 and registry.per_example(c)]
    plain = [c for c in canon if c not in per_example]
    results = [saliency(model, images, plain, layers, targets, **saliency_kwargs)] if plain else []
    if per_example:
        results.append(saliency_per_example(model, images, per_example, layers, targets, **saliency_kwargs))
    maps = {key: r[key] for r in results for key in r}
    order = layer_order(model, layers, images)
    named = [_weighting(w, model, images, layers, labels) for w in weightings]
    gammas = {name: resolve_weights(w, layers, order) for name, w in named}
    entries = []
    for method in dict.fromkeys(canon):
        present = [layer for layer in layers if (method, layer) in maps]
        for layer in present:
            entries.append(SweepEntry(method, (layer,), None, None, maps[method, layer]))
        for name, w in named:
            gamma = resolve_weights(w, present, order)
            for mode in modes:
                m = combine({layer: maps[method, layer] for layer in present}, gamma, mode, size=size)
                entries.append(SweepEntry(method, tuple(present), name, mode, m))
    out_targets = results[0].targets
    if scorer is not None:
        entries = [attrs.evolve(e, score=float(scorer(e.map, out_targets))) for e in entries]
    return CombinationSweep(tuple(entries), gammas, out_targets)
