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

import torch

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


def default_device() -> torch.device:
    """CUDA when available, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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


def device_name(device: torch.device) -> str:
    """A readable name of the device, e.g. 'NVIDIA H100 80GB HBM3' or the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return _cpu_name()


def cpu_has_bf16() -> bool:
    """True where the CPU computes in bfloat16 natively (AVX512-BF16 or AMX, e.g. Intel Xeon since Sapphire Rapids,
    AMD Zen 4): there bf16 autocast makes training faster; elsewhere it emulates bf16 and is slower."""
    flags = set((_cpuinfo("flags") or "").split())
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def _cpu_name() -> str:
    model = _cpuinfo("model name")
    return f"{model or platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of /proc/cpuinfo (Linux), or None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start(lesson: str = "", *, datasets: tuple[str, ...] = (), seed: int = 0, profile: str | None = None) -> Profile:
    """The first cell of every notebook: pick the profile, seed everything and print the set-up.

    Prints versions, device, profile, grading mode and where each dataset in `datasets` comes from.
    """
    from diffedu import __version__
    from diffedu.checks import grading_enabled

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
        from diffedu.data import describe_source

        for name in datasets:
            lines.append(f"data:    {name}: {describe_source(name)}")
    print((f"{lesson}\n" if lesson else "") + "\n".join(lines))
    return prof
