"""Preprocessing read from the weights (extagg.preprocessing) and explicit random weights (extagg.models)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import Inception_V3_Weights, ResNet50_Weights, ViT_B_16_Weights

from extagg import models
from extagg.cli import main as cli_main
from extagg.errors import InputError, UnknownNameError
from extagg.preprocessing import DEFAULT, IMAGENET_MEAN, IMAGENET_STD, Preprocessing, preprocessing_for


@pytest.mark.parametrize("name, weights, size, resize, interpolation", [
    ("resnet50", "IMAGENET1K_V2", 224, 232, "bilinear"),
    ("resnet50", "DEFAULT", 224, 232, "bilinear"),
    ("resnet50", "ResNet50_Weights.IMAGENET1K_V1", 224, 256, "bilinear"),
    ("resnet50", ResNet50_Weights.IMAGENET1K_V1, 224, 256, "bilinear"),
    ("vit_b_16", ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1, 384, 384, "bicubic"),
    ("inception_v3", None, 299, 342, "bilinear"),           # no weights: the architecture's DEFAULT
])
def test_values_come_from_the_torchvision_weights(name, weights, size, resize, interpolation):
    p = preprocessing_for(name, weights)
    assert (p.size, p.resize, p.interpolation, p.geometry, p.crop) == (size, resize, interpolation, "whole", None)
    assert p.mean == IMAGENET_MEAN and p.std == IMAGENET_STD and "torchvision" in p.source


def test_weights_files_and_unknown_names(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"")
    assert preprocessing_for("inception_v3", str(path)) == preprocessing_for("inception_v3", "DEFAULT")
    assert preprocessing_for("inception_v3", path).size == 299
    with pytest.raises(UnknownNameError, match="did you mean 'IMAGENET1K_V2' or 'IMAGENET1K_V1'"):
        preprocessing_for("resnet50", "IMAGENET1K_V9")
    with pytest.raises(InputError, match="ViT_B_16_Weights.IMAGENET1K_V1 are not weights of 'resnet50'; use ResNet50"):
        preprocessing_for("resnet50", ViT_B_16_Weights.IMAGENET1K_V1)
    with pytest.raises(UnknownNameError, match="weights name \\(or weights file\\) '/no/such.pth'"):
        preprocessing_for("resnet50", "/no/such.pth")


@pytest.mark.parametrize("weights", [ResNet50_Weights.IMAGENET1K_V2, ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1,
                                     Inception_V3_Weights.IMAGENET1K_V1])
def test_crop_geometry_equals_torchvision_transforms(weights):
    image = torch.rand(3, 300, 451, generator=torch.Generator().manual_seed(0))
    ours = preprocessing_for("resnet50" if weights is ResNet50_Weights.IMAGENET1K_V2 else
                             "vit_b_16" if isinstance(weights, ViT_B_16_Weights) else "inception_v3",
                             weights, geometry="crop")(image)
    theirs = weights.transforms()(image)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    # counter-case: the same comparison refuses our crop of the mirrored image
    with pytest.raises(AssertionError):
        torch.testing.assert_close(preprocessing_for("resnet50" if weights is ResNet50_Weights.IMAGENET1K_V2 else
                                                     "vit_b_16" if isinstance(weights, ViT_B_16_Weights) else
                                                     "inception_v3", weights, geometry="crop")(image.flip(-1)),
                                   theirs, atol=1e-4, rtol=0)
    tall = image.transpose(1, 2)                                        # portrait: the other branch
    ours_tall = preprocessing_for("inception_v3", Inception_V3_Weights.IMAGENET1K_V1, geometry="crop")(tall)
    torch.testing.assert_close(ours_tall, Inception_V3_Weights.IMAGENET1K_V1.transforms()(tall), atol=1e-4, rtol=0)


def test_whole_geometry_keeps_every_pixel_and_differs_from_the_crop():
    image = torch.rand(2, 3, 60, 90, generator=torch.Generator().manual_seed(1))
    p = preprocessing_for("resnet50", "IMAGENET1K_V2")
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    want = (F.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False, antialias=True) - mean) / std
    torch.testing.assert_close(p(image), want)
    torch.testing.assert_close(p(image[0]), want[0])
    assert not torch.allclose(p(image), p.with_geometry("crop")(image))


def test_default_model_uses_the_wheel_size_and_tflite_normalisation():
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    p = preprocessing_for("efficientnet-lite0")
    assert p.size == EfficientNet.get_image_size("efficientnet-lite0") == 224
    image = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(2))
    resized = F.interpolate(image[None], size=(224, 224), mode="bilinear", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(p(image), (resized * 255 - 127.0) / 128.0, atol=1e-5, rtol=0)
    _, loaded = models.load_model()
    assert loaded == p


def test_other_models_get_the_documented_default_and_bad_input_is_refused():
    assert preprocessing_for("not-a-torchvision-model") == DEFAULT
    assert (DEFAULT.size, DEFAULT.mean, DEFAULT.std) == (224, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(UnknownNameError, match="did you mean 'crop'"):
        preprocessing_for("resnet50", geometry="crops")
    with pytest.raises(InputError, match=r"\(3, H, W\)"):
        DEFAULT(torch.rand(1, 5, 5))
    assert isinstance(DEFAULT, Preprocessing)


# ----------------------------------------------------------------------------- random weights are explicit
def test_torchvision_model_without_weights_is_refused():
    with pytest.raises(InputError, match=r"no weights.*--weights DEFAULT.*--random-weights"):
        models.load_model("resnet18")
    with pytest.raises(InputError, match="not both"):
        models.load_model("resnet18", "DEFAULT", random_weights=True)
    with pytest.raises(InputError, match="ships its own pretrained weights; do not pass random_weights=True"):
        models.load_model("efficientnet-lite0", random_weights=True)
    with pytest.raises(UnknownNameError, match="did you mean 'IMAGENET1K_V1'"):
        models.load_model("resnet18", "IMAGENET1K_V9")


def test_random_weights_on_request():
    model, pre = models.load_model("resnet18", random_weights=True)
    assert isinstance(model, torchvision.models.ResNet) and not model.training
    assert (pre.size, pre.resize) == (224, 256)                       # resnet18's DEFAULT weights: V1


def test_cli_explain_refuses_missing_weights(capsys, tmp_path):
    code = cli_main(["explain", "--model", "resnet18", "-o", str(tmp_path / "x.png")])
    assert code == 2 and "--random-weights" in capsys.readouterr().err
