"""Detection and segmentation objectives (extagg.objectives) on torchvision's Faster R-CNN (MobileNetV3 320 FPN)
and DeepLabV3 (MobileNetV3), random weights: the same gradient as a hand-written objective and as
pytorch-grad-cam's targets, the same Grad-CAM map as pytorch-grad-cam's GradCAM, and clear refusals."""
import numpy as np
import pytest
import torch
import torchvision

import extagg
from extagg.errors import InputError
from extagg.objectives import box_score, mask_logit
from tests.model_state import assert_unchanged, snapshot

DET_LAYER = "backbone.body.12"  # a 4-D map inside the detector's backbone (20x20 on its 320x320 input)
SEG_LAYER = "backbone.12"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0).eval()


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, aux_loss=False).eval()


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def detection(detector, image):
    with torch.no_grad():
        out = detector(image)[0]
    # a predicted box whose class is also that of the box of highest IoU with it (itself), so that
    # pytorch-grad-cam's rule (the argmax box over all classes) and box_score's (over the label's boxes) agree
    return out["boxes"][0].clone(), int(out["labels"][0])


def _input_gradient(model, image, score_fn):
    x = image.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(score_fn(model(x)).sum(), x)
    return g


def _gradcam_by_hand(model, image, layer, score_fn):
    """Grad-CAM written with a forward hook and autograd: relu(sum_c mean(g_c) a_c)."""
    module = dict(model.named_modules())[layer]
    held = {}
    handle = module.register_forward_hook(lambda m, i, o: held.setdefault("a", o))
    try:
        score = score_fn(model(image)).sum()
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(score, held["a"])
    return torch.relu((g.mean((2, 3), keepdim=True) * held["a"]).sum(1, keepdim=True)).detach()


def _peer_post(m: torch.Tensor, size) -> torch.Tensor:
    """pytorch-grad-cam's post-processing of one layer's map: relu, min-max, cv2 resize to the input, min-max."""
    import cv2

    m = torch.relu(m)[0, 0].double().numpy()
    m = m - m.min()
    m = m / (1e-7 + m.max())
    m = cv2.resize(np.float32(m), size)
    m = np.maximum(m, 0)
    m = m - m.min()
    return torch.from_numpy(m / (1e-7 + m.max())).double()


def test_box_score_is_the_matched_predicted_box_score(detector, image, detection):
    """box_score explains the score of the label's predicted box best matched by IoU; a wrong objective (another
    box's score) gives another gradient, so the comparison can fail."""
    box, label = detection

    def by_hand(output):
        found = output[0]
        of_class = (found["labels"] == label).nonzero().flatten()
        ious = torchvision.ops.box_iou(box[None], found["boxes"][of_class])[0]
        return found["scores"][of_class[ious.argmax()]][None]

    ours = _input_gradient(detector, image, box_score(box.tolist(), label))
    torch.testing.assert_close(ours, _input_gradient(detector, image, by_hand))
    other = _input_gradient(detector, image, lambda out: out[0]["scores"][5][None])
    assert (ours - other).abs().max() > 1e-3 * ours.abs().max()


