"""Which model class explains which data-set label in a sweep: refuse silent index coincidences.

A sweep that reads labels (``--targets label``, the pointing game) on data that declares its classes (VOC, COCO,
an image folder) needs the data set's classes to be the model's: the same number of classes (then class i is
output i), a ``--class-map`` (the reader of ``extagg evaluate``), or, for an image folder, folder names that all
match the model's category names (the weights' category list; ImageNet's for a 1000-way head). Anything else is
refused with the fix.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from ..errors import InputError
from ..evaluation.class_map import ClassMap, resolve_class_map
from .config import SweepConfig


def reads_labels(config: SweepConfig, calls=()) -> bool:
    """Whether the run reads labels: ``--targets label``, or one of the resolved metric ``calls`` declares
    ``needs={"labels"}``."""
    return config.targets == "label" or any("labels" in c.metric.needs for c in calls)


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def model_categories(config: SweepConfig, num_model_classes: int) -> Optional[tuple[str, ...]]:
    """The model's class names: the torchvision weights' ``categories``, else ImageNet's for a 1000-way head."""
    if config.weights and config.model != "custom":
        try:
            import torchvision

            enum = torchvision.models.get_model_weights(config.model)
            categories = enum[config.weights].meta.get("categories") if config.weights in enum.__members__ else None
            if categories is not None and len(categories) == num_model_classes:
                return tuple(categories)
        except (ValueError, KeyError, AttributeError):
            pass
    if num_model_classes == 1000:
        from ..models import imagenet_categories

        return imagenet_categories()
    return None


def by_name(data_names: Sequence[str], categories: Sequence[str]) -> dict:
    """{data class name: model class index} where every folder name matches a category (case, spaces, ``_`` and
    ``-`` ignored); an InputError listing the unmatched names otherwise."""
    index = {}
    for i, c in enumerate(categories):
        index.setdefault(_key(c), i)
    unmatched = [n for n in data_names if _key(n) not in index]
    if unmatched:
        shown = ", ".join(repr(n) for n in unmatched[:8]) + (f" and {len(unmatched) - 8} more" if len(unmatched) > 8
                                                               else "")
        raise InputError(f"--targets label on an image folder: the folder names {shown} match none of the model's "
                         f"{len(categories)} category names; rename the folders to category names (e.g. "
                         f"{categories[0]!r}) or give --class-map FILE.json {{folder name: model class index}}")
    return {n: index[_key(n)] for n in data_names}


def sweep_class_map(config: SweepConfig, class_names: Optional[Sequence[str]], num_model_classes: int,
                    calls=()) -> Optional[ClassMap]:
    """The class map of a sweep that reads labels (None when it reads none, or when the samples declare no
    classes: their labels are then the model's class indices); one model class per data-set class."""
    cmap = _class_map(config, class_names, num_model_classes, calls)
    if cmap is not None and not cmap.single:
        raise InputError("--class-map: the sweep explains one model class per data-set class; map each class to one "
                         "model class index (groups of several are for extagg evaluate's pointing and identity)")
    return cmap


def _class_map(config, class_names, num_model_classes, calls):
    if not reads_labels(config, calls):
        if config.class_map:
            raise InputError("--class-map is for labelled runs (--targets label or the pointing metric)")
        return None
    if class_names is None:
        if config.class_map:
            raise InputError("--class-map needs data that declares its classes (voc, coco, folder)")
        return None
    names = list(class_names)
    if config.class_map:
        return resolve_class_map(config.class_map, num_data_classes=len(names), data_names=names,
                                 num_model_classes=num_model_classes)
    if config.data == "folder":
        categories = model_categories(config, num_model_classes)
        if categories is None:
            if len(names) == num_model_classes:
                raise InputError(f"--targets label on an image folder: the model's class names are unknown, so "
                                 f"the folder indices 0..{len(names) - 1} cannot be checked against its classes; "
                                 "give --class-map FILE.json {folder name: model class index}")
            return resolve_class_map(None, num_data_classes=len(names), data_names=names,
                                     num_model_classes=num_model_classes)
        return resolve_class_map(by_name(names, categories), num_data_classes=len(names), data_names=names,
                                 num_model_classes=num_model_classes)
    return resolve_class_map(None, num_data_classes=len(names), data_names=names, num_model_classes=num_model_classes)
