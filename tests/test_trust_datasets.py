"""VOC and COCO readers under bad data: every fault is an InputError naming the file, the record and the field;
no path leaves the data root; empty boxes are flagged and left out; cost stays bounded by the image."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies_evaluation import tiny_cnn, write_coco, write_voc

from extagg.errors import InputError
from extagg.evaluation import VOC_CLASSES, COCOPointing, VOCPointing, pointing_game, read_difficult_flags
from extagg.evaluation.coco_masks import MaskUnion, polygon_rle_counts, rle_decode, segmentation_counts
from oracle import coco_polygon_rle


# ----------------------------------------------------------------------------- VOC
@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "data"
    write_voc(root, {"000001": (20, 30, [("dog", 2, 3, 5, 4, 0), ("cat", 10, 10, 20, 15, 0)])})
    xml = root / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml"
    return root, xml


def rewrite(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("old, new, field", [
    ("<size><width>30</width><height>20</height><depth>3</depth></size>", "", "size"),
    ("<height>20</height>", "", "height"),
    ("<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>5</xmax><ymax>4</ymax></bndbox>", "", "bndbox"),
    ("<xmin>2</xmin>", "<xmin>two</xmin>", "bndbox.xmin"),
    ("<xmin>2</xmin>", "<xmin>nan</xmin>", "bndbox.xmin"),
    ("<ymax>4</ymax>", "<ymax>inf</ymax>", "bndbox.ymax"),
    ("<difficult>0</difficult>", "<difficult>yes</difficult>", "difficult"),
    ("<height>20</height>", "<height>-3</height>", "height"),
    ("<name>dog</name>", "<name>dgo</name>", "name"),
])
def test_a_bad_voc_field_is_named(voc, old, new, field):
    root, xml = voc
    rewrite(xml, old, new)
    with pytest.raises(InputError, match=f"000001.xml: .*field '{field}'"):
        VOCPointing(root)[0]


@pytest.mark.parametrize("content", ["", "<annotation><size>", "not xml at all", "<other/>"])
def test_malformed_voc_xml_names_the_file(voc, content):
    root, xml = voc
    xml.write_text(content)
    with pytest.raises(InputError, match="000001.xml"):
        VOCPointing(root)[0]


@pytest.mark.parametrize("image_id", ["../../../../outside", "/etc/passwd", "../Annotations/000001"])
def test_a_voc_image_set_cannot_leave_the_root(voc, image_id):
    root, _ = voc
    (root.parent / "outside.jpg").write_bytes(b"")
    ids = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt"
    ids.write_text(image_id + "\n")
    if image_id.startswith("../Annotations"):  # inside the root: allowed (it is a path to a file there)
        VOCPointing(root)
        return
    with pytest.raises(InputError, match="test.txt: line 1: field 'id': .*(outside the data root|absolute path)"):
        VOCPointing(root)


def test_an_empty_or_inverted_box_is_flagged_and_left_out(voc, tmp_path):
    root, xml = voc
    rewrite(xml, "<xmin>10</xmin><ymin>10</ymin><xmax>20</xmax>", "<xmin>20</xmin><ymin>10</ymin><xmax>10</xmax>")
    s = VOCPointing(root)[0]
    cat, dog = VOC_CLASSES.index("cat"), VOC_CLASSES.index("dog")
    assert s.classes == (cat, dog)
    assert s.skip == (True, False) and s.evaluated == [1]   # the cat has no region: not scored
    assert len(s.flagged) == 1 and "object 1 (cat)" in s.flagged[0]
    recs = pointing_game(tiny_cnn(20), VOCPointing(root), ["gradient"], difficult=None)
    flagged = [r for r in recs if r.metric == "annotations_flagged"]
    assert [(r.value, r.count) for r in flagged] == [(1, 1)]
    evaluations = [r for r in recs if r.metric == "pointing_accuracy" and r.method != "center-baseline"]
    assert [r.count for r in evaluations] == [1]             # the dog only


def test_duplicate_ids_in_a_difficult_flags_file(tmp_path):
    p = tmp_path / "flags.txt"
    p.write_text("000001\t0\t1\n000002\t0\t0\n000001\t1\t1\n")
    with pytest.raises(InputError, match="flags.txt:3: image id '000001' is listed twice"):
        read_difficult_flags(p, 2)


# ----------------------------------------------------------------------------- COCO
def coco(tmp_path, images=None, annotations=None, categories=None):
    root = tmp_path / "coco"
    good = [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}]
    images = images if images is not None else good
    write_coco(root, good, annotations if annotations is not None else [], categories or [{"id": 1, "name": "dog"}])
    path = root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["images"] = images
    path.write_text(json.dumps(data))
    return root


def ann(**fields):
    return {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]], **fields}


@pytest.mark.parametrize("content", ["", "{", '{"images": [', "[]", '{"images": 3, "categories": []}'])
def test_malformed_coco_json_names_the_file(tmp_path, content):
    root = coco(tmp_path)
    (root / "annotations" / "instances_val2014.json").write_text(content)
    with pytest.raises(InputError, match="instances_val2014.json"):
        COCOPointing(root)


@pytest.mark.parametrize("record, field", [
    (ann(image_id=None), "image_id"),
    (ann(image_id="1"), "image_id"),
    (ann(image_id=99), "image_id"),
    (ann(segmentation=None), "segmentation"),
    (ann(category_id=7), "category_id"),
    (ann(segmentation={"counts": [1e12, 5], "size": [20, 30]}), "segmentation"),
    (ann(segmentation={"counts": ["1", "599"], "size": [20, 30]}), "segmentation"),
    (ann(segmentation={"counts": [600], "size": [20, 30, 3]}), "segmentation"),
    (ann(segmentation={"counts": "~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~0", "size": [20, 30]}), "segmentation"),
    (ann(segmentation={"counts": 600, "size": [20, 30]}), "segmentation"),
    (ann(segmentation=[[0, 0, "4", 0, 4, 4]]), "segmentation"),
    (ann(segmentation=[[0, 0, float("nan"), 0, 4, 4]]), "segmentation"),
    (ann(segmentation=[[0, 0, float("inf"), 0, 4, 4]]), "segmentation"),
    (ann(segmentation=[[0, 0, 4, 0, 4]]), "segmentation"),
    (ann(segmentation="oops"), "segmentation"),
])
def test_a_bad_coco_annotation_is_named(tmp_path, record, field):
    root = coco(tmp_path, annotations=[record])
    with pytest.raises(InputError, match=rf"instances_val2014.json: annotations\[0\]: field '{field}'"):
        COCOPointing(root)[0]


@pytest.mark.parametrize("image, field", [
    ({"id": 1, "file_name": "a.jpg", "width": 30}, "height"),
    ({"id": 1, "file_name": "a.jpg", "height": "x", "width": 30}, "height"),
    ({"id": 1, "file_name": "a.jpg", "height": 2 ** 40, "width": 30}, "height"),
    ({"id": 1, "height": 20, "width": 30}, "file_name"),
    ({"id": 1, "file_name": "/etc/passwd", "height": 20, "width": 30}, "file_name"),
    ({"id": 1, "file_name": "../../outside.jpg", "height": 20, "width": 30}, "file_name"),
    ({"id": 1, "file_name": "../annotations/../../x.jpg", "height": 20, "width": 30}, "file_name"),
])
def test_a_bad_coco_image_record_is_named(tmp_path, image, field):
    root = coco(tmp_path, images=[image])
    with pytest.raises(InputError, match=rf"images\[0\]: field '{field}'"):
        COCOPointing(root)[0]


def test_duplicate_coco_image_ids(tmp_path):
    img = {"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}
    with pytest.raises(InputError, match=r"images\[1\]: field 'id': duplicate image id 1"):
        COCOPointing(coco(tmp_path, images=[img, dict(img)]))


def test_an_empty_coco_instance_is_flagged_and_left_out(tmp_path):
    outside = [[40, 40, 50, 40, 50, 50]]                      # entirely outside the 30x20 image
    root = coco(tmp_path, annotations=[ann(segmentation=outside)],
                categories=[{"id": 1, "name": "dog"}])
    s = COCOPointing(root)[0]
    assert s.classes == (0,) and s.skip == (True,) and s.evaluated == []
    assert s.flagged == ("annotations[0]: empty segmentation",)


# ----------------------------------------------------------------------------- cost bounded by the image
def test_a_polygon_far_outside_costs_what_the_image_does():
    huge = [-1e6, -1e6, 1e6, -1e6, 0, 1e6]                   # a triangle containing the whole 20x30 image
    assert rle_decode(polygon_rle_counts(huge, 20, 30), 20, 30).all()
    for reach in (2000.0, -2000.0):                          # long edges crossing the image, against the oracle
        sliver = [-reach, 3.2, reach, 3.7, reach * 0.7, 19.1, 12.3, -reach]
        assert polygon_rle_counts(sliver, 20, 30) == coco_polygon_rle(sliver, 20, 30)
    with pytest.raises(InputError, match="within"):
        segmentation_counts([[0, 0, 1e300, 0, 4, 4]], 20, 30)


coordinates = st.floats(-60, 60, allow_nan=False) | st.integers(-60, 60) | st.floats(-0.6, 0.6)


@settings(max_examples=60)
@given(st.lists(st.tuples(coordinates, coordinates), min_size=1, max_size=7), st.integers(1, 9), st.integers(1, 9))
def test_polygons_rasterise_exactly_as_pycocotools(points, h, w):
    """Against an independent rasteriser of COCO's convention (tests/oracle.py: crossing number at pixel centres
    of the 5x-grid staircase boundary, on a dense mask), for polygons inside, across and outside the image, with vertices on pixel centres and edges, flat and steep edges in both directions."""
    xy = [float(v) for p in points for v in p]
    assert polygon_rle_counts(xy, h, w) == coco_polygon_rle(xy, h, w)


def test_the_oracle_agrees_with_the_documented_cases():
    """The oracle itself on the cases whose answer is known independently: COCO's bbox polygon covers columns
    x0..x1-1 and rows y0..y1-1 in either orientation; a large triangle's area is close to the shoelace area."""
    from oracle import coco_polygon_mask

    expected = np.zeros((30, 40), dtype=bool)
    expected[10:20, 10:20] = True
    for rect in ([10, 10, 20, 10, 20, 20, 10, 20], [10, 10, 10, 20, 20, 20, 20, 10]):
        assert (coco_polygon_mask(rect, 30, 40) == expected).all()
    triangle = coco_polygon_mask([5.0, 5.0, 35.0, 8.0, 12.0, 28.0], 40, 40)
    assert abs(int(triangle.sum()) - 334.5) < 0.05 * 334.5 and triangle[15, 15] and not triangle[35, 5]


