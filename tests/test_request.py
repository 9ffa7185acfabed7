"""One call, one resolution: layers, device/dtype and targets are resolved once per saliency call, whatever the
number of passes."""
import pytest

import extagg
from extagg import capture, engine, guard, layer_request, targets


@pytest.fixture
def counted(monkeypatch):
    calls = {"resolve_layers": 0, "model_device_dtype": 0, "as_target_matrix": 0}

    def counting(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapper

    for module, name in ((layer_request, "resolve_layers"), (capture, "resolve_layers"), (engine, "model_device_dtype"),
                         (guard, "model_device_dtype"), (engine, "as_target_matrix"), (targets, "as_target_matrix")):
        monkeypatch.setattr(module, name, counting(module, name))
    return calls


def test_each_is_resolved_once_per_call(tiny_net, images, counted):
    """Two passes (a plain group and a meta group), three layers, several methods."""
    extagg.saliency(tiny_net, images[:1], ["normgrad", "scaling+sum", "meta:conv3x3+relu+norm"], ["input", "2", "3"],
                    targets=[1])
    assert counted == {"resolve_layers": 1, "model_device_dtype": 1, "as_target_matrix": 1}


def test_the_counter_sees_repeated_work(tiny_net, images, counted):
    """The count above can fail: two calls resolve twice."""
    for _ in range(2):
        extagg.saliency(tiny_net, images, "normgrad", "2", targets=1)
    assert counted == {"resolve_layers": 2, "model_device_dtype": 2, "as_target_matrix": 2}
