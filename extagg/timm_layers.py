"""What extagg knows of timm's models: their layer groups, the layout of their channels-last modules, their
preprocessing, and loading them (with pretrained weights only from the local cache).

Nothing here imports timm until a timm model is loaded; a model counts as timm's when its class is defined in a
``timm.`` module.

Layer groups (:func:`group`, consulted by :mod:`extagg.layer_select` before its structural rules):

* stage modules: the children of the model's stage container (``stages`` as ConvNeXt, ResNetV2, MaxViT/CoAtNet,
  MetaFormer, LeViT and ByobNet/MobileViT have; ``layers`` as Swin has; ``blocks`` as EfficientNet, MobileNetV3 and
  ViT/DeiT have), or else the entries of the model's ``feature_info`` (ResNet ``layer1..4``, RegNet ``s1..s4``)
  that are not the stem (a name starting ``stem``, ``conv_stem``, ``bn1``, ``act1``, ``patch_embed``);
* ``blocks``: per stage module, the children of its ``blocks`` container if it has one (ConvNeXt, Swin, MaxViT),
  else the children of a ``Sequential`` / ``ModuleList`` stage (ResNet, EfficientNet, MobileViT), else the children
  of a stage whose children are all of one class (RegNet's ``b1..bN``), else the stage module itself (a ViT
  ``Block``);
* ``stages``: the last stage module before each change of its output's size (EfficientNet ``blocks.0, 1, 2, 4, 6``
  as timm's own ``feature_info``; a ViT's last block ``blocks.11``, its one token grid).

For a timm model the bare names ``stages`` and ``blocks`` mean these groups, also where the model has a
container module of that name (``group:stages`` is the same; the container's own output is its last child's).
Both keep only modules whose output is one 4-D map or one 3-D token sequence; a 3-D output is read on the patch
grid the model declares (:mod:`extagg.tokens`), which LeViT's does not (its blocks are refused, naming
``token_grid=``).

Layouts (:data:`LAYOUTS`, merged into :data:`extagg.layouts.KNOWN`): timm's Swin blocks, stages and patch merging
(v1 and v2) run (N, h, w, C); its ``LayerNorm2d`` and ConvNeXt blocks (N, C, h, w).

To add a family whose modules this does not find, name its layers (``layers=["stages.1", ...]``), or add its
stage container's attribute name to :data:`STAGE_CONTAINERS` and, for a channels-last block class, an entry to
:data:`LAYOUTS`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from .errors import InputError, UnknownNameError

PREFIX = "timm:"
STAGE_CONTAINERS = ("stages", "layers", "blocks")
STEM = ("stem", "conv_stem", "bn1", "act1", "patch_embed")
LAYOUTS = {("timm.models.swin_transformer", name): "nhwc"
           for name in ("SwinTransformerBlock", "SwinTransformerStage", "PatchMerging")}
LAYOUTS.update({("timm.models.swin_transformer_v2", name): "nhwc"
                for name in ("SwinTransformerV2Block", "SwinTransformerV2Stage", "PatchMerging")})
LAYOUTS.update({("timm.layers.norm", "LayerNorm2d"): "nchw", ("timm.models.convnext", "ConvNeXtBlock"): "nchw",
                ("timm.models.convnext", "ConvNeXtStage"): "nchw"})
"""``{(module, class name): layout}`` of timm classes whose 4-D output layout their kind defines."""
_CONTAINERS = (torch.nn.Sequential, torch.nn.ModuleList)


def is_timm(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


def _stage_modules(model: torch.nn.Module) -> list[str]:
    """Names of the model's stage modules, in model order (see the module docstring)."""
    for attr in STAGE_CONTAINERS:
        container = model._modules.get(attr)
        if isinstance(container, _CONTAINERS) and len(container):
            return [f"{attr}.{name}" for name in container._modules]
    info = getattr(model, "feature_info", None) or []
    names = [entry.get("module") for entry in info if isinstance(entry, dict)]
    return [n for n in names if isinstance(n, str) and n and n.split(".")[0] not in STEM]


def _blocks_of(name: str, module: torch.nn.Module) -> list[str]:
    inner = module._modules.get("blocks")
    if isinstance(inner, _CONTAINERS) and len(inner):
        return [f"{name}.blocks.{child}" for child in inner._modules]
    children = [(child, m) for child, m in module._modules.items() if m is not None]
    if children and (isinstance(module, _CONTAINERS) or len({type(m) for _, m in children}) == 1):
        return [f"{name}.{child}" for child, _ in children]
    return [name]


