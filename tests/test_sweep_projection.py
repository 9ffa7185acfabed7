"""``extagg sweep --dry-run``: the preview and a projected wall time from one timed batch, nothing written."""
from __future__ import annotations

import io

import pytest

from extagg.cli import build_parser
from extagg.errors import InputError
from extagg.sweep import sweep
from extagg.sweep.fingerprint import model_fingerprint
from extagg.sweep.projection import duration, dry_run, project
from sweep_fixtures import tiny_config, tiny_model, tiny_samples


def test_a_dry_run_previews_projects_and_writes_nothing(tmp_path):
    """The preview as the sweep prints it, then the projection: the calibration batch's time scaled by the passes
    to do over its own (3 batches of 2, 2, 1 images here); no run directory is made and the model is left as it
    was (the calibration randomises blocks and must put them back)."""
    model = tiny_model()
    before = model_fingerprint(model)
    out = io.StringIO()
    result = dry_run(tiny_config(tmp_path / "run"), model=model, samples=tiny_samples(5), out=out)
    text = out.getvalue()
    assert "unit = method x layer x metric x image" in text and "projection on this machine" in text
    assert "with torchrun on N processes" in text and "3 batch(es), 5 image(s)" in text
    assert not (tmp_path / "run").exists()
    assert model_fingerprint(model) == before
    assert result["batches"] == 3 and result["calibration_s"] > 0
    assert result["projected_s"] > 2 * result["calibration_s"]  # 3 batches, the last one smaller


def test_the_projection_scales_by_passes_and_decoding_bounds_it():
    assert project(2.0, 0.0, 10, 30, 3, 0)[0] == 6.0
    assert project(2.0, 1.0, 10, 30, 3, 0)[0] == 9.0      # decoding in the main process adds up
    assert project(2.0, 1.0, 10, 30, 3, 2)[0] == 6.0      # two workers decode beside the model
    assert project(2.0, 8.0, 10, 30, 3, 2)[0] == 12.0     # decoding-bound
    assert duration(95) == "1 min 35 s" and duration(90061) == "1 d 1 h 1 min" and duration(3.25) == "3.2 s"


def test_a_dry_run_counts_what_is_done_and_refuses_another_configuration(tmp_path):
    """On an existing run directory the preview counts its finished units (a finished run: nothing to project);
    a changed configuration is refused as the sweep would refuse it."""
    cfg = tiny_config(tmp_path, methods=("gradcam",), layers=("3",), metrics=("deletion",), combine=())
    sweep(cfg, model=tiny_model(), samples=tiny_samples(3), out=io.StringIO())
    out = io.StringIO()
    result = dry_run(cfg, model=tiny_model(), samples=tiny_samples(3), out=out)
    assert result["batches"] == 0 and result["projected_s"] is None and "projection" not in out.getvalue()
    with pytest.raises(InputError, match="different config: steps was 3, now 4"):
        dry_run(tiny_config(tmp_path, methods=("gradcam",), layers=("3",), metrics=("deletion",), combine=(),
                            steps=4), model=tiny_model(), samples=tiny_samples(3), out=io.StringIO())


def test_the_dry_run_option():
    assert build_parser().parse_args(["sweep", "--dry-run"]).dry_run
    assert not build_parser().parse_args(["sweep"]).dry_run
