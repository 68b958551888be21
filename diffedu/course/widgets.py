"""Interactive explorers (ipywidgets) that redraw a picture when a knob moves.

Each explorer is an `ipywidgets.VBox` with its controls as attributes, and it keeps the last array it
drew in `last_image`, so tests (and curious learners) can see what changed without a browser.
"""

from __future__ import annotations

import html
import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display
from torch import Tensor, nn

try:  # the drawing pad's canvas; without it the pad shows a fixed sketch
    import ipycanvas
except ImportError:  # pragma: no cover - ipycanvas is a dependency, but a canvas is a nicety, never a requirement
    ipycanvas = None

from diffedu.course.plotting import histogram_vs_normal, image_grid, show_images
from diffedu.editing import inpaint, sdedit
from diffedu.flow import euler_step, velocity
from diffedu.forward import q_sample
from diffedu.predictions import check_prediction, to_x0_and_eps
from diffedu.samplers import ddim_sample, eval_mode, model_device
from diffedu.schedules import NoiseSchedule, snr_db
from diffedu.text2img import Text2Img, generate


class BusySign(widgets.HTML):
    """A label beside a widget's controls that says it is drawing, and for what, until the new picture is up.

    On a busy laptop a redraw can take many seconds; without it the old picture and its title sit under the
    new slider value. Use ``with sign.drawing("t = 120"):`` around the redraw.
    """

    def __init__(self) -> None:
        super().__init__(value="")

    @contextmanager
    def drawing(self, what: str) -> Iterator[None]:
        self.value = f"<span style='color:#b35900'><b>&#8987; drawing {html.escape(what)} ...</b></span>"
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self.value = "<span style='color:#b30000'>the redraw failed: see the message below</span>"
            raise
        self.value = f"<span style='color:#777'>drawn in {time.perf_counter() - started:.1f} s</span>"


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
        self.status = BusySign()
        self.t_slider.observe(self._redraw, names="value")
        self.schedule_choice.observe(self._redraw, names="value")
        super().__init__([widgets.HBox([self.t_slider, self.schedule_choice, self.status]), self.output])
        self._redraw()

    def _redraw(self, change=None) -> None:
        with self.status.drawing(f"t = {self.t_slider.value}, {self.schedule_choice.value}"):
            self._draw()

    def _draw(self) -> None:
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


class DDIMExplorer(widgets.VBox):
    """Sliders over DDIM's number of steps and eta; redraws samples from one fixed starting noise x_T.

    x_T is drawn once (and, for eta > 0, the fresh noise of every step comes from a generator reseeded
    at each redraw), so a change in the picture is due to the slider alone: fewer steps or more noise,
    the same model, the same starting point.
    """

    def __init__(
        self,
        model,
        schedule: NoiseSchedule,
        *,
        n: int = 8,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        steps: int = 20,
        eta: float = 0.0,
        max_steps: int = 100,
        seed: int = 0,
        nrow: int = 8,
        clip_x0: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        if not 1 <= max_steps <= schedule.T:
            raise ValueError(f"max_steps must lie in 1..T = {schedule.T}, got {max_steps}")
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= max_steps:
            raise ValueError(f"steps must be an integer in 1..max_steps = {max_steps}, got {steps!r}")
        if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta!r}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n (the number of images) must be a positive integer, got {n!r}")
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        self.model = model
        self.schedule = schedule
        self.seed = seed
        self.nrow = nrow
        self.clip_x0 = clip_x0
        self.device = torch.device(device) if device is not None else model_device(model)
        self.x_T = torch.randn((n, *image_shape), generator=torch.Generator().manual_seed(seed))  # (n, C, H, W)
        self.steps_slider = widgets.IntSlider(value=steps, min=1, max=max_steps, step=1, description="steps",
                                              continuous_update=False, layout=widgets.Layout(width="50%"))
        self.eta_slider = widgets.FloatSlider(value=float(eta), min=0.0, max=1.0, step=0.05, description="eta",
                                              continuous_update=False, readout_format=".2f",
                                              layout=widgets.Layout(width="40%"))
        self.output = widgets.Output()
        self.last_image: np.ndarray | None = None
        self.last_samples: Tensor | None = None
        self.status = BusySign()
        self.steps_slider.observe(self._redraw, names="value")
        self.eta_slider.observe(self._redraw, names="value")
        super().__init__([widgets.HBox([self.steps_slider, self.eta_slider, self.status]), self.output])
        self._redraw()

    def _redraw(self, change=None) -> None:
        with self.status.drawing(f"{self.steps_slider.value} steps, eta = {self.eta_slider.value:.2f}"):
            self._draw()

    def _draw(self) -> None:
        steps, eta = int(self.steps_slider.value), float(self.eta_slider.value)
        started = time.perf_counter()
        samples = ddim_sample(self.model, self.schedule, tuple(self.x_T.shape), steps=steps, eta=eta,
                              x_T=self.x_T, generator=torch.Generator().manual_seed(self.seed + 1),
                              clip_x0=self.clip_x0, device=self.device, progress=False)
        seconds = time.perf_counter() - started
        self.last_samples = samples.cpu()
        self.last_image = image_grid(self.last_samples.clamp(-1, 1), self.nrow)
        with self.output:
            self.output.clear_output(wait=True)
            rows = int(np.ceil(len(samples) / self.nrow))
            fig, ax = plt.subplots(figsize=(0.7 * min(self.nrow, len(samples)) + 0.5, 0.7 * rows + 0.6))
            ax.imshow(self.last_image, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"DDIM, {steps} steps ({steps} model calls), eta = {eta:.2f}: {seconds:.2f} s", fontsize=9)
            fig.tight_layout()
            display(fig)
            plt.close(fig)


