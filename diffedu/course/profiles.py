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
import warnings
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from diffedu.course.grading import grading_enabled
from diffedu.data import SampleDataWarning, describe_source
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


_TORCH_DEFAULT_THREADS = torch.get_num_threads()  # before anyone changes it: one per physical core


def thread_policy() -> tuple[int, str]:
    """How many CPU threads torch uses in a lesson, and why (for the set-up line).

    All cores but one: the browser, JupyterLab and the rest of the machine keep a core, so that torch's
    threads are never kept waiting for a busy one. On 2 cores of an AMD EPYC, with one core kept busy by
    another process, 2 threads took 0.22 s for one U-Net forward of 60 MNIST images against 0.14 s on 1 thread,
    and trained lesson 02's toy model at 140 steps/s against 690 (quiet: 0.06 s and 820 on 2 threads, 0.12 s
    and 660 on 1). ``DIFFEDU_THREADS=N`` chooses N instead.
    """
    cores = _TORCH_DEFAULT_THREADS
    chosen = os.environ.get("DIFFEDU_THREADS", "").strip()
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise ValueError(f"DIFFEDU_THREADS must be a positive integer, got {chosen!r}")
        return int(chosen), f"{chosen} (DIFFEDU_THREADS)"
    n = max(1, cores - 1)
    if n == cores:
        return n, f"{n} (of {cores} core{'s' * (cores > 1)})"
    return n, f"{n} of {cores} cores (one left for the browser and the rest; DIFFEDU_THREADS={cores} to use all)"


def note_sample_data_once() -> None:
    """Show the bundled-sample warning as one plain note per kernel (not a pink stderr box per dataset)."""
    if getattr(warnings.showwarning, "_diffedu_sample_note", False):
        return
    previous = warnings.showwarning
    said: list[bool] = []

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if not issubclass(category, SampleDataWarning):
            previous(message, category, filename, lineno, file, line)
        elif not said:
            said.append(True)
            print(f"note: {message} (This note is shown once; the other datasets of this session may be samples "
                  f"too: the set-up lines above say where each comes from.)")

    show._diffedu_sample_note = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def start(lesson: str = "", *, datasets: tuple[str, ...] = (), seed: int = 0, profile: str | None = None) -> Profile:
    """The first cell of every notebook: pick the profile, seed everything, set the CPU threads, print the set-up.

    Prints versions, device, profile, CPU threads (`thread_policy`), grading mode and where each dataset in
    `datasets` comes from.
    """
    prof = get_profile(profile)
    seed_everything(seed)
    threads, why = thread_policy()
    torch.set_num_threads(threads)
    note_sample_data_once()
    lines = [
        f"diffedu {__version__} | torch {torch.__version__} | Python {platform.python_version()}",
        f"device:  {prof.device.type} ({device_name(prof.device)}); CPU threads: {why}",
        f"profile: {prof.name}" + ("  (set DIFFEDU_PROFILE=quick|cpu|gpu to change)" if not os.environ.get("DIFFEDU_PROFILE") else ""),
    ]
    if grading_enabled():
        lines.append("grading: on (checks are strict; skipped exercises fail)")
    if datasets:
        for name in datasets:
            lines.append(f"data:    {name}: {describe_source(name)}")
    print((f"{lesson}\n" if lesson else "") + "\n".join(lines))
    return prof
