"""The training loop every lesson uses: ``train(model, data, schedule, config) -> TrainResult``.

Each step is Algorithm 1 of Ho et al. (2020) plus the engineering that makes it work in practice:

    x_0 ~ data (a random batch),  t ~ U{0..T-1},  eps ~ N(0, I)
    loss = || target - f_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, cond) ||^2     (`ddpm_loss`)
    g = clip(grad loss, grad_clip);  theta <- AdamW(theta, g, lr(step))                  (`train_step`)
    theta_ema <- d theta_ema + (1 - d) theta,   d = min(ema_decay, (1 + n) / (10 + n))    (`make_ema`)

With ``TrainConfig(objective="flow")`` the loss is flow matching instead (`diffedu.flow.flow_loss`, lesson 10):
t in [0, 1] (logit-normal by default), the velocity eps - x0 as the target, and no noise schedule (pass None).

lr(step) warms up linearly over ``warmup_steps``, then stays constant or follows a cosine to 0
(`learning_rate`). Around the step: bf16 autocast on CUDA, label dropout for classifier-free
guidance, a progress bar, previews through a callback, atomic checkpoints that hold only state
dicts (they load with ``torch.load(..., weights_only=True)``), exact resumption, Ctrl-C that saves
and returns, and a clear error when the loss stops being finite.

The data stay on the device (`diffedu.device_data`): uint8 pixels or floats, batches gathered by
random index there, with random horizontal flips when ``flip=True``. The speed switches of lesson 06
(``amp``, ``channels_last``, ``compile``, ``fused_adam``, ``ema_impl``, and a larger batch with
`scale_learning_rate`) each change one thing. Under ``torchrun`` the same loop runs data-parallel
over several GPUs (`diffedu.distributed`): every rank draws the global batch's indices, flips, t and
noise from one generator and trains on its slice, so W processes take the steps one process would.

Beside it: the EMA in `diffedu.ema`, checkpoint files in `diffedu.checkpoints`, and the command line
(``python -m diffedu.train ...``) in `diffedu.train_cli`.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from diffedu import distributed
from diffedu.checkpoints import CheckpointError, atomic_save, load_checkpoint, save_checkpoint
from diffedu.device_data import DeviceImages, draw_flips, draw_indices, rank_slice
from diffedu.devices import default_device
from diffedu.ema import EMA, EMA_IMPLS, ema_update, make_ema
from diffedu.flow import TIME_SAMPLINGS, TimeSampling, flow_loss, sample_flow_time
from diffedu.forward import UNIT_IMAGES, DataRangeWarning, check_finite, looks_like_unit_images
from diffedu.losses import ddpm_loss
from diffedu.predictions import Prediction, check_prediction
from diffedu.provenance import Provenance, attach, same_schedule
from diffedu.schedules import NoiseSchedule, linear_beta_schedule

# The EMA and the checkpoint functions live in diffedu.ema and diffedu.checkpoints; they are named here too
# because the training loop is where a reader meets them (and older notebooks import them from here).
__all__ = [
    "EMA", "CheckpointError", "TrainConfig", "TrainResult", "TrainingDiverged", "atomic_save", "draw_batch",
    "drop_labels", "ema_update", "learning_rate", "load_checkpoint", "make_ema", "save_checkpoint",
    "scale_learning_rate", "train", "train_step", "training_batch",
]

OBJECTIVES = ("diffusion", "flow")
AMP_MODES = ("auto", "bf16", "off")
LR_DECAYS = ("constant", "cosine")
LR_SCALINGS = ("sqrt", "linear")
SYNC_EVERY = 10  # on a GPU, read the losses back every this many steps (one sync, not one per step)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says at which step and what to try."""


