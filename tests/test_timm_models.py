"""Any model a researcher brings: timm models by name (``timm:NAME``) with their own preprocessing and layer groups,
named weights only from the local cache (refused at once, naming the path), Swin's channels-last maps against
pytorch-grad-cam's ``reshape_transform``, and the ZeroGradientWarning of a zero-initialised head."""
import warnings

import numpy as np
import pytest
import torch
import torchvision

import extagg
from extagg.errors import InputError, UnknownNameError, ZeroGradientWarning
from extagg.layer_select import select_layers
from extagg.models import load_model
from tests.model_state import assert_unchanged, snapshot

timm = pytest.importorskip("timm")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_timm_model_gets_its_own_preprocessing():
    """The preprocessing is the model's pretrained config (a ViT's mean and std are 0.5, not ImageNet's; ConvNeXt
    resizes bicubic), not extagg's ImageNet default."""
    model, pre = load_model("timm:vit_tiny_patch16_224", random_weights=True)
    cfg = timm.data.resolve_data_config({}, model=model)
    assert pre.mean == tuple(cfg["mean"]) == (0.5, 0.5, 0.5) and pre.std == tuple(cfg["std"])
    assert pre.size == cfg["input_size"][-1] == 224 and pre.interpolation == cfg["interpolation"] == "bicubic"
    assert pre.resize == round(224 / cfg["crop_pct"])
    assert not model.training and type(model).__module__.startswith("timm.")


def test_timm_names_and_weights_are_checked_before_any_model_work(monkeypatch, tmp_path):
    """An unknown timm name suggests close ones; a model without weights or --random-weights is refused; named
    pretrained weights that are not in the local cache are refused at once (no model is built), naming the cache
    that was searched."""
    with pytest.raises(UnknownNameError, match="convnext_tiny"):
        load_model("timm:convnext_tinyy", random_weights=True)
    with pytest.raises(InputError, match="random_weights=True"):
        load_model("timm:convnext_atto")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(InputError, match="not in the local cache") as info:
        load_model("timm:convnext_atto", "DEFAULT")
    assert str(tmp_path / "hub") in str(info.value) and "convnext_atto" in str(info.value)


