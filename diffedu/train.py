"""The training loop every lesson uses: ``train(model, data, schedule, config) -> TrainResult``.

Each step is Algorithm 1 of Ho et al. (2020) plus the engineering that makes it work in practice:

    x_0 ~ data (a random batch),  t ~ U{0..T-1},  eps ~ N(0, I)
    loss = || target - f_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, cond) ||^2     (`ddpm_loss`)
    g = clip(grad loss, grad_clip);  theta <- AdamW(theta, g, lr(step))                  (`train_step`)
    theta_ema <- d theta_ema + (1 - d) theta,   d = min(ema_decay, (1 + n) / (10 + n))    (`make_ema`)

lr(step) warms up linearly over ``warmup_steps``, then stays constant or follows a cosine to 0
(`learning_rate`). Around the step: bf16 autocast on CUDA, label dropout for classifier-free
guidance, a progress bar, previews through a callback, atomic checkpoints that hold only state
dicts (they load with ``torch.load(..., weights_only=True)``), exact resumption, Ctrl-C that saves
and returns, and a clear error when the loss stops being finite.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from diffedu.losses import ddpm_loss
from diffedu.predictions import Prediction, check_prediction
from diffedu.profiles import default_device, device_name
from diffedu.schedules import NoiseSchedule, SCHEDULES, make_schedule

__all__ = [
    "CheckpointError", "TrainConfig", "TrainResult", "TrainingDiverged", "atomic_save", "drop_labels",
    "learning_rate", "load_checkpoint", "main", "make_ema", "save_checkpoint", "train", "train_step",
]

FORMAT = "diffedu-checkpoint"
FORMAT_VERSION = 1
AMP_MODES = ("auto", "bf16", "off")
LR_DECAYS = ("constant", "cosine")
SYNC_EVERY = 10  # on a GPU, read the losses back every this many steps (one sync, not one per step)


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, not a diffedu checkpoint, or does not fit the model."""


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
    channels_last: bool = False
    compile: bool = False  # torch.compile the model's forward
    fused_adam: bool = False
    prediction: Prediction = "eps"
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
        for name in ("seconds", "lr", "grad_clip", "checkpoint_every_seconds"):
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
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"unknown lr_decay {self.lr_decay!r}; choose one of {', '.join(map(repr, LR_DECAYS))}")
        if self.lr_decay == "cosine" and self.steps is None:
            raise ValueError("lr_decay='cosine' decays to 0 at `steps`; set steps=..., or use lr_decay='constant'")
        check_prediction(self.prediction)


@dataclass
class TrainResult:
    """What `train` returns. Sample from ``ema`` (in eval mode); ``model`` holds the raw weights."""

    model: nn.Module
    ema: nn.Module
    losses: list[float]  # one per step, the whole history (earlier runs included when resumed)
    step: int
    seconds: float  # training wall-clock, earlier runs included, previews excluded
    images_per_second: float  # in this call
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


@torch.no_grad()
def ema_update(ema_params: list[Tensor], params: list[Tensor], decay: float) -> None:
    """In place, for each pair: theta_ema <- decay * theta_ema + (1 - decay) * theta (three foreach ops)."""
    torch._foreach_sub_(ema_params, params)  # ema - theta
    torch._foreach_mul_(ema_params, decay)  # decay (ema - theta)
    torch._foreach_add_(ema_params, params)  # decay ema + (1 - decay) theta


