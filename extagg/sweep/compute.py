"""Per-batch computation of every metric from shared passes.

One gradient-free forward pass gives the classes; one saliency pass (all methods, all layers, the identity twins,
and the explained / top / bottom classes as one (N, T) target matrix) feeds sensitivity, identity, deletion,
insertion and the randomisation baseline; each randomisation step is one more saliency pass; deletion and
insertion evaluate the curves of every map of the batch together, in forward batches of ``curve_batch``.

Each metric yields ``{(method, layer): [values of image 0, image 1, ...]}`` where a value is a dict
``{"SUBSET|MEASURE": float}`` (NaN where undefined, e.g. a constant map's rank correlation).
"""
from __future__ import annotations

import copy
import math
import zlib
from typing import Callable, Iterator, Optional

import torch

from ..combine import combine
from ..errors import InputError
from ..evaluation.common import logits as class_scores
from ..evaluation.common import model_inputs, run_saliency
from ..evaluation.similarity import similarities_to, similarity_reference, spearman
from .config import SweepConfig, parse_combination
from .plan import CENTER, SweepPlan

SIMILARITY_PIXELS = 1 << 22
"""Map pixels (keys x images x H x W) whose randomisation similarities are computed in one batched call."""

Values = dict[tuple[str, str], list[dict[str, float]]]


def _float(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().reshape(-1).to("cpu", torch.float64)]