@pytest.mark.skipif(importlib.util.find_spec("pycocotools") is None, reason="pycocotools is not installed")
@settings(max_examples=60)
@given(st.lists(st.tuples(coordinates, coordinates), min_size=3, max_size=7), st.integers(1, 9), st.integers(1, 9))
def test_polygons_rasterise_as_pycocotools_itself(points, h, w):
    """Against pycocotools' own rasteriser where it is installed (it is optional: skipped otherwise); three
    points at least (pycocotools reads four numbers as a bounding box)."""
    from pycocotools import mask as mask_utils

    xy = [float(v) for p in points for v in p]
    theirs = mask_utils.decode(mask_utils.frPyObjects([xy], h, w))[:, :, 0].astype(bool)
    assert (rle_decode(polygon_rle_counts(xy, h, w), h, w).numpy() == theirs).all()


def test_the_oracle_comparison_can_fail():
    """A rasteriser off by one pixel column is caught."""
    xy = [1.0, 1.0, 7.0, 1.5, 4.0, 6.0]
    shifted = [v + 1.0 if i % 2 == 0 else v for i, v in enumerate(xy)]
    assert polygon_rle_counts(shifted, 8, 8) != coco_polygon_rle(xy, 8, 8)


@settings(max_examples=30)
@given(st.lists(st.lists(st.integers(0, 12), min_size=1, max_size=6), min_size=0, max_size=8))
def test_a_union_of_runs_equals_the_union_of_masks(parts):
    h, w = 4, 3
    runs = []
    for p in parts:
        total = sum(p)
        if total > h * w:
            continue
        runs.append(p + [h * w - total])
    expected = torch.zeros(h, w, dtype=torch.bool)
    for r in runs:
        expected |= rle_decode(r, h, w)
    union = MaskUnion(h, w)
    union.add(runs)
    assert torch.equal(union.mask(), expected)
    assert segmentation_counts({"counts": runs[0], "size": [h, w]}, h, w) == [runs[0]] if runs else True
