"""Noise schedules: the betas of the forward process, and what follows from them.

The forward (noising) process of DDPM (Ho et al. 2020, eq. 2) adds a little Gaussian noise at each of
T steps:

    q(x_t | x_{t-1}) = N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I),   t = 1..T

With alpha_t = 1 - beta_t and alpha-bar_t = prod_{s<=t} alpha_s (`alphas_cumprod`) it has the closed
form q(x_t | x_0) = N(sqrt(alpha-bar_t) x_0, (1 - alpha-bar_t) I) (see `diffedu.forward`).

A schedule is data: a frozen dataclass built by pure factories, computed in float64 then cast to
float32. Code indexes timesteps from 0, so `betas[0]` is the paper's beta_1 and `betas[T - 1]` its
beta_T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

ScheduleName = Literal["linear", "cosine"]
SCHEDULES: tuple[str, ...] = ("linear", "cosine")


@dataclass(frozen=True)
class NoiseSchedule:
    """The betas of a forward process and their running products.

    Attributes:
        name: how the betas were made ("linear", "cosine" or "custom").
        betas: beta_t, shape (T,), float32.
        alphas: alpha_t = 1 - beta_t, shape (T,).
        alphas_cumprod: alpha-bar_t = prod_{s<=t} alpha_s, shape (T,), decreasing from about 1 to about 0.
    """

    name: str
    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor

    @property
    def T(self) -> int:  # noqa: N802 (the paper's name)
        """Number of diffusion steps."""
        return self.betas.shape[0]

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """The same schedule with its tensors on `device`."""
        return NoiseSchedule(
            self.name, self.betas.to(device), self.alphas.to(device), self.alphas_cumprod.to(device)
        )

    def __repr__(self) -> str:
        abar = self.alphas_cumprod
        return (
            f"NoiseSchedule(name={self.name!r}, T={self.T}, beta: {self.betas[0]:.2e}..{self.betas[-1]:.2e}, "
            f"alpha-bar: {abar[0]:.4f}..{abar[-1]:.2e})"
        )


def schedule_from_betas(betas: Tensor, name: str = "custom") -> NoiseSchedule:
    """Build a `NoiseSchedule` from betas; products are taken in float64, then cast to float32."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.ndim != 1 or betas.numel() < 1:
        raise ValueError(f"betas must be a 1-D tensor with at least one value, got shape {tuple(betas.shape)}")
    if not torch.all((betas > 0) & (betas < 1)):
        raise ValueError(
            f"every beta must lie in (0, 1); got min {betas.min().item():.3g}, max {betas.max().item():.3g}"
        )
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    return NoiseSchedule(name, betas.float(), alphas.float(), alphas_cumprod.float())


def linear_beta_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:  # noqa: N803
    """DDPM's linear schedule (Ho et al. 2020, sec. 4): beta_t rises linearly from `beta_start` to `beta_end`.

    The paper's values (1e-4 to 0.02) are meant for T = 1000; with far fewer steps alpha-bar_T stays
    well above 0 and x_T is not pure noise. `make_schedule("linear", T)` rescales them for any T.
    """
    _check_T(T)
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return schedule_from_betas(betas, "linear")


def betas_from_alpha_bar(alpha_bar: Callable[[Tensor], Tensor], T: int, max_beta: float = 0.999) -> Tensor:  # noqa: N803
    """The T betas of a schedule given as a continuous alpha-bar(u), u = t / T in [0, 1] (float64, shape (T,)).

    alpha-bar is evaluated at the T + 1 points u = 0, 1/T, ..., 1 and normalised by its value at u = 0, so that
    no noise has been added before the first step; each step's beta_t = 1 - alpha-bar(t) / alpha-bar(t - 1)
    follows from alpha-bar_t = prod_{s<=t} (1 - beta_s). Betas are clipped to at most `max_beta`: where
    alpha-bar reaches 0 (the cosine schedule at u = 1) the last beta would be 1, a step that keeps nothing of
    x_{t-1} (Nichol & Dhariwal 2021 clip at 0.999 "to prevent singularities at the end of the diffusion process").
    """
    _check_T(T)
    u = torch.arange(T + 1, dtype=torch.float64) / T
    abar = alpha_bar(u).to(torch.float64)
    if abar.shape != u.shape or not torch.all(torch.isfinite(abar)) or abar[0] <= 0:
        raise ValueError("alpha_bar(u) must map a float64 tensor u of shape (T + 1,) to finite values of the same "
                         "shape, positive at u = 0")
    return betas_from_alphas_cumprod(abar[1:] / abar[0], max_beta)