class ScoreFieldExplorer(widgets.VBox):
    """A slider over t: what a 2-D diffusion model predicts at every point of the plane, as arrows.

    The arrows are the direction of -eps_theta(x, t) (whatever the model outputs, read as ``prediction`` and
    turned into eps), drawn at unit length and coloured by log10 of the length: -eps_theta is the score
    grad log p_t(x) times sqrt(1 - alpha-bar_t) > 0, so it points where the noised data gets denser. Grey points
    are the data noised to the same t, for comparison. ``last_field`` keeps the arrows ((G*G, 2) positions and
    -eps, before scaling to unit length), so a test can read what changed without a browser.
    """

    def __init__(self, model, schedule: NoiseSchedule, *, prediction: str = "eps", data: Tensor | None = None,
                 grid: int = 21, lim: float = 2.5, t: int = 100, seed: int = 0) -> None:
        check_prediction(prediction)
        if not isinstance(grid, int) or grid < 2:
            raise ValueError(f"grid must be an integer >= 2 (arrows per side), got {grid!r}")
        if not (isinstance(t, int) and 0 <= t < schedule.T):
            raise ValueError(f"t must be an integer in 0..T-1 = 0..{schedule.T - 1}, got {t!r}")
        if data is not None and (data.ndim != 2 or data.shape[1] != 2):
            raise ValueError(f"data must be points in the plane, shape (N, 2); got {tuple(data.shape)}")
        self.model, self.schedule, self.prediction, self.lim = model, schedule, prediction, lim
        self.data = data[:2000] if data is not None else None
        self.noise = (torch.randn(self.data.shape, generator=torch.Generator().manual_seed(seed))
                      if self.data is not None else None)
        axis = torch.linspace(-lim, lim, grid)
        self.grid_points = torch.cartesian_prod(axis, axis)  # (G*G, 2)
        self.t_slider = widgets.IntSlider(value=t, min=0, max=schedule.T - 1, step=max(1, schedule.T // 100),
                                          description="t", continuous_update=False, layout=widgets.Layout(width="60%"))
        self.status = BusySign()
        self.output = widgets.Output()
        self.last_field: tuple[Tensor, Tensor] | None = None
        self.t_slider.observe(self._redraw, names="value")
        super().__init__([widgets.HBox([self.t_slider, self.status]), self.output])
        self._redraw()

    def _redraw(self, change=None) -> None:
        with self.status.drawing(f"t = {self.t_slider.value}"):
            self._draw()

    def _draw(self) -> None:
        t = int(self.t_slider.value)
        steps = torch.full((len(self.grid_points),), t, dtype=torch.long)
        with torch.no_grad(), eval_mode(self.model):
            output = self.model(self.grid_points, steps)
        _, eps = to_x0_and_eps(output, self.grid_points, steps, self.schedule, self.prediction)
        self.last_field = (self.grid_points, -eps)
        with self.output:
            self.output.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(4.6, 4.6))
            if self.data is not None:
                noised = q_sample(self.data, torch.full((len(self.data),), t), self.noise, self.schedule)
                ax.scatter(*noised.T, s=2, c="0.8", label=f"data noised to t = {t}")
                ax.legend(loc="lower right", fontsize=7)
            direction = -eps / eps.norm(dim=1, keepdim=True).clamp_min(1e-12)  # unit arrows: the way, not how far
            ax.quiver(*self.grid_points.T, *direction.T, eps.norm(dim=1).log10(), cmap="viridis", angles="xy",
                      scale=1.1 * len(direction) ** 0.5, alpha=0.9)
            ax.set_xlim(-self.lim, self.lim)
            ax.set_ylim(-self.lim, self.lim)
            ax.set_aspect("equal")
            ax.set_title(f"t = {t}: the direction of -eps_theta(x, t)\n(colour: log10 of its length)", fontsize=9)
            display(fig)
            plt.close(fig)


