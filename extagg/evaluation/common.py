"""Shared plumbing of the evaluations: pattern expansion, batching, preprocessing, progress bars."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import torch

from ..capture import INPUT
from ..errors import InputError, UnknownNameError
from ..layer_patterns import layer_filter
from ..guard import model_device_dtype, preserved
from ..maps import resize_maps
from ..util import as_list
from ..registry import Registry, default_registry
from ..targets import class_logits
from .datasets import Sample

Patterns = Union[str, Sequence[str]]
Preprocess = Optional[Callable[[torch.Tensor], torch.Tensor]]

_WILD = set("*?[")


def _patterns(x: Patterns, what: str) -> list[str]:
    """``x`` as a list of stripped, non-empty strings (see :func:`extagg.util.as_list`)."""
    items = as_list(x, what)
    if any(not isinstance(i, str) or not i.strip() for i in items):
        raise InputError(f"{what} must be a non-empty string or list of non-empty strings, got {x!r}")
    return [i.strip() for i in items]


def is_pattern(text: str) -> bool:
    return bool(_WILD & set(text))


def expand_methods(patterns: Patterns, registry: Optional[Registry] = None) -> list[str]:
    """Canonical method strings: wildcards expand over the design space (:func:`extagg.methods`), other strings
    (named methods, parameters, modifiers such as ``meta:normgrad``, plugins) are parsed as given."""
    registry = registry or default_registry()
    out: list[str] = []
    for p in _patterns(patterns, "methods"):
        found = registry.methods(p) if is_pattern(p) else [registry.canonical(p)]
        if not found:
            raise InputError(f"method pattern {p!r} matches no method; see extagg.methods('*') for the design space")
        out += [m for m in found if m not in out]
    return out


def expand_layers(model: torch.nn.Module, patterns: Patterns,
                  keep: Optional[Callable[[str, Optional[torch.nn.Module]], bool]] = None) -> list[str]:
    """Layer names: wildcards (:mod:`extagg.layer_patterns`: ``*`` within a dotted part, ``**`` across) over
    ``named_modules()`` names and ``"input"``; other names kept as given
    (checked by the engine). ``keep(name, module)`` filters the wildcard matches (e.g. only Conv2d)."""
    modules = {n: m for n, m in model.named_modules() if n}
    names = [INPUT, *modules]
    out: list[str] = []
    for p in _patterns(patterns, "layers"):
        if is_pattern(p):
            found = [n for n in layer_filter(names, p) if (keep is None or keep(n, modules.get(n)))]
            if not found:
                raise UnknownNameError("layer pattern", p, names)
        else:
            found = [p]
        out += [n for n in found if n not in out]
    return out


def any_pattern(*groups: Patterns) -> bool:
    return any(is_pattern(p) for g in groups for p in ([g] if isinstance(g, str) else g))


def iterate(data: Iterable[Sample], limit: Optional[int]) -> Iterator[Sample]:
    if limit is not None and limit < 0:
        raise InputError(f"limit must be >= 0 or None, got {limit!r}")
    for i, s in enumerate(data):
        if limit is not None and i >= limit:
            return
        if not isinstance(s, Sample):
            raise InputError(f"data must yield extagg.evaluation.Sample objects, got {type(s).__name__} at item {i}")
        yield s


def batches(samples: Iterable[Sample], size: int, by_shape: bool = True) -> Iterator[list[Sample]]:
    """Consecutive samples grouped into lists of up to ``size``, also split where the image shape changes when
    ``by_shape`` (images without a resizing preprocess cannot be stacked otherwise)."""
    if size < 1:
        raise InputError(f"batch_size must be >= 1, got {size!r}")
    group: list[Sample] = []
    for s in samples:
        if group and (len(group) == size or (by_shape and s.image.shape != group[0].image.shape)):
            yield group
            group = []
        group.append(s)
    if group:
        yield group


def model_inputs(model: torch.nn.Module, images: Sequence[torch.Tensor], preprocess: Preprocess) -> torch.Tensor:
    """``preprocess`` (default: identity) applied to each (3, H, W) image, stacked, on the model's device."""
    xs = []
    for img in images:
        if not isinstance(img, torch.Tensor) or img.ndim != 3:
            raise InputError(f"sample images must be (3, H, W) tensors, got {getattr(img, 'shape', type(img))}")
        x = preprocess(img) if preprocess is not None else img
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            raise InputError(f"preprocess must map a (3, H, W) image to a (C, h, w) tensor, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        xs.append(x)
    if len({tuple(x.shape) for x in xs}) > 1:
        raise InputError("preprocess produced inputs of different sizes within a batch; use batch_size=1")
    device, _ = model_device_dtype(model, xs[0])
    return torch.stack(xs).to(device)


def logits(model: torch.nn.Module, x: torch.Tensor, eval_mode: bool = True) -> torch.Tensor:
    """(N, C) class scores without gradients (spatial outputs summed, as the engine does); model left as it was."""
    _, dtype = model_device_dtype(model, x)
    with preserved(model), torch.no_grad():
        if eval_mode:
            model.eval()
        out = model(x.to(dtype))
    if not isinstance(out, torch.Tensor) or out.ndim < 2:
        raise InputError("the model must return (N, C) class scores (or (N, C, h, w)) for this evaluation")
    return class_logits(out)


def resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, T, h, w) maps (``align_corners=False``, as the engine's ``resize``)."""
    return resize_maps(maps, size)


def progress(iterable, enabled: bool, total: Optional[int] = None, desc: str = ""):
    """``tqdm`` progress bar on stderr when ``enabled`` (and tqdm is installed); the iterable itself otherwise."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is an optional dependency
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="img", leave=False)


def total_of(data, limit: Optional[int]) -> Optional[int]:
    try:
        n = len(data)
    except TypeError:
        return limit
    return n if limit is None else min(n, limit)


def run_saliency(model: torch.nn.Module, x: torch.Tensor, methods: Sequence[str], layers: Sequence[str], *,
                 targets=None, registry: Optional[Registry] = None, **kwargs):
    """``extagg.saliency`` for all methods; methods with a modifier declared ``per_example`` (``meta:...``) go
    through ``extagg.saliency_per_example`` (one pass per pair), explaining the same targets.

    Returns ``({(method, layer): (N, T, h, w)}, targets (N, T) or None)``.
    """
    from ..engine import saliency, saliency_per_example

    registry = registry or default_registry()
    plain = [m for m in methods if not registry.per_example(m)]
    special = [m for m in methods if m not in plain]
    maps: dict = {}
    if plain:
        result = saliency(model, x, plain, layers, targets, registry=registry, **kwargs)
        maps.update(result.items())
        if targets is None and kwargs.get("objective") is None:
            targets = result.targets
    if special:
        result = saliency_per_example(model, x, special, layers, targets, registry=registry, **kwargs)
        maps.update(result.items())
        targets = targets if targets is not None else result.targets
    return maps, targets
