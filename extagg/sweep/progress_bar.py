"""The sweep's progress bar: it counts units and moves inside a metric as its passes are done.

A unit (method x layer x metric x image) is finished when its metric call yields for a batch; a call such as
randomisation (one saliency pass per checkpoint) or deletion (hundreds of curve images) can take minutes. The bar
moves inside the call in proportion to the work done (:mod:`extagg.progress` ticks: saliency passes, curve images)
out of the work the metric declares (:class:`extagg.plugin.Cost`), never past the call's units until it yields,
so its rate, and the ETA tqdm draws from it, stay true during long calls.
"""
from __future__ import annotations

import sys
from typing import Optional

from ..progress import listen, stop

SALIENCY_WEIGHT = 3.0
"""A forward+backward pass of one image counted as this many gradient-free forwards (curve images)."""


class SweepProgress:
    """tqdm bar over ``total`` units (none when ``enabled`` is false or tqdm is missing); counts what is saved.
    It listens to :mod:`extagg.progress` ticks of this thread from creation until :meth:`close`."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.saved = 0
        if enabled and total:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm is in the eval extra
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc="sweep", unit="unit", file=sys.stderr, smoothing=0.1)
        self._calls: list[tuple[str, int, float]] = []  # (metric, units, expected work) of this batch, in order
        self._work = 0.0
        self._shown = 0  # units of the current call already added to the bar (before it yields)
        self._token = listen(self.tick) if self.bar is not None else None

    def begin_batch(self, calls: list[tuple[str, int, Optional[float]]]) -> None:
        """The wanted calls of the next batch in the order the driver computes them: (metric, units to do,
        expected work in curve-image equivalents, None if the metric declares no cost)."""
        self._calls = [(m, u, w or 0.0) for m, u, w in calls]
        self._work, self._shown = 0.0, 0

    def tick(self, kind: str, amount: float) -> None:
        """A :mod:`extagg.progress` listener: move the bar inside the current call (whole units, at most all of
        the call's units but one)."""
        if self.bar is None or not self._calls:
            return
        self._work += amount * (SALIENCY_WEIGHT if kind == "saliency" else 1.0)
        metric, units, expected = self._calls[0]
        if expected <= 0:
            return
        fraction = min(1.0, self._work / expected)
        shown = min(units - 1, int(units * fraction))
        if shown > self._shown:
            self.bar.set_postfix_str(f"{metric} {fraction:.0%}", refresh=False)
            self.bar.update(shown - self._shown)
            self._shown = shown

    def finished(self, metric: str, saved: int, note: str = "") -> None:
        """A call yielded and ``saved`` units were stored: the bar lands on the exact count."""
        self.saved += saved
        partial = self._shown if self._calls and self._calls[0][0] == metric else 0
        if self._calls and self._calls[0][0] == metric:
            self._calls.pop(0)
        self._work, self._shown = 0.0, 0
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(saved - partial)

    def close(self, interrupted: bool = False) -> None:
        """Stop listening and close the bar (wiped after an interruption)."""
        if self._token is not None:
            stop(self._token)
            self._token = None
        if self.bar is not None:
            if interrupted:
                self.bar.leave = False  # the bar is wiped: the one line that follows says where the run stands
            self.bar.close()


def batch_calls(plan, driver, ids: list, done) -> list[tuple[str, int, Optional[float]]]:
    """The wanted metric calls of one batch, in the driver's order (shared-pass metrics, then per-image ones), with
    the units still to do and the expected work (a :class:`SweepProgress.begin_batch` list)."""
    n = len(ids)
    out, first_shared = [], True
    for call in sorted(driver.calls, key=lambda c: bool(c.metric.per_image)):
        text = str(call)
        units = sum(1 for m, layer in plan.keys(text) for image in ids if (m, layer, text, image) not in done)
        if not units:
            continue
        cost = (call.metric.cost(n, plan.keys(text), len(plan.blocks), **call.kwargs)
                if call.metric.cost is not None else None)
        work = None
        if cost is not None:
            work = SALIENCY_WEIGHT * n * (cost.saliency_passes or 0) + (cost.forward_images or 0)
        if first_shared and not call.metric.per_image:  # the batch's shared saliency pass comes first
            work, first_shared = (work or 0) + SALIENCY_WEIGHT * n, False
        out.append((text, units, work))
    return out