def make_ema(model: nn.Module, decay: float = 0.999, warmup: bool = True) -> AveragedModel:
    """An exponential moving average of `model`'s weights (`torch.optim.swa_utils.AveragedModel`).

        theta_ema <- d theta_ema + (1 - d) theta,   d = min(decay, (1 + n) / (10 + n)) with warm-up

    where n counts the updates so far, so an early EMA follows the model instead of staying near
    its random start. Call ``ema.update_parameters(model)`` after each step; sample from ``ema.module``.
    """

    def update(ema_params: list[Tensor], params: list[Tensor], n: Tensor) -> None:
        # n_averaged stays on the CPU (we never .to() the wrapper), so reading it never waits for a GPU.
        count = float(n)
        ema_update(ema_params, params, min(decay, (1.0 + count) / (10.0 + count)) if warmup else decay)

    ema = AveragedModel(model, multi_avg_fn=update, use_buffers=False)
    ema.module.eval()
    return ema


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
    schedule: NoiseSchedule,
    *,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    prediction: Prediction = "eps",
    grad_clip: float | None = 1.0,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One optimisation step on the batch x0: loss, backward, clip, update. Returns (loss, grad norm).

    Both are detached device tensors (reading them would wait for the GPU); the norm is the one
    before clipping, None without clipping. Works unchanged on a DDP- or torch.compile-wrapped model.
    """
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x0.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        loss = ddpm_loss(model, x0, schedule, cond=cond, prediction=prediction, generator=generator)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip is not None else None
    optimizer.step()
    return loss.detach(), grad_norm


def train(
    model: nn.Module,
    data: Tensor,
    schedule: NoiseSchedule,
    config: TrainConfig,
    *,
    labels: Tensor | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `model` on `data` (N, C, H, W) or (N, D) in about [-1, 1]; batches by random index.

    With `checkpoint` the state is saved there every ``config.checkpoint_every`` steps, at the end
    and on Ctrl-C; if the file exists and ``resume`` is true, training continues from it, and the
    budget counts the earlier part. ``labels`` (N,) are passed to the model as ``cond``. The
    callback gets ``{"step", "loss", "losses", "lr", "ema", "model"}`` every ``config.preview_every`` steps.
    """
    device = torch.device(device) if device is not None else default_device()
    if not isinstance(data, Tensor) or not data.is_floating_point() or data.ndim < 2 or len(data) == 0:
        raise ValueError(f"data must be a non-empty float tensor (N, ...), got {_describe(data)}")
    if labels is not None and (not isinstance(labels, Tensor) or len(labels) != len(data)):
        raise ValueError(f"labels must be a tensor with one entry per example ({len(data)}), got {_describe(labels)}")
    null_label = config.null_label
    if null_label is None:  # diffedu's UNet: labels 0..K-1, and K means "no label"
        null_label = getattr(_model_config(model), "num_classes", None)
    if config.cond_drop_prob > 0 and (labels is None or null_label is None):
        raise ValueError("cond_drop_prob > 0 needs labels=... and a null_label (TrainConfig(null_label=...), "
                         "or a model whose config has num_classes)")
    data, schedule = data.to(device), schedule.to(device)
    labels = labels.to(device) if labels is not None else None
    model.to(device).train()
    if config.channels_last and data.ndim == 4:
        model.to(memory_format=torch.channels_last)
    amp_dtype = torch.bfloat16 if config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda") else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=True if config.fused_adam else None)
    ema = make_ema(model, config.ema_decay, config.ema_warmup)
    generator = torch.Generator(device).manual_seed(config.seed)
    step, seconds_before, losses = 0, 0.0, []
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and resume and path.exists():
        state = load_checkpoint(path, model)
        step, seconds_before, losses = _restore(state, model, ema, optimizer, generator, config, path)
    step_model = torch.compile(model) if config.compile else model
    data_range = (data.min().item(), data.max().item())
    sync_every = 1 if device.type == "cpu" else SYNC_EVERY  # reading a CPU tensor costs nothing
    start, paused, start_step, pending = time.perf_counter(), 0.0, step, []
    seconds = lambda: seconds_before + time.perf_counter() - start - paused  # noqa: E731 (previews excluded)
    saved_step = step if path is not None and path.exists() else -1
    last_save, interrupted, smooth = seconds(), False, None
    if _budget_spent(config, step, seconds()):
        print(f"already trained to the budget (step {step}, {seconds() / 60:.1f} min); raise steps/seconds to train on")

    def save() -> None:
        nonlocal saved_step, last_save
        save_checkpoint(path, model=model, ema=ema, optimizer=optimizer, step=step, seconds=seconds(),
                        losses=losses, generator=generator, config=config, schedule=schedule)
        saved_step, last_save = step, seconds()

    bar = _progress(config, step, progress)
    try:
        with _deferred_sigint() as stop_requested:
            while not _budget_spent(config, step, seconds()):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, config)
                idx = torch.randint(0, len(data), (config.batch_size,), generator=generator, device=device)
                x0 = data[idx]  # (B, ...)
                if config.channels_last and x0.ndim == 4:
                    x0 = x0.contiguous(memory_format=torch.channels_last)
                cond = labels[idx] if labels is not None else None
                if cond is not None and config.cond_drop_prob > 0:
                    cond = drop_labels(cond, config.cond_drop_prob, null_label, generator)
                loss, _ = train_step(step_model, optimizer, x0, schedule, cond=cond, generator=generator,
                                     prediction=config.prediction, grad_clip=config.grad_clip,
                                     autocast_dtype=amp_dtype)
                ema.update_parameters(model)
                step += 1
                pending.append(loss)
                preview = callback is not None and config.preview_every and step % config.preview_every == 0
                due = path is not None and ((config.checkpoint_every and step % config.checkpoint_every == 0) or (
                    config.checkpoint_every_seconds and seconds() - last_save >= config.checkpoint_every_seconds))
                if step % sync_every == 0 or preview or due or stop_requested.is_set():
                    new = _flush(pending, losses, step, config, data_range, path)
                    smooth = _update_bar(bar, new, (step - start_step) * config.batch_size,
                                         seconds() - seconds_before, smooth)
                if due:
                    save()
                if preview:
                    t0 = time.perf_counter()
                    callback({"step": step, "loss": losses[-1], "losses": losses, "lr": learning_rate(step - 1, config),
                              "ema": ema.module, "model": model})
                    paused += time.perf_counter() - t0
                if stop_requested.is_set():
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    _flush(pending, losses, step, config, data_range, path)
    if path is not None and step != saved_step:
        save()
    if interrupted:
        where = f"saved to {path}; run again to resume" if path is not None else "kept in memory (no checkpoint path)"
        print(f"interrupted at step {step}: the state is {where}")
    images_per_second = (step - start_step) * config.batch_size / max(seconds() - seconds_before, 1e-9)
    return TrainResult(model, ema.module, losses, step, seconds(), images_per_second, interrupted, path, config)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike[str], *, model: nn.Module, ema: AveragedModel,
                    optimizer: torch.optim.Optimizer, step: int, seconds: float, losses: list[float],
                    generator: torch.Generator, config: TrainConfig, schedule: NoiseSchedule) -> Path:
    """Write the training state (state dicts, tensors and primitives only) atomically to `path`.

    The learning rate is a pure function of `step` (`learning_rate`), so `step` is its whole state.
    """
    model_config = _model_config(model)
    state = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
        "step": step, "seconds": seconds, "losses": torch.tensor(losses, dtype=torch.float32),
        "rng": {"torch": torch.get_rng_state(), "data": generator.get_state(), "data_device": str(generator.device),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None},
        "train_config": dataclasses.asdict(config),
        "model_class": type(model).__name__,
        "model_config": dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config) else None,
        "schedule": {"name": schedule.name, "T": schedule.T, "betas": schedule.betas.detach().cpu()},
    }
    return atomic_save(state, path)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError, AttributeError):  # make the rename itself durable (POSIX only)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def load_checkpoint(path: str | os.PathLike[str], model: nn.Module | None = None) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; with `model`, load its weights into it.

    Raises `CheckpointError` with one clear message for a missing, corrupt or foreign file, and for
    weights that do not fit `model` (naming the keys and shapes that differ and both configs).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: the file does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, pickled objects: all end here
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is truncated, corrupt, or holds more than tensors and state "
            f"dicts ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Delete it to start "
            f"afresh, or pass resume=False") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = f"a dict with keys {sorted(map(str, state))[:8]}" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a diffedu training checkpoint (it holds {got}); write one with "
                              f"diffedu.train.train(..., checkpoint=path)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state['format_version']}, newer than this diffedu "
                              f"reads ({FORMAT_VERSION}); update diffedu")
    if model is not None:
        _check_fits(state, model, path)
        model.load_state_dict(state["model"])
    return state