class FlowFieldExplorer(widgets.VBox):
    """A slider over t in [0, 1]: the learned velocity field of a 2-D flow model as arrows, and where points
    that started as noise at t = 1 are at that t (Euler, ``steps_per_unit`` steps per unit of time).

    ``last_field`` keeps the arrows drawn ((G*G, 2) positions and velocities) and ``last_points`` the points,
    so a test (or a learner) can read what changed without a browser.
    """

    def __init__(self, model, *, n_points: int = 500, grid: int = 21, lim: float = 2.5, steps_per_unit: int = 50,
                 t: float = 0.5, seed: int = 0, data: Tensor | None = None) -> None:
        if not isinstance(grid, int) or grid < 2:
            raise ValueError(f"grid must be an integer >= 2 (arrows per side), got {grid!r}")
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must lie in [0, 1] (1: noise, 0: data), got {t!r}")
        self.model, self.lim, self.steps_per_unit = model, lim, steps_per_unit
        self.data = data
        axis = torch.linspace(-lim, lim, grid)
        self.grid_points = torch.cartesian_prod(axis, axis)  # (G*G, 2)
        self.noise = torch.randn(n_points, 2, generator=torch.Generator().manual_seed(seed))
        self.t_slider = widgets.FloatSlider(value=float(t), min=0.0, max=1.0, step=0.05, description="t",
                                            continuous_update=False, readout_format=".2f",
                                            layout=widgets.Layout(width="60%"))
        self.status = BusySign()
        self.output = widgets.Output()
        self.last_field: tuple[Tensor, Tensor] | None = None
        self.last_points: Tensor | None = None
        self.t_slider.observe(self._redraw, names="value")
        super().__init__([widgets.HBox([self.t_slider, self.status]), self.output])
        self._redraw()

    def _points_at(self, t_value: float) -> Tensor:
        steps = max(1, round((1.0 - t_value) * self.steps_per_unit))
        times = torch.linspace(1.0, t_value, steps + 1).tolist()
        x = self.noise.clone()
        with torch.no_grad(), eval_mode(self.model):
            for t, t_next in zip(times[:-1], times[1:]):
                x = euler_step(x, t, t_next, velocity(self.model, x, t))
        return x

    def _redraw(self, change=None) -> None:
        with self.status.drawing(f"t = {self.t_slider.value:.2f}"):
            self._draw()

    def _draw(self) -> None:
        t_value = float(self.t_slider.value)
        with torch.no_grad(), eval_mode(self.model):
            v = velocity(self.model, self.grid_points, t_value)  # (G*G, 2)
        points = self._points_at(t_value)
        self.last_field, self.last_points = (self.grid_points, v), points
        with self.output:
            self.output.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(4.6, 4.6))
            if self.data is not None:
                ax.scatter(*self.data[:2000].T, s=2, c="0.85", label="data")
            ax.quiver(*self.grid_points.T, *(-v).T, color="tab:blue", angles="xy", alpha=0.8)
            ax.scatter(*points.T, s=4, c="tab:orange", label="samples at this t")
            ax.set_xlim(-self.lim, self.lim)
            ax.set_ylim(-self.lim, self.lim)
            ax.set_aspect("equal")
            ax.set_title(f"t = {t_value:.2f}: arrows show -v, the way points move as t falls", fontsize=9)
            ax.legend(loc="lower right", fontsize=7)
            display(fig)
            plt.close(fig)


