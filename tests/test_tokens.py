"""Token layers (extagg.tokens): ViT blocks (N, L, D) as maps on the patch grid; shapes that have no map."""
import pytest
import torch
import torchvision

import extagg
from extagg.errors import InputError, LayerMismatchError

TARGETS = [1, 3]


class TinyViT(torch.nn.Module):
    """timm-style: patch embedding, class token, ``blocks.*`` of pre-norm attention + MLP, head on the class token."""

    def __init__(self, dim=12, patch=4, classes=5, depth=2):
        super().__init__()
        self.patch_embed = torch.nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = torch.nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = torch.nn.Sequential(*[Block(dim) for _ in range(depth)])
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1)
        return self.head(self.norm(self.blocks(t))[:, 0])


class Block(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.attn = torch.nn.MultiheadAttention(dim, 2, batch_first=True)
        self.fc1, self.act, self.fc2 = torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim)

    def forward(self, t):
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        return t + self.fc2(self.act(self.fc1(self.norm2(t))))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return TinyViT().double().eval()


@pytest.fixture(scope="module")
def tv_vit():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                               mlp_dim=32, num_classes=5).double().eval()
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision zero-initialises the head: no gradient at all
    return vit


def images(n=2, h=16, w=16):
    return torch.randn(n, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


def captured(model, x, module, targets=TARGETS, which="output"):
    """(activation, gradient) of ``module``'s output (or input) tokens, directly with a hook and autograd."""
    seen = {}

    def hook(_m, args, out):
        seen["t"] = (args[0] if which == "input" else out)
        if which == "output":
            out.retain_grad()

    handle = module.register_forward_hook(hook)
    try:
        score = model(x)[torch.arange(len(x)), targets].sum()
    finally:
        handle.remove()
    if which == "input":
        return seen["t"], torch.autograd.grad(score, seen["t"], retain_graph=False)[0]
    score.backward()
    return seen["t"].detach(), seen["t"].grad


def on_grid(tokens, h, w, prefix=1):
    """(N, L, K) tokens -> (N, K, h, w), patches only, row-major."""
    return tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def test_scaling_bias_normgrad_gradcam_equal_the_direct_per_token_computation(tiny, registry):
    x = images()
    layer = "blocks.0.act"  # a block's output feeds only LayerNorms: there g . a = sum g = 0 per token
    a, g = captured(tiny, x, tiny.blocks[0].act)
    a, g = on_grid(a, 4, 4), on_grid(g, 4, 4)
    methods = ["scaling+sum", "bias+sum", "normgrad", "gradcam"]
    got = extagg.saliency(tiny, x, methods, layer, TARGETS, registry=registry)
    wants = {
        "scaling+sum": (g * a).sum(1, keepdim=True),
        "bias+sum": g.sum(1, keepdim=True),
        "normgrad": g.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True),
        "gradcam": torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)),
    }
    for m, want in wants.items():
        torch.testing.assert_close(got[m, layer], want, rtol=1e-10, atol=1e-12)
        assert want.abs().max() > 0
        assert not torch.allclose(got[m, layer], want.transpose(-1, -2))  # the grid is row-major, not transposed
    # with the class token pooled in, Grad-CAM's weights (and map) would differ
    _, g_all = captured(tiny, x, tiny.blocks[0].act)
    with_cls = torch.relu((g_all.mean(1)[:, :, None, None] * a).sum(1, keepdim=True))
    assert not torch.allclose(got["gradcam", layer], with_cls)


def test_linear_extractor_is_the_layers_weight_gradient_per_token(tiny, registry):
    x = images()
    fc1 = tiny.blocks[1].fc1
    x_in, _ = captured(tiny, x, fc1, which="input")
    _, g = captured(tiny, x, fc1)
    got = extagg.saliency(tiny, x, ["linear+norm", "linear+sum"], "blocks.1.fc1", TARGETS, registry=registry)
    xg, gg = on_grid(x_in.detach(), 4, 4), on_grid(g, 4, 4)
    torch.testing.assert_close(got["linear+norm", "blocks.1.fc1"],
                               gg.norm(dim=1, keepdim=True) * xg.norm(dim=1, keepdim=True), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["linear+sum", "blocks.1.fc1"],
                               gg.sum(1, keepdim=True) * xg.sum(1, keepdim=True), rtol=1e-10, atol=1e-12)


