"""Pretrained weights shipped with diffedu: ``model, schedule, info = load_pretrained("mnist_ddpm")``.

A weights file is small and holds only tensors and primitives (it loads with
``torch.load(..., weights_only=True)``): the EMA weights of a training run, the U-Net's config, the
noise schedule's name and T, the prediction type, and the record of how it was trained (command,
steps, minutes, device, final loss). `export_weights` writes one from a training checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffedu.checkpoints import (
    atomic_save,
    check_fits,
    ema_weights,
    load_checkpoint,
    read_file,
    weights_dir,
    weights_payload,
)
from diffedu.devices import default_device
from diffedu.models.dit import DiT, DiTConfig
from diffedu.models.unet import UNet, UNetConfig
from diffedu.provenance import Provenance, attach, guess_images
from diffedu.schedules import (
    SCHEDULES,
    NoiseSchedule,
    make_schedule,
    schedule_from_betas,
)

FORMAT = "diffedu-weights"
# The denoisers a weights file can hold, by the class name its checkpoint recorded.
DENOISERS: dict[str, tuple[type[nn.Module], type]] = {"UNet": (UNet, UNetConfig), "DiT": (DiT, DiTConfig)}
MAX_FP32_BYTES = 10 * 2**20  # above this the weights are stored in float16
# How each shipped name is made (shown when its file is missing).
RECIPES = {
    "mnist_ddpm": "python -m diffedu.train --dataset mnist --preset mnist_patch --profile cpu --steps 7200 "
                  "--minutes 85 --batch-size 128 --lr 1.5e-3 --lr-decay cosine --warmup 200 --ema-decay 0.9995 "
                  "--min-snr-gamma 5 --out runs/ref_long.pt --export mnist_ddpm  (85 minutes on 2 cores; --minutes 10 "
                  "for a rougher one)",
    "mnist_flow": "python benchmarks/flow_matching.py --objectives flow --minutes 10 --export mnist_flow  (or: python "
                  "-m diffedu.train --dataset mnist --preset mnist_patch --objective flow --batch-size 64 --minutes 10 "
                  "--out runs/flow.pt --export mnist_flow)",
    "mnist_dit": "python benchmarks/backbones.py --threads 2 --export-dit mnist_dit --export-unet mnist_unet_flow  (or: "
                 "python -m diffedu.train --dataset mnist --preset mnist_dit --objective flow --batch-size 64 --lr 1e-3 "
                 "--warmup 100 --ema-decay 0.995 --amp off --minutes 10 --out runs/dit.pt --export mnist_dit)",
    "mnist_unet_flow": "python benchmarks/backbones.py --threads 2 --export-dit mnist_dit --export-unet mnist_unet_flow",
}


def available(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the diffusion weights files present, e.g. ``["mnist_ddpm"]`` (other .pt files, and the distilled
    students of `diffedu.distill`, are skipped)."""
    folder = Path(directory) if directory is not None else weights_dir()
    return sorted(p.stem for p in folder.glob("*.pt") if _is_weights_file(p)) if folder.is_dir() else []


def _is_weights_file(path: Path) -> bool:
    try:  # mmap: reads the small header, not the tensors
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT and "consistency" not in payload


def export_weights(checkpoint: str | os.PathLike[str] | dict[str, Any], out_path: str | os.PathLike[str], *,
                   name: str, record: dict[str, Any]) -> Path:
    """Write the EMA weights of a training checkpoint, with what is needed to use them, to `out_path`.

    float32 when the weights take at most 10 MB, float16 above. `record` (how it was trained) must be
    JSON-serialisable. Written atomically.
    """
    state = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    if state.get("model_config") is None or state.get("model_class") not in DENOISERS:
        raise ValueError(f"export_weights needs a checkpoint of a diffedu denoiser ({' or '.join(DENOISERS)}, with "
                         f"its config); this one holds a {state.get('model_class')} with config "
                         f"{state.get('model_config')}")
    payload = weights_payload(state, file_format=FORMAT, name=name, record=record, max_fp32_bytes=MAX_FP32_BYTES)
    return atomic_save(payload, out_path)