def group(model: torch.nn.Module, name: str, shapes: dict) -> Optional[list[str]]:
    """The timm model's layer group ``name`` (``"stages"`` or ``"blocks"``), in model order, kept to modules whose
    output (``shapes``: ``{call name: output shape}`` of one forward pass) is one 3-D or 4-D tensor; None for a
    model that is not timm's, another group, or a timm model whose stage modules are not found."""
    if name not in ("stages", "blocks") or not is_timm(model):
        return None
    modules = dict(model.named_modules())
    stages = [s for s in _stage_modules(model) if s in modules]
    if not stages:
        return None

    def kept(names):
        return [n for n in names if len(shapes.get(n, ())) in (3, 4)]

    if name == "blocks":
        return kept([b for s in stages for b in _blocks_of(s, modules[s])])
    stages = kept(stages)
    size = {s: _grid_size(modules[s], shapes[s]) for s in stages}
    return [s for i, s in enumerate(stages) if i + 1 == len(stages) or size[stages[i + 1]] != size[s]]


def _grid_size(module: torch.nn.Module, shape: tuple) -> tuple:
    """The spatial size of an output: (h, w) of a 4-D map in its module's layout (:data:`LAYOUTS`), L of a token
    sequence."""
    if len(shape) == 3:
        return (shape[1],)
    nhwc = LAYOUTS.get((type(module).__module__, type(module).__name__)) == "nhwc"
    return tuple(shape[1:3]) if nhwc else tuple(shape[2:4])


def preprocessing(model: torch.nn.Module, name: str):
    """:class:`~extagg.preprocessing.Preprocessing` from the model's pretrained config (timm's
    ``resolve_data_config``): its mean, std, input size (square; a non-square one is an InputError), interpolation
    (``bilinear``, ``bicubic`` or ``nearest``; timm's ``random`` / ``lanczos`` read as bilinear / bicubic) and, for
    the ``"crop"`` geometry, its ``crop_pct`` (shorter side ``size / crop_pct``)."""
    import timm.data

    from .preprocessing import INTERPOLATIONS, Preprocessing

    cfg = timm.data.resolve_data_config({}, model=model)
    _, height, width = cfg["input_size"]
    if height != width:
        raise InputError(f"timm model {name!r} takes {height}x{width} inputs; extagg's preprocessing is square")
    interpolation = {"random": "bilinear", "lanczos": "bicubic"}.get(cfg.get("interpolation"),
                                                                     cfg.get("interpolation"))
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    return Preprocessing(size=int(height), resize=int(round(height / crop_pct)), mean=cfg["mean"], std=cfg["std"],
                         interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
                         source=f"timm pretrained config of {name}")


def _cached_weights(name: str) -> Path:
    """The local file of the model's pretrained weights (Hugging Face hub cache), or an InputError naming where
    it was looked for; never downloads."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        cfg = timm.create_model(name, pretrained=False).pretrained_cfg or {}
    else:
        cfg = cfg.to_dict()
    hub_id = cfg.get("hf_hub_id")
    cache = Path(constants.HF_HUB_CACHE)
    wanted = []
    if hub_id:
        for filename in ([cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename")
                         else ["model.safetensors", "pytorch_model.bin"]):
            found = try_to_load_from_cache(hub_id, filename, cache_dir=str(cache))
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
            wanted.append(f"{hub_id}/{filename}")
    url = cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if path.is_file():
            return path
        wanted.append(str(path))
    looked = ", ".join(wanted) or "nothing: its pretrained config names no weights"
    raise InputError(f"the pretrained weights of timm model {name!r} are not in the local cache (looked in the "
                     f"Hugging Face cache {cache} for {looked}); extagg does not download: fetch them once where there is a network "
                     f"(timm.create_model({name!r}, pretrained=True)), give a state_dict file, or pass "
                     f"random_weights=True (--random-weights)")


def check_name(name: str) -> None:
    """An :class:`InputError` without timm, an :class:`UnknownNameError` for a name timm does not build."""
    try:
        import timm
    except ImportError as exc:
        raise InputError(f"model {PREFIX}{name} needs timm (`pip install extagg[timm]`)") from exc
    if not timm.is_model(name):
        raise UnknownNameError("timm model", name, timm.list_models())


def load(name: str, weights=None, random_weights: bool = False):
    """``(model in eval mode, Preprocessing)`` for ``"timm:NAME"`` (see :func:`extagg.models.load_model`):
    ``weights="DEFAULT"`` / ``"pretrained"`` loads the pretrained weights from the local cache only (refused at
    once when they are not there), a path loads a ``state_dict``, ``random_weights=True`` leaves timm's
    initialisation."""
    import timm

    check_name(name)
    if weights is None:
        model = timm.create_model(name, pretrained=False)
    elif Path(str(weights)).is_file():
        model = timm.create_model(name, pretrained=False)
        try:
            model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"cannot load the weights {str(weights)!r} for timm model {name!r} "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}); "
                             "give a state_dict file saved with torch.save") from None
    elif str(weights).upper() in ("DEFAULT", "PRETRAINED"):
        path = _cached_weights(name)
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    else:
        raise InputError(f"weights {str(weights)!r} for timm model {name!r}: give 'DEFAULT' (its pretrained "
                         "weights, from the local cache) or a state_dict file")
    return model.eval(), preprocessing(model, name)
