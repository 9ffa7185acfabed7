"""``extagg.evaluation.score``: metrics on maps made elsewhere give the numbers ``evaluate`` gives for the same maps
(one driver), further passes go through ``explain``, and bad input is refused by name."""
import pytest
import torch

import extagg
from extagg.errors import InputError
from extagg.evaluation import Sample, evaluate, score
from tiny_nets import torch_init_convnet


@pytest.fixture(scope="module")
def setup():
    net = torch_init_convnet()
    x = torch.rand(3, 3, 24, 24)
    return net, x


def explain(model, x, targets, layer="2"):
    return extagg.saliency(model, x, "gradcam", layer, targets=targets, resize=x.shape[-2:])["gradcam", layer][:, 0]


def explain_first(model, x, targets):
    return explain(model, x, targets, "0")


def samples(x):
    return [Sample(image=x[i], image_id=str(i)) for i in range(x.shape[0])]


@pytest.mark.parametrize("metric", ["deletion(steps=4)", "insertion(steps=4,baseline=zero)", "sensitivity",
                                    "randomisation(checkpoints=2,hog_cell=4)"])
def test_given_maps_score_as_evaluate_scores_the_same_method(setup, metric):
    net, x = setup
    maps = explain(net, x, net(x).argmax(1))
    got = score(metric, net, x, maps, explain=explain)
    want = evaluate(net, samples(x), "gradcam", "2", metric)
    for call in want.calls:
        for m in call.metric.measures:
            assert got.per_image(measure=m.name) == want.per_image(measure=m.name)
    other = score(metric, net, x, explain_first(net, x, net(x).argmax(1)), explain=explain_first)
    assert other.per_image() != want.per_image()  # counter-case: other maps, other numbers


def test_channel_maps_are_summed_and_resized(setup):
    net, x = setup
    maps = explain(net, x, net(x).argmax(1))
    a = score("deletion(steps=4)", net, x, maps).per_image()
    b = score("deletion(steps=4)", net, x, torch.stack([maps / 3] * 3, 1).numpy()).per_image()
    assert a == pytest.approx(b, abs=1e-6)
    small = torch.nn.functional.interpolate(maps[:, None], size=(12, 12), mode="bilinear")[:, 0]
    assert len(score("deletion(steps=4)", net, x, small).per_image()) == 3


def test_targets_are_the_given_ones(setup):
    net, x = setup
    t = torch.tensor([4, 4, 4])
    maps = explain(net, x, t)
    got = score("deletion(steps=4)", net, x, maps, t).per_image()
    want = evaluate(net, samples(x), "gradcam", "2", "deletion(steps=4)", targets=4).per_image()
    assert got == want
    predicted = score("deletion(steps=4)", net, x, maps).per_image()
    assert predicted != got or bool((net(x).argmax(1) == 4).all())


def test_refusals_name_what_is_wrong(setup):
    net, x = setup
    maps = explain(net, x, net(x).argmax(1))
    with pytest.raises(InputError, match="explain="):
        score("sensitivity", net, x, maps)
    with pytest.raises(InputError, match=r"N = 3"):
        score("deletion", net, x, maps[:2])
    with pytest.raises(InputError, match="one class per image"):
        score("deletion", net, x, maps, [1, 2])
    with pytest.raises(InputError, match="companion"):
        score("identity", net, x, maps)
    with pytest.raises(extagg.errors.UnknownNameError, match="deletoin"):
        score("deletoin", net, x, maps)