def prompt_explorer(model: Text2Img, schedule: Any, *, prompt: str = "a thick seven", guidance: float = 3.0,
                    seed: int = 0, n: int = 8, steps: int = 25, nrow: int = 8, vae: nn.Module | None = None) -> Any:
    """An ipywidgets box: a prompt, a guidance slider and a seed; it draws ``n`` images for the prompt.

    The returned box has ``.draw()`` (redraw now; returns the images) and keeps ``.last_images``, so it
    works without a browser too (tests, nbval).
    """
    text = widgets.Text(value=prompt, description="prompt", continuous_update=False,
                        layout=widgets.Layout(width="60%"))
    scale = widgets.FloatSlider(value=guidance, min=0.0, max=10.0, step=0.5, description="guidance",
                                continuous_update=False)
    seed_box = widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="180px"))
    output = widgets.Output()
    status = BusySign()
    box = widgets.VBox([widgets.HBox([text, scale, seed_box]), status, output])
    box.last_images, box.status = None, status

    def draw(change: Any = None) -> Tensor:
        with status.drawing(f"{text.value!r}, guidance {scale.value:g}, seed {seed_box.value}"):
            return _draw()

    def _draw() -> Tensor:
        with output:
            output.clear_output(wait=True)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                images = generate(model, schedule, text.value, n_per_prompt=n, guidance=float(scale.value),
                                  steps=steps, seed=int(seed_box.value), vae=vae)
            for w in caught:
                print(f"note: {w.message}")
            box.last_images = images
            ax = show_images(images, nrow=nrow, size=0.7)
            ax.set_title(f"{text.value!r}, guidance {scale.value:g}, seed {seed_box.value}", fontsize=9)
            display(ax.figure)
            plt.close(ax.figure)
        return images

    for control in (text, scale, seed_box):
        control.observe(draw, names="value")
    box.draw = draw
    return box


# --------------------------------------------------------------------------- drawing (lesson 12)


def fixed_sketch(size: int = 28) -> Tensor:
    """A rough hand-drawn 'seven' (1, 1, size, size) in [-1, 1]: what a drawing pad shows where no canvas can render."""
    ink = np.zeros((size, size), dtype=np.float32)
    s = size / 28

    def stroke(r0: float, c0: float, r1: float, c1: float, width: float = 1.6) -> None:
        rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
        p0, p1 = np.array([r0, c0]) * s, np.array([r1, c1]) * s
        d = p1 - p0
        t = np.clip(((rows - p0[0]) * d[0] + (cols - p0[1]) * d[1]) / (d @ d), 0, 1)
        dist = np.hypot(rows - (p0[0] + t * d[0]), cols - (p0[1] + t * d[1]))
        np.maximum(ink, np.clip(width * s - dist + 0.5, 0, 1), out=ink)

    stroke(7, 8, 7, 20)       # the bar
    stroke(7, 20, 22, 12)     # the diagonal
    stroke(14, 12, 14, 19)    # a crossbar, as some write it
    return torch.from_numpy(ink * 2 - 1)[None, None]