def _check_fits(state: dict[str, Any], model: nn.Module, path: Path) -> None:
    saved, own = state["model"], model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    parts = [f"{label} ({len(items)}): {', '.join(items[:3])}{f' and {len(items) - 3} more' if len(items) > 3 else ''}"
             for label, items in (("shapes differ", shapes), ("missing in checkpoint", missing),
                                  ("not in model", unexpected)) if items]
    saved_config, mc = state.get("model_config"), _model_config(model)
    own_config = dataclasses.asdict(mc) if dataclasses.is_dataclass(mc) else None
    if saved_config is not None and own_config is not None:
        diff = [f"{k}={v!r} (this model: {own_config.get(k)!r})"
                for k, v in saved_config.items() if own_config.get(k) != v]
        made = f"The checkpoint was made with {', '.join(diff) or 'the same config'}"
    else:
        made = f"The checkpoint was made with a {state.get('model_class')} of config {saved_config}"
    raise CheckpointError(
        f"checkpoint {path} does not fit this {type(model).__name__}: " + "; ".join(parts) + f". {made}. Build "
        f"the model with the checkpoint's config ({state.get('model_class')}(...) from state['model_config']), or "
        f"use another checkpoint path")


def _restore(state: dict[str, Any], model: nn.Module, ema: AveragedModel, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, config: TrainConfig, path: Path) -> tuple[int, float, list[float]]:
    try:
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an EMA or optimizer state that does not fit: {exc}") from None
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if torch.device(rng["data_device"]).type == generator.device.type:
        generator.set_state(rng["data"])
    else:
        print(f"note: the checkpoint drew batches on {rng['data_device']}, this run on {generator.device}; "
              "the batch order continues from a new seed")
        generator.manual_seed(config.seed + state["step"])
    changed = [f"{k} {v!r} -> {getattr(config, k)!r}" for k, v in state["train_config"].items()
               if hasattr(config, k) and getattr(config, k) != v and k not in ("steps", "seconds")]
    losses = state["losses"].tolist()
    print(f"resuming from {path}: step {state['step']}, {state['seconds'] / 60:.1f} min trained"
          + (f", last loss {losses[-1]:.4f}" if losses else "")
          + (f" (changed: {'; '.join(changed)})" if changed else ""))
    return int(state["step"]), float(state["seconds"]), losses


