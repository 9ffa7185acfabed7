"""Hypothesis strategies and tiny fixtures (models, on-disk VOC / COCO) for the evaluation tests."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from hypothesis import strategies as st
from PIL import Image
from torch import nn


def tiny_cnn(num_classes: int = 5, seed: int = 0, bn: bool = False) -> nn.Module:
    """conv(3->6) ReLU conv(6->8) [BN] ReLU GAP Flatten Linear: without BN the layers are "0".."6" ("3" feeds GAP)."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes)]
    model = nn.Sequential(*layers).double()
    return model.eval()


def write_voc(root, images: dict, image_set: str = "test") -> None:
    """``images``: {image_id: (height, width, [(name, xmin, ymin, xmax, ymax, difficult), ...])} -> VOC layout."""
    base = os.path.join(root, "VOCdevkit", "VOC2007")
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, (h, w, objects) in images.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            os.path.join(base, "JPEGImages", image_id + ".jpg"))
        objs = "".join(
            f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{d}</difficult>"
            f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for n, x0, y0, x1, y1, d in objects)
        xml = (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
               f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>0</segmented>"
               f"{objs}</annotation>")
        with open(os.path.join(base, "Annotations", image_id + ".xml"), "w") as f:
            f.write(xml)
    with open(os.path.join(base, "ImageSets", "Main", image_set + ".txt"), "w") as f:
        f.write("\n".join(images) + "\n")


def write_coco(root, images: list, annotations: list, categories: list, split: str = "val2014") -> None:
    """COCO layout: ``images`` [{id, file_name, height, width}], PNG files written for each."""
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    rng = np.random.default_rng(1)
    for img in images:
        Image.fromarray(rng.integers(0, 255, (img["height"], img["width"], 3), dtype=np.uint8)).save(
            os.path.join(root, split, img["file_name"]))
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


@st.composite
def map_pairs(draw, max_side: int = 7):
    """Two (h, w) float64 maps with few distinct values (many ties), as numpy arrays."""
    h = draw(st.integers(2, max_side))
    w = draw(st.integers(2, max_side))
    vals = st.integers(-3, 3)
    a = np.array(draw(st.lists(vals, min_size=h * w, max_size=h * w)), dtype=np.float64).reshape(h, w)
    b = np.array(draw(st.lists(vals, min_size=h * w, max_size=h * w)), dtype=np.float64).reshape(h, w)
    return a, b
