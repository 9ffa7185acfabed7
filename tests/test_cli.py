"""The command line: methods, plugins, describe, explain (real pretrained EfficientNet-Lite0 on a real photo)."""
import subprocess
import sys

import pytest

from extagg.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_methods_lists_and_filters(capsys):
    code, out, _ = run(capsys, "methods", "conv3x3+*", "--exclude", "*+max*")
    lines = out.split()
    assert code == 0 and "conv3x3+norm" in lines and all(l.startswith("conv3x3+") and "+max" not in l for l in lines)


def test_methods_no_match_exits_nonzero(capsys):
    code, _, err = run(capsys, "methods", "nothing*")
    assert code == 1 and "no method matches" in err


def test_plugins_shows_distributions_and_components(capsys):
    code, out, _ = run(capsys, "plugins", "--components")
    assert code == 0 and "builtin-extractors  [extagg 0.1.0]" in out and "extractor conv3x3" in out


def test_describe(capsys):
    code, out, _ = run(capsys, "describe", "normgrad")
    assert code == 0 and "conv1x1+norm" in out and "Rebuffi" in out and "||c||_2" in out


def test_errors_are_one_clear_line(capsys):
    code, _, err = run(capsys, "describe", "scaling+summ")
    assert code == 2 and "did you mean 'sum'" in err and "Traceback" not in err


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "extagg", "methods", "gradcam"], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines() == ["gradcam = pooled-scaling+sum+relu", "pooled-scaling+sum+relu"]


def test_methods_pattern_finds_named_methods(capsys):
    """Named methods are found by name: before, 'grad*' matched only canonical strings (none) and said
    "no method matches"."""
    code, out, _ = run(capsys, "methods", "grad*", "-x", "*-pos")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("gradcam ") and lines[0].endswith("= pooled-scaling+sum+relu")
    named = [line.split()[0] for line in lines]
    assert {"gradcam", "gradcampp", "gradcam-abs", "gradient", "gradient-sum"} <= set(named)
    assert "gradcam-pos" not in named and "normgrad" not in named


def test_explain_grid_of_methods_and_layers(tmp_path, capsys):
    """The acceptance case: several methods at a layer group on the default photo give ONE grid figure, and
    --save writes the raw maps (images, methods, layers, H, W) with their labels."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("matplotlib")
    import torch
    from PIL import Image

    out, raw = tmp_path / "grid.png", tmp_path / "maps.pt"
    code, text, _ = run(capsys, "explain", "--method", "gradcam", "normgrad", "--layer", "stages", "-o", str(out),
                        "--save", str(raw))
    assert code == 0 and "Egyptian cat" in text and "2 method(s) x 5 layer(s)" in text
    assert Image.open(out).size[0] > 1000  # five columns of maps
    saved = torch.load(raw)
    assert saved["maps"].shape == (1, 2, 5, 224, 224) and saved["methods"] == ["gradcam", "normgrad"]
    assert saved["canonical"] == ["pooled-scaling+sum+relu", "conv1x1+norm"] and saved["layers"][0] == "_blocks.0"
    assert saved["targets"] == [285] and torch.isfinite(saved["maps"]).all()


@pytest.mark.parametrize("argv, message", [
    (["--method", "gradcam", "--method", "normgrad"], "--method given twice"),
    (["--method", "gradcam", "PHOTO"], "is a file, not a method string: give images before --method"),
    (["nothere.png", "--method", "gradcam"], "image 'nothere.png' does not exist"),
    (["normgrad", "--method", "gradcam"], "it is a method string: give every method after one --method"),
    (["PHOTO", "--method", "gradcm"], "did you mean 'gradcam'"),
    (["--method", "gradcam", "cat.jpg"], "if 'cat.jpg' is an image, there is no such file"),
    (["PHOTO", "--save", "maps.txt"], "expected a .pt or .npy file name"),
])
def test_explain_argument_mistakes_are_caught_before_the_model_loads(argv, message, tmp_path, capsys, monkeypatch):
    """Repeated options, an image where a method belongs (and the reverse), a misspelt method: one clear error,
    and the model is never loaded (load_model would fail the test)."""
    from extagg import models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_model", refuse)
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"not decoded before the checks")
    argv = [str(photo) if a == "PHOTO" else a for a in argv]
    try:
        code = main(["explain", *argv])
    except SystemExit as exc:  # argparse's own errors (a repeated option, a bad --save name)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_clip_scale_keeps_one_outlier_from_darkening_the_map():
    """Percentile clipping: with plain min-max one hot pixel puts every other pixel near 0."""
    import torch

    from extagg.viz import clip_scale

    m = torch.linspace(0, 1, 10_000).reshape(100, 100)
    m[0, 0] = 1e6
    assert clip_scale(m, 100).median() < 1e-5
    clipped = clip_scale(m, 99)
    assert 0.45 < float(clipped.median()) < 0.55 and clipped.max() == 1 and clipped.min() == 0


def test_explain_torchvision_model_from_local_weights(tmp_path, capsys):
    import torch
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    photo = tmp_path / "photo.png"
    Image = pytest.importorskip("PIL.Image")
    Image.new("RGB", (64, 48), (200, 30, 30)).save(photo)
    out = tmp_path / "o.png"
    code, text, _ = run(capsys, "explain", str(photo), "--model", "resnet18", "--weights", str(weights),
                        "--method", "normgrad", "--layer", "layer4", "--target", "3", "-o", str(out),
                        "--save", str(tmp_path / "maps.npy"))
    assert code == 0 and "class 3" in text and out.is_file()
    import numpy as np

    assert np.load(tmp_path / "maps.npy").shape == (1, 1, 1, 224, 224)