def test_torchvision_weights_missing_from_the_cache_are_refused_before_any_model_work(monkeypatch, tmp_path):
    """--weights DEFAULT with an empty TORCH_HOME: an InputError naming the file torchvision looks for
    (torch.hub.get_dir()/checkpoints/<file>), raised before a model is built or anything downloads."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torchvision.models, "get_model", lambda *a, **k: pytest.fail("a model was built"))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(InputError, match="not in the local torch hub cache") as info:
        load_model("resnet18", "DEFAULT")
    assert str(expected) in str(info.value)


def test_timm_layer_groups_are_its_stage_and_block_modules():
    """stages / blocks are timm's stage modules and the blocks inside them, also where the model has a module
    named ``stages`` or ``blocks``; the stages of EfficientNet are those of timm's own feature_info."""
    convnext = timm.create_model("convnext_atto").eval()
    x = torch.rand(1, 3, 64, 64)
    assert select_layers(convnext, "stages", x) == [f"stages.{i}" for i in range(4)]
    assert select_layers(convnext, "blocks", x) == [f"stages.{s}.blocks.{b}" for s, n in enumerate((2, 2, 6, 2))
                                                    for b in range(n)]
    effnet = timm.create_model("efficientnet_b0").eval()
    assert select_layers(effnet, "stages", x) == [f["module"] for f in effnet.feature_info] == [
        "blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    vit = timm.create_model("vit_tiny_patch16_224").eval()
    assert select_layers(vit, "blocks", torch.rand(1, 3, 224, 224)) == [f"blocks.{i}" for i in range(12)]
    assert select_layers(vit, "stages", torch.rand(1, 3, 224, 224)) == ["blocks.11"]


def _peer_post(m: torch.Tensor, size) -> torch.Tensor:
    """pytorch-grad-cam's post-processing of one layer's map: relu, min-max, cv2 resize to the input, min-max."""
    import cv2

    m = torch.relu(m).double().numpy()
    m = m - m.min()
    m = cv2.resize(np.float32(m / (1e-7 + m.max())), size)
    m = np.maximum(m, 0) - np.maximum(m, 0).min()
    return torch.from_numpy(m / (1e-7 + m.max())).double()


@pytest.mark.parametrize("name", ["torchvision:swin_t", "timm:swin_tiny_patch4_window7_224"])
def test_swin_gradcam_is_pytorch_grad_cams_with_its_reshape_transform(name):
    """Swin's blocks are channels-last (N, h, w, C): extagg's gradcam map is on the (h, w) grid and equals
    pytorch-grad-cam's GradCAM given reshape_transform = permute(0, 3, 1, 2), up to its post-processing (relu,
    min-max, resize to the input), applied to ours here; read as channels-first it would be (w, C), not (h, w)."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    if name.startswith("timm:"):
        model, layer, side = timm.create_model(name[5:]).eval(), "layers.2.blocks.1", 224
    else:
        model, layer, side = torchvision.models.swin_t().eval(), "features.5.1", 64
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    before = snapshot(model)
    m = extagg.saliency(model, x, "gradcam", layer, 7)["gradcam", layer]
    assert_unchanged(before, model)
    grid = side // 16  # stage 3 of Swin: stride 16
    assert m.shape == (1, 1, grid, grid) and m.any()
    cam = pgc.GradCAM(model=model, target_layers=[dict(model.named_modules())[layer]],
                      reshape_transform=lambda t: t.permute(0, 3, 1, 2))
    peer = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(7)])[0]).double()
    torch.testing.assert_close(_peer_post(m[0, 0], (side, side)), peer, atol=1e-4, rtol=0)
    other = extagg.saliency(model, x, "gradcam", layer, 3)["gradcam", layer]  # counter-case: another class
    assert (_peer_post(other[0, 0], (side, side)) - peer).abs().max() > 1e-2


def test_a_zero_gradient_warns_instead_of_a_silent_zero_map():
    """torchvision's ViT initialises its head at exactly zero: the score's gradient is zero everywhere, every map
    is all zero, and the call says so with a ZeroGradientWarning naming the layers (before: silent zeros). With
    a non-zero head there is no warning."""
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16(image_size=32).eval()
    assert not vit.heads.head.weight.any()
    x = torch.rand(1, 3, 32, 32)
    layers = ["encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_2"]
    with pytest.warns(ZeroGradientWarning, match="exactly zero at every requested layer") as caught:
        maps = extagg.saliency(vit, x, "gradcam", layers, 0)
    assert not any(maps[k].any() for k in maps)
    assert [w.message.layers for w in caught if w.category is ZeroGradientWarning][0] == tuple(layers)
    with torch.no_grad():
        vit.heads.head.weight.normal_()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroGradientWarning)
        maps = extagg.saliency(vit, x, "gradcam", layers, 0)
    assert all(maps[k].shape == (1, 1, 2, 2) for k in maps)


def test_explain_command_takes_a_timm_model(tmp_path, capsys):
    """The acceptance case: ``extagg explain --model timm:convnext_tiny --random-weights`` writes its overlay."""
    pytest.importorskip("skimage")
    from extagg.cli import main

    out = tmp_path / "overlay.png"
    assert main(["explain", "--model", "timm:convnext_tiny", "--random-weights", "-o", str(out)]) == 0
    assert out.stat().st_size > 0 and "1 method(s) x 1 layer(s)" in capsys.readouterr().out


def test_torchvision_vit_blocks_are_its_encoder_layers():
    """A ViT's encoder blocks return (N, L, D) tokens: they are its ``blocks`` (before: the group was empty, since
    only 4-D outputs counted), and ``stages`` is the last of them, its one token grid, named by the Sequential
    that holds them (as ResNet's ``layer4``)."""
    vit = torchvision.models.vit_b_16(image_size=32).eval()
    x = torch.rand(1, 3, 32, 32)
    names = [f"encoder.layers.encoder_layer_{i}" for i in range(12)]
    assert select_layers(vit, "blocks", x) == names
    assert select_layers(vit, "stages", x) == ["encoder.layers"]


def test_a_bare_group_name_is_the_group_where_the_module_of_that_name_is_never_called():
    """torchvision's MaxViT holds its stages in a ModuleList named ``blocks`` that is never called itself: the bare
    name ``blocks`` is the group there (before: the uncalled module, refused later as 'not called')."""

    class Block(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = torch.nn.Conv2d(c, 4, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(Block(c) for c in (3, 4))

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x.mean((2, 3))

    assert select_layers(Net().eval(), "blocks", torch.rand(1, 3, 8, 8)) == ["blocks.0", "blocks.1"]


def test_inception_blocks_are_its_composite_children():
    """Inception v3 has no block containers and only functional ReLUs: its blocks are the model's composite
    children (before: both groups were empty, so every cell of its conformance row was refused)."""
    model = torchvision.models.inception_v3(init_weights=False).eval()
    blocks = select_layers(model, "blocks", torch.rand(1, 3, 299, 299))
    assert blocks[0] == "Conv2d_1a_3x3" and blocks[-1] == "Mixed_7c" and "AuxLogits" not in blocks and len(blocks) == 16
