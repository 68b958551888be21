"""Data at GPU speed: the whole training set kept on the device, every batch drawn there.

A data loader reads each batch on the CPU and copies it to the GPU. For a dataset that fits in the
GPU's memory (MNIST is 47 MB, CIFAR-10 154 MB as uint8 pixels) it is simpler and faster to copy the
whole set once, as uint8, and to make every batch on the device, with no host work in the loop:

    idx  ~ U{0 .. N-1}^B                      (B,)            random indices, drawn on the device
    x    = images[idx]                        (B, C, H, W)    uint8, a gather in device memory
    x    = where(m, flip_W(x), x),  m ~ Bernoulli(1/2)^B      random horizontal flips (CIFAR, not digits)
    x0   = x / 127.5 - 1                      (B, C, H, W)    float32 in [-1, 1]

``image_batch`` is the last three lines; ``DeviceImages`` holds the set and ``draw_indices`` /
``draw_flips`` make the random draws. Float images (already in [-1, 1]) and (N, D) points work too:
they are gathered and used as they are.

Several GPUs (``diffedu.distributed``): every rank holds the whole set and draws the indices and
flips of the *global* batch from one generator, seeded alike on every rank, then keeps only its own
slice (``rank_slice``). So W ranks with B / W examples each see exactly the batch that one process
would draw, and no rank ever needs another rank's data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffedu.data import ImageData

__all__ = ["DeviceImages", "draw_flips", "draw_indices", "image_batch", "rank_slice"]


def image_batch(images: Tensor, idx: Tensor, flip: Tensor | None = None) -> Tensor:
    """The batch images[idx], mirrored left-right where ``flip`` is true, as floats in [-1, 1].

        x = images[idx]                (B, C, H, W)   uint8 pixels p in {0..255}, or floats
        x = where(flip, x[..., ::-1], x)               flip: (B,) bool; None: no flips
        x0 = x / 127.5 - 1             (B, C, H, W)   float32 (float images are returned as they are)

    Everything happens on ``images``' device; ``idx`` and ``flip`` must live there too.
    """
    x = images[idx]                                               # (B, C, H, W)
    if flip is not None:
        x = torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)  # flip W, the last axis
    if x.dtype == torch.uint8:
        return x.float().div_(127.5).sub_(1.0)                    # (B, C, H, W) in [-1, 1]
    return x


def draw_indices(n: int, batch_size: int, generator: torch.Generator) -> Tensor:
    """``batch_size`` indices drawn uniformly from 0..n-1, with replacement, on the generator's device."""
    return torch.randint(0, n, (batch_size,), generator=generator, device=generator.device)


def draw_flips(batch_size: int, generator: torch.Generator) -> Tensor:
    """(B,) booleans, each true with probability 1/2, on the generator's device."""
    return torch.rand(batch_size, generator=generator, device=generator.device) < 0.5


def rank_slice(batch_size: int, rank: int = 0, world_size: int = 1) -> slice:
    """The part of a global batch that ``rank`` of ``world_size`` trains on: B / W consecutive rows."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if batch_size % world_size != 0:
        raise ValueError(f"the global batch size {batch_size} must be divisible by the number of processes "
                         f"{world_size}; choose a batch size that is a multiple of {world_size}")
    local = batch_size // world_size
    return slice(rank * local, (rank + 1) * local)


class DeviceImages:
    """A dataset held on one device: ``x`` (N, C, H, W) uint8 pixels (or floats in [-1, 1], or (N, D)
    points) and optional ``labels`` (N,). ``batch(idx, flip)`` makes a float batch in [-1, 1] there.

        data = DeviceImages(load_dataset("cifar10", dtype="uint8"), device="cuda")   # 154 MB on the GPU
        x0 = data.batch(draw_indices(len(data), 128, g), draw_flips(128, g))         # (128, 3, 32, 32)

    Pass ``labels=True`` with an ``ImageData`` to keep its class labels (for conditional training).
    """

    def __init__(self, x: Tensor | ImageData, labels: Tensor | bool | None = None, *,
                 device: torch.device | str | None = None) -> None:
        if isinstance(x, ImageData):
            labels = x.y if labels is True else labels
            x = x.x
        if labels is True:
            raise ValueError("labels=True takes the labels of an ImageData; with a tensor, pass the labels (N,)")
        if not isinstance(x, Tensor) or x.ndim < 2 or len(x) == 0 or not (x.dtype == torch.uint8 or x.is_floating_point()):
            raise ValueError(f"x must be a non-empty uint8 (pixels 0..255) or float (in [-1, 1]) tensor (N, ...), "
                             f"got {_describe(x)}")
        if labels is not None and (not isinstance(labels, Tensor) or labels.ndim < 1 or len(labels) != len(x)):
            raise ValueError(f"labels must be a tensor with one entry per example ({len(x)}), got {_describe(labels)}")
        device = torch.device(device) if device is not None else x.device
        self.x = x.to(device)
        self.labels = labels.to(device) if labels is not None else None

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def is_image(self) -> bool:
        """Whether the examples are images (N, C, H, W), the only kind that can be flipped."""
        return self.x.ndim == 4

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device | str) -> DeviceImages:
        """The same data on ``device`` (self when it is there already)."""
        if torch.device(device) == self.device:
            return self
        return DeviceImages(self.x, self.labels, device=device)

    def value_range(self) -> tuple[float, float]:
        """(min, max) of the examples as the model sees them (uint8 mapped to [-1, 1]); reads the device once."""
        lo, hi = self.x.min().item(), self.x.max().item()
        if self.x.dtype == torch.uint8:
            return lo / 127.5 - 1.0, hi / 127.5 - 1.0
        return float(lo), float(hi)

    def batch(self, idx: Tensor, flip: Tensor | None = None) -> Tensor:
        """``image_batch(self.x, idx, flip)``: the examples idx, flipped where asked, as floats in [-1, 1]."""
        if flip is not None and not self.is_image:
            raise ValueError(f"flips need images (N, C, H, W), but these examples have shape {self.example_shape}")
        return image_batch(self.x, idx, flip)

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.x.shape)
        mb = self.x.numel() * self.x.element_size() / 2**20
        return (f"DeviceImages({str(self.x.dtype)[6:]} {shape} on {self.device}, {mb:.0f} MB"
                f"{', with labels' if self.labels is not None else ''})")


def _describe(x: Any) -> str:
    return f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
