"""Which model output explains which data-set class: refuse silent index coincidences.

A VOC class id 0..19 is not ImageNet class 0..19. An evaluation that explains data-set labels (the pointing
game, the identity check with ``targets="label"``) therefore needs either a model whose head has as many
outputs as the data set has classes (then class i is output i), or an explicit ``class_map``:
``{data-set class (id or name): model class index or list of indices}``. A list explains the group's
log-sum-exp of scores (the log of the summed unnormalised probabilities; for one index, the logit itself).
Data-set classes missing from the map are not evaluated (they show up as empty classes).
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence, Union

import attrs
import torch

from ..errors import InputError, UnknownNameError
from ..targets import class_logits

ClassMapLike = Union[None, Mapping, str, os.PathLike]


@attrs.frozen
class ClassMap:
    """Per data-set class id, the model class indices that explain it (empty: not evaluated)."""

    groups: tuple[tuple[int, ...], ...]
    num_model_classes: int

    @property
    def single(self) -> bool:
        """Every mapped class is one model output (plain targets suffice, no group objective)."""
        return all(len(g) <= 1 for g in self.groups)

    def mapped(self, data_class: int) -> bool:
        return bool(self.groups[data_class])


def read_class_map(path: Union[str, os.PathLike]) -> dict:
    """A class map from a JSON object file ``{"dog": [151, 152], "12": 281, ...}`` (keys: class names or ids)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read class map {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"class map {str(path)!r} must hold a JSON object {{data class: model class(es)}}, "
                         f"got {type(data).__name__}")
    return data


def resolve_class_map(class_map: ClassMapLike, *, num_data_classes: int, num_model_classes: int,
                      data_names: Optional[Sequence[str]] = None) -> ClassMap:
    """Validate ``class_map`` (None, a mapping or a JSON file path) against the data set and the model.

    None is accepted only when the model has exactly ``num_data_classes`` outputs (identity); otherwise an
    :class:`~extagg.errors.InputError` names both numbers and how to fix it. Keys: data-set class ids (int or
    digit strings) or names (with ``data_names``); values: a model class index or a non-empty list of them.
    """
    names = list(data_names) if data_names is not None else None
    if class_map is None:
        if num_model_classes != num_data_classes:
            example = f"'{names[0]}'" if names else "class 0"
            raise InputError(
                f"the model has {num_model_classes} output classes but the data set has {num_data_classes} classes: "
                f"data-set class ids would be read as model class indices (e.g. {example} as the model's class 0). "
                f"Pass class_map={{data class (name or id): model class index or [indices]}} (command line: "
                f"--class-map FILE.json, e.g. {{\"dog\": [151, 152], \"cat\": 281}}), or use a model whose head has "
                f"{num_data_classes} outputs (fine-tuned on this data set)")
        return ClassMap(tuple((i,) for i in range(num_data_classes)), num_model_classes)
    if isinstance(class_map, (str, os.PathLike)):
        class_map = read_class_map(class_map)
    if not isinstance(class_map, Mapping):
        raise InputError(f"class_map must be None, a mapping or a JSON file path, got {type(class_map).__name__}")
    groups: list[tuple[int, ...]] = [()] * num_data_classes
    for key, value in class_map.items():
        data_class = _data_class(key, num_data_classes, names)
        groups[data_class] = _model_classes(key, value, num_model_classes)
    if not any(groups):
        raise InputError("class_map maps no data-set class to a model class")
    return ClassMap(tuple(groups), num_model_classes)


def _data_class(key, n: int, names: Optional[list[str]]) -> int:
    if isinstance(key, bool):
        raise InputError(f"class_map key {key!r} is not a class id or name")
    if isinstance(key, str) and key.strip().isdigit():
        key = int(key)
    if isinstance(key, int):
        if not 0 <= key < n:
            raise InputError(f"class_map key {key} is out of range: the data set has {n} classes (ids 0..{n - 1})")
        return key
    if isinstance(key, str):
        if names is None:
            raise InputError(f"class_map key {key!r} is a name, but the data set has no class names; use ids 0..{n - 1}")
        if key not in names:
            raise UnknownNameError("data-set class", key, names, "class_map")
        return names.index(key)
    raise InputError(f"class_map key {key!r} must be a data-set class id or name")


def _model_classes(key, value, m: int) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise InputError(f"class_map[{key!r}] must be a model class index or a non-empty list of them, got {value!r}")
    bad = [v for v in items if not 0 <= v < m]
    if bad:
        raise InputError(f"class_map[{key!r}] = {value!r}: model class {bad[0]} is out of range; the model has "
                         f"{m} classes (0..{m - 1})")
    return tuple(dict.fromkeys(items))


def group_objective(groups: Sequence[Sequence[Sequence[int]]], base=None):
    """An objective (output -> (N, T) scores) for N rows of T groups of model classes: the log-sum-exp of each
    group's scores. ``base(indices (N, K)) -> objective`` gives the per-index scores (default: the class
    logits, spatial outputs summed), e.g. :func:`~extagg.evaluation.pointing.spatial_softmax_objective`."""
    n, t = len(groups), len(groups[0])
    width = max(len(g) for row in groups for g in row)
    idx = torch.tensor([[list(g) + [g[0]] * (width - len(g)) for g in row] for row in groups], dtype=torch.long)
    valid = torch.tensor([[[True] * len(g) + [False] * (width - len(g)) for g in row] for row in groups])
    flat = idx.view(n, t * width)
    scores_of = base(flat) if base is not None else (lambda out: class_logits(out).gather(1, flat.to(out.device)))

    def objective(output: torch.Tensor) -> torch.Tensor:
        s = scores_of(output).view(n, t, width)
        return s.masked_fill(~valid.to(s.device), -torch.inf).logsumexp(-1)

    return objective
