"""Meta-saliency: equal to the method on a hand-updated copy of the model, and exact restoration of the model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import extagg
from model_state import assert_unchanged, snapshot
from extagg import saliency_per_example
from extagg.errors import InputError, InvalidMethodError
from extagg_builtins import meta as meta_plugin
from extagg_builtins.meta import meta_saliency, meta_step

METHODS = ["normgrad", "linear-approx", "gradcam", "conv3x3+norm", "conv+norm"]
LAYERS = ["input", "conv1", "conv2"]


class Net(nn.Module):
    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1, stride=2)
        self.fc = nn.Linear(5, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def make_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net().double()
    with torch.no_grad():
        net.bn.running_mean.normal_()
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.normal_()
    return net


def images(n: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def hand_updated(model: nn.Module, x: torch.Tensor, target: int, lr: float, negative: bool,
                 skip: tuple[str, ...] = ()) -> nn.Module:
    """A deep copy after one SGD step on CE(model(x), target), written out by hand (eval mode, all params)."""
    c = copy.deepcopy(model).eval()
    params = [p for name, p in c.named_parameters() if name not in skip]
    for p in c.parameters():
        p.requires_grad_(True)
    loss = F.cross_entropy(c(x), torch.tensor([target]))
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.copy_(p + lr * g if negative else p - lr * g)
    return c


@pytest.mark.parametrize("negative", [False, True])
@pytest.mark.parametrize("lr", [0.002, 0.3])
def test_meta_equals_method_on_hand_updated_copy(negative, lr):
    model, x, target = make_net(), images(), 2
    prefix = meta_plugin.meta_call(lr, negative)
    metas = [prefix + m for m in METHODS]
    got = extagg.saliency(model, x, metas + METHODS, LAYERS, targets=target, mismatched="skip")
    ref = extagg.saliency(hand_updated(model, x, target, lr, negative), x, METHODS, LAYERS, targets=target,
                          mismatched="skip")
    assert len(ref) == len(METHODS) * len(LAYERS) - 1  # conv+norm does not apply to the input
    for meta, plain in zip(metas, METHODS):
        for layer in LAYERS:
            if (plain, layer) not in ref:
                continue
            expected = ref[plain, layer]
            assert torch.allclose(got[meta, layer], expected, rtol=1e-10, atol=1e-13), (meta, layer)
            # the test can fail: the step changes the map (by more than the comparison tolerance)
            change = (got[meta, layer] - got[plain, layer]).abs().max()
            assert change > 1e-6 * expected.abs().max(), (meta, layer)


def test_meta_predicted_class_and_frozen_parameters_take_the_step():
    model, x = make_net(), images()
    model.conv1.weight.requires_grad_(False)  # frozen by the user: must still take the step
    target = int(model.eval()(x).argmax())  # the engine explains in eval mode
    got = extagg.saliency(model, x, "meta(lr=0.3):normgrad", "conv2")
    assert got.targets.tolist() == [[target]]
    ref = extagg.saliency(hand_updated(model, x, target, 0.3, False), x, "normgrad", "conv2", targets=target)
    assert torch.allclose(got["meta(lr=0.3):normgrad"], ref["normgrad"], rtol=1e-10, atol=1e-13)
    skipped = extagg.saliency(hand_updated(model, x, target, 0.3, False, skip=("conv1.weight",)), x,
                              "normgrad", "conv2", targets=target)
    assert not torch.allclose(got["meta(lr=0.3):normgrad"], skipped["normgrad"], rtol=1e-8, atol=0)
    assert model.conv1.weight.requires_grad is False


def test_step_runs_in_eval_mode_even_when_the_pass_does_not():
    model, x = make_net(), images()
    model.train()
    before = snapshot(model)
    got = extagg.saliency(model, x, "meta(lr=0.3):normgrad", "conv2", targets=1, eval_mode=False)
    assert_unchanged(before, model)  # running stats of the train-mode pass are restored too
    stepped = hand_updated(model, x, 1, 0.3, False).train()  # step in eval mode, pass in train mode
    ref = extagg.saliency(stepped, x, "normgrad", "conv2", targets=1, eval_mode=False)
    assert torch.allclose(got["meta(lr=0.3):normgrad"], ref["normgrad"], rtol=1e-10, atol=1e-13)


def test_fully_convolutional_output_uses_mean_ce_over_positions():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).double()
    x = images()
    got = extagg.saliency(model, x, "meta(lr=0.5):scaling+sum", "1", targets=2)
    c = copy.deepcopy(model)
    out = c(x)
    loss = F.cross_entropy(out, torch.full((1, 8, 8), 2))
    grads = torch.autograd.grad(loss, list(c.parameters()))
    with torch.no_grad():
        for p, g in zip(c.parameters(), grads):
            p -= 0.5 * g
    ref = extagg.saliency(c, x, "scaling+sum", "1", targets=2)
    assert torch.allclose(got["meta(lr=0.5):scaling+sum"], ref["scaling+sum"], rtol=1e-10, atol=1e-13)
    # counter-case: the step on the cross-entropy summed over the 64 positions (not their mean) is refused
    summed = copy.deepcopy(model)
    grads = torch.autograd.grad(F.cross_entropy(summed(x), torch.full((1, 8, 8), 2), reduction="sum"),
                                list(summed.parameters()))
    with torch.no_grad():
        for p, g in zip(summed.parameters(), grads):
            p -= 0.5 * g
    wrong = extagg.saliency(summed, x, "scaling+sum", "1", targets=2)["scaling+sum"]
    assert not torch.allclose(got["meta(lr=0.5):scaling+sum"], wrong, rtol=1e-10, atol=1e-13)


def test_one_extra_forward_shared_by_all_methods_and_layers():
    model, x = make_net(), images()
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    extagg.saliency(model, x, ["meta:" + m for m in METHODS], LAYERS, targets=0, mismatched="skip")
    assert len(calls) == 2  # one step (forward + backward) and one pass
    calls.clear()
    extagg.saliency(model, x, ["meta:normgrad", "normgrad"], LAYERS, targets=0)
    assert len(calls) == 3  # the plain group is its own pass
    handle.remove()


def test_model_restored_bit_for_bit():
    model, x = make_net(), images()
    model.train()
    model.fc.weight.grad = torch.randn_like(model.fc.weight)  # a pre-existing .grad, kept as the same tensor
    model.conv2.bias.requires_grad_(False)
    model.conv1.register_forward_hook(lambda *a: None)
    before = snapshot(model)
    extagg.saliency(model, x, ["meta:normgrad", "meta(negative=true,lr=0.5):gradcam"], LAYERS, targets=1)
    assert_unchanged(before, model)


@pytest.mark.parametrize("when", [1, 2])  # 1: inside the step's forward, 2: inside the pass on updated weights
def test_model_restored_when_something_raises(when):
    model, x = make_net(), images()
    model.fc.bias.grad = torch.randn_like(model.fc.bias)
    model.bn.weight.requires_grad_(False)
    calls = []

    def boom(*_):
        calls.append(1)
        if len(calls) == when:
            raise RuntimeError("injected")

    model.conv2.register_forward_hook(boom)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="injected"):
        extagg.saliency(model, x, "meta(lr=0.5):normgrad", ["conv1", "conv2"], targets=1)
    assert len(calls) == when
    assert_unchanged(before, model)


def test_meta_step_standalone_restores_and_never_writes_grad():
    """The step yields new weights (every parameter stepped) and never writes the model's own tensors."""
    model, x = make_net(), images()
    before = snapshot(model)
    versions = {n: p._version for n, p in model.named_parameters()}
    with meta_step(model, x, torch.tensor([[1]]), lr=0.3) as stepped:
        changed = [n for n, p in stepped.items() if not torch.equal(p, before["params"][n][1])]
        assert set(changed) == set(before["params"])
        assert all(p.grad is None for p in model.parameters())
        assert all(torch.equal(p, before["params"][n][1]) for n, p in model.named_parameters())  # untouched inside too
    assert_unchanged(before, model)
    assert {n: p._version for n, p in model.named_parameters()} == versions  # no in-place write at all


