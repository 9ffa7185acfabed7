"""The evaluations of Rebuffi et al. 2020 and Khakzar et al. / Adebayo et al., for any method string on any model.

Every evaluation takes a model, a data source (an iterable of :class:`Sample`, e.g. :class:`VOCPointing`,
:class:`COCOPointing`, :class:`ImageFolderSamples`, or a plain list), method strings or fnmatch patterns and
layer names or patterns, and returns tidy :class:`Record` ``(method, layer, subset, metric, value, count)``
lists; all maps come from :func:`extagg.saliency` (one forward and one backward per batch). The user's model is
left exactly as it was (parameter randomisation works on a deep copy). Evaluations that explain data-set labels
need a model with the data set's classes or a ``class_map`` (:mod:`.class_map`). See docs/evaluation.md.

* :func:`evaluate`: any registered metrics (``extagg metrics``) through the one driver that ``extagg sweep`` uses;
  typed :class:`Result` rows (value, n, nan, sample std, direction) and floors. The functions below are
  shorthands for one metric each, returning :class:`Record` lists.
* :func:`pointing_game`: pointing accuracy (all / difficult subsets) and the centre baseline.
* :func:`class_sensitivity`: Spearman between the most- and least-probable-class maps.
* :func:`parameter_randomisation`: cascading / independent randomisation; Spearman (+abs), SSIM, HOG.
* :func:`deletion_insertion` (one batch of maps), :func:`deletion_insertion_grid` (many maps of the same images,
  one forward per distinct curve image), :func:`faithfulness` (a data set): RISE deletion / insertion
  area under the curve of the target class's probability.
* :func:`identity_check`: NormGrad identity trick vs the real conv (correlation, pointing difference).
"""
from __future__ import annotations

from .class_map import ClassMap, group_objective, read_class_map, resolve_class_map
from .common import expand_layers, expand_methods
from .datasets import (
    VOC_CLASSES,
    COCOPointing,
    ImageFolderSamples,
    Sample,
    VOCPointing,
    annotation_mask,
    load_image,
    polygon_rle_counts,
    rle_counts_from_string,
    rle_decode,
    voc_sample,
)
from .difficult import compute_difficult_flags, difficult_by_rule, read_difficult_flags, write_difficult_flags
from .faithfulness import deletion_insertion, deletion_insertion_curves, deletion_insertion_grid
from .identity_check import identity_check
from .pointing import (
    CENTER,
    PointingScore,
    center_point,
    gaussian_smooth,
    pointing_game,
    pointing_hit,
    saliency_point,
    spatial_softmax_objective,
)
from .randomisation import cascading_order, execution_positions, randomise_module
from .records import Record, format_table, records_of, records_to_csv, records_to_json, summarise, write_records
from .results import ImageValue, Result, reduce_values
from .run import Evaluation, evaluate
from .score import score
from .shorthands import class_sensitivity, faithfulness, parameter_randomisation
from .sensitivity import top_bottom_classes
from .similarity import average_ranks, hog, hog_similarity, map_similarities, minmax, spearman, ssim

__all__ = [
    "CENTER", "COCOPointing", "Evaluation", "ImageValue", "Result", "evaluate", "records_of", "reduce_values", "ClassMap", "group_objective", "read_class_map", "resolve_class_map", "ImageFolderSamples", "PointingScore", "Record", "Sample", "VOCPointing",
    "VOC_CLASSES", "annotation_mask", "average_ranks", "cascading_order", "center_point", "class_sensitivity",
    "compute_difficult_flags", "deletion_insertion", "deletion_insertion_curves", "deletion_insertion_grid", "difficult_by_rule", "execution_positions", "faithfulness", "expand_layers", "expand_methods", "format_table",
    "gaussian_smooth", "hog", "hog_similarity", "identity_check", "load_image", "map_similarities", "minmax",
    "parameter_randomisation", "pointing_game", "pointing_hit", "polygon_rle_counts", "randomise_module",
    "read_difficult_flags", "records_to_csv", "records_to_json", "rle_counts_from_string", "rle_decode",
    "saliency_point", "score", "spatial_softmax_objective", "spearman", "ssim", "summarise", "top_bottom_classes",
    "voc_sample", "write_difficult_flags", "write_records",
]
