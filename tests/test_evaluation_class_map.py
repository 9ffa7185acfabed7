"""Class mapping: data-set classes are model outputs only by an explicit map or a matching head."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from strategies_evaluation import tiny_cnn, write_voc

import extagg
from extagg.errors import InputError, UnknownNameError
from extagg.evaluation import Sample, identity_check, pointing_game
from extagg.evaluation.class_map import group_objective, read_class_map, resolve_class_map
from extagg.evaluation.cli import main


def _samples(h=24, w=28):
    g = torch.Generator().manual_seed(3)
    specs = [((0, 2), [(2, 8, 3, 9), (10, 24, 0, 28)]), ((1,), [(0, 24, 0, 28)]), ((1, 3), [(15, 20, 20, 27), (0, 3, 0, 3)])]
    out = []
    for i, (classes, boxes) in enumerate(specs):
        masks = torch.zeros(len(classes), h, w, dtype=torch.bool)
        for t, (r0, r1, c0, c1) in enumerate(boxes):
            masks[t, r0:r1, c0:c1] = True
        out.append(Sample(torch.rand(3, h, w, generator=g), f"img{i}", classes, masks))
    return out


def _maps_of(model, samples, **kw):
    seen = []
    pointing_game(model, samples, "gradient", "input", num_classes=4, difficult=None,
                  on_image=lambda s, classes, maps: seen.append((list(classes), maps["bias+abs+max", "input"])), **kw)
    return seen


def test_mismatched_head_is_refused_with_both_numbers_and_the_fix():
    with pytest.raises(InputError, match=r"model has 6 output classes but the data set has 4 classes.*class_map=.*"
                                         r"--class-map FILE.json"):
        pointing_game(tiny_cnn(num_classes=6), _samples(), "gradient", "input", num_classes=4)
    with pytest.raises(InputError, match="1000 output classes but the data set has 20 classes.*'aeroplane'"):
        resolve_class_map(None, num_data_classes=20, num_model_classes=1000, data_names=extagg.evaluation.VOC_CLASSES)


def test_class_map_explains_the_mapped_model_outputs():
    """A 6-class model with map {c: 5 - c} gives the maps of a 4-class model whose head rows are 5, 4, 3, 2."""
    big = tiny_cnn(num_classes=6)
    small = copy.deepcopy(big)
    head = torch.nn.Linear(8, 4).double()
    with torch.no_grad():
        head.weight.copy_(big[-1].weight[[5, 4, 3, 2]])
        head.bias.copy_(big[-1].bias[[5, 4, 3, 2]])
    small[-1] = head
    want = _maps_of(small, _samples())
    got = _maps_of(big, _samples(), class_map={0: 5, 1: 4, "2": 3, 3: [2]})
    assert [c for c, _ in got] == [c for c, _ in want]
    for (_, a), (_, b) in zip(got, want):
        torch.testing.assert_close(a, b)
    wrong = _maps_of(big, _samples(), class_map={0: 2, 1: 3, 2: 4, 3: 5})   # the comparison can fail
    assert not all(torch.allclose(a, b) for (_, a), (_, b) in zip(wrong, want))


def test_group_and_partial_maps():
    model = tiny_cnn(num_classes=6)
    samples = _samples()
    got = _maps_of(model, samples, class_map={1: [4, 2], 3: 0})
    assert [c for c, _ in got] == [[1], [1, 3]]                   # classes 0 and 2 unmapped: not evaluated
    x = samples[1].image[None]
    want = extagg.saliency(model, x, "gradient", "input", objective=lambda out: out[:, [4, 2]].logsumexp(1),
                           resize=(24, 28))
    torch.testing.assert_close(got[0][1], want["gradient", "input"][0])
    recs = pointing_game(model, samples, "gradient", "input", num_classes=4, class_map={1: [4, 2], 3: 0})
    evaluated = {r.method: r for r in recs if r.metric == "classes_evaluated" and r.subset == "all"}
    assert evaluated["bias+abs+max"].value == 2 and evaluated["bias+abs+max"].count == 4


def test_group_objective_is_logsumexp_per_row():
    out = torch.randn(2, 5)
    obj = group_objective([[(0, 3), (1,)], [(4,), (2, 1, 0)]])
    want = torch.stack([torch.stack([out[0, [0, 3]].logsumexp(0), out[0, 1]]),
                        torch.stack([out[1, 4], out[1, [2, 1, 0]].logsumexp(0)])])
    torch.testing.assert_close(obj(out), want)


def test_bad_maps(tmp_path):
    names = ("cat", "dog")
    with pytest.raises(UnknownNameError, match="did you mean 'dog'"):
        resolve_class_map({"dgo": 1}, num_data_classes=2, num_model_classes=5, data_names=names)
    with pytest.raises(InputError, match="model class 7 is out of range; the model has 5 classes"):
        resolve_class_map({"dog": [1, 7]}, num_data_classes=2, num_model_classes=5, data_names=names)
    with pytest.raises(InputError, match="key 2 is out of range: the data set has 2 classes"):
        resolve_class_map({2: 1}, num_data_classes=2, num_model_classes=5)
    with pytest.raises(InputError, match="non-empty list"):
        resolve_class_map({0: []}, num_data_classes=2, num_model_classes=5)
    with pytest.raises(InputError, match="maps no data-set class"):
        resolve_class_map({}, num_data_classes=2, num_model_classes=5)
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"dog": [3, 4], "0": 1}))
    cmap = resolve_class_map(str(path), num_data_classes=2, num_model_classes=5, data_names=names)
    assert cmap.groups == ((1,), (3, 4)) and not cmap.single
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="JSON object"):
        read_class_map(tmp_path / "list.json")
    with pytest.raises(InputError, match="cannot read class map"):
        read_class_map(tmp_path / "missing.json")


def test_identity_check_labels_need_a_map_when_the_data_declares_classes():
    model = tiny_cnn(num_classes=6)
    g = torch.Generator().manual_seed(0)
    samples = [Sample(torch.rand(3, 16, 16, generator=g, dtype=torch.float64), str(i), (i % 3,)) for i in range(3)]
    with pytest.raises(InputError, match="6 output classes but the data set has 3 classes"):
        identity_check(model, samples, "2", num_classes=3)
    mapped = identity_check(model, samples, "2", num_classes=3, class_map={0: 5, 1: 4, 2: 3})
    direct = identity_check(model, [Sample(s.image, s.image_id, (5 - s.classes[0],)) for s in samples], "2")
    assert [r.value for r in mapped] == [r.value for r in direct]
    with pytest.raises(InputError, match="label 2 has no model class"):
        identity_check(model, samples, "2", num_classes=3, class_map={0: 5, 1: 4})


def test_cli_class_map_file(tmp_path, monkeypatch):
    import extagg.models

    monkeypatch.setattr(extagg.models, "load_model",
                        lambda *a, **k: (tiny_cnn(num_classes=25).float(), lambda x: x))
    write_voc(tmp_path, {"000001": (30, 40, [("dog", 2, 3, 10, 12, 0), ("person", 20, 15, 40, 30, 0)])})
    args = ["evaluate", "--model", "tiny", "--metric", "pointing", "--data", "voc", "--root", str(tmp_path),
            "--methods", "gradient", "--no-progress", "-o", str(tmp_path / "out.json")]
    with pytest.raises(InputError, match="25 output classes but the data set has 20"):
        main(args)
    (tmp_path / "map.json").write_text(json.dumps({"dog": [21, 22], "person": 24}))
    assert main(args + ["--class-map", str(tmp_path / "map.json")]) == 0
    rows = json.loads((tmp_path / "out.json").read_text())
    assert any(r["metric"] == "classes_evaluated" and r["value"] == 2 and r["count"] == 20 for r in rows)
