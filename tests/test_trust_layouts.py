"""Layer layouts are stated or declared, never guessed (extagg.layouts, extagg.tokens): Swin's channels-last blocks
give maps on their spatial grid, a channels-last layer nothing settles is refused, and a token layer's patch grid
comes from the model's patch embedding and declared non-patch tokens (non-square patches, trailing registers, a
class-token-only layer, a batch as long as the sequence)."""
import pytest
import torch
import torchvision

import extagg
from extagg.errors import InputError, LayerMismatchError

TARGETS = [1, 3]


def both(x):
    """Targets 1 and 3 for every image: (N, 2) maps."""
    return torch.tensor([TARGETS] * len(x))


def hooks_of(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def direct(model, x, *modules, targets=TARGETS):
    """[(activation, gradient) per target] of each module's first output, by hook and autograd, in one forward
    pass (one list for one module)."""
    seen = {}

    def hook(m, _args, out):
        seen.setdefault(m, out)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        scores = model(x)
    finally:
        for handle in handles:
            handle.remove()
    acts = [seen[m] for m in modules]
    grads = [torch.autograd.grad(scores[:, t].sum(), acts, retain_graph=True) for t in targets]
    out = [[(a.detach(), g[i]) for g in grads] for i, a in enumerate(acts)]
    return out[0] if len(modules) == 1 else out


def gradcam_channels_last(pairs):
    """(N, T, h, w) Grad-CAM of (N, h, w, C) activations and gradients."""
    return torch.stack([torch.relu((a * g.mean((1, 2), keepdim=True)).sum(-1)) for a, g in pairs], 1)


def gradcam_tokens(pairs, h, w, prefix, suffix):
    """(N, T, h, w) Grad-CAM over the patch tokens of (N, L, D) activations and gradients."""
    def grid(t):
        return t[:, prefix:t.shape[1] - suffix].transpose(1, 2).reshape(t.shape[0], -1, h, w)
    return torch.stack([torch.relu((grid(a) * grid(g).mean((2, 3), keepdim=True)).sum(1)) for a, g in pairs], 1)


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return torchvision.models.swin_t(num_classes=5).eval()


@pytest.fixture(scope="module")
def swin_x():
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))


def close(got, want):
    """float32 models: the same sums in another order."""
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_swin_t_gives_maps_on_its_spatial_grid(swin, swin_x, registry):
    """Guards Swin's (N, H, W, C) blocks: they were read as (N, C, H, W) and gave (1, T, 2, 768) "maps"."""
    layers = ["features.1", "features.7", "features.1.0.mlp.1"]
    before = hooks_of(swin)
    got = extagg.saliency(swin, swin_x, "gradcam", layers, both(swin_x), registry=registry)
    assert hooks_of(swin) == before
    assert got["gradcam", "features.1"].shape == (1, 2, 16, 16)
    assert got["gradcam", "features.7"].shape == (1, 2, 2, 2)
    pairs = direct(swin, swin_x, swin.features[1], swin.features[7], swin.features[1][0].mlp[1])
    for layer, at in zip(layers, pairs):
        want = gradcam_channels_last(at)
        close(got["gradcam", layer], want)
        assert want.max() > 0


def test_a_channels_last_layer_nothing_settles_is_refused_until_stated(swin, swin_x, registry):
    """Guards that a layer whose kind and readers do not settle its layout (Swin's stochastic depth, read by a
    functional addition) is never read as (N, C, h, w) silently: the error names ``layout=``, and the stated
    layout gives the right maps."""
    layer, x = "features.1.0.stochastic_depth@0", swin_x[..., :32, :32]
    with pytest.raises(LayerMismatchError, match=r"\(StochasticDepth\) has output shape \(1, 8, 8, 96\): the model "
                                                 r"runs channels-last .*layout='nchw' or layout='nhwc'"):
        extagg.saliency(swin, x, "gradcam", layer, both(x), registry=registry)
    got = extagg.saliency(swin, x, "gradcam", layer, both(x), layout={layer: "nhwc"}, registry=registry)
    close(got["gradcam", layer], gradcam_channels_last(direct(swin, x, swin.features[1][0].stochastic_depth)))


