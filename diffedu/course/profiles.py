"""Profiles: one notebook, three sizes.

- "quick": for CI; every notebook finishes in well under a minute on 2 CPU cores.
- "cpu":   a learner's laptop; a lesson takes minutes and the results look right.
- "gpu":   full size on one CUDA GPU.

The default is "gpu" where CUDA is available, else "cpu"; the environment variable DIFFEDU_PROFILE
overrides it. A notebook sizes its data, model and steps with `profile.pick(quick=..., cpu=..., gpu=...)`.
"""

from __future__ import annotations

import os
import platform
import random
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from diffedu.course.grading import grading_enabled
from diffedu.data import describe_source
from diffedu.devices import cpu_has_bf16, default_device, device_name  # noqa: F401 (cpu_has_bf16: lesson 04's import)
from diffedu.version import __version__

PROFILES: tuple[str, ...] = ("quick", "cpu", "gpu")
T = TypeVar("T")


@dataclass(frozen=True)
class Profile:
    """The size of a run (`name`) and where it runs (`device`)."""

    name: str
    device: torch.device

    def pick(self, *, quick: T, cpu: T, gpu: T) -> T:
        """The value for this profile: `profile.pick(quick=200, cpu=5_000, gpu=60_000)`."""
        return {"quick": quick, "cpu": cpu, "gpu": gpu}[self.name]

    @property
    def is_quick(self) -> bool:
        return self.name == "quick"


def get_profile(name: str | None = None) -> Profile:
    """The profile named `name`, else $DIFFEDU_PROFILE, else "gpu" with CUDA and "cpu" without."""
    device = default_device()
    name = name or os.environ.get("DIFFEDU_PROFILE") or ("gpu" if device.type == "cuda" else "cpu")
    name = name.strip().lower()
    if name not in PROFILES:
        raise ValueError(
            f"unknown profile {name!r}; choose one of {', '.join(map(repr, PROFILES))} "
            "(set DIFFEDU_PROFILE, or pass name=...)"
        )
    return Profile(name, device)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start(lesson: str = "", *, datasets: tuple[str, ...] = (), seed: int = 0, profile: str | None = None) -> Profile:
    """The first cell of every notebook: pick the profile, seed everything and print the set-up.

    Prints versions, device, profile, grading mode and where each dataset in `datasets` comes from.
    """
    prof = get_profile(profile)
    seed_everything(seed)
    lines = [
        f"diffedu {__version__} | torch {torch.__version__} | Python {platform.python_version()}",
        f"device:  {prof.device.type} ({device_name(prof.device)})",
        f"profile: {prof.name}" + ("  (set DIFFEDU_PROFILE=quick|cpu|gpu to change)" if not os.environ.get("DIFFEDU_PROFILE") else ""),
    ]
    if grading_enabled():
        lines.append("grading: on (checks are strict; skipped exercises fail)")
    if datasets:
        for name in datasets:
            lines.append(f"data:    {name}: {describe_source(name)}")
    print((f"{lesson}\n" if lesson else "") + "\n".join(lines))
    return prof
