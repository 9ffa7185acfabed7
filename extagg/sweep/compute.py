"""Per-batch computation of the sweep: the metric driver (:mod:`extagg.evaluation.driver`) with the sweep's plan.

:class:`BatchRunner` yields, per wanted metric call, ``{(method, layer): [values of image 0, image 1, ...]}``
where the values of one image are ``[(subset, measure, class or None, value)]`` (NaN where undefined): what a
unit of the run directory stores.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

from ..evaluation.driver import Driver
from .config import SweepConfig
from .plan import SweepPlan

UnitValues = list[tuple[str, str, object, float]]


class BatchRunner:
    """Computes the metrics of one batch of samples; ``want(metric text)`` says whether a metric is still needed."""

    def __init__(self, model: torch.nn.Module, preprocess, plan: SweepPlan, config: SweepConfig, registry,
                 class_map=None):
        self.plan = plan
        settings = {"randomise": list(config.randomise) or None, "curve_batch": config.curve_batch,
                    "class_map": class_map}
        self.driver = Driver(model, preprocess, registry, plan.layout, plan.calls, targets=config.targets,
                             seed=config.seed, settings=settings, mismatched="skip", blocks=plan.blocks,
                             explainers=plan.explainers)

    def run(self, samples, want: Callable[[str], bool], on_maps: Optional[Callable] = None
            ) -> Iterator[tuple[str, dict[tuple, list[UnitValues]]]]:
        """Yield ``(metric text, {key: per-image values})`` for every wanted metric call of this batch.
        ``on_maps({key: (N, H, W) map of the explained class}, explained (N,))`` is called once, before the first
        yield (so before any unit of the batch is committed): the sweep saves the maps there."""
        n = len(samples)
        for call, values in self.driver.run(samples, lambda call: want(str(call))):
            if on_maps is not None:
                on_maps(*self.explained_maps(samples))
                on_maps = None
            text = str(call)
            out: dict = {k: [[] for _ in range(n)] for k in self.plan.keys(text)}
            for v in values:
                out[v.key][v.image].append((v.subset, v.measure, v.cls, v.value))
            yield text, out

    def explained_maps(self, samples) -> tuple[dict, torch.Tensor]:
        """The maps of the batch's shared pass for the explained class and that class; a pass of its own when the
        batch had none (only per-image metrics wanted)."""
        from ..evaluation.common import logits, model_inputs

        ctx, driver = self.driver.shared, self.driver
        if ctx is not None and ctx.image_ids == [s.image_id for s in samples]:
            return ctx.maps_for(), ctx.explained
        with torch.no_grad():
            x = model_inputs(driver.model, [s.image for s in samples], driver.preprocess)
            explained = driver.explained(logits(driver.model, x), samples)
        maps = driver.maps(driver.model, x, list(self.plan.methods), explained[:, None], tuple(x.shape[-2:]))
        return {k: m[:, 0] for k, m in maps.items()}, explained
