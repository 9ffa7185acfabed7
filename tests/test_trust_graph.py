"""The user's autograd graph and model stay intact: a pending backward still works after saliency (also with
eval_mode=False on a train-mode BatchNorm model), lazy modules, forward keyword arguments, inference mode and bad
call options get clear errors."""
import re

import pytest
import torch
from torch import nn

import extagg
from extagg.errors import ForwardError, InputError

from model_state import assert_unchanged, snapshot
from test_model_untouched import user_model


def x_of(n=2):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("eval_mode", [True, False])
def test_a_pending_graph_survives_a_saliency_call(eval_mode):
    net = user_model()
    net[3].weight.grad = None
    x = x_of()
    loss = net(x).square().sum()          # the user's forward; backward not yet called
    before = snapshot(net)
    extagg.saliency(net, x, "linear-approx", ["1", "input"], eval_mode=eval_mode)
    assert_unchanged(before, net)     # BN running stats included
    loss.backward()                        # no "modified by an inplace operation"
    assert net[3].weight.grad is not None


def test_train_mode_saliency_uses_batch_statistics_without_touching_the_buffers():
    net = user_model()
    x = x_of()
    mean, var = net[1].running_mean, net[1].running_var
    versions = (mean._version, var._version, net[1].num_batches_tracked._version)
    m_train = extagg.saliency(net, x, "linear-approx", "3", eval_mode=False, targets=0)["linear-approx", "3"]
    assert net[1].running_mean is mean and net[1].running_var is var
    assert (mean._version, var._version, net[1].num_batches_tracked._version) == versions
    m_eval = extagg.saliency(net, x, "linear-approx", "3", targets=0)["linear-approx", "3"]
    assert not torch.allclose(m_train, m_eval)   # train mode really normalised with the batch's statistics


def test_lazy_modules_get_a_clear_error():
    net = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(InputError, match=r"uninitialised \(lazy\).*'0.weight'.*run one forward pass"):
        extagg.saliency(net, x_of(), "linear-approx", "0")
    net(x_of())                            # initialised: now it works
    extagg.saliency(net, x_of(), "linear-approx", "0")


class NeedsScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x, *, scale):
        return self.head(self.conv(x * scale).relu().mean((2, 3)))


def test_forward_keyword_arguments():
    net = NeedsScale()
    with pytest.raises(ForwardError, match="forward_kwargs"):
        extagg.saliency(net, x_of(), "linear-approx", "conv")
    one = extagg.saliency(net, x_of(), "linear-approx", "conv", forward_kwargs={"scale": 1.0}, targets=0)
    two = extagg.saliency(net, x_of(), "linear-approx", "conv", forward_kwargs={"scale": 2.0}, targets=0)
    assert not torch.equal(one["linear-approx", "conv"], two["linear-approx", "conv"])


class WithScale(nn.Module):
    """``NeedsScale`` with its keyword argument fixed: the model a user would otherwise have to write."""

    def __init__(self, inner, scale):
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x):
        return self.inner(x, scale=self.scale)


@pytest.mark.parametrize("method", ["meta:gradcam", "meta(lr=0.01):linear-approx"])
def test_forward_keyword_arguments_reach_patterns_and_the_meta_step(method):
    """Layer patterns and meta-saliency's SGD step run the model too: with forward_kwargs the call equals the
    same call on a wrapper that fixes the argument, and differs from it where the argument differs."""
    torch.manual_seed(0)
    net = NeedsScale()
    x = x_of(1)
    got = extagg.saliency(net, x, method, "con*", forward_kwargs={"scale": 3.0}, targets=1)
    same = extagg.saliency(WithScale(net, 3.0), x, method, "inner.conv", targets=1)
    other = extagg.saliency(WithScale(net, 1.0), x, method, "inner.conv", targets=1)
    assert torch.allclose(got[method, "conv"], same[method, "inner.conv"], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(got[method, "conv"], other[method, "inner.conv"], rtol=1e-3, atol=1e-5)


def test_inference_mode_is_refused_clearly():
    net = user_model()
    with torch.inference_mode():
        with pytest.raises(InputError, match="needs autograd.*inference_mode"):
            extagg.saliency(net, x_of(), "linear-approx", "3")


@pytest.mark.parametrize("shape", [(3,), (1,), (4, 1), (2, 0), (2, 1, 1)])
def test_objective_shape_is_checked(shape):
    net = user_model().eval()
    got = re.escape(str(tuple(shape)))
    with pytest.raises(InputError, match=rf"one score per image.*for 2 images; got shape {got}"):
        extagg.saliency(net, x_of(2), "linear-approx", "3",
                        objective=lambda out: out.sum() * torch.ones(shape, dtype=out.dtype))


@pytest.mark.parametrize("kwargs, match", [
    (dict(resize=(0, 0)), "resize must be"),
    (dict(resize=(8,)), "resize must be"),
    (dict(targets=2 ** 70), "64-bit"),
    (dict(targets=[0, 2 ** 70]), "64-bit"),
    (dict(targets=7, objective=lambda out: out[:, 0]), "targets or objective, not both"),
    (dict(forward_kwargs=["scale"]), "forward_kwargs must be a dict"),
])
def test_bad_call_options(kwargs, match):
    net = user_model().eval()
    before = snapshot(net)
    with pytest.raises(InputError, match=match):
        extagg.saliency(net, x_of(2), "linear-approx", "3", **kwargs)
    assert_unchanged(before, net)


def test_a_wrong_channel_count_names_the_input():
    net = user_model().eval()
    with pytest.raises(ForwardError, match=r"forward pass failed on images of shape \(2, 4, 8, 8\)"):
        extagg.saliency(net, torch.randn(2, 4, 8, 8), "linear-approx", "3")
