"""Data readers on tiny data sets written in the real VOC XML / COCO JSON layouts; RLE and polygon oracles."""
from __future__ import annotations

import os

import pytest
import torch
from strategies_evaluation import write_coco, write_voc

from extagg.errors import InputError
from extagg.evaluation import (VOC_CLASSES, COCOPointing, ImageFolderSamples, VOCPointing, annotation_mask,
                               compute_difficult_flags, difficult_by_rule, polygon_rle_counts, read_difficult_flags,
                               rle_counts_from_string, rle_decode, write_difficult_flags)


# ----------------------------------------------------------------------------- VOC
@pytest.fixture
def voc_root(tmp_path):
    write_voc(tmp_path, {
        "000001": (20, 30, [("dog", 2, 3, 5, 4, 0), ("dog", 20, 10, 22, 12, 1), ("person", 1, 1, 30, 20, 1)]),
        "000002": (16, 12, [("cat", 1, 1, 1, 1, 0)]),                  # a single object (not a list in XML)
    })
    return tmp_path


def test_voc_masks_classes_and_difficult_skips(voc_root):
    data = VOCPointing(voc_root)
    assert len(data) == 2 and data.class_names == VOC_CLASSES
    s = data[0]
    assert s.image_id == "000001" and s.image.shape == (3, 20, 30) and s.image.dtype == torch.float32
    dog, person = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")
    assert s.classes == (dog, person)
    assert s.skip == (False, True)              # person: all boxes VOC-difficult
    expected = torch.zeros(20, 30, dtype=torch.bool)
    expected[2:4, 1:5] = True                   # rows ymin-1..ymax-1 = 2..3, cols xmin-1..xmax-1 = 1..4
    expected[9:12, 19:22] = True                # the difficult dog box still belongs to the mask
    assert torch.equal(s.masks[0], expected)
    assert s.masks[1].all()                     # person box covers the whole image
    assert s.evaluated == [0]
    s2 = data[1]
    assert s2.classes == (VOC_CLASSES.index("cat"),) and s2.masks[0].sum() == 1 and s2.masks[0, 0, 0]
    assert len(VOCPointing(voc_root, limit=1)) == 1
    with pytest.raises(IndexError):
        data[2]


