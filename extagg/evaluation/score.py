"""``score()``: any registered metric on maps made elsewhere (another library, a file, a hand-made map).

::

    from extagg.evaluation import score
    out = score("sparseness", model, x, maps, targets)                 # maps: (N, H, W) or (N, 1, H, W)
    out.per_image()                                                   # {measure: [value per image]}
    score("mprt", model, x, maps, targets, explain=my_explainer)      # metrics that need new maps

``x`` are model inputs (already preprocessed, as a Quantus or Captum user holds them). Metrics that need maps of
a changed model or input (randomisation, robustness, a second class) call ``explain(model, x, targets) -> (N, H, W)
maps``; without ``explain`` they are refused with the metric's name. The given maps are scored as the method
``name`` at the layer ``"given"``; the numbers are the ones ``evaluate`` and ``extagg sweep`` give for the same
maps (one driver: :class:`~extagg.evaluation.driver.Driver`).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from ..errors import InputError
from ..registry import default_registry
from ..util import check_seed
from .datasets import Sample
from .driver import Driver, Layout, parse_metric
from .results import reduce_values
from .run import Evaluation, directions, image_values

GIVEN_LAYER = "given"
Explain = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def as_maps(maps, n: int, size: Sequence[int], what: str = "maps") -> torch.Tensor:
    """(N, H, W) float tensor from a tensor or array of (N, H, W), (N, 1, H, W) or (N, C, H, W) (summed over C,
    as Quantus and Captum users' channel attributions are), resized bilinearly to ``size`` if needed."""
    from .common import resize

    if not isinstance(maps, torch.Tensor):
        try:
            maps = torch.as_tensor(maps)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"{what} must be a tensor or array of shape (N, H, W), got {type(maps).__name__}") from None
    if maps.ndim == 4:
        maps = maps.sum(1)
    if maps.ndim != 3 or maps.shape[0] != n:
        raise InputError(f"{what} must be (N, H, W) or (N, 1, H, W) with N = {n} images, got shape "
                         f"{tuple(maps.shape)}")
    maps = maps.to(torch.float32) if not maps.is_floating_point() else maps
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = resize(maps[:, None], tuple(size))[:, 0]
    return maps


class _GivenDriver(Driver):
    """The driver with the given maps as the shared pass and ``explain`` for every further pass."""

    def __init__(self, *args, given: torch.Tensor, given_targets: torch.Tensor, explain: Optional[Explain],
                 name: str, ids: list[str], **kw):
        super().__init__(*args, **kw)
        self._given, self._given_targets, self._explain, self._name = given, given_targets, explain, name
        self._index = {image: i for i, image in enumerate(ids)}
        self._rows: list[int] = []
        self._x_now = None

    def context(self, samples, calls):
        self._rows = [self._index[s.image_id] for s in samples]
        self._calls_now = calls
        self._x_now = None  # the shared pass runs on the batch's own inputs
        ctx = super().context(samples, calls)
        self._x_now = ctx.x
        return ctx

    def explained(self, scores, samples) -> torch.Tensor:
        return self._given_targets[[self._index[s.image_id] for s in samples]].cpu()

    def maps(self, model, x, methods, targets, size) -> dict:
        rows = self._rows
        out = []
        for t in range(targets.shape[1]):
            column = targets[:, t].cpu()
            if model is self.model and (self._x_now is None or x is self._x_now) \
                    and torch.equal(column, self._given_targets[rows].cpu()) and x.shape[0] == len(rows):
                out.append(self._given[rows].to(x.device))
            elif self._explain is None:
                names = ", ".join(sorted({c.name for c in self._calls_now}))
                raise InputError(f"metric {names} needs maps beyond the given ones (of another class, a changed "
                                 "model or input); pass explain=callable(model, x, targets) -> (N, H, W) maps")
            else:
                made = self._explain(model, x, column.to(x.device))
                out.append(as_maps(made, x.shape[0], size, what="explain(model, x, targets)").to(x.device))
        return {(self._name, GIVEN_LAYER): torch.stack(out, 1)}


