"""Where the computation runs: the default device, a readable name for it, and whether a CPU has bf16.

Both the learner's library (training, loading weights) and the course's set-up cell use these.
"""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["cpu_has_bf16", "default_device", "device_name"]


def default_device() -> torch.device:
    """CUDA when available, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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