def betas_from_alphas_cumprod(alphas_cumprod: Tensor, max_beta: float = 0.999) -> Tensor:
    """The betas (float64) whose running product of 1 - beta is `alphas_cumprod`, alpha-bar after steps 1..T.

    beta_t = 1 - alpha-bar_t / alpha-bar_{t-1}, with alpha-bar_0 = 1 before the first step (clean data),
    clipped to [1e-8, max_beta].
    """
    abar = alphas_cumprod.to(torch.float64)
    before = torch.cat([torch.ones(1, dtype=torch.float64, device=abar.device), abar[:-1]])
    return (1.0 - abar / before).clamp(min=1e-8, max=max_beta)


def cosine_alpha_bar(u: Tensor, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal's f(u) = cos^2(((u + s) / (1 + s)) * pi / 2), u = t / T (not yet divided by f(0))."""
    return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def cosine_beta_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:  # noqa: N803
    """Nichol & Dhariwal's cosine schedule (2021, eq. 17).

        alpha-bar(t) = f(t) / f(0),   f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)
        beta_t = 1 - alpha-bar(t) / alpha-bar(t - 1),  clipped to at most `max_beta`

    Noise is added more slowly at the start than with the linear schedule, so fewer steps are wasted
    on images that are already pure noise.
    """
    betas = betas_from_alpha_bar(lambda u: cosine_alpha_bar(u, s), T, max_beta)
    return schedule_from_betas(betas, "cosine")


def shift_schedule(schedule: NoiseSchedule, factor: float, max_beta: float = 0.999) -> NoiseSchedule:
    """The schedule whose SNR at every t is the given one's divided by factor^2: noisier for factor > 1.

    Meant for images `factor` times larger per side than those a schedule was tuned on. Averaging a x a
    pixels divides the variance of independent noise by a^2 while a smooth image keeps most of its own, so
    a larger image at the same alpha-bar_t shows its coarse content more clearly; dividing the SNR by
    factor^2 gives back, to the image's coarse view, the SNR it had before (Chen 2023, Hoogeboom et al. 2023
    shift the log-SNR by the resolution ratio for this reason). The betas follow from the new alpha-bar as
    by `betas_from_alphas_cumprod`, clipped to `max_beta`.
    """
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be a positive number (2 for images twice as large per side), got {factor!r}")
    abar = schedule.alphas_cumprod.double()
    snr = abar / (1.0 - abar) / factor**2
    return schedule_from_betas(betas_from_alphas_cumprod(snr / (1.0 + snr), max_beta),
                               f"{schedule.name}, shifted x{factor:g}")


def make_schedule(name: ScheduleName | str = "linear", T: int = 1000) -> NoiseSchedule:  # noqa: N803
    """The named schedule with T steps: "linear" or "cosine".

    "linear" scales the paper's endpoints by 1000 / T (as improved DDPM does), so that alpha-bar_T is
    close to 0 for any T; at T = 1000 it is exactly DDPM's schedule.
    """
    if name == "linear":
        _check_T(T)
        scale = 1000.0 / T
        return linear_beta_schedule(T, 1e-4 * scale, min(0.02 * scale, 0.999))
    if name == "cosine":
        return cosine_beta_schedule(T)
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(map(repr, SCHEDULES))}")


def snr(schedule: NoiseSchedule) -> Tensor:
    """Signal-to-noise ratio of x_t: SNR(t) = alpha-bar_t / (1 - alpha-bar_t), shape (T,)."""
    abar = schedule.alphas_cumprod.double()
    return (abar / (1.0 - abar)).float()


def snr_db(schedule: NoiseSchedule) -> Tensor:
    """The SNR in decibels, 10 log10 SNR(t): 0 dB where signal and noise have equal power."""
    return 10.0 * torch.log10(snr(schedule))


def _check_T(T: int) -> None:  # noqa: N803
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"T (the number of diffusion steps) must be a positive integer, got {T!r}")