def test_stated_layouts_are_checked(swin, swin_x, registry):
    swin_x = swin_x[..., :32, :32]
    with pytest.raises(InputError, match=r"layout must be one of 'nchw', 'nhwc', 'nld'.*got 'chw'"):
        extagg.saliency(swin, swin_x, "gradcam", "features.1", layout="chw", registry=registry)
    with pytest.raises(InputError, match=r"layout: \['features.2'\] are not among the requested layers"):
        extagg.saliency(swin, swin_x, "gradcam", "features.1", layout={"features.2": "nhwc"}, registry=registry)
    with pytest.raises(InputError, match="'input' is the images"):
        extagg.saliency(swin, swin_x, "gradient", "input", layout={"input": "nhwc"}, registry=registry)
    with pytest.raises(LayerMismatchError, match="token_grid=.*is for \\(N, L, D\\) token layers; this one is 4-D"):
        extagg.saliency(swin, swin_x, "gradcam", "features.1", token_grid={"features.1": (4, 4)}, registry=registry)
    with pytest.raises(LayerMismatchError, match="layout='nld' is for \\(N, L, D\\) token sequences"):
        extagg.saliency(swin, swin_x, "gradcam", "features.1", layout="nld", registry=registry)


def test_a_convnet_reads_as_channels_first_without_a_statement(registry, tiny_net, images):
    """Nothing in a ReLU network makes a channels-last tensor: its layers need no statement, and a stated
    ``layout="nchw"`` gives the same maps bit for bit."""
    got = extagg.saliency(tiny_net, images, "gradcam", ["2", "4"], 1, registry=registry)
    told = extagg.saliency(tiny_net, images, "gradcam", ["2", "4"], 1, layout="nchw", registry=registry)
    for layer in ("2", "4"):
        assert torch.equal(got["gradcam", layer], told["gradcam", layer])


# ----------------------------------------------------------------------------- token layers
class Tokens(torch.nn.Module):
    """A small ViT: conv patch embedding (``patch`` may be non-square), a class token, ``registers`` extra tokens
    appended after the patches, ``blocks.*`` of attention + MLP, a class-token-only layer, head on the class token."""

    def __init__(self, patch=(4, 4), registers=0, dim=12, classes=5, declare=False):
        super().__init__()
        self.patch_embed = torch.nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = torch.nn.Parameter(torch.randn(1, 1, dim))
        self.registers = torch.nn.Parameter(torch.randn(1, registers, dim))
        if declare:
            self.num_prefix_tokens, self.num_suffix_tokens = 1, registers
        self.blocks = torch.nn.Sequential(*[Block(dim) for _ in range(2)])
        self.cls_only = ClassToken()
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        n = len(t)
        t = torch.cat([self.cls_token.expand(n, -1, -1), t, self.registers.expand(n, -1, -1)], 1)
        return self.head(self.cls_only(self.blocks(t))[:, 0])


class ClassToken(torch.nn.Module):
    def forward(self, t):
        return t[:, :1]