@dataclass
class TrainConfig:
    """Every setting of `train`. Give a budget: ``steps``, ``seconds`` (wall clock), or both (first one wins)."""

    steps: int | None = None
    seconds: float | None = None
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 200  # linear warm-up from lr / warmup_steps to lr
    lr_decay: Literal["constant", "cosine"] = "constant"  # after warm-up; "cosine" needs `steps`
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping
    ema_decay: float = 0.999
    ema_warmup: bool = True  # d = min(ema_decay, (1 + n) / (10 + n)): early EMA follows the model
    amp: Literal["auto", "bf16", "off"] = "auto"  # "auto": bf16 autocast on CUDA only
    channels_last: bool = False  # NHWC memory layout for the model's weights, the batch and the noise
    compile: bool = False  # torch.compile the model (forward and, through AOTAutograd, backward)
    fused_adam: bool = False  # AdamW(fused=True): one kernel for the whole update (else PyTorch's default)
    ema_impl: Literal["foreach", "swa_utils"] = "foreach"  # see `EMA`: "swa_utils" is AveragedModel's own update
    flip: bool = False  # random horizontal flips of image batches (for CIFAR-10; not for digits)
    objective: Literal["diffusion", "flow"] = "diffusion"  # "flow": flow matching (diffedu.flow), no schedule
    prediction: Prediction = "eps"  # what a diffusion model outputs: "eps", "x0" or "v"
    time_sampling: TimeSampling = "logit_normal"  # flow matching's training times: "uniform" or "logit_normal"
    min_snr_gamma: float | None = None  # weight the loss by min(SNR, gamma) (see `diffedu.losses`); None: plain mean
    cond_drop_prob: float = 0.0  # labels -> null_label with this probability (classifier-free guidance)
    null_label: int | tuple[int, ...] | None = None  # None: config.num_classes; a tuple: the null row (empty prompt)
    seed: int = 0
    checkpoint_every: int | None = 500  # steps
    checkpoint_every_seconds: float | None = None
    preview_every: int | None = None  # steps between callback calls

    def __post_init__(self) -> None:
        if self.steps is None and self.seconds is None:
            raise ValueError("give a training budget: TrainConfig(steps=...) and/or TrainConfig(seconds=...)")
        for name in ("steps", "batch_size", "checkpoint_every", "preview_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {name}={value!r}")
        for name in ("seconds", "lr", "grad_clip", "checkpoint_every_seconds", "min_snr_gamma"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (or None), got {name}={value!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError(f"warmup_steps and weight_decay must be >= 0, got {self.warmup_steps}, "
                             f"{self.weight_decay}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1), got {self.cond_drop_prob}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"unknown amp {self.amp!r}; choose one of {', '.join(map(repr, AMP_MODES))}")
        if self.ema_impl not in EMA_IMPLS:
            raise ValueError(f"unknown ema_impl {self.ema_impl!r}; choose one of {', '.join(map(repr, EMA_IMPLS))}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"unknown lr_decay {self.lr_decay!r}; choose one of {', '.join(map(repr, LR_DECAYS))}")
        if self.lr_decay == "cosine" and self.steps is None:
            raise ValueError("lr_decay='cosine' decays to 0 at `steps`; set steps=..., or use lr_decay='constant'")
        check_prediction(self.prediction)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {', '.join(map(repr, OBJECTIVES))}")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time_sampling {self.time_sampling!r}; choose one of "
                             f"{', '.join(map(repr, TIME_SAMPLINGS))}")
        if self.objective == "flow" and (self.prediction != "eps" or self.min_snr_gamma is not None):
            raise ValueError("objective='flow' trains a velocity; prediction and min_snr_gamma belong to the diffusion "
                             "objective: leave them at their defaults (prediction='eps', min_snr_gamma=None)")


@dataclass
class TrainResult:
    """What `train` returns. Sample from ``ema`` (in eval mode); ``model`` holds the raw weights."""

    model: nn.Module
    ema: nn.Module | None  # None on ranks other than 0 under torchrun (rank 0 keeps the EMA)
    losses: list[float]  # one per step (the global batch's mean), the whole history (earlier runs included)
    step: int
    seconds: float  # training wall-clock, earlier runs included, previews excluded
    images_per_second: float  # in this call, over all processes
    interrupted: bool
    checkpoint: Path | None
    config: TrainConfig = field(repr=False)


def learning_rate(step: int, config: TrainConfig) -> float:
    """lr at 0-based `step`: lr * (step + 1) / warmup_steps during warm-up, then constant or cosine.

        cosine:  lr * (1 + cos(pi * p)) / 2,   p = (step - warmup) / (steps - warmup) in [0, 1]
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_decay == "cosine" and config.steps is not None:
        p = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * p))
    return config.lr


def scale_learning_rate(lr: float, batch_size: int, base_batch_size: int,
                        rule: Literal["sqrt", "linear"] = "sqrt") -> float:
    """The learning rate for `batch_size`, given `lr` that works at `base_batch_size`; k = batch_size / base:

        linear:  lr * k         keeps the step per example fixed: plain SGD (Goyal et al. 2017)
        sqrt:    lr * sqrt(k)   keeps the update's noise fixed: Adam and AdamW (Malladi et al. 2022)

    Both hold up to some "critical" batch size; beyond it a larger batch buys little per step.
    """
    if rule not in LR_SCALINGS:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(map(repr, LR_SCALINGS))}")
    if not (lr > 0 and batch_size >= 1 and base_batch_size >= 1):
        raise ValueError(f"need lr > 0 and positive batch sizes, got lr={lr}, batch_size={batch_size}, "
                         f"base_batch_size={base_batch_size}")
    k = batch_size / base_batch_size
    return lr * (k if rule == "linear" else math.sqrt(k))


def drop_labels(labels: Tensor, p: float, null_label: int | Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Replace each example's condition by `null_label` with probability p (classifier-free guidance training).

    ``labels`` is (N,) class labels or (N, ...) per-example conditions (token ids, say); a whole row is
    dropped at once. ``null_label`` is an int or a tensor of one row's shape (the empty prompt's tokens).
    """
    device = generator.device if generator is not None else labels.device
    keep = torch.rand(labels.shape[0], generator=generator, device=device) >= p
    keep = keep.to(labels.device).view(-1, *([1] * (labels.ndim - 1)))
    null = torch.as_tensor(null_label, dtype=labels.dtype, device=labels.device)
    return torch.where(keep, labels, null.expand_as(labels))


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x0: Tensor,
    schedule: NoiseSchedule | None,
    *,
    cond: Tensor | None = None,
    t: Tensor | None = None,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
    objective: Literal["diffusion", "flow"] = "diffusion",
    prediction: Prediction = "eps",
    time_sampling: TimeSampling = "logit_normal",
    grad_clip: float | None = 1.0,
    autocast_dtype: torch.dtype | None = None,
    min_snr_gamma: float | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One optimisation step on the batch x0: loss, backward, clip, update. Returns (loss, grad norm).

    The loss is `ddpm_loss` (``objective="diffusion"``: t integer steps of ``schedule``) or
    `diffedu.flow.flow_loss` (``objective="flow"``: t in [0, 1], no schedule). ``t`` and ``eps`` are drawn
    from ``generator`` when not given (`draw_batch` gives them). Both results are detached device tensors
    (reading them would wait for the GPU); the norm is the one before clipping, None without clipping.
    Works unchanged on a DDP- or torch.compile-wrapped model.
    """
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x0.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        if objective == "flow":
            loss = flow_loss(model, x0, t, eps, cond=cond, time_sampling=time_sampling, generator=generator)
        else:
            loss = ddpm_loss(model, x0, schedule, t, eps, cond=cond, prediction=prediction, generator=generator,
                             min_snr_gamma=min_snr_gamma)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip is not None else None
    optimizer.step()
    return loss.detach(), grad_norm


def draw_batch(
    data: DeviceImages,
    batch_size: int,
    schedule: NoiseSchedule | None,
    generator: torch.Generator,
    *,
    time_sampling: TimeSampling | None = None,
    flip: bool = False,
    cond_drop_prob: float = 0.0,
    null_label: int | Tensor | None = None,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """One step's random draws for the global batch of `batch_size`; returns this rank's slice (x0, cond, t, eps).

    From one generator, in this order, always for the whole global batch (so that every rank, seeded
    alike, draws the same numbers, and W ranks together train on the batch one process would):

        idx ~ U{0..N-1}^B,  flips ~ Bernoulli(1/2)^B (if flip),  label dropout (if p > 0),
        t ~ U{0..T-1}^B,   eps ~ N(0, I)^(B x C x H x W)

    With ``time_sampling`` (flow matching) t is drawn in [0, 1] by `diffedu.flow.sample_flow_time`
    instead, and ``schedule`` is not used. Only this rank's B / W rows are gathered from the data and returned.
    """
    part = rank_slice(batch_size, rank, world_size)
    idx = draw_indices(len(data), batch_size, generator)                        # (B,)
    flips = draw_flips(batch_size, generator) if flip else None                 # (B,) or None
    cond = None
    if data.labels is not None:
        cond = data.labels[idx]                                                 # (B,) or (B, L)
        if cond_drop_prob > 0:
            if null_label is None:
                raise ValueError("cond_drop_prob > 0 needs a null_label")
            cond = drop_labels(cond, cond_drop_prob, null_label, generator)
        cond = cond[part]
    x0 = data.batch(idx[part], flips[part] if flips is not None else None)      # (B / W, C, H, W)
    gen_device = generator.device
    if time_sampling is not None:
        t = sample_flow_time(batch_size, time_sampling, generator=generator, device=gen_device)[part]
    else:
        t = torch.randint(0, schedule.T, (batch_size,), generator=generator, device=gen_device)[part]
    eps = torch.randn((batch_size, *data.example_shape), generator=generator, device=gen_device, dtype=x0.dtype)[part]
    t, eps = t.to(x0.device), eps.to(x0.device)
    if channels_last and x0.ndim == 4:
        x0 = x0.contiguous(memory_format=torch.channels_last)
        eps = eps.contiguous(memory_format=torch.channels_last)
    return x0, cond, t, eps


def training_batch(images: Tensor, batch_size: int, T: int, generator: torch.Generator,  # noqa: N803
                   flip: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """One step's (x0, t, eps) from images (N, C, H, W), drawn as `train` draws them (lesson 06's exercise) for
    unconditional training with the diffusion objective (labels and flow matching add draws of their own).

    From ``generator``, on its device, in this order: idx ~ U{0..N-1}^B (with replacement), flips ~
    Bernoulli(1/2)^B (only if ``flip``), t ~ U{0..T-1}^B, eps ~ N(0, I); x0 is images[idx], mirrored left-right
    where flipped, in [-1, 1]. The batch depends on the generator's state alone, which `train` checkpoints (a
    resumed run draws the batches it would have drawn) and which every process of a DDP run starts alike.
    """
    data = DeviceImages(images, device=generator.device)
    # draw_batch reads only the number of steps T from the schedule
    x0, _, t, eps = draw_batch(data, batch_size, linear_beta_schedule(T), generator, flip=flip)
    return x0, t, eps


def train(
    model: nn.Module,
    data: Tensor | DeviceImages,
    schedule: NoiseSchedule | None,
    config: TrainConfig,
    *,
    labels: Tensor | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `model` on `data`; batches by random index, drawn on the device (`draw_batch`).

    ``data``: a float tensor (N, C, H, W) or (N, D) in about [-1, 1], a uint8 tensor of pixels
    (N, C, H, W) (scaled to [-1, 1] batch by batch, 4x less memory), or a `DeviceImages`. It is moved
    to the device once. ``labels`` (N,) are passed to the model as ``cond``. With `checkpoint` the
    state is saved there every ``config.checkpoint_every`` steps, at the end and on Ctrl-C; if the
    file exists and ``resume`` is true, training continues from it, and the budget counts the earlier
    part. The callback gets ``{"step", "loss", "losses", "lr", "ema", "model"}`` every
    ``config.preview_every`` steps. Under torchrun (an initialised process group, see
    `diffedu.distributed`) ``config.batch_size`` is the global batch, split over the processes, and only
    rank 0 keeps the EMA, saves, shows progress and calls the callback.
    """
    world = distributed.current()
    if device is None:
        device = distributed.init_distributed().device if world.enabled else default_device()
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    world = distributed.current(device)
    data = _as_device_images(data, labels, device)
    null_label = config.null_label
    if null_label is None:  # diffedu's UNet: labels 0..K-1, and K means "no label"
        null_label = getattr(_model_config(model), "num_classes", None)
    if config.cond_drop_prob > 0 and (data.labels is None or null_label is None):
        raise ValueError("cond_drop_prob > 0 needs labels=... and a null_label (TrainConfig(null_label=...), "
                         "or a model whose config has num_classes)")
    if config.flip and not data.is_image:
        raise ValueError(f"flip=True mirrors images (N, C, H, W), but the data have examples of shape "
                         f"{data.example_shape}; use flip=False")
    rank_slice(config.batch_size, world.rank, world.world_size)  # refuses a batch that does not split evenly
    if schedule is None and config.objective != "flow":
        raise ValueError("the diffusion objective needs a noise schedule (make_schedule('linear', 1000)); only "
                         "TrainConfig(objective='flow') trains without one")
    if schedule is not None and config.objective == "flow":
        raise ValueError("objective='flow' uses no noise schedule (its path is (1 - t) x0 + t eps): pass "
                         "schedule=None, so that the checkpoint does not claim one")
    schedule = schedule.to(device) if schedule is not None else None
    data_range = _check_values(data)
    images = data.is_image and -1.0 <= data_range[0] and data_range[1] <= 1.0
    attach(model, Provenance.of("flow" if config.objective == "flow" else config.prediction, schedule, images=images,
                                source="trained by diffedu.train" + (f" into {checkpoint}" if checkpoint else "")))
    model.to(device).train()
    channels_last = config.channels_last and data.is_image
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp_dtype = torch.bfloat16 if config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda") else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=True if config.fused_adam else None)
    ema = make_ema(model, config.ema_decay, config.ema_warmup, config.ema_impl) if world.is_main else None
    generator = torch.Generator(device).manual_seed(config.seed)  # the same stream on every rank
    step, seconds_before, losses = 0, 0.0, []
    flow = config.objective == "flow"
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and world.is_main:
        prepare_checkpoint_path(path)  # a folder that cannot take it fails now, not after the training
    if path is not None and resume and path.exists():
        state = load_checkpoint(path, model)
        step, seconds_before, losses = _restore(state, model, ema, optimizer, generator, config, path, world,
                                                schedule)
    step_model = distributed.wrap_model(model, world)  # DDP: gradients averaged over the ranks
    # Static shapes: the batch never changes, and a graph specialised to it is the fastest one.
    step_model = torch.compile(step_model, dynamic=False) if config.compile else step_model
    sync_every = 1 if device.type == "cpu" and not world.enabled else SYNC_EVERY  # a CPU read costs nothing
    start, paused, start_step, pending = time.perf_counter(), 0.0, step, []
    seconds = lambda: seconds_before + time.perf_counter() - start - paused  # noqa: E731 (previews excluded)
    saved_step = step if path is not None and path.exists() else -1
    last_save, interrupted, smooth, agreed_stop = seconds(), False, None, False
    if _budget_spent(config, step, seconds()) and world.is_main:
        print(f"already trained to the budget (step {step}, {seconds() / 60:.1f} min); raise steps/seconds to train on")

    def save() -> None:
        nonlocal saved_step, last_save
        if world.is_main:
            save_checkpoint(path, model=model, ema=ema, optimizer=optimizer, step=step, seconds=seconds(),
                            losses=losses, generator=generator, config=config, schedule=schedule, images=images)
        saved_step, last_save = step, seconds()

    def budget_spent() -> bool:
        if not world.enabled:
            return _budget_spent(config, step, seconds())
        # Ranks must stop at the same step: steps are counted alike everywhere; the clock is agreed on at syncs.
        return (config.steps is not None and step >= config.steps) or agreed_stop

    bar = _progress(config, step, progress and world.is_main)
    try:
        with _deferred_sigint() as stop_requested:
            while not budget_spent():
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, config)
                x0, cond, t, eps = draw_batch(data, config.batch_size, schedule, generator, flip=config.flip,
                                              time_sampling=config.time_sampling if flow else None,
                                              cond_drop_prob=config.cond_drop_prob, null_label=null_label,
                                              rank=world.rank, world_size=world.world_size,
                                              channels_last=channels_last)
                loss, _ = train_step(step_model, optimizer, x0, schedule, cond=cond, t=t, eps=eps,
                                     objective=config.objective, prediction=config.prediction,
                                     grad_clip=config.grad_clip,
                                     autocast_dtype=amp_dtype, min_snr_gamma=config.min_snr_gamma)
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                pending.append(loss)
                step_due = bool(config.checkpoint_every and step % config.checkpoint_every == 0)
                time_due = bool(config.checkpoint_every_seconds
                                and seconds() - last_save >= config.checkpoint_every_seconds)
                preview_step = bool(config.preview_every and step % config.preview_every == 0)
                if world.enabled:  # collectives happen at the same steps on every rank
                    sync_now = step % sync_every == 0 or preview_step or step_due
                    due = path is not None and (step_due or (sync_now and time_due))
                else:
                    due = path is not None and (step_due or time_due)
                    sync_now = step % sync_every == 0 or preview_step or due or stop_requested.is_set()
                preview = callback is not None and preview_step and world.is_main
                if sync_now:
                    new = _flush(pending, losses, step, config, data_range, path, world)
                    smooth = _update_bar(bar, new, (step - start_step) * config.batch_size,
                                         seconds() - seconds_before, smooth)
                    if world.enabled:
                        out_of_time = config.seconds is not None and seconds() >= config.seconds
                        agreed_stop, stop_all = distributed.any_rank([out_of_time, stop_requested.is_set()], world)
                        if stop_all:
                            stop_requested.set()
                if due:
                    save()
                if preview:
                    t0 = time.perf_counter()
                    callback({"step": step, "loss": losses[-1], "losses": losses, "lr": learning_rate(step - 1, config),
                              "ema": ema.module, "model": model})
                    paused += time.perf_counter() - t0
                if stop_requested.is_set() and (sync_now or not world.enabled):
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    _flush(pending, losses, step, config, data_range, path, world)
    pressed_during_save: list[int] = []
    if path is not None and step != saved_step:
        with _sigint_held() as pressed_during_save:  # a Ctrl-C must not cost the run its last checkpoint
            save()
    distributed.barrier(world)  # no rank leaves (and reads the checkpoint again) before rank 0 has written it
    if (interrupted or pressed_during_save) and world.is_main:
        where = f"saved to {path}; run again to resume" if path is not None else "kept in memory (no checkpoint path)"
        print(f"interrupted at step {step}: the state is {where}")
    if pressed_during_save:  # asked to stop while the checkpoint was written: stop now that it is safe
        raise KeyboardInterrupt
    images_per_second = (step - start_step) * config.batch_size / max(seconds() - seconds_before, 1e-9)
    return TrainResult(model, ema.module if ema is not None else None, losses, step, seconds(), images_per_second,
                       interrupted, path, config)


