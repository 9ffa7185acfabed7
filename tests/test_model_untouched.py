"""The user's model is exactly as before every call: values, flags, modes, .grad and hooks; also after errors."""
import pytest
import torch
from torch import nn

import extagg


def user_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    net.train()                      # user left it in training mode
    net[5].eval()                    # ... with one submodule in eval mode
    net[0].weight.requires_grad_(False)  # a frozen parameter
    net[3].weight.grad = torch.ones_like(net[3].weight)  # a pre-existing gradient
    net[3].register_forward_hook(lambda m, i, o: None)
    net.register_forward_pre_hook(lambda m, i: None)
    return net


def snapshot(net):
    return {
        "values": [t.detach().clone() for t in net.state_dict().values()],
        "training": [m.training for m in net.modules()],
        "flags": [p.requires_grad for p in net.parameters()],
        "grads": [(id(p.grad), None if p.grad is None else p.grad.clone()) for p in net.parameters()],
        "hooks": [(list(m._forward_hooks), list(m._forward_pre_hooks), list(m._backward_hooks),
                   list(getattr(m, "_backward_pre_hooks", {}))) for m in net.modules()],
    }


def assert_same(before, after):
    assert all(torch.equal(a, b) for a, b in zip(before["values"], after["values"]))
    assert before["training"] == after["training"]
    assert before["flags"] == after["flags"]
    for (ia, ga), (ib, gb) in zip(before["grads"], after["grads"]):
        assert ia == ib and ((ga is None and gb is None) or torch.equal(ga, gb))
    assert before["hooks"] == after["hooks"]


@pytest.mark.parametrize("eval_mode", [True, False])
def test_untouched_after_a_normal_call(eval_mode):
    net, x = user_model(), torch.randn(2, 3, 8, 8)
    before = snapshot(net)
    extagg.saliency(net, x, extagg.methods("*+norm"), layers=["input", "1", "2", "3", "4"], targets=[0, 1],
                    mismatched="skip", eval_mode=eval_mode)
    assert_same(before, snapshot(net))


def test_guard_is_needed_training_mode_forward_changes_buffers():
    """Shows the check above can fail: a plain forward in training mode moves BatchNorm's running stats."""
    net, x = user_model(), torch.randn(2, 3, 8, 8)
    before = snapshot(net)
    net(x)
    with pytest.raises(AssertionError):
        assert_same(before, snapshot(net))


@pytest.mark.parametrize("failure", ["objective", "target", "forward", "layer-call"])
def test_untouched_after_an_exception(failure):
    net, x = user_model(), torch.randn(2, 3, 8, 8)
    before = snapshot(net)
    kwargs = dict(methods=["normgrad", "conv+norm"], layers=["3"], targets=0)
    if failure == "objective":
        def boom(out):
            raise RuntimeError("objective failed")
        kwargs.update(objective=boom, targets=None)
    elif failure == "target":
        kwargs.update(targets=7)  # only detectable after the forward pass
    elif failure == "forward":
        net[4].register_forward_hook(lambda m, i, o: (_ for _ in ()).throw(RuntimeError("forward failed")))
        before = snapshot(net)
    else:
        kwargs.update(layers=["3@1"])  # conv 3 is called once: detected after the forward pass
    with pytest.raises(Exception):
        extagg.saliency(net, x, **kwargs)
    assert_same(before, snapshot(net))
