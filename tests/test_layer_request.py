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
    # counter-cases through the same pattern path: another target, or a pattern that picks layer4's first block
    # (same shape as layer4, other values), give maps the comparison above refuses
    other_target = extagg.saliency(resnet, x, "gradcam", "layer?", targets=0, registry=registry)
    first_block = extagg.saliency(resnet, x, "gradcam", "layer4.?", targets=1, registry=registry)
    assert layers_of(first_block) == ["layer4.0", "layer4.1"]
    for wrong in (other_target["gradcam", "layer4"], first_block["gradcam", "layer4.0"]):
        assert wrong.shape == by_name["gradcam", "layer4"].shape
        with pytest.raises(AssertionError):
            torch.testing.assert_close(wrong, by_name["gradcam", "layer4"], rtol=0, atol=0)


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


class WithDepth(torch.nn.Module):
    """A model with a per-image keyword argument: an extra input channel concatenated to the image."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x, *, depth):
        return self.head(self.conv(torch.cat([x, depth], 1)).relu().mean((2, 3)))


def test_layer_pattern_with_batched_keyword_arguments(registry):
    """A batch of 2 with a per-image keyword argument and a layer pattern: the pattern's forward pass runs the
    whole batch with the keyword arguments (the contract of ``resolve_requested_layers``), and each image's map
    equals the map of that image alone. Guards the ``forward_kwargs`` condition in ``extagg/layer_request.py``:
    flipped, the pattern pass runs the first image with both images' keyword arguments and the call crashes."""
    torch.manual_seed(0)
    net = WithDepth().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    depth = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    both = extagg.saliency(net, x, "gradcam", "con*", forward_kwargs={"depth": depth}, targets=1,
                           registry=registry)["gradcam", "conv"]
    for i in range(2):
        alone = extagg.saliency(net, x[i:i + 1], "gradcam", "conv", forward_kwargs={"depth": depth[i:i + 1]},
                                targets=1, registry=registry)["gradcam", "conv"]
        torch.testing.assert_close(both[i:i + 1], alone)
    # the keyword argument matters: another depth gives another map
    other = extagg.saliency(net, x, "gradcam", "con*", forward_kwargs={"depth": depth.flip(0)}, targets=1,
                            registry=registry)["gradcam", "conv"]
    assert not torch.allclose(other, both)


def test_a_pattern_costs_one_forward_pass_on_the_first_image(registry):
    """The module docstring's cost: without keyword arguments a pattern's extra pass runs on the first image
    only (a one-image batch, the image itself), a module name costs no extra pass at all. Guards the slicing in
    ``resolve_requested_layers`` (the whole batch, or an empty one, would still resolve the same names)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3))
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    x = torch.randn(3, 3, 8, 8)
    extagg.saliency(net, x, "gradcam", "0", targets=1, registry=registry)
    by_name = len(seen)
    seen.clear()
    extagg.saliency(net, x, "gradcam", "[0]", targets=1, registry=registry)
    assert len(seen) == by_name + 1
    assert torch.equal(seen[0], x[:1])
