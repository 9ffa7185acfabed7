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

from ..lazy import lazy_package

_EXPORTS = {  # submodule -> the public names it defines (imported on first use: no torch on import)
    ".class_map": ("ClassMap", "group_objective", "read_class_map", "resolve_class_map"),
    ".common": ("expand_layers", "expand_methods"),
    ".datasets": ("VOC_CLASSES", "COCOPointing", "ImageFolderSamples", "Sample", "VOCPointing", "annotation_mask",
                  "load_image", "polygon_rle_counts", "rle_counts_from_string", "rle_decode", "voc_sample"),
    ".difficult": ("compute_difficult_flags", "difficult_by_rule", "read_difficult_flags", "write_difficult_flags"),
    ".faithfulness": ("deletion_insertion", "deletion_insertion_curves", "deletion_insertion_grid"),
    ".identity_check": ("identity_check",),
    ".pointing": ("CENTER", "PointingScore", "center_point", "gaussian_smooth", "pointing_game", "pointing_hit",
                  "saliency_point", "spatial_softmax_objective"),
    ".randomisation": ("cascading_order", "execution_positions", "randomise_module"),
    ".records": ("Record", "format_table", "records_of", "records_to_csv", "records_to_json", "summarise",
                 "write_records"),
    ".results": ("ImageValue", "Result", "reduce_values"),
    ".run": ("Evaluation", "evaluate"),
    ".score": ("score",),
    ".shorthands": ("class_sensitivity", "faithfulness", "parameter_randomisation"),
    ".sensitivity": ("top_bottom_classes",),
    ".similarity": ("average_ranks", "hog", "hog_similarity", "map_similarities", "minmax", "spearman", "ssim"),
}

__all__ = sorted(name for names in _EXPORTS.values() for name in names)

lazy_package(__name__, _EXPORTS)