def model_from_checkpoint(checkpoint: str | os.PathLike[str], device: torch.device | str | None = None
                          ) -> tuple[nn.Module, NoiseSchedule, dict[str, Any]]:
    """The EMA denoiser (U-Net or DiT) of a training checkpoint (eval mode), its schedule, and the checkpoint's
    step and seconds."""
    state = load_checkpoint(checkpoint)
    if state.get("model_config") is None or state.get("model_class") not in DENOISERS:
        raise ValueError(f"{checkpoint} does not hold a diffedu denoiser ({' or '.join(DENOISERS)}) with its config")
    model = build_denoiser(state["model_class"], state["model_config"])
    model.load_state_dict(ema_weights(state))
    sched = state["schedule"]
    schedule = schedule_from_betas(sched["betas"], sched["name"]) if sched is not None else None
    device = torch.device(device) if device is not None else default_device()
    flow = state["train_config"].get("objective", "diffusion") == "flow"
    attach(model, Provenance.of("flow" if flow else state["train_config"].get("prediction", "eps"), schedule,
                                images=bool(state["images"]) if "images" in state else guess_images(state["model_config"]),
                                source=f"the checkpoint {checkpoint}"))
    schedule = schedule.to(device) if schedule is not None else None
    return model.to(device).eval(), schedule, {"step": state["step"], "seconds": state["seconds"],
                                                          "train_config": state["train_config"]}


def build_denoiser(model_class: str, config: dict[str, Any], source: object = "the checkpoint") -> nn.Module:
    """A fresh `model_class` ("UNet" or "DiT") built from its recorded config."""
    if model_class not in DENOISERS:
        raise ValueError(f"{source} holds a {model_class!r}, not one of diffedu's denoisers ({', '.join(DENOISERS)}); "
                         f"update diffedu, or export the weights again")
    cls, config_cls = DENOISERS[model_class]
    return cls(config_cls(**config))


def load_pretrained(name: str = "mnist_ddpm", device: torch.device | str | None = None, *,
                    directory: str | os.PathLike[str] | None = None
                    ) -> tuple[nn.Module, NoiseSchedule | None, dict[str, Any]]:
    """The pretrained denoiser `name` (a U-Net or a DiT; eval mode, float32), its noise schedule, and an info dict.

    ``info`` holds name, prediction, model_config, step and the training record (command, minutes, ...).
    A flow-matching model (``info["prediction"] == "flow"``) has no schedule: None.
    """
    folder = Path(directory) if directory is not None else weights_dir()
    path = folder / f"{name}.pt"
    if not path.is_file():
        names = available(folder)
        if name in RECIPES:
            raise FileNotFoundError(
                f"no weights file for {name!r} at {path}. Train and export one on a CPU:\n"
                f"    {RECIPES[name]}")
        raise ValueError(f"unknown pretrained model {name!r}; available: {', '.join(map(repr, names)) or 'none'}"
                         + (f" (trainable with the CLI: {', '.join(map(repr, RECIPES))})" if RECIPES else ""))
    payload = read_file(path, FORMAT, f"Delete it and export it again ({RECIPES.get(name, 'export_weights')})")
    if "consistency" in payload:
        raise ValueError(f"{path} holds a distilled consistency student, not a diffusion model: load it with "
                         f"diffedu.distill.load_student({name!r}) and sample it with consistency_sample")
    model = build_denoiser(payload.get("model_class", "UNet"), payload["model_config"], path)
    check_fits(model, payload["state_dict"], path, payload.get("model_class"), payload["model_config"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    device = torch.device(device) if device is not None else default_device()
    sched = payload["schedule"]
    if sched is None:  # a flow-matching model (prediction "flow"): sample it with diffedu.flow.flow_sample
        schedule = None
    else:
        schedule = (make_schedule(sched["name"], sched["T"]) if sched["name"] in SCHEDULES
                    else schedule_from_betas(sched["betas"], sched["name"])).to(device)
    info = {k: payload[k] for k in ("name", "prediction", "model_config", "step", "record", "dtype")}
    info["model_class"] = type(model).__name__
    images = bool(payload["images"]) if "images" in payload else guess_images(payload["model_config"], payload["record"])
    attach(model, Provenance.of(payload["prediction"], schedule, images=images, source=f"the shipped weights {name!r}"
                                if directory is None else f"the weights {path}"))
    return model.to(device).eval(), schedule, {**info, "path": path}
