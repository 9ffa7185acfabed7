"""Objectives for models that are not classifiers: ``extagg.saliency(model, images, methods, layers,
objective=box_score(...))``.

An objective is ``callable(output) -> (N,)`` scores, one per image, computed from the model's output with
autograd (:func:`extagg.targets.objective_scores` calls it on the output of the pass that is explained).

* :func:`box_score`: torchvision detection models (Faster R-CNN, RetinaNet, FCOS, SSD, ... in eval mode) return
  ``list[dict]`` per image with ``boxes`` (K, 4) as (x1, y1, x2, y2), ``labels`` (K,) and ``scores`` (K,). The
  score explained is that of the predicted box of class ``label`` that overlaps the given box most (IoU), if that
  IoU is at least ``iou_threshold``; with ``iou_term=True`` that IoU is added to it, which is what
  pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` explains (it takes the box of highest IoU among all classes and
  counts it only if its class is ``label``; the two agree whenever that box is of class ``label``).
* :func:`mask_logit`: torchvision segmentation models return ``{"out": (N, K, H, W) logits, ...}`` (a plain
  (N, K, H, W) tensor is accepted too). The score explained is the logit of class ``cls`` summed over the pixels
  of ``mask`` (H, W) or (N, H, W), bool or 0/1, as pytorch-grad-cam's ``SemanticSegmentationTarget``.

Both raise :class:`~extagg.errors.InputError` naming the bad value: a box that is not four finite coordinates
with x1 < x2 and y1 < y2, an image without a matching prediction (with the best IoU found), a mask of the wrong
size, a class the output does not have, an output of another kind of model.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch

from .errors import InputError

Box = Union[Sequence[float], torch.Tensor]


def _boxes(box: Box) -> torch.Tensor:
    try:
        b = torch.as_tensor(box, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"box must be four numbers (x1, y1, x2, y2) or an (N, 4) tensor, got {box!r}") from exc
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4 or b.shape[0] == 0:
        raise InputError(f"box must be (x1, y1, x2, y2) or an (N, 4) tensor, one per image, got shape "
                         f"{tuple(b.shape)}")
    if not torch.isfinite(b).all() or not ((b[:, 0] < b[:, 2]) & (b[:, 1] < b[:, 3])).all():
        raise InputError(f"box must be finite pixel coordinates (x1, y1, x2, y2) with x1 < x2 and y1 < y2, got "
                         f"{b.tolist()}")
    return b


def _label(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not (
            isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point()):
        raise InputError(f"{what} must be an integer class index, got {value!r}")
    value = int(value)
    if value < 0:
        raise InputError(f"{what} must be a class index >= 0, got {value}")
    return value


class BoxScore:
    """The objective :func:`box_score` returns; ``str()`` names it."""

    def __init__(self, box: Box, label: int, iou_threshold: float = 0.5, iou_term: bool = False):
        self.boxes = _boxes(box)
        self.label = _label(label, "box label")
        if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)) or not (
                0 <= iou_threshold <= 1) or math.isnan(iou_threshold):
            raise InputError(f"iou_threshold must be a number in [0, 1], got {iou_threshold!r}")
        self.iou_threshold = float(iou_threshold)
        self.iou_term = bool(iou_term)

    def __repr__(self) -> str:
        return (f"box_score(box={self.boxes.tolist()}, label={self.label}, iou_threshold={self.iou_threshold}"
                f"{', iou_term=True' if self.iou_term else ''})")

    def __call__(self, output) -> torch.Tensor:
        from torchvision.ops import box_iou

        if not isinstance(output, (list, tuple)) or not all(
                isinstance(o, dict) and {"boxes", "labels", "scores"} <= set(o) for o in output):
            raise InputError(f"{self!r} explains detection outputs, a list of dicts with 'boxes', 'labels' and "
                             f"'scores' per image (a torchvision detection model in eval mode); got "
                             f"{type(output).__name__}")
        n = len(output)
        if self.boxes.shape[0] not in (1, n):
            raise InputError(f"box: {self.boxes.shape[0]} boxes for {n} images; give one box, or one per image")
        scores = []
        for i, found in enumerate(output):
            wanted = self.boxes[min(i, self.boxes.shape[0] - 1)][None].to(found["boxes"].device, found["boxes"].dtype)
            of_class = (found["labels"] == self.label).nonzero().flatten()
            if of_class.numel() == 0:
                raise InputError(f"{self!r}: image {i} has no predicted box of class {self.label} (its "
                                 f"{len(found['labels'])} boxes are of classes {sorted(set(found['labels'].tolist()))[:10]}); choose a class "
                                 "the model detects, or lower the model's score threshold (box_score_thresh)")
            ious = box_iou(wanted, found["boxes"][of_class])[0]
            best = int(ious.argmax())
            best_iou = float(ious[best].detach())
            if best_iou < self.iou_threshold:
                raise InputError(f"{self!r}: image {i}: no predicted box of class {self.label} overlaps the box with "
                                 f"IoU >= {self.iou_threshold} (best {best_iou:.3f}); give a box nearer a prediction "
                                 "or a lower iou_threshold")
            index = of_class[best]
            score = found["scores"][index]
            scores.append(score + ious[best] if self.iou_term else score)
        return torch.stack(scores)


def box_score(box: Box, label: int, iou_threshold: float = 0.5, *, iou_term: bool = False) -> BoxScore:
    """An objective for torchvision detection models: per image, the score of the predicted box of class
    ``label`` best matched by IoU to ``box`` (``(x1, y1, x2, y2)`` in the model's input pixels, one for every image
    or an (N, 4) tensor), which must reach ``iou_threshold``; plus that IoU with ``iou_term=True`` (as
    pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``). See the module docstring."""
    return BoxScore(box, label, iou_threshold, iou_term)


class MaskLogit:
    """The objective :func:`mask_logit` returns; ``str()`` names it."""

    def __init__(self, cls: int, mask):
        self.cls = _label(cls, "mask class")
        m = torch.as_tensor(mask).detach()
        if m.ndim not in (2, 3) or m.numel() == 0:
            raise InputError(f"mask must be an (H, W) or (N, H, W) array of 0/1 or bools, got shape {tuple(m.shape)}")
        if not m.dtype == torch.bool and not ((m == 0) | (m == 1)).all():
            raise InputError("mask must hold only 0 and 1 (or bools): it selects the pixels whose logits are summed")
        if not m.any():
            raise InputError("mask selects no pixel; its score would be 0 whatever the input")
        self.mask = m

    def __repr__(self) -> str:
        return f"mask_logit(cls={self.cls}, mask of shape {tuple(self.mask.shape)}, {int(self.mask.sum())} pixels)"

    def __call__(self, output) -> torch.Tensor:
        logits = output.get("out") if isinstance(output, dict) else output
        if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
            raise InputError(f"{self!r} explains segmentation outputs, (N, K, H, W) logits or a dict with 'out' "
                             f"(a torchvision segmentation model); got {type(output).__name__}")
        n, k, h, w = logits.shape
        if self.cls >= k:
            raise InputError(f"mask class {self.cls} is out of range: the output has {k} classes (0..{k - 1})")
        if tuple(self.mask.shape[-2:]) != (h, w) or (self.mask.ndim == 3 and self.mask.shape[0] != n):
            raise InputError(f"mask of shape {tuple(self.mask.shape)} does not fit the output's {n} images of "
                             f"{h}x{w} pixels; give (H, W) = ({h}, {w}) or (N, H, W)")
        mask = self.mask.to(logits.device, logits.dtype)
        return (logits[:, self.cls] * mask).sum(dim=(-2, -1))


def mask_logit(cls: int, mask) -> MaskLogit:
    """An objective for segmentation models: per image, the logit of class ``cls`` summed over the pixels of
    ``mask`` ((H, W) for every image or (N, H, W), bool or 0/1, at the output's resolution). See the module
    docstring."""
    return MaskLogit(cls, mask)


def from_arguments(args, model, x: torch.Tensor):
    """The objective ``extagg explain``'s ``--box/--box-label/--iou-threshold`` or ``--mask-class`` ask for
    (:func:`extagg.explain_cli.add_explain_command`), or None for class targets."""
    box, label, cls = getattr(args, "box", None), getattr(args, "box_label", None), getattr(args, "mask_class", None)
    if box is None and label is None and cls is None:
        return None
    if cls is not None and (box is not None or label is not None):
        raise InputError("give --box with --box-label (detection) or --mask-class (segmentation), not both")
    if getattr(args, "target", None) is not None:
        raise InputError("--target selects a class of a classifier; with --box or --mask-class leave it out")
    if cls is None:
        if box is None or label is None:
            raise InputError("--box and --box-label go together: the box (x1,y1,x2,y2) and its class index")
        try:
            coords = [float(v) for v in box.split(",")]
        except ValueError:
            raise InputError(f"--box must be four numbers x1,y1,x2,y2, got {box!r}") from None
        return box_score(coords, label, args.iou_threshold)
    with torch.no_grad():
        out = model(x)
    logits = out.get("out") if isinstance(out, dict) else out
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
        raise InputError(f"--mask-class is for segmentation models ((N, K, H, W) logits or a dict with 'out'); "
                         f"this model returned {type(out).__name__}")
    if not 0 <= cls < logits.shape[1]:
        raise InputError(f"--mask-class {cls} is out of range: the model has {logits.shape[1]} classes")
    mask = logits.argmax(1) == cls
    if not mask.any():
        raise InputError(f"--mask-class {cls}: no pixel is predicted as class {cls}; choose a class the model "
                         f"predicts ({sorted(set(logits.argmax(1).flatten().tolist()))[:10]})")
    return mask_logit(cls, mask)
