"""Checkpoints and weights files: written atomically, read with ``torch.load(..., weights_only=True)``.

- A **training checkpoint** (`save_checkpoint`, `load_checkpoint`) holds everything a run needs to resume
  exactly: the model's, the EMA's and the optimizer's state dicts, the step, the clock, the losses, the
  random generators' states, the training config, the model's class and config, and the schedule.
- A **shipped weights file** (`weights_payload`) holds only the EMA weights and what is needed to use
  them: the model's class and config, the schedule, the prediction type and the record of how it was
  trained. `diffedu.pretrained` and `diffedu.text2img` write and read them; they live in `weights_dir()`.

Every file is written by `atomic_save`: to a temporary file beside the target, flushed to disk, then
renamed over it, so an interrupt leaves either the old file or the new one, never half of one. Files
hold only tensors and primitives, so loading one never runs code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from diffedu.provenance import guess_images
from diffedu.schedules import SCHEDULES, NoiseSchedule

__all__ = ["CheckpointError", "atomic_save", "check_fits", "ema_weights", "load_checkpoint", "read_file",
           "save_checkpoint", "weights_dir", "weights_payload"]

FORMAT = "diffedu-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, not a diffedu checkpoint, or does not fit the model."""


def weights_dir() -> Path:
    """The folder of the weights shipped with the package: ``diffedu/weights``."""
    return Path(__file__).parent / "weights"


def save_checkpoint(path: str | os.PathLike[str], *, model: nn.Module, ema: AveragedModel,
                    optimizer: torch.optim.Optimizer, step: int, seconds: float, losses: list[float],
                    generator: torch.Generator, config: Any, schedule: NoiseSchedule | None,
                    images: bool = False) -> Path:
    """Write the training state (state dicts, tensors and primitives only) atomically to `path`.

    ``config`` is the run's `diffedu.train.TrainConfig` (a dataclass, stored as a dict); ``schedule`` is None
    for a flow-matching run; ``images``: the data were images in [-1, 1] (see `diffedu.provenance`).
    The learning rate is a pure function of `step` (`learning_rate`), so `step` is its whole state.
    """
    model_config = getattr(model, "config", None)
    state = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
        "step": step, "seconds": seconds, "losses": torch.tensor(losses, dtype=torch.float32),
        "rng": {"torch": torch.get_rng_state(), "data": generator.get_state(), "data_device": str(generator.device),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None},
        "train_config": dataclasses.asdict(config),
        "model_class": type(model).__name__,
        "model_config": dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config) else None,
        "schedule": ({"name": schedule.name, "T": schedule.T, "betas": schedule.betas.detach().cpu()}
                     if schedule is not None else None),
        "images": bool(images),
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
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the file does not exist")
    state = read_file(path, FORMAT, "Delete it to start afresh, or pass resume=False")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state['format_version']}, newer than this diffedu "
                              f"reads ({FORMAT_VERSION}); update diffedu")
    if model is not None:
        check_fits(model, state["model"], path, state.get("model_class"), state.get("model_config"))
        model.load_state_dict(state["model"])
    return state


#: What each diffedu file format is, and what reads it (for the message when a file goes to the wrong loader).
KINDS = {
    FORMAT: ("a training checkpoint", "diffedu.checkpoints.load_checkpoint, or export its weights with "
                                      "python -m diffedu.train ... --export NAME"),
    "diffedu-weights": ("a diffusion model's weights file", "diffedu.pretrained.load_pretrained"),
    "diffedu-text2img-weights": ("a text-to-image weights file", "diffedu.text2img.load_text2img"),
    "diffedu-vae-weights": ("a VAE weights file", "diffedu.latent.load_vae"),
    "diffedu-vae-checkpoint": ("a VAE training checkpoint", "diffedu.models.vae.train_vae(..., checkpoint=path)"),
    "diffedu-clip-weights": ("a CLIP weights file", "diffedu.clip.load_clip"),
    "diffedu-clip-checkpoint": ("a CLIP training checkpoint", "torch.load(path, weights_only=True)['model'] into a "
                                                               "diffedu.clip.MiniCLIP, or export it with export_clip"),
    "classifier": ("a classifier weights file", "diffedu.models.classifier.load_classifier(path=...)"),
    "diffedu-distill-checkpoint": ("a distillation checkpoint", "python -m diffedu.distill --out PATH (to continue "
                                                                 "it), or diffedu.distill.distill(..., out=PATH)"),
}


def file_kind(payload: Any) -> str | None:
    """The diffedu format of a loaded file (a key of `KINDS`), or None for anything else."""
    if not isinstance(payload, dict):
        return None
    if payload.get("format") in KINDS:
        return payload["format"]
    return "classifier" if {"state_dict", "config", "test_accuracy"} <= payload.keys() else None


