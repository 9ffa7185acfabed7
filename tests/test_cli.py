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


def test_explain_default_photo_and_model(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite_pytorch")
    from PIL import Image

    out = tmp_path / "cat.png"
    code, text, _ = run(capsys, "explain", "-o", str(out))
    assert code == 0 and "Egyptian cat" in text and "_swish@1" in text
    img = Image.open(out)
    assert img.size == (451, 300) and img.mode == "RGB"


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
                        "--method", "normgrad", "--layer", "layer4", "--target", "3", "-o", str(out))
    assert code == 0 and "class 3" in text and out.is_file()