class BatchRunner:
    """Computes the metrics of one batch of samples; ``want(metric)`` says whether a metric is still needed."""

    def __init__(self, model: torch.nn.Module, preprocess, plan: SweepPlan, config: SweepConfig, registry):
        self.model = model
        self.preprocess = preprocess
        self.plan = plan
        self.config = config
        self.registry = registry
        self._work: Optional[torch.nn.Module] = None
        self._trained: Optional[dict] = None

    # ----------------------------------------------------------------- passes
    def maps(self, model: torch.nn.Module, x: torch.Tensor, methods, targets, size) -> dict:
        """(method, layer) -> (N, T, H, W) maps resized to ``size``, plus every configured layer combination."""
        maps, _ = run_saliency(model, x, list(methods), list(self.plan.layers), targets=targets, resize=size,
                               mismatched="skip", registry=self.registry)
        for method, layers in self.plan.combined.items():
            if method not in methods:
                continue
            parts = {layer: maps[method, layer] for layer in layers}
            finite = all(bool(torch.isfinite(m).all()) for m in parts.values())
            for label in self.plan.combinations:
                mode, weighting = parse_combination(label.removeprefix("combine:"))
                if finite:
                    maps[method, label] = combine(parts, weighting, mode, order=self.plan.layer_order, size=size)
                else:  # a NaN map: nothing to combine; the metrics record NaN
                    maps[method, label] = torch.full_like(next(iter(parts.values())), math.nan)
        return maps

    def targets(self, scores: torch.Tensor, samples) -> torch.Tensor:
        """The explained class per image (N,)."""
        mode = self.config.targets
        if mode == "predicted":
            return scores.argmax(1).cpu()
        if mode == "label":
            missing = [s.image_id for s in samples if not s.classes]
            if missing:
                raise InputError(f"--targets label needs a label on every image; {missing[:3]} have none "
                                 "(use --targets predicted)")
            return torch.tensor([s.classes[0] for s in samples], dtype=torch.long)
        c = int(mode)
        if c >= scores.shape[1]:
            raise InputError(f"target class {c} is out of range for a model with {scores.shape[1]} classes")
        return torch.full((scores.shape[0],), c, dtype=torch.long)

    # ----------------------------------------------------------------- the batch
    def run(self, samples, want: Callable[[str], bool]) -> Iterator[tuple[str, Values]]:
        """Yield ``(metric, values)`` for every wanted metric of this batch."""
        plan = self.plan
        if "pointing" in plan.metrics and want("pointing"):  # batches of one image: its classes are the targets
            yield "pointing", self.pointing(samples[0])
        if all(m == "pointing" for m in plan.metrics):
            return
        x = model_inputs(self.model, [s.image for s in samples], self.preprocess)
        n = x.shape[0]
        scores = class_scores(self.model, x)
        explained = self.targets(scores, samples)
        columns = [explained]
        if "sensitivity" in plan.metrics:
            columns += [scores.argmax(1).cpu(), scores.argmin(1).cpu()]
        matrix = torch.stack(columns, 1)
        uniq = [i for i in range(matrix.shape[1]) if not any(torch.equal(matrix[:, i], matrix[:, j]) for j in range(i))]
        index = {i: uniq.index(next(j for j in uniq if torch.equal(matrix[:, i], matrix[:, j])))
                 for i in range(matrix.shape[1])}
        matrix = matrix[:, uniq]
        methods = list(plan.methods) + [t for t in dict.fromkeys(plan.twins.values()) if t not in plan.methods]
        size = tuple(x.shape[-2:])
        base = self.maps(self.model, x, methods, matrix, size)
        keys = plan.keys("deletion")  # methods x layers + combinations

        if "sensitivity" in plan.metrics and want("sensitivity"):
            top, bottom = index[1], index[2]
            ks = plan.keys("sensitivity")
            a, b = torch.stack([base[k][:, top] for k in ks]), torch.stack([base[k][:, bottom] for k in ks])
            s, t = _float(spearman(a, b)), _float(spearman(a.abs(), b.abs()))
            out = {k: [{"top-vs-bottom|sensitivity": s[j * n + i], "top-vs-bottom|sensitivity_abs": t[j * n + i]}
                       for i in range(n)] for j, k in enumerate(ks)}
            yield "sensitivity", out
        if "identity" in plan.metrics and want("identity"):
            ks = list(plan.twins)
            r = [] if not ks else _float(spearman(torch.stack([base[k][:, 0] for k in ks]),
                                torch.stack([base[plan.twins[k], k[1]][:, 0] for k in ks])))
            out = {k: [{"all|identity": r[j * n + i]} for i in range(n)] for j, k in enumerate(ks)}
            yield "identity", out
        for mode in ("deletion", "insertion"):
            if mode in plan.metrics and want(mode):
                auc = self.curves(x, [base[k][:, 0] for k in keys], explained, mode)
                yield mode, {k: [{f"all|{mode}": auc[j][i]} for i in range(n)] for j, k in enumerate(keys)}
        if "randomisation" in plan.metrics and want("randomisation"):
            ids = [s.image_id for s in samples]
            yield "randomisation", self.randomisation(x, base, explained, ids)

    def curves(self, x: torch.Tensor, maps: list[torch.Tensor], targets: torch.Tensor, mode: str) -> list[list[float]]:
        """Deletion or insertion AUC of every map (P maps of (N, H, W)) -> P lists of N floats; one call, one
        forward per distinct curve image (the endpoints and equally ranked maps share theirs)."""
        from ..evaluation.faithfulness import deletion_insertion_grid, trapezoid

        curves = deletion_insertion_grid(self.model, x, maps, targets, mode=mode, steps=self.config.steps,
                                         baseline=self.config.baseline, batch_size=self.config.curve_batch)
        return [_float(auc) for auc in trapezoid(curves)]

    # ----------------------------------------------------------------- randomisation
    def _steps(self) -> list[tuple[str, int, bool]]:
        """(subset, block index, reset to trained first) for every randomisation step."""
        mode, blocks = self.config.randomisation, self.plan.blocks
        steps = []
        if mode in ("cascading", "both"):
            steps += [(f"cascading:{b}", i, i == 0) for i, b in enumerate(blocks)]
        if mode in ("independent", "both"):
            steps += [(f"independent:{b}", i, True) for i, b in enumerate(blocks)]
        return steps

    def randomisation(self, x, base, explained, ids) -> Values:
        from ..evaluation.randomisation import randomise_module

        plan, cfg = self.plan, self.config
        if self._work is None:
            self._work = copy.deepcopy(self.model)
            self._trained = copy.deepcopy(self._work.state_dict())
        work = self._work
        keys = plan.keys("randomisation")
        out = {k: [dict() for _ in ids] for k in keys}

        refs = [base[k][:, 0] for k in keys]
        # the trained maps' ranks, SSIM statistics and HOG ranks, prepared once for every step, in chunks of keys
        # (the similarities' temporaries grow with maps x pixels: a chunk bounds them)
        per_key = max(1, refs[0].numel()) if refs else 1
        chunk = max(1, SIMILARITY_PIXELS // per_key)
        spans = [(s, min(s + chunk, len(keys))) for s in range(0, len(keys), chunk)]
        references = [similarity_reference(torch.stack(refs[s:e]).flatten(0, 1), hog_cell=cfg.hog_cell)
                      for s, e in spans]

        def record(subset, other_maps):
            """Similarities of all keys' maps, one batched call per chunk of keys (P keys x N images)."""
            for (s, e), reference in zip(spans, references):
                b = torch.stack(other_maps[s:e])
                sims = similarities_to(reference, b.flatten(0, 1).to(refs[0]))
                for measure, v in sims.items():
                    vals = _float(v)
                    for j, k in enumerate(keys[s:e]):
                        for i in range(len(ids)):
                            out[k][i][f"{subset}|randomisation_{measure}"] = vals[j * len(ids) + i]

        noise = []  # random-map baseline: uniform noise, seeded per (image, method, layer)
        for k, ref in zip(keys, refs):
            noise.append(torch.stack([torch.rand(ref.shape[-2:], dtype=ref.dtype, generator=torch.Generator().manual_seed(
                zlib.crc32(f"{cfg.seed}|{i}|{k[0]}|{k[1]}".encode()))) for i in ids]).to(ref.device))
        record("random-map", noise)
        size = tuple(x.shape[-2:])
        try:
            for subset, i, reset in self._steps():
                if reset:
                    work.load_state_dict(self._trained)
                randomise_module(work.get_submodule(plan.blocks[i]), cfg.seed + 7919 * (i + 1))
                other = self.maps(work, x, plan.methods, explained[:, None], size)
                record(subset, [other[k][:, 0] for k in keys])
        finally:
            work.load_state_dict(self._trained)
        return out

    # ----------------------------------------------------------------- pointing
    def pointing(self, sample) -> Values:
        from ..evaluation.difficult import difficult_by_rule
        from ..evaluation.pointing import center_point, pointing_hit, saliency_point

        if sample.masks is None:
            raise InputError(f"image {sample.image_id!r} has no masks; the pointing metric needs localisation data")
        keep = sample.evaluated
        out = {k: [{}] for k in self.plan.keys("pointing")}
        if not keep:
            return out
        classes = [sample.classes[i] for i in keep]
        masks = sample.masks[keep].bool().cpu()
        h, w = masks.shape[-2:]
        hard = difficult_by_rule(masks, len(sample.classes)).tolist()
        x = model_inputs(self.model, [sample.image], self.preprocess)
        maps = self.maps(self.model, x, self.plan.methods, torch.tensor([classes]), (h, w))
        maps[CENTER, ""] = None
        centre = torch.tensor([center_point(h, w)] * len(classes), dtype=torch.float64)
        for k in self.plan.keys("pointing"):
            points = centre if k == (CENTER, "") else saliency_point(maps[k][0]).cpu()
            v = {}
            for t, c in enumerate(classes):
                hit = float(pointing_hit(masks[t], points[t], self.config.tolerance))
                v[f"all|pointing@{c}"] = hit
                if hard[t]:
                    v[f"difficult|pointing@{c}"] = hit
            out[k] = [v]
        return out