def read_file(path: str | os.PathLike[str], expected: str, fix: str) -> dict[str, Any]:
    """A diffedu file of format `expected` (a key of `KINDS`), read with ``weights_only=True``.

    One `CheckpointError` for each way it can go wrong, naming the file and what to do (`fix` is the
    remedy for a damaged file): a folder, a truncated or corrupt file, a file holding pickled code, a file
    of another kind (naming the loader that reads it).
    """
    path = Path(path)
    what = KINDS[expected][0]
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt"))[:5]
        raise CheckpointError(f"{path} is a folder; give the path of {what} inside it"
                              + (f" (there: {', '.join(inside)})" if inside else " (it holds no .pt files)"))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not a refused class or function: damaged bytes
            raise CheckpointError(f"cannot read {path}: the file is truncated or corrupt (it is not a PyTorch file "
                                  f"of tensors). {fix}") from None
        raise CheckpointError(
            f"{path} holds pickled Python objects besides tensors, and diffedu never loads those (unpickling can run "
            f"any code). If you made the file yourself, save only tensors and state dicts "
            f"(torch.save(model.state_dict(), path)). {fix}") from None
    except Exception as exc:  # truncated zip, random bytes, a file cut short by a full disk
        raise CheckpointError(f"cannot read {path}: the file is truncated or corrupt ({type(exc).__name__}). "
                              f"{fix}") from None
    kind = file_kind(payload)
    if kind != expected:
        if kind is not None:
            got = KINDS[kind][0] + f"; read it with {KINDS[kind][1]}"
        elif isinstance(payload, dict):
            got = f"a dict with keys {sorted(map(str, payload))[:8]}, not a diffedu file"
        else:
            got = f"a {type(payload).__name__}, not a diffedu file"
        raise CheckpointError(f"{path} is not {what}: it is {got}")
    return payload


def check_fits(model: nn.Module, saved: dict[str, torch.Tensor], path: str | os.PathLike[str],
               saved_class: str | None, saved_config: dict[str, Any] | None) -> None:
    """Raise `CheckpointError` when the state dict `saved` (from `path`) does not fit `model`.

    The message names the keys and shapes that differ, and the config values that differ between the
    file's config and the model's.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [f"{k}: file {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    parts = [f"{label} ({len(items)}): {', '.join(items[:3])}{f' and {len(items) - 3} more' if len(items) > 3 else ''}"
             for label, items in (("shapes differ", shapes), ("missing in the file", missing),
                                  ("not in the model", unexpected)) if items]
    mc = getattr(model, "config", None)
    own_config = dataclasses.asdict(mc) if dataclasses.is_dataclass(mc) else None
    if saved_config is not None and own_config is not None:
        diff = [f"{k}={v!r} (this model: {own_config.get(k)!r})"
                for k, v in saved_config.items() if own_config.get(k) != v]
        made = f"The file says it was made with {', '.join(diff) or 'the same config'}"
    else:
        made = f"The file says it holds a {saved_class} of config {saved_config}"
    raise CheckpointError(
        f"{path} does not fit this {type(model).__name__}: " + "; ".join(parts) + f". {made}. Build the model with "
        f"the file's config, or use another file (a file whose config does not match its tensors was edited or "
        f"damaged: export it again)")


def weights_payload(state: dict[str, Any], *, file_format: str, name: str, record: dict[str, Any],
                    max_fp32_bytes: int) -> dict[str, Any]:
    """What a shipped weights file holds, from a training checkpoint's state (`export_weights`, `export_text2img`).

    The EMA weights (float32 up to ``max_fp32_bytes``, float16 above), the model's class and config, the
    schedule (its betas only when it is not a named one; None for flow matching), the prediction type
    ("eps", "x0", "v", or "flow" for a flow-matching velocity), whether it was trained on images in [-1, 1],
    the step, and ``record``.
    Only tensors and plain JSON types: the file loads with ``torch.load(weights_only=True)``.
    """
    weights = ema_weights(state)
    size = sum(v.numel() * v.element_size() for v in weights.values())
    dtype = torch.float32 if size <= max_fp32_bytes else torch.float16
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    schedule, train_config = state["schedule"], state["train_config"]
    flow = train_config.get("objective", "diffusion") == "flow"
    return {
        "format": file_format, "format_version": WEIGHTS_FORMAT_VERSION, "name": name, "state_dict": weights,
        "dtype": str(dtype).removeprefix("torch."), "model_class": state["model_class"],
        "model_config": json.loads(json.dumps(state["model_config"])),
        "schedule": None if schedule is None else {
            "name": schedule["name"], "T": schedule["T"],
            **({"betas": schedule["betas"]} if schedule["name"] not in SCHEDULES else {})},
        "prediction": "flow" if flow else train_config["prediction"], "step": state["step"],
        "images": bool(state["images"]) if "images" in state else guess_images(state["model_config"], record),
        "record": json.loads(json.dumps(record)),
    }


def ema_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The EMA's state dict from a training checkpoint, without AveragedModel's prefix and counter."""
    return {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}