def test_a_pending_graph_survives_meta_saliency():
    """A user who ran a forward pass and has not yet called backward can call it after meta-saliency, and gets
    the gradients they would have got without it."""
    model, x = make_net(), images()
    for p in model.parameters():
        p.requires_grad_(True)
    ref = [g.clone() for g in torch.autograd.grad(model(x).logsumexp(1).sum(), list(model.parameters()))]
    loss = model(x).logsumexp(1).sum()  # pending: forward done, backward not yet called
    extagg.saliency(model, x, ["meta(lr=0.3):normgrad", "meta:gradcam"], ["conv1", "conv2"], targets=1)
    loss.backward()
    for p, g in zip(model.parameters(), ref):
        assert torch.equal(p.grad, g)


def test_a_weight_writing_modifier_is_restored_and_breaks_nothing_it_should_not(tiny_net, images):
    """A modifier that writes weights (stateless=False) is still restored bit for bit; the pending-graph
    guarantee above comes from the meta step being functional (this test fails if it writes in place)."""
    import contextlib

    from extagg import Registry, hookimpl, make_plugin_manager
    from extagg.specs import Modifier

    @contextlib.contextmanager
    def scale(model, images, targets):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(2)
        yield None

    mod = type(extagg)("scale_plugin")
    mod.register_modifiers = hookimpl(lambda register: register(Modifier(name="scale", fn=scale)))
    reg = Registry.from_plugin_manager(make_plugin_manager(autoload=False, extra=[mod]))
    before = [p.detach().clone() for p in tiny_net.parameters()]
    for p in tiny_net.parameters():
        p.requires_grad_(True)
    loss = tiny_net(images).sum()
    extagg.saliency(tiny_net, images, "scale:normgrad", "2", targets=0, registry=reg)
    assert all(torch.equal(p, b) for p, b in zip(tiny_net.parameters(), before))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_batches_need_one_step_per_pair():
    model = make_net()
    with pytest.raises(InputError, match=r"2 image\(s\) x 1 target\(s\).*saliency_per_example"):
        extagg.saliency(model, images(2), "meta:normgrad", "conv2", targets=[0, 1])
    with pytest.raises(InputError, match=r"1 image\(s\) x 2 target\(s\)"):
        extagg.saliency(model, images(1), "meta:normgrad", "conv2", targets=torch.tensor([[0, 1]]))


