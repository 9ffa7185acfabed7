"""argparse types shared by the command-line modules: checked numbers, devices and output files."""
from __future__ import annotations

import argparse
import math


def number_in(low: float, high: float, *, low_open: bool = False):
    """An argparse type: a finite float in [low, high] (``(low, high]`` with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            where = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"expected a number in {where}, got {text!r}")
        return value

    return parse


def device(text: str) -> str:
    """An argparse type: a torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:0, mps)") from None
    return text


def output_file(text: str) -> str:
    """An argparse type: a file to write, not an existing directory."""
    import os

    if os.path.isdir(text):
        example = os.path.join(text, "out.png")
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name (e.g. {example!r})")
    return text
