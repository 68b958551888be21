"""Append benchmark figures to benchmarks/results/<benchmark>.jsonl, one JSON object a line.

Every figure carries what is needed to compare it: the device's name, torch's version, the date, the
commit and the settings (model, steps, batch, seconds of training, sample count, seed). Figures are
appended by the scripts, never edited by hand.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import torch

from diffedu.devices import device_name
from diffedu.train_cli import git_commit

RESULTS = Path(__file__).resolve().parent / "results"


def record(benchmark: str, metric: str, value: float, unit: str, *, profile: str,
           device: torch.device | str, settings: dict[str, Any]) -> dict[str, Any]:
    """Print one figure and append it to results/<benchmark>.jsonl; returns the row."""
    device = torch.device(device)
    row = {
        "benchmark": benchmark,
        "metric": metric,
        "value": float(value),
        "unit": unit,
        "profile": profile,
        "device": device_name(device),
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "settings": settings,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{benchmark}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"{benchmark}: {metric} = {value:.6g} {unit}  ({row['device']}, profile {profile})")
    return row


def quality_figures(scores: dict[str, Any]) -> list[tuple[str, float, str]]:
    """The sample-quality figures of `diffedu.metrics.evaluate_samples` as (metric, value, unit) rows for `record`."""
    return [
        ("fid_self", scores["fid_self"], "dimensionless"),
        ("fid_self_floor", scores["fid_self_floor"], "dimensionless"),  # since 2026-12-02: the mean of 5 draws
        *([("fid_self_floor_std", scores["fid_self_floor_std"], "dimensionless")]
          if scores.get("fid_self_floor_std") is not None else []),
        ("kid_self", scores["kid_self"], "dimensionless"),
        ("confident_fraction", scores["confident_fraction"], "fraction"),
    ]