def test_torchvision_vit_maps_on_the_class_token_path(tv_vit, registry):
    x = images(h=32, w=32)
    first, last = "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"
    got = extagg.saliency(tv_vit, x, ["gradcam", "scaling+sum", "gradient"], [first, last], TARGETS,
                          registry=registry)
    a, g = captured(tv_vit, x, tv_vit.encoder.layers.encoder_layer_0)
    a, g = on_grid(a, 4, 4), on_grid(g, 4, 4)
    want = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    torch.testing.assert_close(got["gradcam", first], want, rtol=1e-10, atol=1e-12)
    assert want.max() > 0 and got["gradient", first].shape == (2, 1, 4, 4)
    # after the last block only the class token reaches the head: the patch tokens have no gradient
    assert got["gradcam", last].abs().max() == 0 and got["gradient", last].abs().max() == 0


def test_every_builtin_method_at_token_layers(tv_vit, registry):
    x = images(1, 32, 32)
    # named methods that carry a propagation rule are left out: the rules handle ReLU, not a ViT's GELU
    methods = [m for m in registry.methods() + sorted(registry.named_methods) if not registry.parse(m).modifiers]
    layers = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_0.mlp.0", "conv_proj"]
    got = extagg.saliency(tv_vit, x, methods, layers, 1, registry=registry, mismatched="skip")
    at_tokens = {m for m, layer in got.keys() if layer == layers[0]}
    for (m, layer), value in got.items():
        assert value.shape == ((1, 1, 4, 4)), (m, layer)
        assert torch.isfinite(value).all()
    extractors = {registry.parse(m).extractor.name for m in at_tokens}
    assert extractors == {"bias", "scaling", "pooled-scaling", "conv1x1"}
    at_linear = {registry.parse(m).extractor.name for m, layer in got.keys() if layer == layers[1]}
    assert at_linear == extractors | {"linear"}


def test_shapes_without_a_map_are_errors_naming_layer_and_shape(tv_vit, tiny, registry):
    x = images(2, 32, 32)
    with pytest.raises(LayerMismatchError, match=r"'heads.head' \(Linear\) has output shape \(2, 5\)"):
        extagg.saliency(tv_vit, x, "gradient", "heads.head", registry=registry)
    with pytest.raises(LayerMismatchError, match=r"'conv3x3'.*token layer \(4x4 patch tokens, 1 other\)"):
        extagg.saliency(tv_vit, x, "conv3x3+norm", "encoder.layers.encoder_layer_0", registry=registry)
    with pytest.raises(LayerMismatchError, match=r"token_grid=\(2, 8, 0, 0\) needs 16 tokens, the layer has 17"):
        extagg.saliency(tv_vit, x, "gradcam", "encoder.layers.encoder_layer_0", token_grid=(2, 8),
                        registry=registry)
    with pytest.raises(InputError, match="token_grid must be"):
        extagg.saliency(tv_vit, x, "gradcam", "encoder.layers.encoder_layer_0", token_grid=(4,), registry=registry)
    conv1d = torch.nn.Sequential(torch.nn.Flatten(2), torch.nn.Conv1d(3, 4, 3), torch.nn.Flatten(),
                                 torch.nn.LazyLinear(2)).double()
    conv1d(x)
    with pytest.raises(LayerMismatchError, match=r"'1' \(Conv1d\).*1-D signal"):
        extagg.saliency(conv1d, x, "gradient", "1", registry=registry)


def test_a_told_grid_gives_the_same_maps_and_a_wrong_one_differs(tiny, registry):
    x = images()
    found = extagg.saliency(tiny, x, "gradcam", "blocks.0", TARGETS, registry=registry)["gradcam", "blocks.0"]
    told = extagg.saliency(tiny, x, "gradcam", "blocks.0", TARGETS, token_grid=(4, 4, 1),
                           registry=registry)["gradcam", "blocks.0"]
    assert torch.equal(found, told)
    wide = extagg.saliency(tiny, x, "gradcam", "blocks.0", TARGETS, token_grid=(2, 8, 1),
                           registry=registry)["gradcam", "blocks.0"]
    assert wide.shape == (2, 1, 2, 8)


def test_multipass_at_a_token_layer(tiny, registry):
    x = images()
    got = extagg.saliency(tiny, x, ["smooth(n=2,sigma=0.0):gradcam", "gradcam", "ig(steps=3):scaling+sum"],
                          "blocks.0", TARGETS, registry=registry)
    torch.testing.assert_close(got["smooth(n=2,sigma=0.0):gradcam", "blocks.0"], got["gradcam", "blocks.0"])
    assert got["ig(steps=3):scaling+sum", "blocks.0"].shape == (2, 1, 4, 4)
