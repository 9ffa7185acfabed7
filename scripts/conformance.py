"""The conformance matrix: every torchvision classification builder and a list of timm families (random weights)
x the layer groups ``stages`` and ``blocks`` x one method of each family; writes docs/models.md.

Each cell either works (maps on the layer's spatial grid, finite, the model left exactly as it was; an all-zero
map only with a :class:`extagg.ZeroGradientWarning`) or is refused with an extagg error whose message names why.
Anything else (a raw exception, a wrong-shaped or non-finite map, a silent all-zero map, a changed model) is a
failure, written as such. ``tests/test_conformance.py`` runs a fixed sample of the cells on every run and compares
them with the committed docs/models.md.

    python scripts/conformance.py                 # the whole matrix (slow: tens of minutes on 2 cores)
    python scripts/conformance.py resnet18 timm:convnext_atto   # some rows, printed, docs/models.md untouched
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import extagg  # noqa: E402
from extagg.errors import ExtaggError, ZeroGradientWarning  # noqa: E402
from extagg.layer_select import _Layout, select_layers  # noqa: E402
from tests.model_state import assert_unchanged, snapshot  # noqa: E402

METHODS = ("gradcam", "normgrad", "linear-approx", "guided-backprop", "smooth(n=4):gradcam", "fullgrad")
GROUPS = ("stages", "blocks")
TIMM = ("resnet18", "resnetv2_18", "convnext_atto", "efficientnet_b0", "mobilenetv3_small_050", "regnetx_002",
        "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "maxvit_pico_rw_256",
        "coatnet_0_rw_224", "mobilevit_xxs", "levit_128s", "poolformer_s12")
"""The smallest variant of each timm family in the matrix."""
LAST = ("vit_h_14", "regnet_y_128gf", "vit_l_16", "vit_l_32", "regnet_y_32gf", "efficientnet_v2_l", "vit_b_16")
"""Built last (slowest to construct and run)."""
SIZES = (64, 224, 299)
"""Input sides tried in turn until the model's forward pass accepts one (a 1x3xSxS uniform image)."""
DOC = ROOT / "docs" / "models.md"
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"


def torchvision_names() -> list[str]:
    import torchvision

    names = sorted(torchvision.models.list_models(module=torchvision.models))
    return [n for n in names if n not in LAST] + [n for n in LAST if n in names]


SMALL = {"vit_b_16": 64, "vit_b_32": 64, "vit_l_16": 64, "vit_l_32": 64, "vit_h_14": 56}
"""torchvision ViTs built for a smaller image (their ``image_size=``: the same blocks, a shorter position
embedding), so that the matrix runs in reasonable time on a CPU."""


def build(name: str) -> torch.nn.Module:
    """The model with random weights, in eval mode, seeded."""
    torch.manual_seed(0)
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], pretrained=False).eval()
    import torchvision

    extra = {"image_size": SMALL[name]} if name in SMALL else {}
    return torchvision.models.get_model(name, weights=None, **extra).eval()


