"""Stand-in data sets of a real study's size, to size a sweep with ``extagg sweep --dry-run`` without the data.

No data set can be downloaded here, and the dry-run reads only the image ids of the whole set and decodes only
its first batch; so a tree in the real layout whose images are the scikit-image photos (the first image of each photo
written, the others hard links to it), each with a plausible annotation, projects like the real set of that size:

* ``--voc DIR``: ``DIR/VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main/test.txt}`` with ``--voc-images``
  ids (default 4,952, the VOC 2007 test set), each photo with one object box of its class;
* ``--folder DIR``: an ImageNet-validation-like ``DIR/<class>/<image>.png`` tree of ``--folder-images`` images
  (default 50,000) in ``--classes`` class folders (default 1,000).

Real images differ in size (VOC's are about 500 x 375 px, the photos 451 x 300 or 512 x 512), which changes only
decoding, and the projection times decoding apart. Then, for example:

    python benchmarks/scale_standin.py --voc DATA/voc --folder DATA/imagenet-val
    extagg sweep --dry-run --data voc --root DATA/voc -o runs/voc2007
    extagg sweep --dry-run --data folder --root DATA/imagenet-val -o runs/in50k
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from extagg.sweep.data import skimage_photo_paths  # noqa: E402

VOC_CLASS = {"chelsea": "cat", "coffee": "diningtable", "camera": "person"}
"""A VOC class for each default photo (the photos show a cat, a cup on a table, a photographer)."""

ANNOTATION = """<annotation>
  <filename>{name}.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  <object><name>{cls}</name><difficult>0</difficult>
    <bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>
</annotation>
"""


def _photos() -> list:
    """The default photos as RGB PIL images: [(name, image)]."""
    from PIL import Image

    photos = []
    for src in skimage_photo_paths():
        with Image.open(src) as im:
            photos.append((src.stem, im.convert("RGB")))
    return photos


def _write(paths: list[str], photos: list) -> list[tuple[str, int, int]]:
    """Image k at ``paths[k]``: photo k mod len(photos), saved for the first of each photo, hard-linked after.
    Returns (photo name, width, height) per image."""
    out = []
    for k, path in enumerate(paths):
        name, image = photos[k % len(photos)]
        if k < len(photos):
            image.save(path)
        else:
            os.link(paths[k % len(photos)], path)
        out.append((name, *image.size))
    return out


def voc(out: str, n: int) -> None:
    base = os.path.join(out, "VOCdevkit", "VOC2007")
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    ids = [f"{k + 1:06d}" for k in range(n)]
    sizes = _write([os.path.join(base, "JPEGImages", i + ".jpg") for i in ids], _photos())
    for image_id, (name, w, h) in zip(ids, sizes):
        with open(os.path.join(base, "Annotations", image_id + ".xml"), "w") as f:
            f.write(ANNOTATION.format(name=image_id, w=w, h=h, cls=VOC_CLASS.get(name, "person"), x0=w // 4 + 1,
                                      y0=h // 4 + 1, x1=3 * w // 4, y1=3 * h // 4))
    with open(os.path.join(base, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    print(f"{out}: VOC 2007 layout, {n} images")


def folder(out: str, n: int, classes: int) -> None:
    for c in range(classes):
        os.makedirs(os.path.join(out, f"n{c:08d}"), exist_ok=True)
    _write([os.path.join(out, f"n{k % classes:08d}", f"val_{k + 1:08d}.png") for k in range(n)], _photos())
    print(f"{out}: image folder, {n} images in {classes} class folders")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voc", default=None, help="make a VOC 2007 test stand-in here (must not exist)")
    ap.add_argument("--voc-images", type=int, default=4952)
    ap.add_argument("--folder", default=None, help="make an ImageNet-val-like folder stand-in here (must not exist)")
    ap.add_argument("--folder-images", type=int, default=50000)
    ap.add_argument("--classes", type=int, default=1000)
    args = ap.parse_args()
    if not (args.voc or args.folder):
        ap.error("give --voc DIR and/or --folder DIR")
    for where in (args.voc, args.folder):
        if where and os.path.exists(where):
            ap.error(f"{where} exists; give a new folder (nothing is overwritten)")
    try:
        if args.voc:
            voc(args.voc, args.voc_images)
        if args.folder:
            folder(args.folder, args.folder_images, args.classes)
    except BaseException:
        for where in (args.voc, args.folder):
            if where:
                shutil.rmtree(where, ignore_errors=True)
        raise


if __name__ == "__main__":
    main()
