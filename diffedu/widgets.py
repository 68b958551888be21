"""Interactive explorers (ipywidgets) that redraw a picture when a knob moves.

Each explorer is an `ipywidgets.VBox` with its controls as attributes, and it keeps the last array it
drew in `last_image`, so tests (and curious learners) can see what changed without a browser.
"""

from __future__ import annotations

import ipywidgets as widgets
from IPython.display import display
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from diffedu.forward import q_sample
from diffedu.plotting import histogram_vs_normal, image_grid
from diffedu.schedules import NoiseSchedule, snr_db


class ForwardNoisingExplorer(widgets.VBox):
    """A slider over t and a schedule choice; shows q(x_t | x_0) for a few images and their histogram.

    The noise eps is drawn once, so moving the slider changes only t: you watch one noise pattern
    take over the images.
    """

    def __init__(self, images: Tensor, schedules: dict[str, NoiseSchedule], *, seed: int = 0, nrow: int = 4) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be a batch (N, C, H, W), got shape {tuple(images.shape)}")
        if not schedules:
            raise ValueError("give at least one schedule, e.g. {'linear': make_schedule('linear')}")
        self.images = images
        self.schedules = schedules
        self.nrow = nrow
        self.eps = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
        T = next(iter(schedules.values())).T  # noqa: N806
        self.t_slider = widgets.IntSlider(value=0, min=0, max=T - 1, step=1, description="t", continuous_update=False,
                                          layout=widgets.Layout(width="60%"))
        self.schedule_choice = widgets.Dropdown(options=list(schedules), description="schedule")
        self.output = widgets.Output()
        self.last_image: np.ndarray | None = None
        self.t_slider.observe(self._redraw, names="value")
        self.schedule_choice.observe(self._redraw, names="value")
        super().__init__([widgets.HBox([self.t_slider, self.schedule_choice]), self.output])
        self._redraw()

    def _redraw(self, change=None) -> None:
        schedule = self.schedules[self.schedule_choice.value]
        t_value = min(self.t_slider.value, schedule.T - 1)
        t = torch.full((self.images.shape[0],), t_value, dtype=torch.long)
        x_t = q_sample(self.images, t, self.eps, schedule)
        self.last_image = image_grid(x_t.clamp(-1, 1), self.nrow)
        abar = schedule.alphas_cumprod[t_value].item()
        with self.output:
            self.output.clear_output(wait=True)
            fig, (ax_img, ax_hist) = plt.subplots(1, 2, figsize=(8, 3.4), gridspec_kw={"width_ratios": [1, 1.3]})
            ax_img.imshow(self.last_image, interpolation="nearest")
            ax_img.set_axis_off()
            ax_img.set_title(f"x_t at t = {t_value}  (alpha-bar = {abar:.3f}, SNR = {snr_db(schedule)[t_value]:.1f} dB)",
                             fontsize=9)
            histogram_vs_normal(x_t, ax_hist, title="values of x_t against N(0, 1)")
            fig.tight_layout()
            display(fig)
            plt.close(fig)
