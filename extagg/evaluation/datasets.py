"""Evaluation data read from the standard on-disk layouts; nothing is ever downloaded.

Every reader yields :class:`Sample` objects: the image as a float (3, H, W) RGB tensor in [0, 1] at its
original size, the classes present, and (for pointing data) one boolean ground-truth mask per class.

* :class:`VOCPointing`: PASCAL VOC (``root/VOCdevkit/VOC2007/{Annotations,JPEGImages,ImageSets/Main/test.txt}``),
  read as ``torchvision.datasets.VOCDetection`` reads it. A class's mask is the union of **all** its boxes (VOC
  ``difficult`` ones included), rows ``ymin-1 .. ymax-1`` and columns ``xmin-1 .. xmax-1`` inclusive; a class
  all of whose boxes are VOC-difficult is present but not evaluated (``skip``), as in TorchRay. An empty or
  inverted box is flagged (``Sample.flagged``) and left out; a class left with no region is not evaluated.
* :class:`COCOPointing`: COCO (``root/annotations/instances_val2014.json`` and ``root/val2014/<file_name>``),
  read without pycocotools. A class's mask is the union of its instances' masks (crowd regions included, as
  TorchRay's ``coco_as_mask``); polygons are rasterised with a port of pycocotools' ``rleFrPoly`` and RLE
  (uncompressed lists and compressed strings) decoded exactly (:mod:`.coco_masks`). Classes are the categories
  sorted by id; an instance with an empty mask is flagged and left out.
* :class:`ImageFolderSamples`: ``torchvision.datasets.ImageFolder`` (e.g. ImageNet val with class folders),
  ``classes = (label,)``; ``per_class`` keeps the first k images of each class (the paper's N = 1000 is k = 1).

Annotation files are checked field by field (:mod:`.fields`): a problem is an :class:`~extagg.errors.InputError`
naming the file, the record and the field; every path read from the data is resolved and refused outside the root.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import attrs
import torch
from PIL import Image

from ..errors import InputError
from ..models import load_image
from .coco_masks import (MaskUnion, annotation_mask, polygon_rle_counts, rle_counts_from_string,  # noqa: F401
                         rle_decode, segmentation_counts)
from .fields import Where, flag, inside, need, number, read_json, read_voc_xml, side

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


@attrs.frozen(eq=False)
class Sample:
    """One evaluation image.

    ``image``: float (3, H, W) RGB in [0, 1], original size. ``classes``: distinct class ids present (sorted);
    for classification data the label. ``masks``: (T, H, W) bool, one per entry of ``classes`` (None without
    localisation). ``skip``: per class, True if present but not to be evaluated (VOC: all boxes difficult; any
    class whose region is empty). ``flagged``: annotations left out as empty or inverted (descriptions).
    """

    image: torch.Tensor
    image_id: str = ""
    classes: tuple[int, ...] = ()
    masks: Optional[torch.Tensor] = None
    skip: tuple[bool, ...] = ()
    flagged: tuple[str, ...] = ()

    @property
    def evaluated(self) -> list[int]:
        """Indices into ``classes`` of the classes to evaluate."""
        skip = self.skip or (False,) * len(self.classes)
        return [i for i, s in enumerate(skip) if not s]


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


def voc_sample(image: torch.Tensor, annotation: dict, class_names: Sequence[str] = VOC_CLASSES,
               source: str = "") -> Sample:
    """A :class:`Sample` from an image and a ``VOCDetection`` target dict (``{'annotation': {...}}``); ``source``
    (the annotation file) names where a bad field is."""
    where = Where(source or "(VOC annotation)")
    ann = need(annotation, "annotation", where)
    objs = ann.get("object", []) if isinstance(ann, dict) else []
    objs = objs if isinstance(objs, list) else [objs]
    size = need(ann, "size", where.at("size"))
    h, w = side(need(size, "height", where.at("size")), where.at("size"), "height"), \
        side(need(size, "width", where.at("size")), where.at("size"), "width")
    if image.shape[-2:] != (h, w):
        raise InputError(f"VOC image {ann.get('filename')!r} is {tuple(image.shape[-2:])} but its annotation says "
                         f"height {h}, width {w}")
    index = {c: i for i, c in enumerate(class_names)}
    classes: dict[int, list[tuple]] = {}
    flagged = []
    for k, obj in enumerate(objs):
        at = where.at(f"object {k}")
        name = need(obj, "name", at)
        if name not in index:
            raise at.error("name", f"unknown VOC class {name!r}; known: {', '.join(class_names)}")
        box = need(obj, "bndbox", at)
        x0, y0, x1, y1 = (number(need(box, f, at.at(f"object {k} bndbox")), at, "bndbox." + f)
                          for f in ("xmin", "ymin", "xmax", "ymax"))
        difficult = flag(obj.get("difficult", "0") if isinstance(obj, dict) else "0", at, "difficult")
        rows = (max(int(y0) - 1, 0), min(int(y1), h))
        cols = (max(int(x0) - 1, 0), min(int(x1), w))
        if rows[0] >= rows[1] or cols[0] >= cols[1]:
            flagged.append(f"object {k} ({name}): empty or inverted box {(x0, y0, x1, y1)} in a {w}x{h} image")
            rows = cols = (0, 0)
        classes.setdefault(index[name], []).append((rows, cols, difficult))
    ids = sorted(classes)
    masks = torch.zeros(len(ids), h, w, dtype=torch.bool)
    skip = []
    for t, c in enumerate(ids):
        for (r0, r1), (c0, c1), _ in classes[c]:
            masks[t, r0:r1, c0:c1] = True
        skip.append(all(d for _, _, d in classes[c]) or not masks[t].any())
    image_id = os.path.splitext(str(ann.get("filename", "")))[0]
    return Sample(image, image_id, tuple(ids), masks, tuple(skip), tuple(flagged))


class VOCPointing(_Limited):
    """PASCAL VOC detection annotations as pointing-game samples (``root`` contains ``VOCdevkit``)."""

    class_names = VOC_CLASSES

    def __init__(self, root: Union[str, os.PathLike], year: str = "2007", image_set: str = "test",
                 limit: Optional[int] = None):
        self.voc_dir = os.path.join(os.fspath(root), "VOCdevkit", f"VOC{year}")
        if not os.path.isdir(self.voc_dir):
            raise InputError(f"no PASCAL VOC data at {self.voc_dir!r}: give --root the folder that contains "
                             f"VOCdevkit/VOC{year}/{{Annotations,JPEGImages,ImageSets/Main}} (nothing is downloaded)")
        list_file = inside(self.voc_dir, os.path.join("ImageSets", "Main", f"{image_set}.txt"), Where(root),
                           "image_set")
        try:
            with open(list_file, encoding="utf-8") as f:
                self.ids = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the VOC{year} image set {image_set!r} at {list_file!r}: {exc}") from None
        where = Where(list_file)
        self._files = [(inside(self.voc_dir, os.path.join("JPEGImages", i + ".jpg"), where.at(f"line {n}"), "id"),
                        inside(self.voc_dir, os.path.join("Annotations", i + ".xml"), where.at(f"line {n}"), "id"))
                       for n, i in enumerate(self.ids, 1)]
        super().__init__(len(self.ids), limit)

    def image_id(self, i: int) -> str:
        """Sample ``i``'s id without reading it: its id in the image set (its image file's name)."""
        return self.ids[self._check(i)]

    def __getitem__(self, i: int) -> Sample:
        image_path, xml_path = self._files[self._check(i)]
        return voc_sample(load_image(image_path), read_voc_xml(xml_path), self.class_names, xml_path)


class COCOPointing(_Limited):
    """COCO instance annotations as pointing-game samples, images in sorted id order (as CocoDetection)."""

    def __init__(self, root: Union[str, os.PathLike], split: str = "val2014",
                 annotation_file: Optional[Union[str, os.PathLike]] = None, limit: Optional[int] = None):
        root = os.fspath(root)
        ann_path = (os.fspath(annotation_file) if annotation_file
                    else os.path.join(root, "annotations", f"instances_{split}.json"))
        if not os.path.isfile(ann_path):
            raise InputError(f"no COCO annotations at {ann_path!r}: give --root the folder that contains "
                             f"annotations/instances_{split}.json and {split}/ (nothing is downloaded)")
        data = read_json(ann_path)
        self.where = where = Where(ann_path)
        self.image_dir = inside(root, split, where, "split")
        cats = _records(data, "categories", where)
        ids = [_whole(need(c, "id", where.at(f"categories[{k}]")), where.at(f"categories[{k}]"), "id")
               for k, c in enumerate(cats)]
        if not cats:
            raise InputError(f"{ann_path!r} lists no categories")
        order = sorted(range(len(cats)), key=ids.__getitem__)
        self.category_ids = [ids[k] for k in order]
        self.class_names = tuple(str(need(cats[k], "name", where.at(f"categories[{k}]"))) for k in order)
        self._index = {cid: i for i, cid in enumerate(self.category_ids)}
        self.images: dict[int, dict] = {}
        for k, img in enumerate(_records(data, "images", where)):
            at = where.at(f"images[{k}]")
            image_id = _whole(need(img, "id", at), at, "id")
            if image_id in self.images:
                raise at.error("id", f"duplicate image id {image_id} (also images[{self.images[image_id]['_k']}])")
            self.images[image_id] = {**img, "_k": k}
        self.ids = sorted(self.images)
        self.annotations: dict[int, list[tuple[int, dict]]] = {}
        for k, ann in enumerate(_records(data, "annotations", where)):
            at = where.at(f"annotations[{k}]")
            image_id = _whole(need(ann, "image_id", at), at, "image_id")
            if image_id not in self.images:
                raise at.error("image_id", f"{image_id} is not the id of any image")
            self.annotations.setdefault(image_id, []).append((k, ann))
        super().__init__(len(self.ids), limit)

    def image_id(self, i: int) -> str:
        """Sample ``i``'s id without decoding it: its file name without extension."""
        name = self.images[self.ids[self._check(i)]].get("file_name")
        return os.path.splitext(os.path.basename(name))[0] if isinstance(name, str) else str(self.ids[i])

    def __getitem__(self, i: int) -> Sample:
        info = self.images[self.ids[self._check(i)]]
        at = self.where.at(f"images[{info['_k']}]")
        h, w = side(need(info, "height", at), at, "height"), side(need(info, "width", at), at, "width")
        file_name = need(info, "file_name", at)
        image = load_image(inside(self.image_dir, file_name, at, "file_name"))
        if image.shape[-2:] != (h, w):
            raise InputError(f"COCO image {file_name!r} is {tuple(image.shape[-2:])}, annotations say {(h, w)}")
        per_class: dict[int, MaskUnion] = {}
        flagged = []
        for k, ann in self.annotations.get(info["id"], []):
            where = self.where.at(f"annotations[{k}]")
            category = need(ann, "category_id", where)
            if category not in self._index:
                raise where.error("category_id", f"unknown category {category!r}; known: {self.category_ids}")
            runs = segmentation_counts(need(ann, "segmentation", where), h, w, where)
            if not any(sum(r[1::2]) for r in runs):
                flagged.append(f"annotations[{k}]: empty segmentation")
            per_class.setdefault(self._index[category], MaskUnion(h, w)).add(runs)
        ids = sorted(per_class)
        masks = torch.stack([per_class[c].mask() for c in ids]) if ids else torch.zeros(0, h, w, dtype=torch.bool)
        skip = tuple(not bool(m.any()) for m in masks)
        return Sample(image, os.path.splitext(os.path.basename(file_name))[0], tuple(ids), masks, skip, tuple(flagged))