def test_meta_saliency_batch_matches_per_pair_hand_updates():
    model, x = make_net(), images(2)
    targets = torch.tensor([[0, 3], [2, 1]])
    got = meta_saliency(model, x, ["normgrad", "gradcam"], ["conv1", "conv2"], targets, lr=0.3, negative=True)
    assert got.targets.tolist() == targets.tolist()
    for n in range(2):
        for t in range(2):
            c = hand_updated(model, x[n:n + 1], int(targets[n, t]), 0.3, True)
            ref = extagg.saliency(c, x[n:n + 1], ["normgrad", "gradcam"], ["conv1", "conv2"], int(targets[n, t]))
            for m in ["normgrad", "gradcam"]:
                for layer in ["conv1", "conv2"]:
                    assert torch.allclose(got[m, layer][n, t], ref[m, layer][0, 0], rtol=1e-10, atol=1e-13)
    # counter-case: a hand update in the other direction (negative=False) is refused
    c = hand_updated(model, x[:1], int(targets[0, 0]), 0.3, False)
    wrong = extagg.saliency(c, x[:1], "normgrad", "conv2", int(targets[0, 0]))["normgrad", "conv2"][0, 0]
    assert not torch.allclose(got["normgrad", "conv2"][0, 0], wrong, rtol=1e-10, atol=1e-13)
    assert got.methods == ["meta(lr=0.3,negative=true):conv1x1+norm", "meta(lr=0.3,negative=true):pooled-scaling+sum+relu"]


def test_saliency_per_example_equals_batched_for_plain_methods():
    model, x = make_net(), images(3)
    batched = extagg.saliency(model, x, "normgrad", "conv2", targets=[0, 1, 2])
    looped = saliency_per_example(model, x, "normgrad", "conv2", targets=[0, 1, 2])
    assert torch.allclose(looped["normgrad"], batched["normgrad"], rtol=1e-12, atol=1e-14)
    assert torch.equal(looped.targets, batched.targets) and torch.allclose(looped.scores, batched.scores)
    # counter-case: the loop over other targets is refused
    other = saliency_per_example(model, x, "normgrad", "conv2", targets=[2, 0, 1])
    assert not torch.allclose(other["normgrad"], batched["normgrad"], rtol=1e-12, atol=1e-14)


def test_predicted_class_flip_is_an_error():
    weight = torch.tensor([[1.0, 0.0], [0.0, 0.99]], dtype=torch.float64)
    model = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(weight)
    seq = nn.Sequential(nn.Identity(), nn.Flatten(), model)
    x = torch.ones(1, 2, 1, 1, dtype=torch.float64)
    assert int(seq(x).argmax()) == 0
    with pytest.raises(InputError, match="changed the prediction to 1; pass targets=0"):
        extagg.saliency(seq, x, "meta(lr=1.0,negative=true):bias+sum", "0")
    assert torch.equal(model.weight, weight)


def test_method_strings_and_the_design_space():
    assert str(extagg.parse_method("META(lr=0.002, negative=false): normgrad")) == "meta:conv1x1+norm"
    assert str(extagg.parse_method("meta(lr=0.0025):scaling+sum")) == "meta(lr=0.0025):scaling+sum"
    assert str(extagg.parse_method("meta(negative=true,lr=1):scaling+sum")) == "meta(lr=1.0,negative=true):scaling+sum"
    listed = extagg.methods("meta:*")
    assert "meta:conv1x1+norm" in listed and "meta:scaling+sum" in listed
    assert all(m.startswith("meta:") for m in listed)
    assert not any(m.startswith("meta") for m in extagg.methods("*"))


@pytest.mark.parametrize("text, fragment", [
    ("meta(lr=-0.1):normgrad", "must be a finite number > 0"),
    ("meta(lr=0):normgrad", "got 0.0"),
    ("meta(negative=1):normgrad", "must be bool, got 1"),
    ("meta(lrate=0.1):normgrad", "lrate"),
])
def test_bad_meta_parameters_name_the_value(text, fragment):
    with pytest.raises(extagg.ExtaggError, match=fragment.replace("(", r"\(")):
        extagg.parse_method(text)


def test_meta_step_rejects_bad_arguments():
    model, x = make_net(), images()
    with pytest.raises(InputError, match="got -1"):
        with meta_step(model, x, None, lr=-1):
            pass
    with pytest.raises(InputError, match="target 9 is out of range"):
        extagg.saliency(model, x, "meta:normgrad", "conv2", targets=9)
    with pytest.raises(InputError, match="already has a meta modifier"):
        meta_saliency(model, x, "meta:normgrad", "conv2", 0)
    with pytest.raises(InvalidMethodError):
        extagg.parse_method("meta(lr=true):normgrad")