def example(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The smallest input side the model accepts: of :data:`SIZES`, then (timm) its configured input size."""
    gen = torch.Generator().manual_seed(0)
    sides = (SMALL[name],) if name in SMALL else SIZES
    if name.startswith("timm:"):
        sides = (64, model.pretrained_cfg["input_size"][-1])
    for side in sides:
        x = torch.rand(1, 3, side, side, generator=gen)
        try:
            with torch.no_grad():
                model(x)
            return x
        except Exception:  # noqa: BLE001 -- the next size
            continue
    raise RuntimeError(f"{name}: no input side of {sides} is accepted")


def expected_grid(shape: tuple) -> tuple[str, set]:
    """``(layout read, the map grids allowed)`` of a layer's output shape on a square input, decided without
    extagg: a 4-D (N, C, h, w) or (N, h, w, C) output's grid is its square pair of dimensions; a 3-D (N, L, D)
    token sequence's is a square grid of at most L tokens."""
    if len(shape) == 4:
        grids = {}
        if shape[2] == shape[3]:
            grids["nchw"] = (shape[2], shape[3])
        if shape[1] == shape[2]:
            grids["nhwc"] = (shape[1], shape[2])
        if len(grids) == 1:
            return next(iter(grids)), set(grids.values())
        return "nchw/nhwc", set(grids.values())
    if len(shape) == 3:
        return "tokens", {(k, k) for k in range(1, int(shape[1] ** 0.5) + 1)}
    return f"{len(shape)}-D", set()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = re.sub(r"\|", "/", text)
    return f"{type(exc).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"


def cell(model: torch.nn.Module, x: torch.Tensor, group: str, methods, shapes: dict) -> dict:
    """``{method: (status, detail)}`` of one call for all ``methods``: status ``works``, ``zero`` (all-zero maps
    with a ZeroGradientWarning), ``clipped`` (all-zero maps of a ``+relu`` method whose signed map is negative
    everywhere), ``refused`` (an extagg error; detail its message) or ``FAIL`` (detail what broke).
    A refusal of the joint call is settled method by method."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = extagg.saliency(model, x, list(methods), group)
        except ExtaggError as exc:
            if len(methods) > 1:
                out = {}
                for method in methods:
                    out.update(cell(model, x, group, [method], shapes))
                return out
            return {methods[0]: ("refused", _short(exc))}
        except Exception as exc:  # noqa: BLE001 -- recorded as a failure
            return {m: ("FAIL", "raw " + _short(exc)) for m in methods}
    zero = [w for w in caught if issubclass(w.category, ZeroGradientWarning)]
    out = {}
    for i, m in enumerate(methods):
        maps = {k: v for k, v in result.items() if k[0] == result.methods[i]}
        out[m] = _check(maps, shapes, zero)
        if out[m][0] == "FAIL" and "without a ZeroGradientWarning" in out[m][1]:
            out[m] = _clipped(model, x, result.methods[i], maps) or out[m]
    return out


def _clipped(model, x, canonical: str, maps: dict):
    """``("clipped", why)`` where every all-zero map of a method ending in ``+relu`` is zero because its signed map
    (the same method without the relu) is negative everywhere, a correct result (Grad-CAM's relu); else None."""
    if not canonical.endswith("+relu"):
        return None
    layers = [layer for (_, layer), m in maps.items() if not m.any()]
    signed = extagg.saliency(model, x, canonical[:-len("+relu")], layers)
    if all(signed[k].any() and (signed[k] <= 0).all() for k in signed):
        return "clipped", (f"all-zero map at {len(layers)} layer(s): its signed map ({canonical[:-len('+relu')]}) "
                           "is negative everywhere and the relu clips it (no gradient is zero)")
    return None


def _check(result, shapes: dict, zero_warnings: list) -> tuple[str, str]:
    warned = {layer for w in zero_warnings for layer in getattr(w.message, "layers", ())}
    zero = []
    for (_, layer), m in result.items():
        _, grids = expected_grid(shapes.get(layer, ()))
        if m.ndim != 4 or m.shape[:2] != (1, 1) or tuple(m.shape[-2:]) not in grids:
            return "FAIL", f"{layer}: map {tuple(m.shape)} for output {shapes.get(layer)}"
        if not torch.isfinite(m).all():
            return "FAIL", f"{layer}: non-finite map"
        if not m.any():
            if layer not in warned:
                return "FAIL", f"{layer}: all-zero map without a ZeroGradientWarning"
            zero.append(layer)
    if zero:
        return "zero", f"all-zero maps with ZeroGradientWarning at {len(zero)} layer(s)"
    return "works", ""


def row(name: str, methods=METHODS, groups=GROUPS) -> dict:
    """``{"model", "layouts", "seconds", (group, method): (status, detail)}`` for one model."""
    start = time.perf_counter()
    try:
        model = build(name)
        x = example(model, name)
    except Exception as exc:  # noqa: BLE001 -- a builder that does not build is recorded
        return {"model": name, "layouts": "-", "input": "-", "seconds": 0.0,
                **{(g, m): ("FAIL", "cannot build: " + _short(exc)) for g in groups for m in methods}}
    shapes = _Layout(model, x).shapes
    before = snapshot(model)  # once: every call must leave the model as it was built
    out = {"model": name, "input": f"{x.shape[-1]}"}
    layouts = set()
    for group in groups:
        try:
            layers = select_layers(model, group, x)
        except ExtaggError as exc:
            for method in methods:
                out[group, method] = ("refused", _short(exc))
            continue
        layouts |= {expected_grid(shapes.get(layer, ()))[0] for layer in layers}
        found = cell(model, x, group, [m for m in methods if m == "fullgrad"], shapes) if "fullgrad" in methods \
            else {}  # alone: it is refused at most layer groups (it reads Conv2d / BatchNorm2d layers)
        found.update(cell(model, x, group, [m for m in methods if m != "fullgrad"], shapes))
        try:
            assert_unchanged(before, model)
        except AssertionError as exc:
            found = {m: ("FAIL", f"model changed: {exc}") for m in methods}
        for method in methods:
            out[group, method] = found[method]
    out["layouts"] = ", ".join(sorted(layouts)) or "-"
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def mark(status: str, detail: str, notes: dict) -> str:
    if status == "works":
        return "works"
    key = detail
    number = notes.setdefault(key, len(notes) + 1)
    return f"{status} [{number}]"


def write(rows: list[dict]) -> str:
    notes: dict[str, int] = {}
    head = "| model | input | layouts | " + " | ".join(f"{g}: {m}" for g in GROUPS for m in METHODS) + " |"
    lines = [head, "|" + "---|" * (3 + len(GROUPS) * len(METHODS))]
    for r in rows:
        cells = [mark(*r[g, m], notes) for g in GROUPS for m in METHODS]
        lines.append(f"| {r['model']} | {r['input']} | {r['layouts']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"[{n}] {detail}  " for detail, n in notes.items()]
    return "\n".join(lines)


def read_committed(path: Path = DOC) -> dict[str, dict[tuple[str, str], str]]:
    """``{model: {(group, method): status}}`` from the committed matrix in docs/models.md."""
    text = path.read_text()
    block = text[text.index(BEGIN):text.index(END)]
    rows = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    cols = [(g, m) for g in GROUPS for m in METHODS]
    out = {}
    for line in rows:
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        out[parts[0]] = {col: value.split(" ")[0] for col, value in zip(cols, parts[3:])}
    return out


def _save(r: dict) -> str:
    return json.dumps({k if isinstance(k, str) else "|".join(k): v for k, v in r.items()})


def _load(line: str) -> dict:
    return {(tuple(k.split("|")) if "|" in k else k): (tuple(v) if isinstance(v, list) else v)
            for k, v in json.loads(line).items()}


def write_doc(rows: list[dict]) -> None:
    """The matrix of ``rows`` into docs/models.md between its markers, in the order of :func:`all_names`."""
    order = {name: i for i, name in enumerate(all_names())}
    rows = sorted(rows, key=lambda r: order.get(r["model"], len(order)))
    text = DOC.read_text()
    DOC.write_text(text[:text.index(BEGIN) + len(BEGIN)] + "\n" + write(rows) + "\n" + text[text.index(END):])


def all_names() -> list[str]:
    return torchvision_names() + [f"timm:{n}" for n in TIMM]


def main(argv: list[str]) -> int:
    """``conformance.py`` (the whole matrix into docs/models.md), ``conformance.py NAME ...`` (rows printed),
    ``--part K/N --rows FILE`` (every N-th model from the K-th, rows appended to FILE as JSON lines, for runs in
    parallel), ``--write FILE ...`` (docs/models.md from such files)."""
    torch.set_num_threads(1)  # one thread each is several times faster on a machine shared with other work
    if argv[:1] == ["--write"]:  # a model's last row wins (a re-run given after the first run)
        rows = {r["model"]: r for r in (_load(line) for path in argv[1:]
                                        for line in Path(path).read_text().splitlines() if line)}
        write_doc(list(rows.values()))
        return 0
    rows_file = None
    if argv[:1] == ["--part"]:
        k, n = map(int, argv[1].split("/"))
        rows_file = Path(argv[3])
        done = {_load(line)["model"] for line in rows_file.read_text().splitlines() if line} \
            if rows_file.exists() else set()
        names = [name for name in all_names()[k - 1::n] if name not in done]
        if argv[4:5] == ["--claim"]:  # any model not yet claimed by a run sharing the folder
            claims = Path(argv[5])
            done = {_load(line)["model"] for path in claims.glob("*.jsonl") for line in path.read_text().splitlines()
                    if line}
            names = [name for name in [f"timm:{n}" for n in TIMM] + torchvision_names() if name not in done]
    else:
        names = argv or all_names()
    rows = []
    for name in names:
        if argv[4:5] == ["--claim"]:
            try:
                os.close(os.open(claims / f"{name.replace(':', '_')}.claim", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                continue
        r = row(name)
        rows.append(r)
        statuses = [r[g, m][0] for g in GROUPS for m in METHODS]
        print(f"{name}: {r['seconds']}s {r['layouts']} " + " ".join(s[0] for s in statuses), flush=True)
        for g in GROUPS:
            for m in METHODS:
                if r[g, m][0] == "FAIL":
                    print(f"   FAIL {g} {m}: {r[g, m][1]}", flush=True)
        if rows_file is not None:
            with rows_file.open("a") as f:
                f.write(_save(r) + "\n")
        elif not argv:  # after each row, so that a long run leaves what it has done
            write_doc(rows)
    if argv and rows_file is None:
        print(write(rows))
    return 1 if any(r[g, m][0] == "FAIL" for r in rows for g in GROUPS for m in METHODS) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
