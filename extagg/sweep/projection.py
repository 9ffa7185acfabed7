"""``extagg sweep --dry-run``: the cost preview and a projected wall time on this machine, from one timed batch.

The calibration computes every configured metric for the plan's first batch (the same batch size, methods,
layers and metrics as the run; nothing is written: the run directory is only read, to count what is done) and
times it, then scales by the counted passes: the preview's forward+backward, class and curve passes still to do
over those of the calibration batch. The batches of a sweep are alike (same methods, layers, metrics and batch
size), so the projection is linear in the number of batches; the calibration includes one-time costs (first
calls, kernel selection), which makes it err long on short runs. Decoding is timed on its own: with ``workers``
processes decoding ahead, the projection takes the larger of compute and decoding per batch.

``torchrun --nproc_per_node N`` deals whole batches round-robin, so N processes (one GPU or one machine each)
divide the batch count, and the wall time, by about N (rank 0 also writes each round's batch file).
"""
from __future__ import annotations

import sys
import time
from typing import Optional, Sequence

import torch

from .config import SweepConfig


def _weight(cost) -> int:
    """The passes a projection scales by: saliency, class and curve passes (each one model pass)."""
    return cost.saliency_passes + cost.class_passes + cost.curve_passes


def duration(seconds: float) -> str:
    """``95`` -> ``1 min 35 s``; ``90061`` -> ``1 d 1 h 1 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s"
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d} d"] * bool(d) + [f"{h} h"] * bool(h) + [f"{m} min"] * bool(m) + [f"{s} s"] * (not d and bool(s))
    return " ".join(parts[:3])


def project(calibration_s: float, decode_s: float, cal_weight: int, todo_weight: int, batches: int,
            workers: int) -> tuple[float, float, float]:
    """``(wall, compute, decoding)`` seconds projected: compute is the calibration batch's time scaled by the
    passes to do over its own; decoding the batch's decoding time per batch, shared by ``workers`` processes that
    run beside the model (wall: the larger of the two), or added to compute without workers."""
    compute = calibration_s * (todo_weight / cal_weight if cal_weight else batches)
    if workers:
        decoding = decode_s / workers * batches
        return max(compute, decoding), compute, decoding
    decoding = decode_s * batches
    return compute + decoding, compute, decoding


def projection_text(calibration_s: float, decode_s: float, cal_weight: int, todo_weight: int, batches: int,
                    images: int, workers: int, device: str) -> str:
    """The lines the dry-run prints under the preview."""
    wall, compute, decoding = project(calibration_s, decode_s, cal_weight, todo_weight, batches, workers)
    per_k = wall / images * 1000 if images else 0.0
    lines = [f"  projection on this machine ({device}, {torch.get_num_threads()} CPU thread(s)): one batch of the "
             f"plan took {calibration_s:.2f} s to compute, {decode_s:.2f} s to decode"
             + (f" ({workers} worker(s) decoding ahead)" if workers else " (in the main process)"),
             f"    scaled by the passes still to do ({todo_weight} / {cal_weight} of the calibration batch): "
             f"about {duration(wall)} for {batches} batch(es), {images} image(s) "
             f"({duration(per_k)} per 1000 images)"
             + ("; decoding-bound: add --workers" if workers and decoding > compute else ""),
             f"    with torchrun on N processes (one GPU or machine each): about {duration(wall)} / N "
             "(whole batches dealt round-robin)"]
    return "\n".join(lines)


def dry_run(config: Optional[SweepConfig] = None, *, model: Optional[torch.nn.Module] = None, preprocess=None,
            samples: Optional[Sequence] = None, registry=None, out=None, calibrate: bool = True,
            explainers: Optional[dict] = None) -> dict:
    """Print the preview and (``calibrate``) the projection of ``config``; compute nothing else, write nothing.
    Returns ``{"cost", "calibration_s", "decode_s", "projected_s", "batches", "images"}`` (times None without
    calibration). A run directory made with another configuration is refused as the sweep would refuse it.
    ``explainers``: the external explainers the sweep would be given (see :func:`extagg.sweep.sweep`)."""
    from .compute import BatchRunner
    from .cost import estimate, preview
    from .data import ImageSource, batches, default_workers
    from .fingerprint import KeptRandomState
    from .runner import batch_units, prepare, resume_defaults
    from .store import RunStore

    config = config or SweepConfig()
    printing = out if out is not None else sys.stdout
    kept = KeptRandomState()
    try:
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        run = prepare(config, model, preprocess, samples, registry, explainers, device)
        config, registry, model, preprocess, samples = run.config, run.registry, run.model, run.preprocess, run.samples
        plan, example, label, class_map = run.plan, run.example, run.label, run.class_map
        store = RunStore(config.run_dir, writer=False)
        done = {}
        if (store.dir / "config.json").exists():
            store.check_config(run.record(), defaults=resume_defaults(registry))
            done = store.load()
        pending = [b for b in plan.batches if any(u not in done for u in batch_units(plan, b))]
        size = tuple(example.shape[-2:])
        cost = estimate(plan, config, registry, done, pending, size=size)
        print(preview(plan, config, registry, cost, label), file=printing, flush=True)
        result = {"cost": cost, "calibration_s": None, "decode_s": None, "projected_s": None,
                  "batches": len(pending), "images": sum(len(b) for b in pending)}
        if not calibrate or not pending:
            return result
        first = plan.batches[0]
        workers = config.workers if config.workers is not None else default_workers()
        t0 = time.perf_counter()
        batch = next(batches(samples, [first], workers=0))
        decode_s = time.perf_counter() - t0 if isinstance(samples, ImageSource) else 0.0
        runner = BatchRunner(model, preprocess, plan, config, registry, class_map)
        torch.manual_seed(config.seed)
        t0 = time.perf_counter()
        for _ in runner.run(batch, lambda metric: True):
            pass
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        calibration_s = time.perf_counter() - t0
        cal = estimate(plan, config, registry, {}, [first], size=size)
        workers = workers if isinstance(samples, ImageSource) else 0
        text = projection_text(calibration_s, decode_s, _weight(cal), _weight(cost), len(pending),
                               result["images"], workers, str(device))
        print(text, file=printing, flush=True)
        wall = project(calibration_s, decode_s, _weight(cal), _weight(cost), len(pending), workers)[0]
        result.update(calibration_s=calibration_s, decode_s=decode_s, projected_s=wall)
        return result
    finally:
        kept.restore()
