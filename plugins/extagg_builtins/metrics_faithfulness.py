"""Quantus's faithfulness metrics as extagg metrics (registered through ``register_metrics`` like a third party)."""
from __future__ import annotations

from extagg.plugin import hookimpl

METRICS: tuple = ()


@hookimpl
def register_metrics(register):
    for metric in METRICS:
        register(metric)
