"""Direct implementations of the published propagation rules, for tests (nothing here uses extagg's rule code).

ReLU rules (guided backprop, deconvnet, RectGrad) are written as a layer-by-layer backward pass in which every
module except ReLU/ReLU6 takes its ordinary vector-Jacobian product and each ReLU applies the published formula.
LRP is written in its relevance form, R_i = sum_j c_ij / den_j * R_j with explicit contributions c_ij = x_i w_ij
(im2col for convolutions), starting from R = one-hot * logit.
"""
import torch
import torch.nn.functional as F
from torch import nn


def model(bias=True, relu6=True, seed=0, scale=2.0):
    """conv -> [BN] -> ReLU6/ReLU -> maxpool -> conv -> ReLU -> avgpool -> flatten -> linear, float64, eval.

    Input (N, 3, 8, 8), 3 classes. With ``bias=False`` every layer is bias-free (BatchNorm, an affine map with a
    shift, is left out)."""
    g = torch.Generator().manual_seed(seed)
    layers = [nn.Conv2d(3, 4, 3, padding=1, bias=bias)]
    if bias:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU6() if relu6 else nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, padding=1, bias=bias),
               nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(20, 3, bias=bias)]
    net = nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale / max(1, p[0].numel()) ** 0.5)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return net


def run(net, x):
    """[(module, input, output)] for each layer of a Sequential."""
    acts, h = [], x
    with torch.no_grad():
        for m in net:
            y = m(h)
            acts.append((m, h, y))
            h = y
    return acts


def _vjp(m, x, g):
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        return torch.autograd.grad(m(x), x, g)[0]


def _upper(m):
    return 6.0 if isinstance(m, nn.ReLU6) else float("inf")


def guided(m, x, y, g):
    return ((x > 0) & (x < _upper(m)) & (g > 0)) * g


def deconvnet(m, x, y, g):
    return g.clamp(min=0)


def rectgrad(q):
    def rule(m, x, y, g):
        t = y * g
        tau = torch.quantile(t.flatten(1), q / 100, dim=1, interpolation="nearest").view(-1, 1, 1, 1)
        return ((t > tau) & (x < _upper(m))) * g
    return rule


def relu_rule_gradient(net, x, target, rule):
    """The input gradient of logit ``target`` (N,) with ``rule(module, x, y, g)`` at every ReLU/ReLU6."""
    acts = run(net, x)
    g = F.one_hot(target, acts[-1][2].shape[1]).to(x.dtype)
    for m, xin, y in reversed(acts):
        g = rule(m, xin, y, g) if isinstance(m, (nn.ReLU, nn.ReLU6)) else _vjp(m, xin, g)
    return g


def _sign(z):
    return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _safe(a, b):
    return torch.where(b == 0, 0.0, a / torch.where(b == 0, 1.0, b))


def _distribute(c, bias, R, rule, eps):
    """c: (N, O, D, L) contributions of D inputs to O outputs at L places; R: (N, O, L). Returns (N, D, L)."""
    if rule == "epsilon":
        z = c.sum(2) + (0 if bias is None else bias.view(1, -1, 1))
        return (c * _safe(R, z + eps * _sign(z))[:, :, None]).sum(1)
    cp = c.clamp(min=0)   # x_i w_ij > 0 exactly when the signs match: the a+ w+ and a- w- streams
    return (cp * _safe(R, cp.sum(2))[:, :, None]).sum(1)


def lrp(net, x, target, rule, eps=0.0, upto=None):
    """LRP relevance at the input (or at the output of layer index ``upto``), rule ``"epsilon"`` or ``"zplus"``.

    Conv, Linear: the rule; BatchNorm: epsilon rule on s*x (+ shift) or pass-through for z+; ReLU/ReLU6/Flatten:
    pass-through; MaxPool: winner takes all (epsilon-stabilised); AvgPool: in proportion (epsilon-stabilised)."""
    acts = run(net, x)
    logits = acts[-1][2]
    R = F.one_hot(target, logits.shape[1]).to(x.dtype) * logits
    for index in range(len(acts) - 1, -1, -1):
        if upto is not None and index == upto:
            return R
        m, a, y = acts[index]
        if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Flatten)):
            R = R.reshape(a.shape)
        elif isinstance(m, nn.Linear):
            c = a[:, None, :, None] * m.weight[None, :, :, None]
            R = _distribute(c, m.bias, R[:, :, None], rule, eps)[..., 0]
        elif isinstance(m, nn.Conv2d):
            k, p = m.kernel_size[0], m.padding[0]
            patches = F.unfold(a, k, padding=p)                       # (N, C*k*k, L)
            c = patches[:, None] * m.weight.reshape(m.out_channels, -1)[None, :, :, None]
            Rp = _distribute(c, m.bias, R.flatten(2), rule, eps)
            R = F.fold(Rp, a.shape[-2:], k, padding=p)
        elif isinstance(m, nn.BatchNorm2d):
            if rule == "epsilon":
                s = (m.weight / torch.sqrt(m.running_var + m.eps)).view(1, -1, 1, 1)
                R = s * a * _safe(R, y + eps * _sign(y))
        elif isinstance(m, nn.MaxPool2d):
            _, idx = F.max_pool2d(a, 2, return_indices=True)
            share = _safe(y, y + eps * _sign(y)) if rule == "epsilon" else torch.ones_like(y)
            R = F.max_unpool2d(share * R, idx, 2, output_size=a.shape[-2:])
        elif isinstance(m, nn.AvgPool2d):
            if rule == "epsilon":
                R = a / 4 * F.interpolate(_safe(R, y + eps * _sign(y)), scale_factor=2.0)
            else:
                ap = a.clamp(min=0)
                R = ap / 4 * F.interpolate(_safe(R, F.avg_pool2d(ap, 2)), scale_factor=2.0)
        else:
            raise TypeError(type(m))
    return R