def _as_device_images(data: Tensor | DeviceImages, labels: Tensor | None, device: torch.device) -> DeviceImages:
    """The training data as a `DeviceImages` on `device`, with one clear error for what does not fit."""
    if isinstance(data, DeviceImages):
        if labels is not None:
            raise ValueError("labels=... was given, but the DeviceImages has its own labels (or none); "
                             "build it with DeviceImages(x, labels) instead")
        return data.to(device)
    ok = isinstance(data, Tensor) and (data.is_floating_point() or data.dtype == torch.uint8) and data.ndim >= 2
    if not ok or len(data) == 0:
        raise ValueError(f"data must be a non-empty float tensor (N, ...) in about [-1, 1], a uint8 tensor of pixels "
                         f"(N, C, H, W), or a DeviceImages; got {_describe(data)}")
    if labels is not None and (not isinstance(labels, Tensor) or len(labels) != len(data)):
        raise ValueError(f"labels must be a tensor with one entry per example ({len(data)}), got {_describe(labels)}")
    return DeviceImages(data, labels, device=device)


def _restore(state: dict[str, Any], model: nn.Module, ema: AveragedModel | None, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, config: TrainConfig, path: Path,
             world: distributed.DistributedInfo | None = None, schedule: NoiseSchedule | None = None
             ) -> tuple[int, float, list[float]]:
    world = world or distributed.DistributedInfo()
    saved_objective = state["train_config"].get("objective", "diffusion")
    if saved_objective != config.objective:
        raise CheckpointError(f"checkpoint {path} was trained with objective={saved_objective!r}, this run asks for "
                              f"{config.objective!r}: the two learn different targets. Use another checkpoint path, "
                              f"or TrainConfig(objective={saved_objective!r})")
    saved_prediction = state["train_config"].get("prediction", "eps")
    if saved_prediction != config.prediction:
        raise CheckpointError(f"checkpoint {path} was trained to predict {saved_prediction!r}, this run asks for "
                              f"{config.prediction!r}: resuming would switch the target halfway. Use another "
                              f"checkpoint path, or TrainConfig(prediction={saved_prediction!r})")
    saved = state.get("schedule")
    if schedule is not None and saved is not None and not same_schedule(saved["betas"], saved["T"], schedule):
        raise CheckpointError(f"checkpoint {path} was trained with the {saved['name']!r} schedule (T = {saved['T']}), "
                              f"this run passes the {schedule.name!r} schedule (T = {schedule.T}): the model would be "
                              f"asked for noise levels it did not learn. Use another checkpoint path, or "
                              f"make_schedule({saved['name']!r}, {saved['T']})")
    try:
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an EMA or optimizer state that does not fit: {exc}") from None
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if world.enabled:  # dropout: rank 0's saved state everywhere would give every rank the same masks
        torch.manual_seed(config.seed + 1_000_003 * world.rank + int(state["step"]))
    if torch.device(rng["data_device"]).type == generator.device.type:
        generator.set_state(rng["data"])
    else:
        print(f"note: the checkpoint drew batches on {rng['data_device']}, this run on {generator.device}; "
              "the batch order continues from a new seed")
        generator.manual_seed(config.seed + state["step"])
    changed = [f"{k} {v!r} -> {getattr(config, k)!r}" for k, v in state["train_config"].items()
               if hasattr(config, k) and getattr(config, k) != v and k not in ("steps", "seconds")]
    losses = state["losses"].tolist()
    if world.is_main:
        print(f"resuming from {path}: step {state['step']}, {state['seconds'] / 60:.1f} min trained"
              + (f", last loss {losses[-1]:.4f}" if losses else "")
              + (f" (changed: {'; '.join(changed)})" if changed else ""))
    return int(state["step"]), float(state["seconds"]), losses


