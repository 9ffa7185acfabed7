"""Layer names, patterns and groups (stages, blocks, spatial, last) on ResNet, VGG and EfficientNet."""
import pytest
import torch
import torchvision

from extagg.errors import InputError, UnknownNameError
from extagg.layer_select import select_layers


@pytest.fixture(scope="module")
def resnet():
    return torchvision.models.resnet18().eval()


@pytest.fixture(scope="module")
def vgg():
    from torchvision.models.vgg import VGG, cfgs, make_layers

    return VGG(make_layers(cfgs["A"]), init_weights=False).eval()  # vgg11 without the slow initialisation


def test_resnet_stages_and_blocks(resnet):
    assert select_layers(resnet, "stages") == ["layer1", "layer2", "layer3", "layer4"]
    assert select_layers(resnet, "blocks") == [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert select_layers(resnet, "last") == ["layer4"]


def test_vgg_stages_are_the_relu_before_each_pool(vgg):
    feats = list(vgg.features)
    expected = [f"features.{i}" for i in range(len(feats) - 1)
                if isinstance(feats[i], torch.nn.ReLU) and isinstance(feats[i + 1], torch.nn.MaxPool2d)]
    assert expected == ["features.1", "features.4", "features.9", "features.14", "features.19"]
    assert select_layers(vgg, "stages") == expected
    relus = [f"features.{i}" for i, m in enumerate(feats) if isinstance(m, torch.nn.ReLU)]
    assert select_layers(vgg, "blocks") == relus  # the ReLU after each conv; the classifier's are not spatial


def test_torchvision_efficientnet_blocks_and_stages():
    model = torchvision.models.efficientnet_b0().eval()
    blocks = select_layers(model, "blocks")
    assert blocks[0] == "features.0" and "features.1.0" in blocks and blocks[-1] == "features.8"
    assert len(blocks) == 1 + 16 + 1  # stem, 16 MBConv blocks, head
    assert select_layers(model, "stages") == ["features.1", "features.2", "features.3", "features.5", "features.8"]


def test_efficientnet_lite0_groups_and_repeated_calls():
    pytest.importorskip("efficientnet_lite_pytorch")
    from extagg.models import load_model

    model, _ = load_model()
    assert select_layers(model, "blocks") == [f"_blocks.{i}" for i in range(16)]
    # resolution changes after blocks 0 (112), 2 (56), 4 (28), 10 (14); block 15 is the last (7)
    assert select_layers(model, ["input", "stages", "_conv_head"]) == [
        "input", "_blocks.0", "_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15", "_conv_head"]
    assert select_layers(model, "_sw*") == ["_swish@0", "_swish@1"]  # one ReLU6 called twice
    assert select_layers(model, "last") == ["_swish@1"]


def test_patterns_order_and_duplicates(resnet):
    assert select_layers(resnet, ["layer4", "layer?.0", "layer4"]) == ["layer4", "layer1.0", "layer2.0", "layer3.0",
                                                                      "layer4.0"]
    assert select_layers(resnet, "layer*.0") == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert "layer2.0.downsample.0" in select_layers(resnet, "layer**.0")
    assert select_layers(resnet, ["group:stages", "input"]) == ["layer1", "layer2", "layer3", "layer4", "input"]
    spatial = select_layers(resnet, "spatial")
    assert spatial[0] == "conv1" and "fc" not in spatial and "avgpool" not in spatial


def test_unknown_names_suggest(resnet):
    with pytest.raises(UnknownNameError, match="did you mean 'layer4'"):
        select_layers(resnet, ["layer44"])
    with pytest.raises(UnknownNameError, match="did you mean 'stages'"):
        select_layers(resnet, ["stagse"])
    with pytest.raises(UnknownNameError, match="layer pattern 'nothing.*'"):
        select_layers(resnet, ["nothing.*"])
    with pytest.raises(UnknownNameError, match="layer group 'stage'"):
        select_layers(resnet, ["group:stage"])
    with pytest.raises(InputError):
        select_layers(resnet, [])


def test_a_module_named_like_a_group_wins(resnet):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())

        def forward(self, x):
            return self.stages(x).mean((2, 3))

    net = Net()
    assert select_layers(net, "stages") == ["stages"]
    assert select_layers(net, "group:blocks") == ["stages.1"]  # no composite blocks: the activations


def test_patterns_leave_out_modules_without_one_tensor_output():
    """An attention module returns a tuple and an unused ModuleList is never called: a pattern skips both, a
    pattern matching only such modules is an error that names them, and an explicit name is kept as given."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(4, 1, batch_first=True)
            self.proj = torch.nn.Linear(4, 4)
            self.unused = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

        def forward(self, x):
            t = x.flatten(2).transpose(1, 2)
            return self.proj(self.attn(t, t, t)[0]).mean(1)

    x = torch.randn(1, 4, 2, 2)
    assert select_layers(Net(), ["*"], x) == ["input", "proj"]  # out_proj is used functionally, never called
    with pytest.raises(InputError, match=r"never called or return no single tensor \(unused, unused.0\)"):
        select_layers(Net(), ["unused**", "proj"], x)
    with pytest.raises(InputError, match="never called or return no single tensor.*attn"):
        select_layers(Net(), ["att?"], x)
    assert select_layers(Net(), ["attn"], x) == ["attn"]  # a name is taken as given (capture then explains)


def test_star_stops_at_a_dot_and_double_star_crosses():
    """Layer patterns are matched part by part: with fnmatch's ``*`` (which crosses dots) ``layer*`` returned every
    module inside the four stages (150+ names on a ResNet-50) instead of the four stages."""
    model = torchvision.models.resnet50().eval()
    names = [n for n, _ in model.named_modules() if n]
    assert select_layers(model, "layer*") == ["layer1", "layer2", "layer3", "layer4"]
    inside = select_layers(model, "layer3.**")
    bases = list(dict.fromkeys(n.split("@")[0] for n in inside))  # a ReLU called 3 times: relu@0, relu@1, relu@2
    assert bases == [n for n in names if n.startswith("layer3.")] and "layer3.5.conv2" in inside
    assert select_layers(model, "layer3.*") == [f"layer3.{i}" for i in range(6)]
    assert select_layers(model, "layer?.0.conv?") == [f"layer{s}.0.conv{c}" for s in range(1, 5) for c in (1, 2, 3)]
    assert select_layers(model, "layer[14]") == ["layer1", "layer4"]
    assert select_layers(model, "**downsample.0") == [f"layer{s}.0.downsample.0" for s in range(1, 5)]
    assert select_layers(model, ["stages", "layer4.2.*"])[:5] == ["layer1", "layer2", "layer3", "layer4",
                                                                  "layer4.2.conv1"]


def test_layer_pattern_characters_never_cross_a_dot():
    """``?`` and ``[..]`` match one character that is not a dot (fnmatch's would match the dot itself)."""
    from extagg.layer_patterns import layer_match

    assert layer_match("a.b", "a?b") is False and layer_match("a.b", "a[.]b") is False
    assert layer_match("a.b", "a[!x]b") is False and layer_match("axb", "a[!y]b") is True
    assert layer_match("a.b", "a**") is True and layer_match("a.b", "a*") is False
    assert layer_match("a[b", "a[b") is True  # an unclosed bracket is a literal, as in fnmatch
    assert layer_match("input", "inp*") is True and layer_match("Input", "inp*") is False
