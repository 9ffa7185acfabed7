"""The user's model is exactly as before every call: values, flags, modes, .grad and hooks; also after errors."""
import pytest
import torch
from torch import nn

import extagg
from extagg.errors import ForwardError, InputError
from model_state import assert_unchanged, snapshot


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


@pytest.mark.parametrize("eval_mode", [True, False])
def test_untouched_after_a_normal_call(eval_mode):
    net, x = user_model(), torch.randn(2, 3, 8, 8)
    before = snapshot(net)
    extagg.saliency(net, x, extagg.methods("*+norm"), layers=["input", "1", "2", "3", "4"], targets=[0, 1],
                    mismatched="skip", eval_mode=eval_mode)
    assert_unchanged(before, net)


def test_guard_is_needed_training_mode_forward_changes_buffers():
    """Shows the check above can fail: a plain forward in training mode moves BatchNorm's running stats."""
    net, x = user_model(), torch.randn(2, 3, 8, 8)
    before = snapshot(net)
    net(x)
    with pytest.raises(AssertionError):
        assert_unchanged(before, net)


@pytest.mark.parametrize("failure, error, match", [
    ("objective", RuntimeError, "objective failed"),  # the user's own exception, passed through
    ("target", InputError, "target 7 is out of range"),
    ("forward", ForwardError, "forward pass failed.*forward failed"),
    ("layer-call", InputError, "layer '3@1'.*called only 1 time"),
])
def test_untouched_after_an_exception(failure, error, match):
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
    with pytest.raises(error, match=match):
        extagg.saliency(net, x, **kwargs)
    assert_unchanged(before, net)


@pytest.mark.parametrize("change", ["value", "replaced", "buffer", "flag", "grad", "grad value", "mode", "hook",
                                    "inplace"])
def test_the_check_fails_on_every_kind_of_change(change):
    """model_state.assert_unchanged, which every "model untouched" test relies on, sees each kind of change."""
    net = user_model()
    net[0].weight.grad = torch.zeros_like(net[0].weight)
    before = snapshot(net)
    assert_unchanged(before, net)
    with torch.no_grad():
        if change == "value":
            net[0].weight[0, 0, 0, 0] += 1e-6
        elif change == "replaced":
            net[0].weight = nn.Parameter(net[0].weight.detach().clone())
        elif change == "buffer":
            net[1].running_mean[0] += 1
        elif change == "flag":
            net[0].weight.requires_grad_(not net[0].weight.requires_grad)
        elif change == "grad":
            net[0].weight.grad = net[0].weight.grad.clone()
        elif change == "grad value":
            net[0].weight.grad[0] += 1
        elif change == "mode":
            net[1].train(not net[1].training)
        elif change == "hook":
            net[2].register_forward_hook(lambda *a: None)
        else:
            net[2].inplace = not net[2].inplace
    with pytest.raises(AssertionError):
        assert_unchanged(before, net)
