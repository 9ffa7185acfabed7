"""``extagg evaluate`` end to end on tiny on-disk data sets (the model loader is replaced by a tiny CNN)."""
from __future__ import annotations

import argparse
import csv
import json
import os

import pytest
import torch
from PIL import Image
from strategies_evaluation import tiny_cnn, write_voc

import extagg.models
from extagg.errors import InputError
from extagg.evaluation.cli import add_evaluate_command, main


@pytest.fixture
def fake_models(monkeypatch):
    seen = {}

    def load_model(name="default", weights=None, random_weights=False):
        seen["name"], seen["weights"], seen["random_weights"] = name, weights, random_weights
        model = tiny_cnn(num_classes=20).float()
        return model, lambda x: torch.nn.functional.interpolate(x[None], size=(24, 24), mode="bilinear",
                                                                align_corners=False)[0]

    monkeypatch.setattr(extagg.models, "load_model", load_model)
    return seen


def test_pointing_on_voc_writes_json(tmp_path, fake_models, capsys):
    write_voc(tmp_path, {
        "000001": (30, 40, [("dog", 2, 3, 10, 12, 0), ("person", 20, 15, 40, 30, 0)]),
        "000002": (32, 28, [("cat", 1, 1, 28, 32, 0)]),
    })
    out = tmp_path / "out.json"
    code = main(["evaluate", "--model", "tiny", "--metric", "pointing", "--data", "voc", "--root", str(tmp_path),
                 "--methods", "gradient", "linear-approx", "--layers", "input", "2", "-o", str(out), "--no-progress"])
    assert code == 0 and fake_models["name"] == "tiny"
    rows = json.loads(out.read_text())
    assert set(rows[0]) == {"method", "layer", "subset", "metric", "value", "count"}
    acc = [r for r in rows if r["metric"] == "pointing_accuracy" and r["subset"] == "all"]
    assert {(r["method"], r["layer"]) for r in acc} == {("center-baseline", ""), ("bias+abs+max", "input"),
                                                        ("bias+abs+max", "2"), ("scaling+sum", "input"),
                                                        ("scaling+sum", "2")}
    assert all(r["count"] == 3 for r in acc)                 # dog, person, cat
    assert "pointing_accuracy" in capsys.readouterr().out


def test_sensitivity_on_image_folder_writes_csv(tmp_path, fake_models):
    for cls in ("a", "b"):
        os.makedirs(tmp_path / "data" / cls)
        for i in range(2):
            Image.new("RGB", (30, 26), (40 * i, 90, 10)).save(tmp_path / "data" / cls / f"{i}.png")
    out = tmp_path / "out.csv"
    main(["evaluate", "--metric", "sensitivity", "--data", "folder", "--root", str(tmp_path / "data"),
          "--methods", "linear-approx", "--per-class-images", "1", "-o", str(out), "--no-progress"])
    rows = list(csv.DictReader(out.open()))
    got = {(r["measure"], r["subset"]): r for r in rows if r["metric"] == "sensitivity"}
    assert got["spearman", "top-vs-bottom"]["direction"] == "lower"
    assert int(got["spearman", "top-vs-bottom"]["n"]) + int(got["spearman", "top-vs-bottom"]["nan"]) == 2
    assert {"floor:cross-image", "floor:smooth-noise"} <= {subset for _, subset in got}


def test_command_wiring_and_bad_options(tmp_path, fake_models):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_evaluate_command(sub)
    args = parser.parse_args(["evaluate", "--metric", "identity", "--data", "folder", "--root", "x"])
    assert callable(args.func) and args.layers == ["input"] and args.output is None
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--metric", "no-such-metric", "--data", "voc", "--root", "x"])
    with pytest.raises(InputError, match="localisation"):
        main(["evaluate", "--metric", "pointing", "--data", "folder", "--root", str(tmp_path), "--methods", "gradient"])
    with pytest.raises(InputError, match=".csv or .json"):
        main(["evaluate", "--metric", "pointing", "--data", "voc", "--root", str(tmp_path), "--methods", "gradient",
              "-o", str(tmp_path / "out.txt")])
    with pytest.raises(InputError, match="VOCdevkit"):
        main(["evaluate", "--metric", "pointing", "--data", "voc", "--root", str(tmp_path), "--methods", "gradient"])


@pytest.mark.parametrize("metric", ["deletion", "insertion"])
def test_deletion_insertion_on_image_folder(tmp_path, fake_models, metric):
    for cls in ("a", "b"):
        os.makedirs(tmp_path / "data" / cls)
        Image.new("RGB", (30, 26), (40, 90, 10 + 50 * (cls == "b"))).save(tmp_path / "data" / cls / "0.png")
    out = tmp_path / "out.json"
    main(["evaluate", "--metric", metric, "--data", "folder", "--root", str(tmp_path / "data"),
          "--methods", "gradient", "--steps", "4", "--baseline", "zero", "-o", str(out), "--no-progress"])
    got = {(r["method"], r["canonical"], r["metric"], r["measure"]): r for r in json.loads(out.read_text())}
    row = got[("gradient", "bias+abs+max", f"{metric}(baseline=zero,steps=4)", f"{metric}_auc")]
    assert row["subset"] == "all" and row["n"] == 2 and 0 <= row["value"] <= 1
    assert row["direction"] == ("lower" if metric == "deletion" else "higher")