class DrawingPad(widgets.VBox):
    """A size x size drawing the learner makes with the mouse on an ipycanvas canvas (``scale`` screen pixels per
    pixel), with a Clear button.

    ``pad.image`` is the drawing as (1, 1, size, size) in [-1, 1] (ink 1, paper -1). ``pad.on_stroke(fn)`` calls
    ``fn()`` after each stroke (mouse up) and after Clear. ``background`` (1, 1, size, size) in [-1, 1], when
    given, is shown in grey under the strokes (to paint a mask over a digit). ``start`` is a drawing to begin with
    (default: an empty pad). Where ipycanvas is missing, or with ``canvas=False``, the pad holds ``start`` or
    ``fallback`` (default: `fixed_sketch`) and says so; ``pad.set_image(x)`` puts any
    drawing in it (tests, nbval, a learner without a canvas).
    """

    def __init__(self, *, size: int = 28, scale: int = 8, brush: float = 1.3, canvas: bool = True,
                 start: Tensor | None = None, fallback: Tensor | None = None, background: Tensor | None = None,
                 ink_colour: str = "white") -> None:
        self.size, self.scale, self.brush = size, scale, brush
        self.ink = np.zeros((size, size), dtype=np.float32)
        self.background = background.detach().float().cpu() if background is not None else None
        self.ink_colour = ink_colour
        self._callbacks: list[Any] = []
        self._drawing = False
        self._last = (0.0, 0.0)
        self.clear_button = widgets.Button(description="Clear", layout=widgets.Layout(width="80px"))
        self.clear_button.on_click(lambda _: self.clear())
        self.canvas = None
        note = ""
        shown = "the starting drawing" if start is not None else "a fixed sketch"
        if canvas:
            if ipycanvas is None:
                note = f"ipycanvas is not installed (pip install ipycanvas): showing {shown} instead"
            else:
                self.canvas = ipycanvas.Canvas(width=size * scale, height=size * scale,
                                               layout=widgets.Layout(width=f"{size * scale}px",
                                                                     height=f"{size * scale}px"))
                self.canvas.on_mouse_down(self._down)
                self.canvas.on_mouse_move(self._move)
                self.canvas.on_mouse_up(self._up)
        else:
            note = f"no canvas: showing {shown}"
        self.note = widgets.HTML(f"<span style='color:#777'>{html.escape(note)}</span>" if note else "")
        if self.canvas is None and start is None:
            start = fallback if fallback is not None else fixed_sketch(size)
        if start is not None:
            drawing = start.detach().reshape(size, size).float().cpu().numpy()
            self.ink = ((drawing + 1) / 2).clip(0, 1).astype(np.float32)
        if self.canvas is None:
            self.preview = widgets.Output()
            body: widgets.Widget = self.preview
        else:
            body = self.canvas
        super().__init__([body, widgets.HBox([self.clear_button, self.note])])
        self._paint_all()

    @property
    def image(self) -> Tensor:
        return torch.from_numpy(self.ink.copy() * 2 - 1)[None, None]

    def on_stroke(self, callback: Any) -> None:
        self._callbacks.append(callback)

    def set_image(self, image: Tensor) -> None:
        """Replace the drawing by ``image`` (1, 1, size, size) or (size, size) in [-1, 1]."""
        arr = image.detach().float().reshape(self.size, self.size).cpu().numpy()
        self.ink = ((arr + 1) / 2).clip(0, 1).astype(np.float32)
        self._paint_all()
        self._fire()

    def clear(self) -> None:
        self.ink[:] = 0
        self._paint_all()
        self._fire()

    def _fire(self) -> None:
        for callback in self._callbacks:
            callback()

    def _dab(self, x: float, y: float) -> None:
        """Ink a soft disc of radius ``brush`` pixels around the screen point (x, y)."""
        r, c = y / self.scale - 0.5, x / self.scale - 0.5
        rows, cols = np.mgrid[0:self.size, 0:self.size]
        dist = np.hypot(rows - r, cols - c)
        np.maximum(self.ink, np.clip(self.brush - dist + 0.5, 0, 1).astype(np.float32), out=self.ink)
        if self.canvas is not None:
            self.canvas.fill_style = self.ink_colour
            self.canvas.fill_circle(x, y, self.brush * self.scale)

    def _down(self, x: float, y: float) -> None:
        self._drawing = True
        self._last = (x, y)
        self._dab(x, y)

    def _move(self, x: float, y: float) -> None:
        if not self._drawing:
            return
        (x0, y0), self._last = self._last, (x, y)
        n = max(1, int(np.ceil(np.hypot(x - x0, y - y0) / (self.scale / 2))))  # a fast mouse skips: fill the gap
        for k in range(1, n + 1):
            self._dab(x0 + (x - x0) * k / n, y0 + (y - y0) * k / n)

    def _up(self, x: float, y: float) -> None:
        if self._drawing:
            self._drawing = False
            self._fire()

    def _paint_all(self) -> None:
        """Show the current drawing: on the canvas (background, then ink), or as a picture in the preview."""
        shown = self.ink
        if self.background is not None:
            grey = ((self.background[0, 0].float().numpy() + 1) / 4).clip(0, 0.5)
            shown = np.maximum(grey, self.ink)
        if self.canvas is not None:
            rgb = (np.repeat(np.kron(shown, np.ones((self.scale, self.scale)))[..., None], 3, axis=2) * 255)
            self.canvas.put_image_data(rgb.astype(np.uint8), 0, 0)
            return
        with self.preview:
            self.preview.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(1.6, 1.6))
            ax.imshow(shown, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
            display(fig)
            plt.close(fig)


class _PadEditor(widgets.VBox):
    """What the two editing explorers share: a knob (their first slider), a digit menu for a class-conditional model,
    a `DrawingPad` beside the picture, and a redraw on every change of either or after every stroke."""

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, pad: DrawingPad, knob: widgets.Widget, *, n: int,
                 steps: int, guidance: float, seed: int, digit: int | None) -> None:
        self.model, self.schedule, self.pad, self.knob = model, schedule, pad, knob
        self.n, self.steps, self.guidance, self.seed = n, steps, guidance, seed
        self.classes = getattr(getattr(model, "config", None), "num_classes", None)
        self.digit = widgets.Dropdown(options=[("any", -1)] + [(str(k), k) for k in range(self.classes or 0)],
                                      value=-1 if digit is None or not self.classes else int(digit),
                                      description="digit", layout=widgets.Layout(width="160px"))
        self.digit.layout.display = None if self.classes else "none"
        self.output = widgets.Output()
        self.status = BusySign()
        self.last_image: np.ndarray | None = None
        self.last_images: Tensor | None = None
        knob.observe(self._redraw, names="value")
        self.digit.observe(self._redraw, names="value")
        pad.on_stroke(self._redraw)
        super().__init__([widgets.HBox([knob, self.digit, self.status]), widgets.HBox([pad, self.output])])
        self._redraw()

    def _redraw(self, change: Any = None) -> None:
        with self.status.drawing(f"{self.knob.description} {self.knob.value:g}"):
            self.draw()

    def draw(self) -> Tensor:
        raise NotImplementedError

    @property
    def asked(self) -> int | None:
        """The digit chosen in the menu, None for "any"."""
        return None if self.digit.value < 0 else int(self.digit.value)

    def condition(self) -> dict[str, Any]:
        """The sampler's condition: none for an unconditional model; the null label for "any"; else the digit with
        classifier-free guidance."""
        if not self.classes:
            return {}
        device = model_device(self.model)
        if self.asked is None:
            return {"cond": torch.full((self.n,), self.classes, device=device)}
        return {"cond": torch.full((self.n,), self.asked, device=device), "guidance": self.guidance,
                "uncond": torch.tensor(self.classes, device=device)}

    def show(self, first: Tensor, images: Tensor, title: str) -> None:
        """``first`` (the input) and the results in one row, titled; kept in ``last_image`` / ``last_images``."""
        self.last_images = images
        self.last_image = image_grid(torch.cat([first, images]), self.n + 1)
        with self.output:
            self.output.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(0.9 * (self.n + 1) + 0.4, 1.5))
            ax.imshow(self.last_image, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(title + (f", asking for a {self.asked}" if self.asked is not None else ""), fontsize=9)
            fig.tight_layout()
            display(fig)
            plt.close(fig)


class SketchExplorer(_PadEditor):
    """SDEdit from a drawing: a strength slider, a digit to ask for (or none), and a `DrawingPad`; it noises the
    sketch to the chosen strength and denoises it (`diffedu.editing.sdedit`) into ``n`` digits.

    The pad starts with `fixed_sketch` (Clear it and draw your own). Low strength keeps the sketch and its flaws;
    high strength keeps little of it. A class-conditional model (``num_classes`` in its config) gets a digit menu
    (``digit``: the one chosen at first; "any" by default), with guidance ``guidance`` when a digit is chosen.
    ``.draw()`` redraws now and returns the images; ``last_image`` is the last grid drawn.
    """

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, *, pad: DrawingPad | None = None,
                 strength: float = 0.6, n: int = 6, steps: int = 25, guidance: float = 3.0, seed: int = 0,
                 digit: int | None = None) -> None:
        self.strength = widgets.FloatSlider(value=strength, min=0.1, max=1.0, step=0.05, description="strength",
                                            continuous_update=False, readout_format=".2f")
        super().__init__(model, schedule, pad if pad is not None else DrawingPad(start=fixed_sketch()), self.strength,
                         n=n, steps=steps, guidance=guidance, seed=seed, digit=digit)

    def draw(self) -> Tensor:
        sketch = self.pad.image.to(model_device(self.model))
        images = sdedit(self.model, self.schedule, sketch.expand(self.n, -1, -1, -1), float(self.strength.value),
                        steps=self.steps, generator=torch.Generator().manual_seed(self.seed), progress=False,
                        **self.condition()).clamp(-1, 1).cpu()
        self.show(self.pad.image, images, f"the sketch, then SDEdit at strength {self.strength.value:.2f}")
        return images


