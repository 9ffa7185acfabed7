"""saliency(layers=...) with names, fnmatch patterns, named groups and module objects (extagg.layer_request)."""
import pytest
import torch
import torchvision

import extagg
from extagg.errors import InputError, UnknownNameError


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def layers_of(maps):
    return list(dict.fromkeys(layer for _, layer in maps.keys()))


def test_pattern_group_and_module_object_give_the_named_layers_maps(resnet, x, registry):
    by_name = extagg.saliency(resnet, x, "gradcam", ["layer1", "layer2", "layer3", "layer4"], targets=1,
                              registry=registry)
    by_pattern = extagg.saliency(resnet, x, "gradcam", "layer?", targets=1, registry=registry)
    by_group = extagg.saliency(resnet, x, "gradcam", "stages", targets=1, registry=registry)
    by_object = extagg.saliency(resnet, x, "gradcam", [resnet.layer1, resnet.layer2, "layer3", resnet.layer4],
                                targets=1, registry=registry)
    for other in (by_pattern, by_group, by_object):
        assert layers_of(other) == ["layer1", "layer2", "layer3", "layer4"]
        for layer in ("layer1", "layer4"):
            torch.testing.assert_close(other["gradcam", layer], by_name["gradcam", layer], rtol=0, atol=0)
    # the last stage differs from the first: the comparison above can fail
    assert by_name["gradcam", "layer1"].shape != by_name["gradcam", "layer4"].shape


def test_pattern_with_input_and_dedup(resnet, x, registry):
    maps = extagg.saliency(resnet, x, "gradient", ["input", "layer4", "layer4.*", resnet.layer4], targets=0,
                           registry=registry, mismatched="skip")
    assert layers_of(maps)[:3] == ["input", "layer4", "layer4.0"]
    assert layers_of(maps).count("layer4") == 1


def test_unknown_layer_did_you_mean(resnet, x, registry):
    with pytest.raises(UnknownNameError, match="did you mean.*layer4"):
        extagg.saliency(resnet, x, "gradcam", "layr4", registry=registry)
    with pytest.raises(UnknownNameError, match="layer pattern"):
        extagg.saliency(resnet, x, "gradcam", "blocks.*", registry=registry)


def test_foreign_module_and_model_itself_are_refused(resnet, x, registry):
    with pytest.raises(InputError, match="not a submodule"):
        extagg.saliency(resnet, x, "gradcam", torch.nn.Conv2d(3, 3, 1), registry=registry)
    with pytest.raises(InputError, match="the model itself"):
        extagg.saliency(resnet, x, "gradcam", resnet, registry=registry)
    with pytest.raises(InputError, match="layers are names"):
        extagg.saliency(resnet, x, "gradcam", [3], registry=registry)


def test_module_called_twice_by_object_and_at_k(registry):
    relu = torch.nn.ReLU()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), relu, torch.nn.Conv2d(4, 4, 3), relu,
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    with pytest.raises(InputError, match="called 2 times"):
        extagg.saliency(net, x, "gradcam", relu, registry=registry)
    maps = extagg.saliency(net, x, "gradcam", ["1@1", "1*"], registry=registry)
    assert layers_of(maps) == ["1@1", "1@0"]
    assert maps["gradcam", "1@1"].shape[-1] == 5 and maps["gradcam", "1@0"].shape[-1] == 7


def test_model_untouched_by_pattern_resolution(resnet, x, registry):
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    resnet.train()
    extagg.saliency(resnet, x, "gradcam", "last", registry=registry)
    assert resnet.training and all(m.training for m in resnet.modules())
    resnet.eval()
    for k, v in resnet.state_dict().items():
        assert torch.equal(v, before[k]), k