def score(metric: Union[str, Sequence[str]], model: torch.nn.Module, x: torch.Tensor, maps=None,
          targets=None, *, explain: Optional[Explain] = None, masks=None, name: str = "given",
          image_ids: Optional[Sequence[str]] = None, registry=None, seed: int = 0,
          settings: Optional[dict] = None, batch_size: Optional[int] = None) -> Evaluation:
    """Score given maps with one or more metric calls (``"pixel-flipping(features_in_step=28)"``).

    :param x: (N, C, H, W) model inputs on the model's device.
    :param maps: (N, H, W), (N, 1, H, W) or (N, C, H, W) tensor or array (default: ``explain(model, x, targets)``).
    :param targets: (N,) explained classes (default: the model's predictions).
    :param explain: ``(model, x, targets) -> maps`` for metrics that need new maps.
    :param masks: (N, H, W) bool regions of the explained classes, for localisation metrics.
    :returns: an :class:`~extagg.evaluation.Evaluation` with per-image ``values`` (image ids ``image_ids`` or
        ``"0".."N-1"``) and reduced ``rows``, method ``name`` at layer ``"given"``.
    """
    from .common import logits

    seed = check_seed(seed)
    registry = registry or default_registry()
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise InputError(f"x must be an (N, C, H, W) tensor of model inputs, got {getattr(x, 'shape', type(x))}")
    n = x.shape[0]
    texts = [metric] if isinstance(metric, str) else list(metric)
    if not texts:
        raise InputError("give at least one metric (see `extagg metrics`)")
    calls = [parse_metric(registry, t) for t in texts]
    with_companion = [c.name for c in calls if c.metric.companion is not None]
    if with_companion:
        raise InputError(f"metric {with_companion[0]!r} compares each method with a companion method of extagg; "
                         "it cannot score maps made elsewhere")
    if targets is None:
        targets = logits(model, x).argmax(1)
    targets = torch.as_tensor(targets).reshape(-1).to(torch.long).cpu()
    if targets.shape[0] != n:
        raise InputError(f"targets must have one class per image ({n}), got {targets.shape[0]}")
    if maps is None:
        if explain is None:
            raise InputError("give maps, or explain=callable(model, x, targets) to make them")
        maps = explain(model, x, targets.to(x.device))
    given = as_maps(maps, n, x.shape[-2:]).detach()
    ids = [str(i) for i in image_ids] if image_ids is not None else [str(i) for i in range(n)]
    if len(ids) != n or len(set(ids)) != n:
        raise InputError(f"image_ids must be {n} distinct ids, got {list(ids)[:5]}")
    if masks is not None:
        masks = torch.as_tensor(masks)
        if masks.ndim == 4:
            masks = masks[:, 0]
        if masks.shape[0] != n or masks.ndim != 3:
            raise InputError(f"masks must be (N, H, W) with N = {n}, got shape {tuple(masks.shape)}")
        masks = masks.to(torch.bool).cpu()
    samples = [Sample(image=x[i].detach(), image_id=ids[i], classes=(int(targets[i]),),
                      masks=None if masks is None else masks[i][None]) for i in range(n)]
    layout = Layout((name,), (GIVEN_LAYER,), ((name, GIVEN_LAYER),), asked={name: name})
    driver = _GivenDriver(model, None, registry, layout, calls, seed=seed, settings=settings, given=given,
                          given_targets=targets, explain=explain, name=name, ids=ids)
    out = []
    step = batch_size or n
    for start in range(0, n, step):
        group = samples[start:start + step]
        for call, values in driver.run(group):
            out += image_values(layout, call, values, [s.image_id for s in group])
    order = {str(c): i for i, c in enumerate(calls)}
    out.sort(key=lambda v: order[v.metric])
    return Evaluation(tuple(reduce_values(out, directions(calls))), tuple(out), tuple(calls))
