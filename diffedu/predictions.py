"""What the network predicts, and every conversion between the choices, in one place.

With x_t = sqrt(abar) x0 + sqrt(1 - abar) eps (abar = alpha-bar_t) a network can be trained to output

- "eps": the noise (Ho et al. 2020), the course's default;
- "x0":  the clean data;
- "v":   v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, "progressive distillation").

Knowing x_t and any one of them gives the other two:

    x0  = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
    eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
    x0  = sqrt(abar) x_t - sqrt(1 - abar) v,   eps = sqrt(1 - abar) x_t + sqrt(abar) v
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from diffedu.forward import broadcast_to
from diffedu.schedules import NoiseSchedule

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v")


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(map(repr, PREDICTIONS))}")


def training_target(x0: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule, prediction: Prediction) -> Tensor:
    """The regression target for a network that predicts `prediction`."""
    check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    abar = broadcast_to(schedule.alphas_cumprod, t, x0)
    return abar.sqrt() * eps - (1.0 - abar).sqrt() * x0


def to_x0_and_eps(
    output: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule, prediction: Prediction = "eps"
) -> tuple[Tensor, Tensor]:
    """The network's output, read as `prediction`, turned into the predicted (x0, eps)."""
    check_prediction(prediction)
    abar = broadcast_to(schedule.alphas_cumprod, t, x_t)
    if prediction == "eps":
        eps = output
        x0 = (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()
    elif prediction == "x0":
        x0 = output
        eps = (x_t - abar.sqrt() * x0) / (1.0 - abar).sqrt()
    else:
        x0 = abar.sqrt() * x_t - (1.0 - abar).sqrt() * output
        eps = (1.0 - abar).sqrt() * x_t + abar.sqrt() * output
    return x0, eps


def eps_from_x0(x0: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """The noise that takes x0 to x_t: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    abar = broadcast_to(schedule.alphas_cumprod, t, x_t)
    return (x_t - abar.sqrt() * x0) / (1.0 - abar).sqrt()
