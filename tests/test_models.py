"""Model loading: the embedded pretrained default, torchvision by name, local weights, errors."""
import pytest
import torch

from extagg import models
from extagg.errors import InputError, UnknownNameError
from extagg.layers import execution_order, last_spatial_layer


def test_torchvision_model_loads_local_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18()
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    model, pre = models.load_model("resnet18", path)
    assert not model.training
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    x = pre(torch.rand(3, 50, 70))
    assert x.shape == (3, 224, 224)


def test_unknown_model_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'resnet50'"):
        models.load_model("resnet5O")


def test_default_model_refuses_weights():
    with pytest.raises(InputError, match="ships its own"):
        models.load_model("efficientnet-lite0", "DEFAULT")


def test_pretrained_default_model_recognises_the_sample_photo():
    pytest.importorskip("efficientnet_lite_pytorch")
    model, pre = models.load_model()
    x = pre(models.load_image(models.sample_image_path()))[None]
    with torch.no_grad():
        p = model(x).softmax(1)[0]
    assert models.imagenet_categories()[int(p.argmax())] == "Egyptian cat" and p.max() > 0.5
    assert last_spatial_layer(model, x) == "_swish@1"


def test_execution_order_names_repeated_calls():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(1, 1, 1)
            self.act = torch.nn.ReLU()

        def forward(self, x):
            return self.act(self.c(self.act(x))).flatten(1)

    order = execution_order(Net(), torch.randn(1, 1, 3, 3))
    assert [n for n, _ in order] == ["act@0", "c", "act@1"]
    assert last_spatial_layer(Net(), torch.randn(1, 1, 3, 3)) == "act@1"


def test_load_image_errors_name_the_path(tmp_path):
    with pytest.raises(InputError, match="nope.png"):
        models.load_image(tmp_path / "nope.png")
