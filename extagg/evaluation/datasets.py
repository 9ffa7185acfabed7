"""Evaluation data read from the standard on-disk layouts; nothing is ever downloaded.

Every reader yields :class:`Sample` objects: the image as a float (3, H, W) RGB tensor in [0, 1] at its
original size, the classes present, and (for pointing data) one boolean ground-truth mask per class.

* :class:`VOCPointing`: PASCAL VOC (``root/VOCdevkit/VOC2007/{Annotations,JPEGImages,ImageSets/Main/test.txt}``)
  through ``torchvision.datasets.VOCDetection``. A class's mask is the union of **all** its boxes (VOC
  ``difficult`` ones included), rows ``ymin-1 .. ymax-1`` and columns ``xmin-1 .. xmax-1`` inclusive; a class
  all of whose boxes are VOC-difficult is present but not evaluated (``skip``), as in TorchRay.
* :class:`COCOPointing`: COCO (``root/annotations/instances_val2014.json`` and ``root/val2014/<file_name>``),
  read without pycocotools. A class's mask is the union of its instances' masks (crowd regions included, as
  TorchRay's ``coco_as_mask``); polygons are rasterised with a port of pycocotools' ``rleFrPoly`` and RLE
  (uncompressed lists and compressed strings) decoded exactly. Classes are the categories sorted by id.
* :class:`ImageFolderSamples`: ``torchvision.datasets.ImageFolder`` (e.g. ImageNet val with class folders),
  ``classes = (label,)``; ``per_class`` keeps the first k images of each class (the paper's N = 1000 is k = 1).
"""
from __future__ import annotations

import json
import math
import os
from typing import Optional, Sequence, Union

import attrs
import torch
from PIL import Image

from ..errors import InputError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


@attrs.frozen(eq=False)
class Sample:
    """One evaluation image.

    ``image``: float (3, H, W) RGB in [0, 1], original size. ``classes``: distinct class ids present (sorted);
    for classification data the label. ``masks``: (T, H, W) bool, one per entry of ``classes`` (None without
    localisation). ``skip``: per class, True if present but not to be evaluated (VOC: all boxes difficult).
    """

    image: torch.Tensor
    image_id: str = ""
    classes: tuple[int, ...] = ()
    masks: Optional[torch.Tensor] = None
    skip: tuple[bool, ...] = ()

    @property
    def evaluated(self) -> list[int]:
        """Indices into ``classes`` of the classes to evaluate."""
        skip = self.skip or (False,) * len(self.classes)
        return [i for i, s in enumerate(skip) if not s]


def load_image(path: Union[str, os.PathLike]) -> torch.Tensor:
    """An image file as a float (3, H, W) RGB tensor in [0, 1]."""
    with Image.open(path) as im:
        return pil_to_tensor(im)


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    from torchvision.transforms.functional import pil_to_tensor as p2t

    return p2t(im.convert("RGB")).float().div_(255)


