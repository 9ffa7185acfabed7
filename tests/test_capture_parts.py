"""The in-place check of :class:`extagg.capture.Probes` names which tensor of which layer was modified."""
import pytest
import torch
from torch import nn

from extagg.capture import Probes
from extagg.errors import InputError


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("a#in", nn.Identity())
        self.b = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        x = x * 1.0
        y = getattr(self, "a#in")(x)  # Identity: its output is x itself
        x.relu_()  # so this modifies the captured output of "a#in"
        return self.b(y) + x


def test_a_layer_whose_name_ends_in_hash_in_is_reported_as_its_output():
    """Guards the typed (layer, part) keys of the version check: with a string suffix ("#in") marking inputs,
    a layer named ``a#in`` whose output is modified in place was reported as "the input of layer 'a'"."""
    net = _Net()
    with Probes(net, {"a#in": {"output"}}) as probes:
        net(torch.randn(1, 3, 4, 4))
    with pytest.raises(InputError, match=r"the output of layer 'a#in'"):
        probes.check()


def test_an_input_modified_in_place_is_reported_as_the_input():
    """The input part is still watched and named as such."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            x = x * 1.0
            y = self.a(x)
            x.mul_(2.0)
            return y + x

    net = Net()
    with Probes(net, {"a": {"output", "input"}}) as probes:
        net(torch.randn(1, 3, 4, 4))
    with pytest.raises(InputError, match=r"the input of layer 'a'"):
        probes.check()
