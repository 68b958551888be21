"""What a model was trained to do, carried on the model so that it is sampled the way it was trained.

A network's output means something only with the schedule and the target it was trained on: an eps
model sampled as a v model, or with the cosine schedule when it learnt the linear one, gives noise
without any error. So `diffedu.train.train`, `load_pretrained`, `model_from_checkpoint` and
`load_text2img` attach a `Provenance` to the model they return (``model.provenance``), and the samplers
(`ddpm_sample`, `ddim_sample`, `ddim_invert`, `diffedu.flow.flow_sample`) read it:

- ``prediction=None`` (their default) means the model's own prediction type ("eps" for a model without
  a provenance, such as a plain function);
- a prediction or a schedule other than the model's is refused, naming both and the fix;
- ``clip_x0=None`` (their default) clamps the predicted x_0 to [-1, 1] for a model trained on images in
  [-1, 1], and not for latents, 2-D points or a model without a provenance.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from diffedu.schedules import NoiseSchedule

__all__ = ["Provenance", "attach", "guess_images", "provenance_of", "resolve", "same_schedule"]


@dataclasses.dataclass(frozen=True)
class Provenance:
    """How a model was trained: its prediction type, its schedule (None for flow matching), its data, its origin."""

    prediction: str  # "eps", "x0", "v", or "flow" (a flow-matching velocity)
    schedule: str | None  # the schedule's name; None for flow matching
    T: int | None  # noqa: N815
    betas: Tensor | None = dataclasses.field(repr=False, compare=False)
    images: bool  # trained on images in [-1, 1] (the samplers then clamp the predicted x_0 by default)
    source: str  # where it came from, for messages: "the shipped weights 'mnist_ddpm'", ...

    @classmethod
    def of(cls, prediction: str, schedule: NoiseSchedule | None, *, images: bool, source: str) -> Provenance:
        if schedule is None:
            return cls(prediction, None, None, None, images, source)
        return cls(prediction, schedule.name, schedule.T, schedule.betas.detach().cpu().float(), images, source)


def guess_images(model_config: dict[str, Any] | None, record: dict[str, Any] | None = None) -> bool:
    """For files written before they recorded it: were the data images in [-1, 1]? A model with 1 or 3 input
    channels whose record names no VAE was trained on pixels; latents have 4 channels here (and a VAE)."""
    channels = (model_config or {}).get("in_channels")
    return channels in (1, 3) and "vae" not in (record or {})


def attach(model: nn.Module, provenance: Provenance) -> nn.Module:
    """Record on `model` how it was trained (``model.provenance``); returns the model."""
    object.__setattr__(model, "provenance", provenance)  # a plain attribute: not a parameter, not in state_dict
    return model


def provenance_of(model: Any) -> Provenance | None:
    """The model's `Provenance`, or None (a plain function, or a module nobody recorded)."""
    found = getattr(model, "provenance", None)
    return found if isinstance(found, Provenance) else None


def resolve(model: Any, schedule: NoiseSchedule | None, prediction: str | None, clip_x0: bool | None,
            sampler: str) -> tuple[str, bool]:
    """The (prediction, clip_x0) a sampler uses for `model`; refuses a use that contradicts its training.

    ``sampler`` is the calling function's name ("ddim_sample", ..., "flow_sample"), for the messages.
    """
    p = provenance_of(model)
    if p is None:
        return prediction or ("flow" if sampler == "flow_sample" else "eps"), bool(clip_x0)
    flow_sampler = sampler == "flow_sample"
    if (p.prediction == "flow") != flow_sampler:
        if flow_sampler:
            raise ValueError(f"{sampler}: the model ({p.source}) is a diffusion model predicting {p.prediction!r} "
                             f"with the {p.schedule!r} schedule, not a flow-matching model: sample it with "
                             f"ddim_sample(model, schedule, shape, steps=...)")
        raise ValueError(f"{sampler}: the model ({p.source}) was trained with flow matching (it predicts a velocity), "
                         f"so no noise schedule fits it: sample it with diffedu.flow.flow_sample(model, shape, "
                         f"steps=...)")
    if prediction is not None and prediction != p.prediction:
        raise ValueError(f"{sampler}: the model ({p.source}) was trained to predict {p.prediction!r}, but "
                         f"prediction={prediction!r} was asked; leave prediction out (the model's own is used) or "
                         f"pass prediction={p.prediction!r}")
    if schedule is not None and p.betas is not None and not same_schedule(p.betas, p.T, schedule):
        raise ValueError(f"{sampler}: the model ({p.source}) was trained with the {p.schedule!r} schedule "
                         f"(T = {p.T}), but it is being sampled with the {schedule.name!r} schedule (T = {schedule.T}); "
                         f"pass the schedule it was trained with (load_pretrained and model_from_checkpoint return "
                         f"it)")
    return p.prediction, p.images if clip_x0 is None else bool(clip_x0)


def same_schedule(betas: Tensor, T: int | None, schedule: NoiseSchedule) -> bool:  # noqa: N803
    """Whether `schedule` is the one of these betas (recorded at training): the same T and betas."""
    return schedule.T == T and torch.allclose(schedule.betas.detach().cpu().float(), betas.float(), rtol=1e-4, atol=1e-7)
