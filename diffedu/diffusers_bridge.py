"""The course's models sampled through Hugging Face diffusers' schedulers (an optional dependency).

A diffusers scheduler holds a sampler's state (its timesteps, and for multistep solvers the previous
predictions) and advances x one step per `scheduler.step(model_output, t, x)`. Our models are plain callables
`model(x_t, t)`, so the bridge is a short loop:

    scheduler.set_timesteps(steps)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample

`diffusers_scheduler` builds a scheduler from a course schedule (the same betas, T and prediction type), so a
diffusers sampler and one of ours see the same model and the same noise levels. diffusers is imported only
when these functions are called: `pip install diffusers` (it is in the course's dev extra).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import Tensor

from diffedu.guidance import guided_output
from diffedu.predictions import Prediction, check_prediction
from diffedu.provenance import resolve
from diffedu.samplers import Callback, eval_mode, progress_bar, start_noise
from diffedu.schedules import NoiseSchedule

SCHEDULERS = {  # our short names -> diffusers' class names
    "dpm_multistep": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
}
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}

__all__ = ["SCHEDULERS", "diffusers_available", "diffusers_sample", "diffusers_scheduler"]


def diffusers_available() -> bool:
    """Whether diffusers can be imported here."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


def _diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("this needs Hugging Face diffusers, an optional dependency: pip install diffusers "
                          "(or pip install -e \".[dev]\" in the course's repository)") from e
    return diffusers


def diffusers_scheduler(name: str, schedule: NoiseSchedule, prediction: Prediction = "eps", **config: Any):
    """A diffusers scheduler over `schedule`'s betas: "dpm_multistep", "euler" or "ddim" (see SCHEDULERS).

    `config` goes to the scheduler's constructor (for example solver_order=2, use_karras_sigmas=True,
    timestep_spacing="trailing"); the betas, T and the prediction type come from the schedule and `prediction`.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(map(repr, SCHEDULERS))}")
    check_prediction(prediction)
    cls = getattr(_diffusers(), SCHEDULERS[name])
    extra = {"clip_sample": False, "set_alpha_to_one": True} if name == "ddim" else {}
    return cls(num_train_timesteps=schedule.T, trained_betas=schedule.betas.double().cpu().numpy(),
               prediction_type=PREDICTION_TYPES[prediction], **{**extra, **config})


@torch.no_grad()
def diffusers_sample(
    model: Callable[..., Tensor],
    scheduler: Any,
    shape: tuple[int, ...],
    *,
    steps: int | None = None,
    timesteps: list[int] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    x_T: Tensor | None = None,  # noqa: N803
    cond: Tensor | None = None,
    guidance: float | None = None,
    uncond: Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Tensor:
    """Sample `model` with a diffusers scheduler: `steps` of its own spacing, or the given `timesteps`.

    x_T ~ N(0, I) (drawn from `generator` when not given) is scaled by the scheduler's init_noise_sigma, as
    diffusers' pipelines do. The model sees the scheduler's timesteps (integers for DPM-Solver and DDIM,
    floats for Euler). `cond`, `guidance` and `uncond` work as in the course's samplers; the callback gets
    {"i", "t", "x"} after each step.
    """
    if (steps is None) == (timesteps is None):
        raise ValueError("pass exactly one of steps= or timesteps= (a descending list of ints)")
    resolve(model, None, None, None, "diffusers_sample")
    x, device = start_noise(model, shape, x_T, generator, device)
    if steps is not None:
        scheduler.set_timesteps(num_inference_steps=steps)
    else:
        if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError(f"{type(scheduler).__name__} takes no custom timesteps; pass steps= (its own spacing)")
        scheduler.set_timesteps(timesteps=[int(t) for t in timesteps])
    x = x * scheduler.init_noise_sigma
    with eval_mode(model):
        for i, t in enumerate(progress_bar(list(scheduler.timesteps), progress, type(scheduler).__name__)):
            x_in = scheduler.scale_model_input(x, t)
            t_batch = torch.full((shape[0],), t.item(), device=device, dtype=t.dtype)
            if guidance is not None:
                out = guided_output(model, x_in, t_batch, cond, uncond, guidance)
            else:
                out = model(x_in, t_batch) if cond is None else model(x_in, t_batch, cond)
            x = scheduler.step(out.float(), t, x).prev_sample
            if callback is not None:
                callback({"i": i, "t": t.item(), "x": x})
    return x