# ----------------------------------------------------------------------------- loop helpers


def _budget_spent(config: TrainConfig, step: int, seconds: float) -> bool:
    return ((config.steps is not None and step >= config.steps)
            or (config.seconds is not None and seconds >= config.seconds))


def _flush(pending: list[Tensor], losses: list[float], step: int, config: TrainConfig,
           data_range: tuple[float, float], path: Path | None,
           world: distributed.DistributedInfo | None = None) -> list[float]:
    """Move the pending per-step losses to `losses` (one device sync); raise if one is not finite.

    Under torchrun each rank's losses are of its slice; their mean over ranks is the global batch's loss."""
    if not pending:
        return []
    values = distributed.all_reduce_mean(torch.stack(pending).float(), world or distributed.DistributedInfo()).tolist()
    pending.clear()
    first = len(losses)
    losses.extend(values)
    for i, value in enumerate(values):
        if not math.isfinite(value):
            bad_step = first + i + 1
            raise TrainingDiverged(
                f"the loss became {value} at step {bad_step} (lr {learning_rate(bad_step - 1, config):.2e}). Try: a "
                f"lower learning rate (e.g. lr={config.lr / 3:.1e}); gradient clipping (grad_clip={config.grad_clip}, "
                f"try 1.0); checking that the data lie in about [-1, 1] (they span "
                f"{data_range[0]:.3g}..{data_range[1]:.3g}); "
                f"amp='off' (now amp={config.amp!r}); a longer warm-up (warmup_steps={config.warmup_steps})."
                + (f" The last checkpoint in {path} was kept (it is from before the divergence)." if path else ""))
    return values