def test_voc_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="VOCdevkit"):
        VOCPointing(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- RLE, polygons
def test_compressed_rle_strings_decoded_as_pycocotools():
    # hand-encoded with pycocotools' rleToString rules (6-bit groups, +48, deltas from the count two back)
    assert rle_counts_from_string("324") == [3, 2, 4]
    assert rle_counts_from_string("X153Q1") == [40, 5, 3, 38]   # 40 = 'X''1'; 38 - 5 = 33 = 'Q''1'
    assert rle_counts_from_string(":53M") == [10, 5, 3, 2]      # 2 - 5 = -3 = 'M' (sign bit 0x10)
    assert rle_counts_from_string(b"324") == [3, 2, 4]
    with pytest.raises(InputError):
        rle_counts_from_string("X")                              # continuation bit set, string ends


def test_rle_decode_is_column_major():
    m = rle_decode([3, 2, 4], 3, 3)
    expected = torch.zeros(3, 3, dtype=torch.bool)
    expected[0:2, 1] = True                      # the second column, rows 0-1
    assert torch.equal(m, expected)
    with pytest.raises(InputError, match="height\\*width"):
        rle_decode([3, 2], 3, 3)


def test_polygon_rectangle_covers_its_pixels_like_coco():
    # COCO's bbox polygon [x0,y0, x1,y0, x1,y1, x0,y1] rasterises to columns x0..x1-1, rows y0..y1-1 (area 100)
    m = rle_decode(polygon_rle_counts([10, 10, 20, 10, 20, 20, 10, 20], 30, 40), 30, 40)
    expected = torch.zeros(30, 40, dtype=torch.bool)
    expected[10:20, 10:20] = True
    assert torch.equal(m, expected)
    # same rectangle with vertices in the other orientation
    m2 = rle_decode(polygon_rle_counts([10, 10, 10, 20, 20, 20, 20, 10], 30, 40), 30, 40)
    assert torch.equal(m2, expected)


def test_polygon_triangle_area_close_to_shoelace():
    poly = [5.0, 5.0, 35.0, 8.0, 12.0, 28.0]
    m = annotation_mask([poly], 40, 40)
    x, y = poly[0::2], poly[1::2]
    area = 0.5 * abs(sum(x[i] * y[(i + 1) % 3] - x[(i + 1) % 3] * y[i] for i in range(3)))
    assert abs(int(m.sum()) - area) < 0.1 * area
    assert m[15, 15] and not m[35, 5]


def test_annotation_mask_union_of_polygons_and_rle_forms():
    two = annotation_mask([[0, 0, 2, 0, 2, 2, 0, 2], [4, 4, 6, 4, 6, 6, 4, 6]], 8, 8)
    assert two.sum() == 8 and two[0:2, 0:2].all() and two[4:6, 4:6].all()
    assert torch.equal(annotation_mask({"counts": [3, 2, 4], "size": [3, 3]}, 3, 3), rle_decode([3, 2, 4], 3, 3))
    assert torch.equal(annotation_mask({"counts": "324", "size": [3, 3]}, 3, 3), rle_decode([3, 2, 4], 3, 3))
    with pytest.raises(InputError, match="segmentation"):
        annotation_mask("nonsense", 3, 3)
    with pytest.raises(InputError, match="size"):
        annotation_mask({"counts": [9], "size": [3, 3]}, 4, 4)


# ----------------------------------------------------------------------------- COCO
@pytest.fixture
def coco_root(tmp_path):
    images = [
        {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": 10, "width": 12},
        {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "height": 3, "width": 3},
        {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "height": 6, "width": 6},
    ]
    categories = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    annotations = [
        {"id": 1, "image_id": 42, "category_id": 18, "iscrowd": 0, "segmentation": [[0, 0, 4, 0, 4, 2, 0, 2]]},
        {"id": 2, "image_id": 42, "category_id": 18, "iscrowd": 0, "segmentation": [[8, 6, 12, 6, 12, 10, 8, 10]]},
        {"id": 3, "image_id": 42, "category_id": 1, "iscrowd": 1,
         "segmentation": {"counts": [0, 10] + [110], "size": [10, 12]}},
        {"id": 4, "image_id": 7, "category_id": 3, "iscrowd": 1, "segmentation": {"counts": "324", "size": [3, 3]}},
    ]
    write_coco(tmp_path, images, annotations, categories)
    return tmp_path


def test_coco_samples(coco_root):
    data = COCOPointing(coco_root)
    assert data.class_names == ("person", "car", "dog")          # categories sorted by id 1, 3, 18
    assert len(data) == 3
    first = data[0]                                              # images in sorted id order: 7, 9, 42
    assert first.image_id == "COCO_val2014_000000000007" and first.classes == (1,)
    assert torch.equal(first.masks[0], rle_decode([3, 2, 4], 3, 3))
    empty = data[1]
    assert empty.classes == () and empty.masks.shape == (0, 6, 6) and empty.evaluated == []
    s = data[2]
    assert s.image.shape == (3, 10, 12) and s.classes == (0, 2)
    person = torch.zeros(10, 12, dtype=torch.bool)
    person[:, 0] = True                                          # first column (column-major runs)
    assert torch.equal(s.masks[0], person)
    dog = torch.zeros(10, 12, dtype=torch.bool)
    dog[0:2, 0:4] = True
    dog[6:10, 8:12] = True                                       # union of the two dog instances
    assert torch.equal(s.masks[1], dog)
    assert s.skip == (False, False)


def test_coco_missing_annotations_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="instances_val2014.json"):
        COCOPointing(tmp_path)


# ----------------------------------------------------------------------------- difficult
def test_difficult_rule_area_and_other_class():
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[0, :5, :5] = True            # exactly 25 %: not under 25 %
    masks[1, :4, :6] = True            # 24 %
    masks[2] = True
    assert difficult_by_rule(masks, 3).tolist() == [False, True, False]
    assert difficult_by_rule(masks[1:2], 1).tolist() == [False]      # no other class present
    with pytest.raises(InputError):
        difficult_by_rule(masks[0], 2)


def test_difficult_flags_file_round_trip_and_errors(tmp_path, voc_root):
    p = tmp_path / "flags.txt"
    p.write_text("000001\t0\t1\t0\n000002\t1\t1\t1\n")
    assert read_difficult_flags(p, 3) == {"000001": (False, True, False), "000002": (True, True, True)}
    bad = tmp_path / "bad.txt"
    bad.write_text("000001\t0\t1\n")
    with pytest.raises(InputError, match="bad.txt:1"):
        read_difficult_flags(bad, 3)
    table = compute_difficult_flags(VOCPointing(voc_root), len(VOC_CLASSES))
    dog = VOC_CLASSES.index("dog")
    assert table["000001"][dog] is True and sum(table["000001"]) == 1   # small dog, person present
    assert not any(table["000002"])
    out = tmp_path / "out.txt"
    write_difficult_flags(out, table)
    assert read_difficult_flags(out, len(VOC_CLASSES)) == table


def test_image_folder_per_class(tmp_path):
    from PIL import Image
    for cls in ("a", "b"):
        os.makedirs(tmp_path / cls)
        for i in range(3):
            Image.new("RGB", (5, 4), (i, 0, 0)).save(tmp_path / cls / f"{i}.png")
    data = ImageFolderSamples(tmp_path, per_class=1)
    assert len(data) == 2 and [s.classes for s in data] == [(0,), (1,)]
    assert data[0].image.shape == (3, 4, 5)
    assert len(ImageFolderSamples(tmp_path)) == 6
    with pytest.raises(InputError):
        ImageFolderSamples(tmp_path / "missing")
