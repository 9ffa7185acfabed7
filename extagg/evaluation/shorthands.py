"""One metric each, for the evaluations of the paper: :func:`class_sensitivity`, :func:`parameter_randomisation`
and :func:`faithfulness` run their metric through the one driver (:func:`extagg.evaluation.evaluate`) and return
:class:`~extagg.evaluation.records.Record` lists (``measure``, ``measure_std`` (sample std), ``measure_nan``)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..errors import InputError, UnknownNameError
from .faithfulness import MODES as CURVES
from .randomisation import MODES, Init
from .records import Record, records_of
from .run import evaluate


def class_sensitivity(model: torch.nn.Module, data, methods, layers="input", *, preprocess=None,
                      batch_size: int = 8, limit: Optional[int] = None, progress: bool = False,
                      registry=None, mismatched: Optional[str] = None, pairing: str = "bottom", seed: int = 0,
                      floors: bool = True) -> list[Record]:
    """Spearman(top-1 map, paired class's map) per image for every (method, layer): the ``sensitivity`` metric
    through the one driver (:func:`extagg.evaluation.evaluate`).

    :param data: iterable of :class:`~extagg.evaluation.datasets.Sample` (labels are not used).
    :param methods: method strings or patterns; :param layers: layer names or patterns.
    :param preprocess: (3, H, W) [0, 1] image -> model input; consecutive same-size inputs are batched.
    :param pairing: ``"bottom"`` (least probable class, the paper), ``"random"`` (seeded per image) or
        ``"second"``.
    :returns: records with subset ``"top-vs-<pairing>"``: ``spearman`` (signed maps) and ``spearman_abs``
        (absolute maps), each as mean over images with a defined correlation (``count``), ``*_std`` (sample
        std), and ``*_nan`` = number of images whose correlation is undefined (a constant map), never dropped
        silently; with ``floors``, the same for ``floor:cross-image`` and ``floor:smooth-noise``.
    """
    if pairing not in ("bottom", "random", "second"):
        raise InputError(f"pairing must be bottom, random or second, got {pairing!r}")
    out = evaluate(model, data, methods, layers, f"sensitivity(pairing={pairing})", preprocess=preprocess,
                   batch_size=batch_size, limit=limit, progress=progress, registry=registry, mismatched=mismatched,
                   seed=seed)
    if not out.rows:
        raise InputError("class sensitivity got no samples")
    return records_of(out.rows, floors)


def parameter_randomisation(model: torch.nn.Module, data, methods, layers="input", *,
                            randomise: Optional[Union[str, Sequence[str]]] = None, mode: str = "both",
                            init: Init = "reset", seed: int = 0, preprocess=None, batch_size: int = 8,
                            limit: Optional[int] = None, hog_cell: int = 16, baseline: bool = True,
                            progress: bool = False, registry=None, mismatched: Optional[str] = None) -> list[Record]:
    """Similarity of every (method, layer) map to the trained model's map under parameter randomisation: the
    ``randomisation`` metric through the one driver (:func:`extagg.evaluation.evaluate`), on a deep copy.

    :param randomise: block names or patterns (cascading order as given for explicit names; output first in
        execution order for the default and for patterns, see :func:`cascading_order`).
    :param mode: ``"cascading"``, ``"independent"`` or ``"both"``. :param init: see :func:`randomise_module`.
    :param hog_cell: HOG cell size in pixels (maps need at least 3 cells per side).
    :param baseline: also report the floors ``floor:cross-image`` (the same similarity between trained maps of
        different images of a batch) and ``floor:smooth-noise`` (against uniform noise at the map's resolution).
    :returns: records with subsets ``"cascading:<block>"`` (cumulative through that block),
        ``"independent:<block>"`` and the floors; metrics ``spearman``, ``spearman_abs``, ``ssim``, ``hog``
        (each with ``_std`` and ``_nan``, see :func:`~extagg.evaluation.records.records_of`).
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not (callable(init) or init in ("reset", "normal")):
        raise InputError(f"init must be 'reset', 'normal' or a callable(module, generator), got {init!r}")
    settings = {"randomise": randomise}
    if callable(init):
        settings["init"] = init
    out = evaluate(model, data, methods, layers,
                   f"randomisation(mode={mode},hog_cell={hog_cell},init={init if isinstance(init, str) else 'reset'})",
                   preprocess=preprocess, batch_size=batch_size, limit=limit, progress=progress, registry=registry,
                   mismatched=mismatched, seed=seed, settings=settings)
    return records_of(out.rows, floors=baseline)


def faithfulness(model: torch.nn.Module, data, methods, layers="input", *, mode: str, steps: int = 32,
                 baseline: str = "blur", preprocess=None, batch_size: int = 8, curve_batch_size: int = 64,
                 limit: Optional[int] = None, progress: bool = False, registry=None,
                 mismatched: Optional[str] = None) -> list:
    """Deletion or insertion AUC of every (method, layer) over a data set, for the class the model predicts: the
    ``deletion`` / ``insertion`` metric through the one driver (:func:`extagg.evaluation.evaluate`).

    Maps come from :func:`extagg.saliency` (``batch_size`` images per pass, resized to the model input); the
    curves of all maps of a batch from :func:`deletion_insertion_grid` (``curve_batch_size`` images per forward).
    :returns: records with subset ``"all"`` and metric ``"deletion_auc"`` or ``"insertion_auc"`` (mean over
        images, ``_std``, ``_nan``; see :func:`~extagg.evaluation.records.records_of`).
    """
    if mode not in CURVES:
        raise UnknownNameError("deletion/insertion mode", str(mode), CURVES)
    if not isinstance(baseline, str):
        raise InputError("faithfulness takes a baseline name (blur, zero, mean); for a tensor baseline call "
                         "deletion_insertion on a batch")
    out = evaluate(model, data, methods, layers, f"{mode}(steps={steps},baseline={baseline})", preprocess=preprocess,
                   batch_size=batch_size, limit=limit, progress=progress, registry=registry, mismatched=mismatched,
                   settings={"curve_batch": curve_batch_size})
    return records_of(out.rows)