class Block(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.attn = torch.nn.MultiheadAttention(dim, 2, batch_first=True)
        self.fc1, self.fc2 = torch.nn.Linear(dim, 2 * dim), torch.nn.Linear(2 * dim, dim)

    def forward(self, t):
        h = self.norm(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        return t + self.fc2(torch.nn.functional.gelu(self.fc1(t)))


def tokens_model(**kwargs):
    torch.manual_seed(0)
    return Tokens(**kwargs).double().eval()


def pictures(n=2, h=32, w=32):
    return torch.randn(n, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def test_a_non_square_patch_grid_comes_from_the_patch_embedding(registry):
    """Guards non-square patches: 4x8 patches of a 32x32 image are an 8x4 grid of 32 tokens + the class token;
    the token count alone was read as a 5x5 grid with 8 non-patch tokens."""
    model, x = tokens_model(patch=(4, 8)), pictures()
    got = extagg.saliency(model, x, "gradcam", "blocks.0", both(x), registry=registry)["gradcam", "blocks.0"]
    want = gradcam_tokens(direct(model, x, model.blocks[0]), 8, 4, 1, 0)
    torch.testing.assert_close(got, want)
    assert got.shape == (2, 2, 8, 4) and want.max() > 0


def test_trailing_register_tokens_are_declared_or_stated(registry):
    """Guards trailing register tokens: 1 + 16 + 4 tokens were read as 5 leading tokens and 16 "patches" that
    included the registers. Undeclared they are an error naming token_grid; stated or declared, the maps are the
    patch tokens'."""
    x = pictures(h=16, w=16)
    model = tokens_model(registers=4)
    with pytest.raises(LayerMismatchError, match=r"a class token \('cls_token'\).*'patch_embed' \(stride \(4, 4\)\) "
                                                 r"gives 4x4 patches, 1 leading and 0 trailing.*17 tokens, but the "
                                                 r"layer has 21.*token_grid=\(h, w, prefix, suffix\)"):
        extagg.saliency(model, x, "gradcam", "blocks.0", both(x), registry=registry)
    want = gradcam_tokens(direct(model, x, model.blocks[0]), 4, 4, 1, 4)
    stated = extagg.saliency(model, x, "gradcam", "blocks.0", both(x), token_grid={"blocks.0": (4, 4, 1, 4)},
                             registry=registry)["gradcam", "blocks.0"]
    torch.testing.assert_close(stated, want)
    declared = tokens_model(registers=4, declare=True)
    got = extagg.saliency(declared, x, "gradcam", "blocks.0", both(x), registry=registry)["gradcam", "blocks.0"]
    torch.testing.assert_close(got, want)
    assert want.max() > 0


def test_a_class_token_only_layer_has_no_map(registry):
    """Guards a layer of the class token alone, (N, 1, D): it was read as a 1x1 patch grid."""
    model, x = tokens_model(), pictures(h=16, w=16)
    with pytest.raises(LayerMismatchError, match=r"'cls_only' \(ClassToken\) has output shape \(2, 1, 12\).*17 "
                                                 r"tokens, but the layer has 1"):
        extagg.saliency(model, x, "gradient", "cls_only", both(x), registry=registry)


class SequenceFirst(torch.nn.Module):
    """Tokens mixed by a Linear applied to the sequence-first (L, N, D) tensor."""

    def __init__(self, dim=12):
        super().__init__()
        self.inner = tokens_model()
        self.mix = torch.nn.Linear(dim, dim)

    def forward(self, x):
        inner = self.inner
        t = inner.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([inner.cls_token.expand(len(t), -1, -1), t], 1)
        t = self.mix(t.transpose(0, 1)).transpose(0, 1)
        return inner.head(inner.blocks(t)[:, 0])


def test_a_batch_as_long_as_the_sequence_needs_a_statement(registry):
    """Guards N = L: a sequence-first (L, N, D) layer then has N first too and was read as batch-first. With 17
    images of 17 tokens, only a declaration (batch_first=True around the layer, torchvision's encoder) or
    layout='nld' reads it as (N, L, D)."""
    x = pictures(17, 16, 16)
    seq = SequenceFirst().double().eval()
    with pytest.raises(LayerMismatchError, match=r"'mix' \(Linear\) has output shape \(17, 17, 12\): its first two "
                                                 r"dimensions both equal the batch size 17.*layout='nld'"):
        extagg.saliency(seq, x, "gradient", "mix", 1, registry=registry)
    model = tokens_model()
    with pytest.raises(LayerMismatchError, match="layout='nld'"):
        extagg.saliency(model, x, "gradcam", "blocks.0", both(x), registry=registry)
    got = extagg.saliency(model, x, "gradcam", "blocks.0", both(x), layout="nld", registry=registry)
    torch.testing.assert_close(got["gradcam", "blocks.0"], gradcam_tokens(direct(model, x, model.blocks[0]), 4, 4, 1, 0))


def test_torchvision_vit_b_16_grid_from_its_declarations(registry):
    """vit_b_16 at 32x32: conv_proj (stride 16) and the class token declare 2x2 patches + 1; its encoder is
    batch-first, so 5 images of 5 tokens need no statement."""
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16(image_size=32, num_classes=5).eval()
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision zero-initialises the head
    x = pictures(5, 32, 32).float()
    layer = "encoder.layers.encoder_layer_0"
    got = extagg.saliency(vit, x, "gradcam", layer, both(x), registry=registry)["gradcam", layer]
    want = gradcam_tokens(direct(vit, x, vit.encoder.layers.encoder_layer_0), 2, 2, 1, 0)
    close(got, want)
    assert got.shape == (5, 2, 2, 2) and want.max() > 0


class CountBackward(torch.autograd.Function):
    calls = 0

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        CountBackward.calls += 1
        return g


def test_a_layout_refusal_comes_before_the_backward_pass(registry):
    """The layout and grid are decided from the forward pass's shapes: a refused layer costs no backward."""
    model, x = tokens_model(registers=4), pictures(h=16, w=16)
    later = model.blocks[1]  # between the layer and the score: the backward to the layer passes through it
    handle = later.register_forward_hook(lambda _m, _a, out: CountBackward.apply(out))
    try:
        CountBackward.calls = 0
        extagg.saliency(model, x, "gradient", "blocks.0", 1, token_grid=(4, 4, 1, 4), registry=registry)
        assert CountBackward.calls == 1
        with pytest.raises(LayerMismatchError, match="token_grid="):
            extagg.saliency(model, x, "gradient", "blocks.0", 1, registry=registry)
        assert CountBackward.calls == 1
    finally:
        handle.remove()
