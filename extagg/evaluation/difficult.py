"""The pointing game's "difficult" subset: TorchRay's flags files and the paper's rule.

Flags file (TorchRay ``pointing_game_ebp_voc07_difficult.txt``): one line per image,
``image_id<TAB>f_0<TAB>...<TAB>f_{C-1}`` with 0/1 flags in the data set's class order; ``image_id`` is the
image file name without extension (VOC ``000001``, COCO ``COCO_val2014_000000000042``).

Rule (Rebuffi et al. supp. A, from EBP): an (image, class) pair is difficult iff the class's ground-truth
region covers **under 25 %** of the image **and** at least one other class is present in the image.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence, Union

import torch

from ..errors import InputError

Flags = Mapping[str, tuple[bool, ...]]


def read_difficult_flags(path: Union[str, os.PathLike], num_classes: int) -> dict[str, tuple[bool, ...]]:
    """Parse a TorchRay flags file into ``{image_id: (flag per class)}``; malformed lines and repeated image ids raise naming the
    line, and a file that is not UTF-8 text (a binary file given by mistake) names the file."""
    flags: dict[str, tuple[bool, ...]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                values = [v.strip() for v in fields[1:] if v.strip() != ""]
                if len(values) != num_classes or any(v not in ("0", "1") for v in values):
                    raise InputError(
                        f"{os.fspath(path)}:{lineno}: expected 'image_id' and {num_classes} tab-separated 0/1 "
                        f"flags, got {line[:80]!r}"
                    )
                image_id = fields[0].strip()
                if image_id in flags:
                    raise InputError(f"{os.fspath(path)}:{lineno}: image id {image_id!r} is listed twice")
                flags[image_id] = tuple(v == "1" for v in values)
    except UnicodeDecodeError as e:
        raise InputError(f"{os.fspath(path)}: not a text file of difficult flags (not UTF-8, e.g. the byte "
                         f"{e.object[e.start:e.start + 1]!r}); expected TorchRay's 'image_id<TAB>0/1 flags' "
                         "lines") from None
    return flags


def write_difficult_flags(path: Union[str, os.PathLike], flags: Flags) -> None:
    """Write ``{image_id: flags}`` in TorchRay's format (one line per image, in the mapping's order)."""
    with open(path, "w", encoding="utf-8") as f:
        for image_id, row in flags.items():
            f.write(image_id + "\t" + "\t".join("1" if v else "0" for v in row) + "\n")


def difficult_by_rule(masks: torch.Tensor, num_present: int, max_area: float = 0.25) -> torch.Tensor:
    """Per class of an image, the paper's rule: ``area(mask) / (H * W) < max_area`` and ``num_present > 1``.

    :param masks: (T, H, W) boolean ground-truth regions, one per class to judge.
    :param num_present: number of distinct classes annotated in the image (including ones not evaluated).
    :returns: (T,) boolean tensor.
    """
    if masks.ndim != 3:
        raise InputError(f"masks must be (T, H, W), got shape {tuple(masks.shape)}")
    if not 0 < max_area <= 1:
        raise InputError(f"max_area must be a fraction in (0, 1], got {max_area!r}")
    h, w = masks.shape[-2:]
    small = masks.flatten(1).sum(1).double() < max_area * h * w
    return small & (num_present > 1)


def difficult_from_file(flags: Flags, image_id: str, classes: Sequence[int]) -> torch.Tensor:
    """Flags of ``classes`` for ``image_id``; an image missing from the file is **not** difficult.

    (TorchRay evaluates images missing from the file in the difficult subset; see docs/evaluation.md.)
    """
    row = flags.get(image_id)
    if row is None:
        return torch.zeros(len(classes), dtype=torch.bool)
    bad = [c for c in classes if not 0 <= c < len(row)]
    if bad:
        raise InputError(f"class id {bad[0]} is outside the {len(row)} flags of image {image_id!r}")
    return torch.tensor([row[c] for c in classes], dtype=torch.bool)


def compute_difficult_flags(samples, num_classes: int, max_area: float = 0.25) -> dict[str, tuple[bool, ...]]:
    """A flags table (as read from a file) computed with the rule for every sample with masks."""
    out: dict[str, tuple[bool, ...]] = {}
    for s in samples:
        row = [False] * num_classes
        if s.masks is not None and len(s.classes):
            for c, d in zip(s.classes, difficult_by_rule(s.masks, len(s.classes), max_area).tolist()):
                row[c] = d
        out[s.image_id] = tuple(row)
    return out
