"""The DDPM training objective.

Ho et al. 2020, eq. 14 ("L_simple"): pick a step t uniformly, noise x_0 with eps ~ N(0, I) in closed
form, and regress the network's output on the noise:

    L = E_{x_0, t, eps} || eps - eps_theta(sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps, t) ||^2

The same function trains networks that predict x0 or v instead (see `diffedu.predictions`).

``min_snr_gamma=g`` weights each example by the "min-SNR" rule of Hang et al. (2023), so that the
loss, expressed as an error on x0, counts each t with weight min(SNR_t, g):

    eps:  w_t = min(SNR_t, g) / SNR_t      x0:  w_t = min(SNR_t, g)      v:  w_t = min(SNR_t, g) / (SNR_t + 1)

With eps-prediction this leaves the noisy steps (SNR_t <= g, where the digit's shape is decided) at
weight 1 and turns down the nearly clean ones, whose tiny corrections otherwise take a large share of
every gradient. g = 5 is the paper's choice; None (the default) is Ho et al.'s plain mean.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from diffedu.forward import q_sample
from diffedu.predictions import Prediction, check_prediction, training_target
from diffedu.schedules import NoiseSchedule

Model = Callable[..., Tensor]


def ddpm_loss(
    model: Model,
    x0: Tensor,
    schedule: NoiseSchedule,
    t: Tensor | None = None,
    eps: Tensor | None = None,
    *,
    cond: Tensor | None = None,
    prediction: Prediction = "eps",
    generator: torch.Generator | None = None,
    min_snr_gamma: float | None = None,
) -> Tensor:
    """Mean squared error between the network's output and its target at random (t, eps).

    Args:
        model: called as model(x_t, t) or model(x_t, t, cond); returns a tensor shaped like x0.
        x0: a batch of clean data in about [-1, 1], shape (B, ...).
        schedule: the noise schedule.
        t: timesteps (B,) in 0..T-1; drawn uniformly when None.
        eps: the noise, shaped like x0; drawn from N(0, I) when None.
        cond: optional conditioning passed through to the model (labels, text, ...).
        prediction: what the model outputs: "eps", "x0" or "v".
        generator: for reproducible draws of t and eps.
        min_snr_gamma: weight each example by the min-SNR rule (see above); None: no weighting.
    """
    check_prediction(prediction)
    if min_snr_gamma is not None and not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be positive (5 is usual) or None, got {min_snr_gamma!r}")
    if t is None:
        t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=_gen_device(generator))
        t = t.to(x0.device)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=_gen_device(generator), dtype=x0.dtype)
        eps = eps.to(x0.device)
    x_t = q_sample(x0, t, eps, schedule)
    output = model(x_t, t) if cond is None else model(x_t, t, cond)
    if output.shape != x0.shape:
        raise ValueError(f"the model returned shape {tuple(output.shape)}; it must match x0's {tuple(x0.shape)}")
    target = training_target(x0, eps, t, schedule, prediction)
    if min_snr_gamma is None:
        return F.mse_loss(output.float(), target.float())
    per_example = (output.float() - target.float()).square().flatten(1).mean(dim=1)
    return (min_snr_weight(t, schedule, min_snr_gamma, prediction) * per_example).mean()


def min_snr_weight(t: Tensor, schedule: NoiseSchedule, gamma: float, prediction: Prediction = "eps") -> Tensor:
    """The min-SNR-gamma loss weight of each timestep in ``t`` for a network that predicts ``prediction``."""
    abar = schedule.alphas_cumprod.to(t.device)[t].float()
    snr = abar / (1.0 - abar)
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    return clipped / (snr + 1.0)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")