class _Limited:
    def __init__(self, n: int, limit: Optional[int]):
        if limit is not None and limit < 0:
            raise InputError(f"limit must be >= 0 or None, got {limit!r}")
        self._n = n if limit is None else min(n, limit)

    def __len__(self) -> int:
        return self._n

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def _check(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range ({len(self)} samples)")
        return i % len(self)


def voc_sample(image: torch.Tensor, annotation: dict, class_names: Sequence[str] = VOC_CLASSES) -> Sample:
    """A :class:`Sample` from an image and a ``VOCDetection`` target dict (``{'annotation': {...}}``)."""
    ann = annotation["annotation"]
    objs = ann.get("object", [])
    objs = objs if isinstance(objs, list) else [objs]
    h, w = int(ann["size"]["height"]), int(ann["size"]["width"])
    if image.shape[-2:] != (h, w):
        raise InputError(f"VOC image {ann.get('filename')!r} is {tuple(image.shape[-2:])} but its annotation says "
                         f"height {h}, width {w}")
    index = {c: i for i, c in enumerate(class_names)}
    classes: dict[int, list[dict]] = {}
    for obj in objs:
        if obj["name"] not in index:
            raise InputError(f"unknown VOC class {obj['name']!r} in {ann.get('filename')!r}; known: {', '.join(class_names)}")
        classes.setdefault(index[obj["name"]], []).append(obj)
    ids = sorted(classes)
    masks = torch.zeros(len(ids), h, w, dtype=torch.bool)
    skip = []
    for t, c in enumerate(ids):
        for obj in classes[c]:
            b = obj["bndbox"]
            x0, y0 = int(float(b["xmin"])) - 1, int(float(b["ymin"])) - 1
            x1, y1 = int(float(b["xmax"])) - 1, int(float(b["ymax"])) - 1
            masks[t, max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = True
        skip.append(all(bool(int(o.get("difficult", 0))) for o in classes[c]))
    image_id = os.path.splitext(ann["filename"])[0]
    return Sample(image, image_id, tuple(ids), masks, tuple(skip))


class VOCPointing(_Limited):
    """PASCAL VOC detection annotations as pointing-game samples (``root`` contains ``VOCdevkit``)."""

    class_names = VOC_CLASSES

    def __init__(self, root: Union[str, os.PathLike], year: str = "2007", image_set: str = "test",
                 limit: Optional[int] = None):
        from torchvision.datasets import VOCDetection

        voc_dir = os.path.join(os.fspath(root), "VOCdevkit", f"VOC{year}")
        if not os.path.isdir(voc_dir):
            raise InputError(f"no PASCAL VOC data at {voc_dir!r}: give --root the folder that contains "
                             f"VOCdevkit/VOC{year}/{{Annotations,JPEGImages,ImageSets/Main}} (nothing is downloaded)")
        try:
            self.dataset = VOCDetection(os.fspath(root), year=year, image_set=image_set, download=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise InputError(f"cannot read VOC{year} {image_set!r} under {os.fspath(root)!r}: {exc}") from exc
        super().__init__(len(self.dataset), limit)

    def __getitem__(self, i: int) -> Sample:
        image, target = self.dataset[self._check(i)]
        return voc_sample(pil_to_tensor(image), target, self.class_names)


# ----------------------------------------------------------------------------- COCO masks without pycocotools
def rle_counts_from_string(s: Union[str, bytes]) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools ``rleFrString``: 6-bit LEB128-like, chars 48..111)."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise InputError(f"truncated compressed RLE string {s[:40]!r}")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise InputError(f"invalid character {s[p]!r} in compressed RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(counts: Sequence[int], height: int, width: int) -> torch.Tensor:
    """(H, W) bool mask of column-major run lengths (first run is background)."""
    c = torch.as_tensor(list(counts), dtype=torch.long)
    if (c < 0).any() or int(c.sum()) != height * width:
        raise InputError(f"RLE counts sum to {int(c.sum())} (or are negative); expected height*width = {height * width}")
    values = (torch.arange(len(c)) % 2).bool()
    flat = torch.repeat_interleave(values, c)
    return flat.reshape(width, height).t().contiguous()


def polygon_rle_counts(xy: Sequence[float], height: int, width: int) -> list[int]:
    """Run lengths of a polygon ``[x0, y0, x1, y1, ...]``, a line-by-line port of pycocotools ``rleFrPoly``."""
    k = len(xy) // 2
    if k < 1:
        return [height * width]
    scale = 5.0
    x = [int(scale * xy[2 * j] + 0.5) for j in range(k)] + [0]
    y = [int(scale * xy[2 * j + 1] + 0.5) for j in range(k)] + [0]
    x[k], y[k] = x[0], y[0]
    u: list[int] = []
    v: list[int] = []
    for j in range(k):
        xs, xe, ys, ye = x[j], x[j + 1], y[j], y[j + 1]
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            for d in range(dx + 1):
                t = dx - d if flip else d
                u.append(t + xs)
                v.append(int(ys + s * t + 0.5))
        else:
            s = (xe - xs) / dy
            for d in range(dy + 1):
                t = dy - d if flip else d
                v.append(t + ys)
                u.append(int(xs + s * t + 0.5))
    a: list[int] = []
    for j in range(1, len(u)):
        if u[j] != u[j - 1]:
            xd = float(u[j] if u[j] < u[j - 1] else u[j] - 1)
            xd = (xd + 0.5) / scale - 0.5
            if math.floor(xd) != xd or xd < 0 or xd > width - 1:
                continue
            yd = float(v[j] if v[j] < v[j - 1] else v[j - 1])
            yd = (yd + 0.5) / scale - 0.5
            yd = 0.0 if yd < 0 else (float(height) if yd > height else yd)
            a.append(int(xd) * height + int(math.ceil(yd)))
    a.append(height * width)
    a.sort()
    prev = 0
    for j in range(len(a)):
        a[j], prev = a[j] - prev, a[j]
    b = [a[0]]
    j = 1
    while j < len(a):
        if a[j] > 0:
            b.append(a[j])
            j += 1
        else:
            j += 1
            if j < len(a):
                b[-1] += a[j]
                j += 1
    return b


def annotation_mask(segmentation, height: int, width: int) -> torch.Tensor:
    """(H, W) bool mask of one COCO ``segmentation``: polygon list, uncompressed or compressed RLE."""
    if isinstance(segmentation, list):
        mask = torch.zeros(height, width, dtype=torch.bool)
        for poly in segmentation:
            mask |= rle_decode(polygon_rle_counts(poly, height, width), height, width)
        return mask
    if isinstance(segmentation, dict) and "counts" in segmentation:
        h, w = (int(v) for v in segmentation.get("size", (height, width)))
        if (h, w) != (height, width):
            raise InputError(f"RLE size {(h, w)} differs from the image size {(height, width)}")
        counts = segmentation["counts"]
        counts = rle_counts_from_string(counts) if isinstance(counts, (str, bytes)) else list(counts)
        return rle_decode(counts, h, w)
    raise InputError(f"unsupported COCO segmentation {str(segmentation)[:60]!r}: expected polygons or RLE")


class COCOPointing(_Limited):
    """COCO instance annotations as pointing-game samples, images in sorted id order (as CocoDetection)."""

    def __init__(self, root: Union[str, os.PathLike], split: str = "val2014",
                 annotation_file: Optional[Union[str, os.PathLike]] = None, limit: Optional[int] = None):
        root = os.fspath(root)
        ann_path = os.fspath(annotation_file) if annotation_file else os.path.join(root, "annotations", f"instances_{split}.json")
        if not os.path.isfile(ann_path):
            raise InputError(f"no COCO annotations at {ann_path!r}: give --root the folder that contains "
                             f"annotations/instances_{split}.json and {split}/ (nothing is downloaded)")
        with open(ann_path, encoding="utf-8") as f:
            data = json.load(f)
        self.image_dir = os.path.join(root, split)
        cats = sorted(data.get("categories", []), key=lambda c: c["id"])
        if not cats:
            raise InputError(f"{ann_path!r} lists no categories")
        self.category_ids = [c["id"] for c in cats]
        self.class_names = tuple(c["name"] for c in cats)
        self._index = {cid: i for i, cid in enumerate(self.category_ids)}
        self.images = {img["id"]: img for img in data.get("images", [])}
        self.ids = sorted(self.images)
        self.annotations: dict[int, list[dict]] = {}
        for ann in data.get("annotations", []):
            self.annotations.setdefault(ann["image_id"], []).append(ann)
        super().__init__(len(self.ids), limit)

    def __getitem__(self, i: int) -> Sample:
        info = self.images[self.ids[self._check(i)]]
        h, w = int(info["height"]), int(info["width"])
        image = load_image(os.path.join(self.image_dir, info["file_name"]))
        if image.shape[-2:] != (h, w):
            raise InputError(f"COCO image {info['file_name']!r} is {tuple(image.shape[-2:])}, annotations say {(h, w)}")
        per_class: dict[int, torch.Tensor] = {}
        for ann in self.annotations.get(info["id"], []):
            if ann["category_id"] not in self._index:
                raise InputError(f"annotation {ann.get('id')} has unknown category_id {ann['category_id']}")
            c = self._index[ann["category_id"]]
            m = annotation_mask(ann["segmentation"], h, w)
            per_class[c] = per_class[c] | m if c in per_class else m
        ids = sorted(per_class)
        masks = torch.stack([per_class[c] for c in ids]) if ids else torch.zeros(0, h, w, dtype=torch.bool)
        return Sample(image, os.path.splitext(info["file_name"])[0], tuple(ids), masks, (False,) * len(ids))


class ImageFolderSamples(_Limited):
    """Classification images from ``torchvision.datasets.ImageFolder(root)``; ``per_class`` first images per class."""

    def __init__(self, root: Union[str, os.PathLike], per_class: Optional[int] = None, limit: Optional[int] = None):
        from torchvision.datasets import ImageFolder

        if not os.path.isdir(root):
            raise InputError(f"no image folder at {os.fspath(root)!r} (expected root/<class>/<image> files)")
        self.dataset = ImageFolder(os.fspath(root))
        self.class_names = tuple(self.dataset.classes)
        picked = list(range(len(self.dataset.samples)))
        if per_class is not None:
            seen: dict[int, int] = {}
            picked = []
            for i, (_, y) in enumerate(self.dataset.samples):
                if seen.get(y, 0) < per_class:
                    seen[y] = seen.get(y, 0) + 1
                    picked.append(i)
        self._picked = picked
        super().__init__(len(picked), limit)

    def __getitem__(self, i: int) -> Sample:
        path, label = self.dataset.samples[self._picked[self._check(i)]]
        return Sample(load_image(path), os.path.splitext(os.path.basename(path))[0], (int(label),))
