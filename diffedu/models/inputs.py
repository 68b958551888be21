"""The input checks every denoiser of the course shares (the U-Net of lesson 03, the DiT of lesson 11).

Each raises one error that names the problem and the fix, with the model's class name in it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["autocast_on", "batch_timesteps", "check_images", "check_labels"]


def check_images(x: Tensor, who: str, in_channels: int, image_size: int, weight: Tensor) -> None:
    """x must be a float tensor (B, in_channels, image_size, image_size) on the weights' device and dtype
    (or under autocast)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects x as a tensor (B, {in_channels}, {image_size}, {image_size}), "
                        f"got {type(x).__name__}")
    expected = (in_channels, image_size, image_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"{who} expects x of shape (B, {in_channels}, {image_size}, {image_size}) "
                         f"(in_channels={in_channels}, image_size={image_size}), got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{who} expects float images in [-1, 1], got {x.dtype}; convert pixels with "
                        f"x.float() / 127.5 - 1")
    if x.dtype != weight.dtype and not autocast_on(x.device.type):
        raise TypeError(f"x is {x.dtype} but the {who}'s weights are {weight.dtype}; pass x.to({weight.dtype}) "
                        f"(or convert the model with model.to({x.dtype}))")
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but the {who} is on {weight.device}; move one of them: "
                         f"x.to({str(weight.device)!r}) or model.to({str(x.device)!r})")


def batch_timesteps(t: Tensor | int | float, batch: int, device: torch.device) -> Tensor:
    """t as a (batch,) tensor on `device`: a scalar is repeated; NaN, negative or non-numeric timesteps are refused."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)  # () -> (B,)
    if tuple(t.shape) != (batch,):
        raise ValueError(f"t must be a scalar or have shape ({batch},) to match x, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"t must hold timesteps (integers, or floats for flow matching), got {t.dtype}")
    if t.device.type == "cpu" and not torch.compiler.is_compiling() and t.numel():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"t holds NaN or infinite timesteps: {t.tolist()[:8]}")
        if bool((t < 0).any()):
            raise ValueError(f"t holds negative timesteps (down to {t.min().item():.4g}); timesteps run from 0 "
                             f"(clean) upwards: check how they were computed (an index of -1 is not the last step "
                             f"here)")
    return t


def check_labels(cond: Tensor | None, num_classes: int, batch: int, who: str) -> Tensor:
    """Class labels (batch,) int64 in 0..K, where K = num_classes means "no label" (classifier-free guidance)."""
    k = num_classes
    hint = f"pass int64 labels of shape ({batch},) in 0..{k - 1}, or {k} for 'no label'"
    if cond is None:
        raise ValueError(f"this {who} is class-conditional (num_classes={k}) and needs cond; {hint}")
    if not isinstance(cond, Tensor) or cond.dtype != torch.int64 or tuple(cond.shape) != (batch,):
        got = f"{cond.dtype} tensor of shape {tuple(cond.shape)}" if isinstance(cond, Tensor) else type(cond).__name__
        raise ValueError(f"cond must be labels: got {got}; {hint}")
    if not torch.compiler.is_compiling() and bool(((cond < 0) | (cond > k)).any()):
        raise ValueError(f"cond holds labels outside 0..{k}: {cond.tolist()}; {hint}")
    return cond


def autocast_on(device_type: str) -> bool:
    """Whether autocast is on for this device type (torch 2.3 has no device argument to is_autocast_enabled)."""
    if device_type not in ("cpu", "cuda"):  # e.g. "meta" (lesson 03 counts FLOPs there): no autocast to ask about
        return False
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