def _update_bar(bar: Any, new: list[float], images: int, seconds: float, smooth: float | None) -> float:
    """Advance the bar by the new losses; show their running average and the images per second."""
    for value in new:
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
    bar.update(len(new))
    bar.set_postfix(loss=f"{smooth:.4f}", img_s=f"{images / max(seconds, 1e-9):.0f}", refresh=False)
    return smooth  # type: ignore[return-value]


def _progress(config: TrainConfig, step: int, enabled: bool) -> Any:
    return tqdm(total=config.steps, initial=step, desc="training", unit="step", disable=not enabled)


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[threading.Event]:
    """Ctrl-C (Jupyter's stop button) sets a flag that the loop reads after the step; twice stops at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        print("\nstopping after this step and saving (interrupt again to stop at once)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


@contextlib.contextmanager
def _sigint_held() -> Iterator[list[int]]:
    """Hold off Ctrl-C for the block (the final checkpoint write): a press prints that it is saving and is
    recorded in the yielded list, for the caller to stop once the block is done."""
    pressed: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum) or print(
        "\nstill saving the checkpoint: it takes a moment, and an interrupt now would lose it"))
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def prepare_checkpoint_path(path: Path) -> None:
    """Before training: refuse a checkpoint path that is a folder or cannot be written; remove the
    temporary files that interrupted writes of this checkpoint left behind."""
    if path.is_dir():
        raise CheckpointError(f"the checkpoint path {path} is a folder; give a file path such as {path / 'model.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        probe.close()
    except OSError as exc:
        raise CheckpointError(f"cannot write the checkpoint {path} ({exc.strerror or exc}): choose a folder you can "
                              f"write to, before training, so that the run is not lost") from None
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _check_values(data: DeviceImages) -> tuple[float, float]:
    """(min, max) of the whole training set, after refusing NaN or inf in any example (one pass, once)."""
    if data.x.is_floating_point():
        check_finite(data.x, "the training data", "x")
    lo, hi = data.value_range()
    if looks_like_unit_images(data.x, lo, hi):
        warnings.warn(UNIT_IMAGES, DataRangeWarning, stacklevel=3)
    return lo, hi


def _model_config(model: nn.Module) -> Any:
    return getattr(model, "config", None)


def _describe(x: Any) -> str:
    return f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


if __name__ == "__main__":  # python -m diffedu.train ...: the command line lives in diffedu.train_cli
    from diffedu.train_cli import main

    main()