def test_box_score_with_iou_term_is_pytorch_grad_cams_target(detector, image, detection):
    """iou_term=True is FasterRCNNBoxScoreTarget (score + IoU of the matched box): the same input gradient and
    the same GradCAM map as pytorch-grad-cam's GradCAM with that target; the model is left as it was."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    box, label = detection
    target = FasterRCNNBoxScoreTarget([label], [box.numpy()])
    ours_fn = box_score(box.tolist(), label, iou_term=True)
    torch.testing.assert_close(_input_gradient(detector, image, ours_fn),
                               _input_gradient(detector, image, lambda out: target(out[0])))
    before = snapshot(detector)
    m = extagg.saliency(detector, image, "gradcam", DET_LAYER, objective=ours_fn)["gradcam", DET_LAYER]
    assert_unchanged(before, detector)
    assert m.shape == (1, 1, 20, 20) and m.any()
    torch.testing.assert_close(m, _gradcam_by_hand(detector, image, DET_LAYER, ours_fn), rtol=1e-4, atol=1e-6)
    module = dict(detector.named_modules())[DET_LAYER]
    peer = pgc.GradCAM(model=detector, target_layers=[module])(input_tensor=image, targets=[target])
    torch.testing.assert_close(_peer_post(m, (96, 96)), torch.from_numpy(peer[0]).double(), atol=1e-4, rtol=0)


def test_mask_logit_is_pytorch_grad_cams_segmentation_target(segmenter, image):
    """mask_logit(cls, mask) is the class's logit summed over the mask (a hand-written objective and
    SemanticSegmentationTarget give the same gradient; another class does not), and its GradCAM map is
    pytorch-grad-cam's."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    mask = torch.zeros(96, 96, dtype=torch.bool)
    mask[20:60, 30:80] = True
    objective = mask_logit(3, mask)
    ours = _input_gradient(segmenter, image, objective)
    torch.testing.assert_close(ours, _input_gradient(segmenter, image,
                                                     lambda out: (out["out"][:, 3] * mask).sum((1, 2))))
    target = SemanticSegmentationTarget(3, mask.float().numpy())
    torch.testing.assert_close(ours, _input_gradient(segmenter, image, lambda out: target(out["out"][0])))
    other = _input_gradient(segmenter, image, mask_logit(4, mask))
    assert (ours - other).abs().max() > 1e-3 * ours.abs().max()

    class OutOnly(torch.nn.Module):  # pytorch-grad-cam applies a target to each item of the output
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)["out"]

    m = extagg.saliency(segmenter, image, "gradcam", SEG_LAYER, objective=objective)["gradcam", SEG_LAYER]
    assert m.any()
    module = dict(segmenter.named_modules())[SEG_LAYER]
    peer = pgc.GradCAM(model=OutOnly(segmenter), target_layers=[module])(input_tensor=image, targets=[target])
    torch.testing.assert_close(_peer_post(m, (96, 96)), torch.from_numpy(peer[0]).double(), atol=1e-4, rtol=0)


def test_refusals_name_the_bad_value(detector, segmenter, image, detection):
    box, label = detection
    with pytest.raises(InputError, match="x1 < x2"):
        box_score([10, 10, 5, 20], label)
    with pytest.raises(InputError, match="IoU >= 0.5"):
        extagg.saliency(detector, image, "gradcam", DET_LAYER, objective=box_score([0, 0, 1, 1], label))
    with pytest.raises(InputError, match="detection outputs"):
        extagg.saliency(segmenter, image, "gradcam", SEG_LAYER, objective=box_score(box.tolist(), label))
    with pytest.raises(InputError, match=r"does not fit"):
        extagg.saliency(segmenter, image, "gradcam", SEG_LAYER, objective=mask_logit(1, torch.ones(8, 8)))
    with pytest.raises(InputError, match="out of range"):
        extagg.saliency(segmenter, image, "gradcam", SEG_LAYER, objective=mask_logit(21, torch.ones(96, 96)))


def test_command_line_objectives(segmenter, image, detection):
    """``explain``'s --box/--box-label and --mask-class build these objectives (the mask: the pixels predicted as
    the class), and refuse a mix, a box without its label, a class the model does not predict."""
    from extagg.cli import build_parser
    from extagg.objectives import BoxScore, from_arguments

    def parse(*flags):
        return build_parser().parse_args(["explain", *flags])

    assert from_arguments(parse(), segmenter, image) is None
    box, label = detection
    objective = from_arguments(parse("--box", ",".join(map(str, box.tolist())), "--box-label", str(label)), None, image)
    assert isinstance(objective, BoxScore) and objective.label == label
    with torch.no_grad():
        predicted = segmenter(image)["out"].argmax(1)
    cls = int(predicted.flatten()[0])
    objective = from_arguments(parse("--mask-class", str(cls)), segmenter, image)
    assert torch.equal(objective.mask, predicted == cls)
    absent = next(k for k in range(21) if not (predicted == k).any())
    for flags, message in [(("--box", "1,2,3,4"), "go together"),
                           (("--mask-class", "1", "--box-label", "2"), "not both"),
                           (("--box", "1,2,x,4", "--box-label", "1"), "four numbers"),
                           (("--mask-class", str(absent)), "no pixel is predicted")]:
        with pytest.raises(InputError, match=message):
            from_arguments(parse(*flags), segmenter, image)
