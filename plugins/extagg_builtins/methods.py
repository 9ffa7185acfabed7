"""Built-in named methods of Rebuffi et al. (Table 2) and Grad-CAM, each one composition."""
from __future__ import annotations

from extagg.plugin import NamedMethod, hookimpl

NAMED = [
    ("gradient", "bias+abs+max", "Gradient (TorchRay): max over channels of |dS/dx|.", "Simonyan et al. 2014"),
    ("gradient-sum", "bias+sum", "Gradient summed over channels.", "Rebuffi et al. 2020, Gds"),
    ("linear-approx", "scaling+sum", "Linear approximation, gradient x activation summed.", "Kindermans et al. 2016"),
    ("normgrad", "conv1x1+norm", "NormGrad with a virtual 1x1 identity convolution: ||x_u|| ||g_u||.", "Rebuffi et al. 2020"),
    ("selective-normgrad", "scaling+relu+norm", "Selective NormGrad: norm of the positive part of x*g.", "Rebuffi et al. 2020"),
    ("normgrad-conv", "conv+norm", "NormGrad of the chosen Conv2d's own weights (no identity trick).", "Rebuffi et al. 2020"),
    ("gradcam", "pooled-scaling+sum+relu", "Grad-CAM: ReLU(sum_k x_k mean_u g_k) (TorchRay).", "Selvaraju et al. 2017"),
]


@hookimpl
def register_methods(register):
    for name, expansion, doc, reference in NAMED:
        register(NamedMethod(name=name, expansion=expansion, doc=doc, reference=reference))