# ----------------------------------------------------------------------------- loop helpers


def _budget_spent(config: TrainConfig, step: int, seconds: float) -> bool:
    return ((config.steps is not None and step >= config.steps)
            or (config.seconds is not None and seconds >= config.seconds))


def _flush(pending: list[Tensor], losses: list[float], step: int, config: TrainConfig,
           data_range: tuple[float, float], path: Path | None) -> list[float]:
    """Move the pending per-step losses to `losses` (one device sync); raise if one is not finite."""
    if not pending:
        return []
    values = torch.stack(pending).float().tolist()
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
    from tqdm.auto import tqdm

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


def _model_config(model: nn.Module) -> Any:
    return getattr(model, "config", None)


def _describe(x: Any) -> str:
    return f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


# ----------------------------------------------------------------------------- command line


PRESETS = ("mnist_small", "cifar10_small", "ddpm_cifar10")


def main(argv: list[str] | None = None) -> TrainResult:
    """``python -m diffedu.train --dataset mnist --preset mnist_small --minutes 10 --out runs/mnist.pt``."""
    from diffedu import unet
    from diffedu.data import DATASETS, load_dataset
    from diffedu.profiles import get_profile

    p = argparse.ArgumentParser(prog="python -m diffedu.train", description=main.__doc__)
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--preset", choices=PRESETS, default="mnist_small")
    p.add_argument("--profile", choices=("quick", "cpu", "gpu"), default=None,
                   help="sizes the defaults; default: DIFFEDU_PROFILE, else by device")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget (default: 0.5 quick, 10 cpu, 30 gpu)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", type=Path, required=True, help="checkpoint path; resumed if it exists")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 quick/cpu, 128 gpu")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 20 quick, 100 cpu, 200 gpu)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--schedule", choices=SCHEDULES, default="linear")
    p.add_argument("--conditional", action="store_true", help="class-conditional, with label dropout 0.1")
    p.add_argument("--limit", type=int, default=None, help="use only the first LIMIT training images")
    p.add_argument("--device", default=None)
    p.add_argument("--amp", choices=AMP_MODES, default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--fused-adam", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (1 is faster on a busy shared CPU)")
    p.add_argument("--export", metavar="NAME", default=None, help="also write diffedu/weights/NAME.pt (EMA weights)")
    args = p.parse_args(argv)

    profile = get_profile(args.profile)
    device = torch.device(args.device) if args.device else profile.device
    minutes = args.minutes if args.minutes is not None else profile.pick(quick=0.5, cpu=10.0, gpu=30.0)
    batch_size = args.batch_size or profile.pick(quick=32, cpu=32, gpu=128)
    warmup = args.warmup if args.warmup is not None else profile.pick(quick=20, cpu=100, gpu=200)
    if args.threads:
        torch.set_num_threads(args.threads)
    images = load_dataset(args.dataset, "train", limit=args.limit)
    overrides = {"num_classes": len(images.classes)} if args.conditional else {}
    torch.manual_seed(args.seed)  # the initial weights
    model = unet.UNet(getattr(unet, args.preset)(**overrides))
    config = TrainConfig(steps=args.steps, seconds=minutes * 60 if minutes else None, batch_size=batch_size,
                         lr=args.lr, warmup_steps=warmup, ema_decay=args.ema_decay, amp=args.amp,
                         channels_last=args.channels_last, compile=args.compile, fused_adam=args.fused_adam,
                         cond_drop_prob=0.1 if args.conditional else 0.0, seed=args.seed)
    schedule = make_schedule(args.schedule, args.T)
    print(f"{args.preset}: {unet.count_parameters(model):,} parameters | {images!r} | {schedule!r} | "
          f"device {device} ({device_name(device)}, {torch.get_num_threads()} threads) | budget {minutes} min, "
          f"steps {args.steps}, batch {batch_size}, lr {args.lr}, warm-up {warmup}")
    result = train(model, images.x, schedule, config, labels=images.y if args.conditional else None,
                   checkpoint=args.out, device=device)
    tail = result.losses[-100:]
    record = {
        "command": " ".join(["python -m diffedu.train", *(argv if argv is not None else sys.argv[1:])]),
        "dataset": args.dataset, "data_source": images.source, "images": len(images), "preset": args.preset,
        "parameters": unet.count_parameters(model), "model_config": dataclasses.asdict(model.config),
        "schedule": args.schedule, "T": args.T, "train_config": dataclasses.asdict(config),
        "steps": result.step, "seconds": round(result.seconds, 1),
        "images_per_second": round(result.images_per_second, 1), "interrupted": result.interrupted,
        "threads": torch.get_num_threads(),
        "final_loss": sum(tail) / max(len(tail), 1), "device": device_name(device), "torch": str(torch.__version__),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(),
    }
    record_path = args.out.with_suffix(".json")
    tmp = record_path.with_name(f".{record_path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, record_path)
    print(f"step {result.step}, {result.seconds / 60:.1f} min, {result.images_per_second:.0f} images/s, "
          f"final loss {record['final_loss']:.4f} -> {args.out}, {record_path}")
    if args.export:
        from diffedu.pretrained import export_weights, weights_dir

        out = export_weights(args.out, weights_dir() / f"{args.export}.pt", name=args.export, record=record)
        print(f"exported the EMA weights to {out}")
    return result


def git_commit() -> str | None:
    """The repository's HEAD commit, with "-dirty" when tracked files changed; None outside git."""
    try:
        root = Path(__file__).resolve().parent
        run = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=5)  # noqa: E731
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    main()
