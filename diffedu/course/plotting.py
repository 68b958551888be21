"""Pictures: image grids, point clouds, loss curves and animations (matplotlib and torchvision)."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import HTML
from matplotlib import animation
from torch import Tensor
from torchvision.utils import make_grid


def to_unit(x: Tensor) -> Tensor:
    """Images in [-1, 1] to [0, 1] for display, clamped."""
    return ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)


def image_grid(x: Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """A batch (N, C, H, W) in [-1, 1] as one (H', W', C) array in [0, 1] (torchvision's make_grid)."""
    if x.ndim != 4:
        raise ValueError(f"image_grid expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    grid = make_grid(to_unit(x), nrow=nrow, padding=padding, pad_value=1.0)  # (3, H', W')
    return grid.permute(1, 2, 0).numpy()


def show_images(x: Tensor, nrow: int = 8, title: str | None = None, ax=None, size: float = 0.6):
    """Draw a batch of images in [-1, 1] as a grid; returns the axes."""
    grid = image_grid(x, nrow)
    if ax is None:
        rows = int(np.ceil(x.shape[0] / nrow))
        _, ax = plt.subplots(figsize=(max(2.0, size * min(nrow, x.shape[0])), max(2.0, size * rows)))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def show_points(clouds: Sequence[Tensor], titles: Sequence[str] = (), lim: float = 2.0, size: float = 3.0):
    """Scatter plots of 2-D point clouds side by side; returns the figure."""
    fig, axes = plt.subplots(1, len(clouds), figsize=(size * len(clouds), size), squeeze=False)
    for k, (ax, pts) in enumerate(zip(axes[0], clouds)):
        pts = pts.detach().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        if k < len(titles):
            ax.set_title(titles[k])
    fig.tight_layout()
    return fig


def plot_loss(losses: Sequence[float], smooth: int = 50, ax=None, title: str = "training loss"):
    """The loss per step and its running mean over `smooth` steps (log scale); returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    y = np.asarray(losses, dtype=float)
    ax.plot(y, alpha=0.3, label="per step")
    if len(y) >= smooth > 1:
        kernel = np.ones(smooth) / smooth
        ax.plot(np.arange(smooth - 1, len(y)), np.convolve(y, kernel, mode="valid"), label=f"mean of {smooth}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    return ax


def animate_images(frames: Sequence[Tensor], nrow: int = 8, interval: int = 80, titles: Sequence[str] = ()):
    """An HTML animation of image batches (one grid a frame), for the reverse process."""
    grids = [image_grid(f, nrow) for f in frames]
    fig, ax = plt.subplots(figsize=(0.6 * nrow, 0.6 * max(1, frames[0].shape[0] // nrow) + 0.4))
    im = ax.imshow(grids[0], interpolation="nearest")
    ax.set_axis_off()

    def update(k):
        im.set_data(grids[k])
        if k < len(titles):
            ax.set_title(titles[k])
        return (im,)

    anim = animation.FuncAnimation(fig, update, frames=len(grids), interval=interval, blit=False)
    html = HTML(anim.to_jshtml())
    plt.close(fig)
    return html


def histogram_vs_normal(x: Tensor, ax, bins: int = 60, title: str = "pixel values") -> None:
    """Histogram of the values of x against the N(0, 1) density."""
    values = x.detach().float().cpu().flatten().numpy()
    ax.hist(values, bins=bins, range=(-4, 4), density=True, alpha=0.6, label="x_t")
    grid = np.linspace(-4, 4, 200)
    ax.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), "k--", label="N(0, 1)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)


__all__ = ["to_unit", "image_grid", "show_images", "show_points", "plot_loss", "animate_images", "histogram_vs_normal"]


def plot_floor(ax: plt.Axes, scores: dict, n: int, what: str = "real digits") -> None:
    """The FID_self floor of `evaluate_samples`: a dashed line at its mean over the draws of real images, in a
    grey band of two standard deviations either side. A model inside the band is as close to the data as real
    images are at this N; the band is wide at small N, so a point under the line there is no paradox."""
    mean, sd = scores["fid_self_floor"], scores.get("fid_self_floor_std")
    draws = len(scores.get("fid_self_floor_draws", ())) or 1
    if sd is not None:  # None: too few real images for the draws to differ
        ax.axhspan(mean - 2 * sd, mean + 2 * sd, color="0.88", zorder=0,
                   label=f"floor ± 2 sd ({draws} sets of {what})")
    ax.axhline(mean, color="k", ls="--", lw=1, label=f"floor: {what}, N = {n}")


def floor_text(scores: dict, digits: int = 2) -> str:
    """The FID_self floor as text: "1.56 ± 0.08" (mean and spread over the draws), or "1.56" without a spread."""
    sd = scores.get("fid_self_floor_std")
    return f"{scores['fid_self_floor']:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")
