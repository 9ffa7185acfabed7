"""Small float64 CNNs with a BatchNorm whose statistics are not the identity, shared by the CAM-family tests."""
import torch
from torch import nn


def perturb_batchnorm(*bns: nn.BatchNorm2d) -> None:
    """Running statistics and affine parameters drawn away from (0, 1), so BatchNorm's bias is not trivial."""
    with torch.no_grad():
        for bn in bns:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)


def small_net(seed: int = 0, stride: int = 2) -> nn.Sequential:
    """conv -> bn -> relu -> conv(stride) -> relu -> GAP -> linear (float64, eval). Layer "1" (BN) has signed
    activations and spatially varying gradients; "3" (conv) feeds a ReLU, then GAP; "4" (ReLU) feeds GAP.
    ``stride=1`` keeps every layer at the input's resolution."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 5, 3, stride=stride, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)).double().eval()
    perturb_batchnorm(net[1])
    return net
