"""Diffusion in a VAE's latent space (lesson 07): the helpers around `diffedu.models.vae` and the course's U-Net.

Latent diffusion (Rombach et al. 2022) in three moves, each an existing piece of the course:

    1. latents  = vae.encode(images)                       (N, c, S', S'), scaled to unit variance
    2. model    = train(UNet(latent_unet_config(...)), latents, schedule, TrainConfig(...))
    3. images   = vae.decode(ddim_sample(model, schedule, (n, c, S', S'), steps=...))

This module holds what glues them together: encoding a dataset in batches, the U-Net config of the same
width for the latent shape, sampling-and-decoding, shipping and loading a trained VAE, and `QualityLog`,
a training callback that measures FID_self against training time (for "time to a given FID_self").
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffedu.checkpoints import atomic_save, check_fits, read_file, weights_dir
from diffedu.devices import default_device
from diffedu.metrics import SmallSampleWarning, evaluate_samples
from diffedu.models.unet import UNetConfig
from diffedu.models.vae import VAE, VAEConfig
from diffedu.samplers import ddim_sample
from diffedu.schedules import NoiseSchedule

__all__ = [
    "QualityLog",
    "encode_dataset",
    "latent_unet_config",
    "load_vae",
    "sample_decoded",
    "save_vae",
    "seconds_to_reach",
    "vae_weights_path",
]

VAE_FORMAT = "diffedu-vae-weights"
VAE_FORMAT_VERSION = 1


@torch.no_grad()
def encode_dataset(vae: VAE, images: Tensor, *, batch_size: int = 500, progress: bool = False) -> Tensor:
    """``vae.encode`` (the scaled mean latents) over ``images`` (N, C, S, S) in batches; returns (N, c, S', S') on the CPU."""
    device = next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    try:
        starts = tqdm(range(0, len(images), batch_size), desc="encoding", disable=not progress, leave=False)
        return torch.cat([vae.encode(images[i:i + batch_size].to(device)).float().cpu() for i in starts])
    finally:
        vae.train(was_training)


def latent_unet_config(pixel: UNetConfig, vae: VAEConfig) -> UNetConfig:
    """The U-Net ``pixel`` (same base_channels, channel_mults, blocks: the same width) resized for the latents.

    image_size and in_channels become the latent's; attention, if ``pixel`` has any, sits at the lowest
    resolution (as ``mnist_small`` has it at 7x7). Raises ValueError when the latent is too small for the levels.
    """
    factor = 2 ** (len(pixel.channel_mults) - 1)
    if vae.latent_size % factor != 0:
        raise ValueError(f"the latent is {vae.latent_size}x{vae.latent_size}, which the U-Net's {len(pixel.channel_mults)} "
                         f"levels cannot halve {len(pixel.channel_mults) - 1} times; use fewer channel_mults")
    lowest = vae.latent_size // factor
    return replace(pixel, image_size=vae.latent_size, in_channels=vae.latent_channels, out_channels=None,
                   attention_resolutions=(lowest,) if pixel.attention_resolutions else ())


@torch.no_grad()
def sample_decoded(model: Callable[..., Tensor], schedule: NoiseSchedule, vae: VAE, n: int, *, steps: int = 20,
                   eta: float = 0.0, generator: torch.Generator | None = None, x_T: Tensor | None = None,  # noqa: N803
                   batch_size: int = 256, device: torch.device | str | None = None) -> Tensor:
    """n images from a latent diffusion model: DDIM in latent space (``steps``, ``eta``), then ``vae.decode``.

    No clamping of the predicted x_0 (latents are not confined to [-1, 1]); the decoded images are clamped.
    Returns (n, C, S, S) on the CPU.
    """
    device = torch.device(device) if device is not None else next(vae.parameters()).device
    shape = vae.config.latent_shape
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        start_noise = x_T[start:start + b] if x_T is not None else None
        z = ddim_sample(model, schedule, (b, *shape), steps=steps, eta=eta, generator=generator, x_T=start_noise,
                        device=device, progress=False)
        out.append(vae.decode(z.to(next(vae.parameters()).device)).cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------- shipping a VAE


def vae_weights_path(name: str) -> Path:
    """Where a shipped VAE lives: ``diffedu/weights/<name>.pt``."""
    return weights_dir() / f"{name}.pt"


def save_vae(vae: VAE, path: str | Path, *, name: str, record: dict[str, Any]) -> Path:
    """Write the VAE's weights (latent_scale included), config and training record atomically to ``path``.

    Holds tensors and primitives only: it loads with ``torch.load(..., weights_only=True)``.
    """
    payload = {"format": VAE_FORMAT, "format_version": VAE_FORMAT_VERSION, "name": name,
               "config": asdict(vae.config), "state_dict": {k: v.detach().cpu() for k, v in vae.state_dict().items()},
               "record": json.loads(json.dumps(record))}
    return atomic_save(payload, path)


def load_vae(name_or_path: str | Path = "mnist_vae", device: torch.device | str | None = None) -> tuple[VAE, dict[str, Any]]:
    """A saved VAE (eval mode) and its training record: a shipped name (``"mnist_vae"``) or a file path.

    Raises FileNotFoundError when there is no such file (train one with ``diffedu.models.vae.train_vae``).
    """
    path = Path(name_or_path)
    if path.suffix != ".pt":
        path = vae_weights_path(str(name_or_path))
    if not path.is_file():
        raise FileNotFoundError(f"no VAE weights at {path}; train one with diffedu.models.vae.train_vae and save it with "
                                f"diffedu.latent.save_vae (benchmarks/latent.py --export does both for MNIST)")
    payload = read_file(path, VAE_FORMAT, "Delete it and save it again (diffedu.latent.save_vae)")
    vae = VAE(VAEConfig(**payload["config"]))
    check_fits(vae, payload["state_dict"], path, "VAE", payload["config"])
    vae.load_state_dict(payload["state_dict"])
    device = torch.device(device) if device is not None else default_device()
    return vae.to(device).eval(), {"name": payload["name"], "record": payload["record"], "path": path}


# ----------------------------------------------------------------------------- quality against training time


class QualityLog:
    """A `diffedu.train.train` callback that measures FID_self at given amounts of training time.

    ``sample_fn(model) -> images`` (N, C, H, W) in [-1, 1] draws the samples (use a fixed seed inside, so
    every evaluation starts from the same noise). ``at_seconds`` is either a number (every that many seconds
    of training) or a list of training times. Pass the log as ``callback=log`` with a small ``preview_every``
    (the check costs nothing when no evaluation is due); call ``log.start()`` right before ``train`` and
    ``log.evaluate(result.ema, result.step, result.seconds)`` after it for the final point. Training time
    excludes the evaluations (``train`` stops its clock during callbacks, and so does this log).
    ``rows`` holds one dict per evaluation: step, seconds, fid_self, fid_self_floor, kid_self, confident_fraction.
    """

    def __init__(self, sample_fn: Callable[[nn.Module], Tensor], *, at_seconds: float | Sequence[float] = 60.0,
                 dataset: str = "mnist") -> None:
        self.sample_fn, self.dataset = sample_fn, dataset
        self.every = float(at_seconds) if isinstance(at_seconds, (int, float)) else None
        self.times = [] if self.every is not None else sorted(float(s) for s in at_seconds)
        if self.every is not None and not self.every > 0:
            raise ValueError(f"at_seconds must be positive, got {at_seconds}")
        self.rows: list[dict[str, Any]] = []
        self.start()

    def start(self) -> None:
        """Start the training clock (call right before ``train``)."""
        self._t0, self._paused, self._last = time.perf_counter(), 0.0, 0.0

    def training_seconds(self) -> float:
        return time.perf_counter() - self._t0 - self._paused

    def _due(self, seconds: float) -> bool:
        if self.every is not None:
            return seconds - self._last >= self.every
        return any(self._last < t <= seconds for t in self.times)

    def __call__(self, info: dict[str, Any]) -> None:
        seconds = self.training_seconds()
        if self._due(seconds):
            self.evaluate(info["ema"], info["step"], seconds)

    def evaluate(self, model: nn.Module, step: int, seconds: float) -> dict[str, Any]:
        """Sample with ``sample_fn(model)``, score with `evaluate_samples`, append and return the row."""
        began = time.perf_counter()
        images = self.sample_fn(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallSampleWarning)
            scores = evaluate_samples(images, self.dataset)
        row = {"step": step, "seconds": seconds, "eval_seconds": time.perf_counter() - began,
               **{k: scores[k] for k in ("fid_self", "fid_self_floor", "kid_self", "confident_fraction", "n_samples")}}
        self.rows.append(row)
        self._paused += time.perf_counter() - began
        self._last = seconds
        return row


def seconds_to_reach(rows: list[dict[str, Any]], fid_self: float) -> float | None:
    """The training time of the first evaluation in ``rows`` with FID_self <= ``fid_self`` (None if none)."""
    return next((row["seconds"] for row in rows if row["fid_self"] <= fid_self), None)
