"""The KL-regularised autoencoder of latent diffusion (lesson 07): ``VAE(config)`` with encode / decode.

Rombach et al. (2022) compress images with an autoencoder and run diffusion in its small latent space.
Their "KL-f" autoencoder is a variational autoencoder (Kingma & Welling 2014) whose KL term is weighted
so lightly that it only keeps the latents tame; this is the same model at MNIST size:

    encoder:   x (B, C, S, S)  ->  mu, log sigma^2      each (B, c, S/f, S/f),  f = 2**downsamplings
    sample:    z = mu + sigma * eps,  eps ~ N(0, I)     (the reparameterisation trick)
    decoder:   z  ->  x_hat (B, C, S, S)
    loss:      sum_pixels (x - x_hat)^2  +  beta * KL(N(mu, sigma^2) || N(0, I))            per image
    KL:        0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2)                               (closed form)

Images whose size the encoder cannot halve ``downsamplings`` times are padded first (MNIST: 28 -> 32 with
``pad=2`` of background on each side, so 8x8 latents) and cropped again after decoding.

Diffusion wants data of about unit variance, which raw latents are not, so ``encode`` multiplies them by a
**latent scale** computed from the data (`compute_latent_scale`: 1 / std of the latents, the way Stable
Diffusion's 0.18215 was computed) and ``decode`` divides it out again.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffedu.checkpoints import atomic_save, read_file
from diffedu.devices import default_device
from diffedu.models.layers import Downsample, group_norm

__all__ = [
    "VAE",
    "VAEConfig",
    "VAETrainConfig",
    "VAETrainResult",
    "cifar10_vae",
    "compute_latent_scale",
    "kl_divergence",
    "mnist_vae",
    "reparameterize",
    "train_vae",
    "vae_loss",
]

LOGVAR_RANGE = (-30.0, 20.0)  # log sigma^2 is clamped here, so exp() can neither vanish nor overflow


# ----------------------------------------------------------------------------- the two formulas


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor | None = None, *,
                   generator: torch.Generator | None = None) -> Tensor:
    """A differentiable draw from N(mu, sigma^2): z = mu + sigma * eps, sigma = exp(0.5 * log sigma^2).

    ``eps ~ N(0, I)`` is drawn (with ``generator``) when not given. The randomness sits in eps alone, so the
    gradient flows to mu and log sigma^2 (Kingma & Welling 2014, section 2.4).
    """
    if eps is None:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device if generator is None else generator.device)
        eps = eps.to(mu.device, mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL( N(mu, diag sigma^2) || N(0, I) ) per example, in closed form, shape (B,):

        KL = 0.5 * sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)

    summed over every dimension but the first (the batch).
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    terms = mu.square() + logvar.exp() - 1.0 - logvar  # (B, ...)
    return 0.5 * terms.flatten(1).sum(dim=1)  # (B,)


def vae_loss(x: Tensor, x_hat: Tensor, mu: Tensor, logvar: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, reconstruction, KL), each averaged over the batch; per image:

        reconstruction = sum_pixels (x - x_hat)^2,     loss = reconstruction + beta * KL

    (The squared error is the negative log-likelihood of a Gaussian decoder of variance 1/2, up to a
    constant; a small beta amounts to a sharper decoder, i.e. a lighter KL penalty.)
    """
    recon = (x_hat - x).square().flatten(1).sum(dim=1).mean()
    kl = kl_divergence(mu, logvar).mean()
    return recon + beta * kl, recon, kl


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class VAEConfig:
    """Everything that fixes a VAE's architecture; checked when built (``ValueError`` if invalid).

    The encoder has ``len(channel_mults)`` levels with ``base_channels * channel_mults[l]`` channels and
    halves the (padded) image between levels, so ``downsamplings = len(channel_mults) - 1`` and the latent
    is (latent_channels, S', S') with S' = (image_size + 2 * pad) / 2**downsamplings. ``pad`` pixels of
    ``pad_value`` (the background: -1 is black in [-1, 1] images) are added on each side before encoding
    and cropped after decoding.
    """

    image_size: int = 28
    image_channels: int = 1
    pad: int = 2
    pad_value: float = -1.0
    base_channels: int = 8
    channel_mults: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    latent_channels: int = 4
    norm_groups: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        self.validate()

    @property
    def downsamplings(self) -> int:
        return len(self.channel_mults) - 1

    @property
    def padded_size(self) -> int:
        return self.image_size + 2 * self.pad

    @property
    def latent_size(self) -> int:
        return self.padded_size // 2**self.downsamplings

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_channels, self.image_size, self.image_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    @property
    def compression(self) -> float:
        """How many numbers of the image each latent number stands for: C*S*S / (c*S'*S')."""
        return math.prod(self.image_shape) / math.prod(self.latent_shape)

    def validate(self) -> None:
        """Raise a ``ValueError`` that names the bad value and the fix."""
        for name in ("image_size", "image_channels", "base_channels", "num_res_blocks", "latent_channels",
                     "norm_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
        if not isinstance(self.pad, int) or isinstance(self.pad, bool) or self.pad < 0:
            raise ValueError(f"pad must be an integer >= 0, got pad={self.pad!r}")
        if not self.channel_mults or any(not isinstance(m, int) or isinstance(m, bool) or m < 1
                                         for m in self.channel_mults):
            raise ValueError(f"channel_mults must be a non-empty tuple of positive integers, got {self.channel_mults}")
        factor = 2**self.downsamplings
        if self.padded_size % factor != 0:
            fit = -(-self.padded_size // factor) * factor  # the next multiple of the factor
            hint = (f"pad={self.pad + (fit - self.padded_size) // 2}" if (fit - self.padded_size) % 2 == 0
                    else f"an image_size that is a multiple of {factor}")
            raise ValueError(
                f"the encoder halves the image {self.downsamplings} times (len(channel_mults) - 1), so the padded "
                f"size image_size + 2 * pad = {self.padded_size} must be divisible by 2**{self.downsamplings} = "
                f"{factor}; use {hint} (padded size {fit}), or fewer channel_mults")
        if self.base_channels % self.norm_groups != 0:
            raise ValueError(f"base_channels={self.base_channels} is not divisible by norm_groups={self.norm_groups}; "
                             f"choose norm_groups dividing base_channels, e.g. {math.gcd(self.base_channels, self.norm_groups)}")


def mnist_vae(**overrides: Any) -> VAEConfig:
    """MNIST 28x28, padded to 32x32 -> latents 4x8x8 (3.1x fewer numbers); channels 8 -> 16 -> 32, 94k parameters.

    Narrow at full resolution, where convolutions are dear: about 3 steps of 64 images a second on one CPU
    core, and digits come back nearly exact (RMS error about 0.08 on [-1, 1]) after 5 minutes of training.
    """
    return replace(VAEConfig(), **overrides)


def cifar10_vae(**overrides: Any) -> VAEConfig:
    """CIFAR-10 32x32x3 -> latents 4x8x8 (12x fewer numbers), channels 32 -> 64 -> 128."""
    config = VAEConfig(image_size=32, image_channels=3, pad=0, pad_value=0.0, base_channels=32,
                       channel_mults=(1, 2, 4), num_res_blocks=1, latent_channels=4, norm_groups=8)
    return replace(config, **overrides)


class ResidualBlock(nn.Module):
    """The U-Net's ResBlock without the time embedding, (B, C_in, H, W) -> (B, C_out, H, W):

        out = skip(x) + Conv3x3(SiLU(GroupNorm(Conv3x3(SiLU(GroupNorm(x))))))
    """

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """(B, C, S, S) -> (B, 2c, S/f, S/f): the stacked mean and log-variance of q(z | x)."""

    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        channels = [c.base_channels * m for m in c.channel_mults]
        self.stem = nn.Conv2d(c.image_channels, channels[0], kernel_size=3, padding=1)
        blocks: list[nn.Module] = []
        ch = channels[0]
        for level, out_ch in enumerate(channels):
            for _ in range(c.num_res_blocks):
                blocks.append(ResidualBlock(ch, out_ch, c.norm_groups))
                ch = out_ch
            if level != len(channels) - 1:
                blocks.append(Downsample(ch))
        blocks.append(ResidualBlock(ch, ch, c.norm_groups))  # the middle
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Sequential(group_norm(ch, c.norm_groups), nn.SiLU(),
                                 nn.Conv2d(ch, 2 * c.latent_channels, kernel_size=3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.blocks(self.stem(x)))


class UpsampleTo(nn.Module):
    """Double H and W and change the channels: nearest-neighbour x2, then a 3x3 conv, (B, C_in, H, W) ->
    (B, C_out, 2H, 2W). Changing the channels here, not after, keeps the conv at the larger size narrow."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """(B, c, S/f, S/f) -> (B, C, S, S): the mirror of the encoder, upsampling where it downsampled."""

    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        channels = [c.base_channels * m for m in c.channel_mults]
        ch = channels[-1]
        self.stem = nn.Conv2d(c.latent_channels, ch, kernel_size=3, padding=1)
        blocks: list[nn.Module] = [ResidualBlock(ch, ch, c.norm_groups)]  # the middle
        for level in reversed(range(len(channels))):
            for _ in range(c.num_res_blocks):
                blocks.append(ResidualBlock(ch, channels[level], c.norm_groups))
                ch = channels[level]
            if level != 0:
                blocks.append(UpsampleTo(ch, channels[level - 1]))
                ch = channels[level - 1]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Sequential(group_norm(ch, c.norm_groups), nn.SiLU(),
                                 nn.Conv2d(ch, c.image_channels, kernel_size=3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        return self.out(self.blocks(self.stem(z)))


class VAE(nn.Module):
    """A KL-regularised convolutional autoencoder: ``x_hat, mu, logvar = vae(x)`` for training,
    ``z = vae.encode(x)`` and ``x = vae.decode(z)`` (scaled latents) for diffusion.

    ``latent_scale`` is a buffer (saved with the weights), 1 until `compute_latent_scale` sets it.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.register_buffer("latent_scale", torch.tensor(1.0))

    # --- the pieces -------------------------------------------------------------------------

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, C, S, S) in [-1, 1] -> (mu, logvar) of q(z | x), each (B, c, S', S'), unscaled."""
        self._check_images(x)
        p = self.config.pad
        if p:
            x = F.pad(x, (p, p, p, p), value=self.config.pad_value)  # (B, C, S + 2p, S + 2p)
        mu, logvar = self.encoder(x).chunk(2, dim=1)  # each (B, c, S', S')
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode_unscaled(self, z: Tensor) -> Tensor:
        """Raw latents (B, c, S', S') -> images (B, C, S, S) (not clamped)."""
        self._check_latents(z, "decode_unscaled")
        x = self.decoder(z)  # (B, C, S + 2p, S + 2p)
        p = self.config.pad
        return x[..., p:x.shape[-2] - p, p:x.shape[-1] - p] if p else x  # (B, C, S, S)

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(x_hat, mu, logvar): encode, draw z = mu + sigma * eps, decode. For training with `vae_loss`."""
        mu, logvar = self.posterior(x)
        z = reparameterize(mu, logvar, generator=generator)
        return self.decode_unscaled(z), mu, logvar

    # --- what diffusion uses ------------------------------------------------------------------

    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Images (B, C, S, S) in [-1, 1] -> scaled latents latent_scale * mu (B, c, S', S').

        With ``sample=True`` the latent is a draw z = mu + sigma * eps instead of the mean mu.
        """
        mu, logvar = self.posterior(x)
        z = reparameterize(mu, logvar, generator=generator) if sample else mu
        return z * self.latent_scale

    def decode(self, z: Tensor, *, clamp: bool = True) -> Tensor:
        """Scaled latents (B, c, S', S') -> images (B, C, S, S): decode(z / latent_scale), clamped to [-1, 1]."""
        self._check_latents(z, "decode")
        x = self.decode_unscaled(z / self.latent_scale)
        return x.clamp(-1, 1) if clamp else x

    def set_latent_scale(self, scale: float) -> None:
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"latent_scale must be a positive finite number, got {scale!r}")
        self.latent_scale.fill_(float(scale))

    # --- input checks -------------------------------------------------------------------------

    def _check_images(self, x: Tensor) -> None:
        c = self.config
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != c.image_shape:
            got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            hint = (" (these look like latents: decode them with vae.decode)"
                    if isinstance(x, Tensor) and x.ndim == 4 and tuple(x.shape[1:]) == c.latent_shape else "")
            raise ValueError(f"the VAE encodes images of shape (B, {c.image_channels}, {c.image_size}, "
                             f"{c.image_size}) (image_channels={c.image_channels}, image_size={c.image_size}), "
                             f"got {got}{hint}")

    def _check_latents(self, z: Tensor, name: str) -> None:
        c = self.config
        if not isinstance(z, Tensor) or z.ndim != 4 or tuple(z.shape[1:]) != c.latent_shape:
            got = f"shape {tuple(z.shape)}" if isinstance(z, Tensor) else type(z).__name__
            if isinstance(z, Tensor) and z.ndim == 4 and z.shape[1] != c.latent_channels:
                why = f": it has {z.shape[1]} channels, the latent has latent_channels={c.latent_channels}"
            elif isinstance(z, Tensor) and z.ndim == 4:
                why = f": the latent is {c.latent_size}x{c.latent_size} (image {c.padded_size} / 2**{c.downsamplings})"
            else:
                why = ""
            hint = (" (these look like images: encode them first with vae.encode)"
                    if isinstance(z, Tensor) and z.ndim == 4 and tuple(z.shape[1:]) == c.image_shape else "")
            raise ValueError(f"{name} expects latents of shape (B, {c.latent_channels}, {c.latent_size}, "
                             f"{c.latent_size}), got {got}{why}{hint}")


@torch.no_grad()
def compute_latent_scale(vae: VAE, images: Tensor, *, batch_size: int = 500) -> float:
    """1 / std of the latent means mu over ``images`` (all their numbers together), so that
    ``latent_scale * mu`` has unit variance on this data. (Stable Diffusion's 0.18215 was computed this way.)"""
    if not isinstance(images, Tensor) or len(images) < 2:
        raise ValueError("compute_latent_scale needs a batch of at least 2 images (N, C, S, S)")
    device = next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    try:
        mus = torch.cat([vae.posterior(images[i:i + batch_size].to(device))[0].float().cpu()
                         for i in range(0, len(images), batch_size)])
    finally:
        vae.train(was_training)
    std = mus.double().std().item()
    if not std > 0:
        raise ValueError(f"the latents have standard deviation {std}: the VAE maps every image to the same latent")
    return 1.0 / std


# ----------------------------------------------------------------------------- training


@dataclass
class VAETrainConfig:
    """Settings of `train_vae`. Give a budget: ``steps``, ``seconds`` (wall clock), or both (first one wins)."""

    steps: int | None = None
    seconds: float | None = None
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50  # linear warm-up from lr / warmup_steps to lr
    beta: float = 1e-3  # weight of the KL term
    grad_clip: float | None = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps is None and self.seconds is None:
            raise ValueError("give a training budget: VAETrainConfig(steps=...) and/or VAETrainConfig(seconds=...)")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be a positive integer or None, got {self.steps!r}")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"seconds must be positive or None, got {self.seconds!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not self.lr > 0 or self.warmup_steps < 0 or self.beta < 0:
            raise ValueError(f"need lr > 0, warmup_steps >= 0 and beta >= 0, got {self.lr}, {self.warmup_steps}, "
                             f"{self.beta}")


@dataclass
class VAETrainResult:
    """What `train_vae` returns: the trained VAE (eval mode) and its history, one entry per step."""

    vae: VAE
    losses: list[float]
    recon: list[float]  # sum of squared errors per image
    kl: list[float]  # KL per image
    step: int
    seconds: float
    images_per_second: float
    config: VAETrainConfig = field(repr=False)


def train_vae(vae: VAE, data: Tensor, config: VAETrainConfig, *, device: torch.device | str | None = None,
              checkpoint: str | Path | None = None, progress: bool = True,
              callback: Callable[[dict[str, Any]], None] | None = None, callback_every: int = 100) -> VAETrainResult:
    """Train ``vae`` on images ``data`` (N, C, S, S) in [-1, 1] with `vae_loss`: AdamW, warm-up, clipping.

    Batches are drawn by random index. With ``checkpoint`` the weights, optimizer and history are written
    there atomically at the end (``diffedu.train.atomic_save``); an existing file is resumed from. The
    callback gets ``{"step", "loss", "recon", "kl", "vae"}`` every ``callback_every`` steps (its time is not
    counted). Sets ``vae.latent_scale`` from ``data`` at the end (`compute_latent_scale`, up to 2000 images).
    """
    device = torch.device(device) if device is not None else default_device()
    if not isinstance(data, Tensor) or not data.is_floating_point() or data.ndim != 4 or len(data) == 0:
        raise ValueError(f"data must be a non-empty float tensor of images (N, C, S, S), got "
                         f"{tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__}")
    vae._check_images(data[:1])
    data = data.to(device)
    vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr, weight_decay=0.0)
    generator = torch.Generator(device).manual_seed(config.seed)
    step, seconds_before, history = 0, 0.0, {"losses": [], "recon": [], "kl": []}
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = read_file(path, "diffedu-vae-checkpoint", "Delete it to start afresh, or use another path")
        if state["config"] != asdict(vae.config):
            raise ValueError(f"{path} was trained with VAEConfig({state['config']}), not {vae.config}; build the VAE "
                             "with that config or use another checkpoint path")
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds_before = int(state["step"]), float(state["seconds"])
        history = {k: state[k].tolist() for k in history}
        generator.manual_seed(config.seed + step)
        print(f"resuming from {path}: step {step}, {seconds_before / 60:.1f} min trained")

    def spent(seconds: float) -> bool:
        return ((config.steps is not None and step >= config.steps)
                or (config.seconds is not None and seconds >= config.seconds))

    start, paused, start_step = time.perf_counter(), 0.0, step
    elapsed = lambda: seconds_before + time.perf_counter() - start - paused  # noqa: E731
    bar = tqdm(total=config.steps, initial=step, desc="training the VAE", unit="step", disable=not progress)
    try:
        while not spent(elapsed()):
            lr = config.lr * min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else config.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, len(data), (config.batch_size,), generator=generator, device=device)
            x = data[idx]  # (B, C, S, S)
            x_hat, mu, logvar = vae(x, generator=generator)
            loss, recon, kl = vae_loss(x, x_hat, mu, logvar, config.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(vae.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            values = torch.stack([loss.detach(), recon.detach(), kl.detach()]).tolist()
            if not math.isfinite(values[0]):
                raise RuntimeError(f"the VAE loss became {values[0]} at step {step}; try a lower lr (now {config.lr})")
            for key, value in zip(history, values):
                history[key].append(value)
            bar.update(1)
            bar.set_postfix(recon=f"{values[1]:.2f}", kl=f"{values[2]:.1f}", refresh=False)
            if callback is not None and step % callback_every == 0:
                t0 = time.perf_counter()
                callback({"step": step, "loss": values[0], "recon": values[1], "kl": values[2], "vae": vae})
                vae.train()
                paused += time.perf_counter() - t0
    except KeyboardInterrupt:
        print(f"interrupted at step {step}")
    finally:
        bar.close()
    seconds = elapsed()
    vae.eval()
    vae.set_latent_scale(compute_latent_scale(vae, data[:2000]))
    if path is not None:
        atomic_save({"format": "diffedu-vae-checkpoint", "config": asdict(vae.config), "model": vae.state_dict(),
                     "optimizer": optimizer.state_dict(), "step": step, "seconds": seconds,
                     **{k: torch.tensor(v) for k, v in history.items()}}, path)
    images_per_second = (step - start_step) * config.batch_size / max(seconds - seconds_before, 1e-9)
    return VAETrainResult(vae, history["losses"], history["recon"], history["kl"], step, seconds,
                          images_per_second, config)