def _records(data: dict, key: str, where: Where) -> list:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise where.error(key, f"expected a list of records, got {type(value).__name__}")
    return value


def _whole(value, where: Where, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(field, f"expected a whole number, got {str(value)[:40]!r}")
    return value


def _regular_files_inside(root, paths) -> None:
    """Refuse an image that resolves outside ``root`` (a symbolic link out of it) or is not a regular file (a FIFO
    or a device would block or never end), before any is opened."""
    import stat

    base = os.path.realpath(root)
    for path in paths:
        real = os.path.realpath(path)
        if os.path.commonpath([base, real]) != base:
            raise InputError(f"image {path!r} resolves to {real!r}, outside the data root {base!r}; give the real "
                             "root of the data")
        try:
            mode = os.stat(real).st_mode
        except OSError as exc:
            raise InputError(f"cannot read image {path!r}: {exc}") from exc
        if not stat.S_ISREG(mode):
            raise InputError(f"image {path!r} is not a regular file (a FIFO, socket or device); remove it from "
                             f"{os.fspath(root)!r}")


class ImageFolderSamples(_Limited):
    """Classification images from ``torchvision.datasets.ImageFolder(root)``; ``per_class`` first images per class."""

    def __init__(self, root: Union[str, os.PathLike], per_class: Optional[int] = None, limit: Optional[int] = None):
        from torchvision.datasets import ImageFolder

        if not os.path.isdir(root):
            raise InputError(f"no image folder at {os.fspath(root)!r} (expected root/<class>/<image> files)")
        self.dataset = ImageFolder(os.fspath(root))
        _regular_files_inside(root, [p for p, _ in self.dataset.samples])
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

    def image_id(self, i: int) -> str:
        """Sample ``i``'s id without decoding it: its file name without extension."""
        return os.path.splitext(os.path.basename(self.dataset.samples[self._picked[self._check(i)]][0]))[0]

    def __getitem__(self, i: int) -> Sample:
        path, label = self.dataset.samples[self._picked[self._check(i)]]
        return Sample(load_image(path), os.path.splitext(os.path.basename(path))[0], (int(label),))