class InpaintExplorer(_PadEditor):
    """Inpainting with a mask you paint: a `DrawingPad` over ``image`` (1, 1, 28, 28), where the strokes mark the
    pixels to fill; a slider over RePaint's resamplings, and (for a class-conditional model) the digit to ask for.

    Until something is painted the bottom half is the hole. Every stroke, and every change of a control, fills the
    hole again (`diffedu.editing.inpaint`, DDIM with eta = 1) for ``n`` seeds. ``.draw()`` redraws now and returns
    the images; ``mask`` is the mask used last (1 known, 0 filled).
    """

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, image: Tensor, *, n: int = 6, steps: int = 25,
                 guidance: float = 3.0, seed: int = 0, canvas: bool = True, digit: int | None = None) -> None:
        self.image = image[:1].float().cpu()
        self.mask: Tensor | None = None
        self.resample = widgets.IntSlider(value=1, min=1, max=5, description="resample", continuous_update=False)
        pad = DrawingPad(background=self.image, ink_colour="#d62728", canvas=canvas, start=-torch.ones(1, 1, 28, 28))
        super().__init__(model, schedule, pad, self.resample, n=n, steps=steps, guidance=guidance, seed=seed,
                         digit=digit)

    def draw(self) -> Tensor:
        painted = self.pad.image[0, 0] > 0
        if not bool(painted.any()):  # nothing painted yet: the bottom half is the hole
            painted = torch.zeros(28, 28, dtype=torch.bool)
            painted[14:] = True
        self.mask = (~painted).float()[None, None]
        images = inpaint(self.model, self.schedule, self.image.expand(self.n, -1, -1, -1), self.mask, steps=self.steps,
                         resample=int(self.resample.value), generator=torch.Generator().manual_seed(self.seed),
                         progress=False, **self.condition()).clamp(-1, 1).cpu()
        self.show(self.image * self.mask, images,
                  f"the hole (grey), then filled in, {self.resample.value} resampling(s)")
        return images
