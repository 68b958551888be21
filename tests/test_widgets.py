import numpy as np
import pytest
import torch

from diffedu.course.widgets import ForwardNoisingExplorer
from diffedu.schedules import make_schedule


def test_moving_the_slider_redraws_the_image():
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    explorer = ForwardNoisingExplorer(images, {"linear": make_schedule("linear"), "cosine": make_schedule("cosine")})
    at_zero = explorer.last_image.copy()
    assert np.allclose(at_zero[2:10, 2:10, 0], (images[0, 0].numpy() + 1) / 2, atol=0.03)  # t = 0 is (almost) the image
    explorer.t_slider.value = 500
    at_500 = explorer.last_image.copy()
    assert not np.allclose(at_zero, at_500)
    explorer.schedule_choice.value = "cosine"
    assert not np.allclose(at_500, explorer.last_image)


def test_explorer_refuses_bad_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ForwardNoisingExplorer(torch.zeros(8, 8), {"linear": make_schedule("linear")})
    with pytest.raises(ValueError, match="at least one schedule"):
        ForwardNoisingExplorer(torch.zeros(1, 1, 8, 8), {})


def _gaussian_eps_model(schedule, mu=0.2, s=0.5):
    """The exact eps-prediction for data x0 ~ N(mu, s^2): a stand-in for a trained network."""

    def model(x_t, t):
        abar = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * mu) / (abar * s**2 + 1 - abar)

    return model


def test_ddim_explorer_redraws_when_each_slider_moves():
    from diffedu.course.widgets import DDIMExplorer

    schedule = make_schedule("linear", T=100)
    explorer = DDIMExplorer(_gaussian_eps_model(schedule), schedule, n=4, image_shape=(1, 8, 8), steps=10, max_steps=50)
    first = explorer.last_image.copy()
    assert explorer.last_samples.shape == (4, 1, 8, 8)
    explorer.steps_slider.value = 3
    few_steps = explorer.last_image.copy()
    assert not np.allclose(first, few_steps)
    explorer.eta_slider.value = 1.0
    assert not np.allclose(few_steps, explorer.last_image)
    explorer.eta_slider.value = 0.0  # back to the start: eta = 0 is deterministic, so the same picture
    assert np.allclose(few_steps, explorer.last_image)


def test_ddim_explorer_refuses_values_out_of_range():
    from diffedu.course.widgets import DDIMExplorer

    schedule = make_schedule("linear", T=100)
    model = _gaussian_eps_model(schedule)
    for kwargs, match in [({"steps": 0}, "steps"), ({"steps": 51}, "steps"), ({"steps": 2.5}, "steps"),
                          ({"eta": -0.1}, "eta"), ({"eta": 1.5}, "eta"), ({"max_steps": 101}, "max_steps"),
                          ({"n": 0}, r"\bn\b"), ({"image_shape": (8, 8)}, "image_shape")]:
        with pytest.raises(ValueError, match=match):
            DDIMExplorer(model, schedule, image_shape=kwargs.pop("image_shape", (1, 8, 8)),
                         **{"max_steps": 50, **kwargs})
    explorer = DDIMExplorer(model, schedule, n=2, image_shape=(1, 8, 8), max_steps=50)
    explorer.steps_slider.value = 500  # the slider itself keeps values in its range
    assert explorer.steps_slider.value == 50
    explorer.eta_slider.value = -1.0
    assert explorer.eta_slider.value == 0.0


def test_a_redraw_says_it_is_drawing_until_the_new_picture_is_up(monkeypatch):
    from diffedu.course import widgets as widget_module

    schedule = make_schedule("linear", T=100)
    seen = []
    real = widget_module.ddim_sample
    explorer = widget_module.DDIMExplorer(_gaussian_eps_model(schedule), schedule, n=2, image_shape=(1, 8, 8),
                                          steps=5, max_steps=50)
    monkeypatch.setattr(widget_module, "ddim_sample",
                        lambda *a, **k: seen.append(explorer.status.value) or real(*a, **k))
    explorer.steps_slider.value = 7
    assert "drawing 7 steps, eta = 0.00" in seen[-1]  # shown while the sampler runs, with the new value
    assert "drawn in" in explorer.status.value and "drawing" not in explorer.status.value

    def failing(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(widget_module, "ddim_sample", failing)
    with pytest.raises(RuntimeError):
        explorer.steps_slider.value = 9
    assert "failed" in explorer.status.value  # not left saying "drawing" forever


def test_score_field_explorer_redraws_and_reads_the_prediction():
    from diffedu.course.widgets import ScoreFieldExplorer

    schedule = make_schedule("linear", T=100)
    data = torch.randn(50, 2) * 0.3 + 1.0

    def eps_model(x, t):  # the exact eps of data N(1, 0.3^2): its arrows point towards (1, 1)
        abar = schedule.alphas_cumprod[t].view(-1, 1)
        return (1 - abar).sqrt() * (x - abar.sqrt() * 1.0) / (abar * 0.09 + 1 - abar)

    explorer = ScoreFieldExplorer(eps_model, schedule, data=data, grid=5, lim=2.0, t=10)
    positions, arrows = explorer.last_field
    assert positions.shape == arrows.shape == (25, 2)
    towards = (torch.ones(2) * schedule.alphas_cumprod[10].sqrt() - positions)  # from each point to the mean of x_t
    assert ((towards * arrows).sum(1) > 0).all()  # -eps points towards denser noisy data
    explorer.t_slider.value = 90
    assert not torch.allclose(arrows, explorer.last_field[1])

    def x0_model(x, t):  # the same network, answering with x0: the arrows must not change
        abar = schedule.alphas_cumprod[t].view(-1, 1)
        return (x - (1 - abar).sqrt() * eps_model(x, t)) / abar.sqrt()

    same = ScoreFieldExplorer(x0_model, schedule, prediction="x0", grid=5, lim=2.0, t=90)
    assert torch.allclose(same.last_field[1], explorer.last_field[1], atol=1e-4)


def test_score_field_explorer_refuses_bad_input():
    from diffedu.course.widgets import ScoreFieldExplorer

    schedule = make_schedule("linear", T=100)
    model = lambda x, t: x  # noqa: E731
    for kwargs, match in [({"t": 100}, "0..T-1"), ({"t": -1}, "0..T-1"), ({"grid": 1}, "grid"),
                          ({"prediction": "noise"}, "unknown prediction"),
                          ({"data": torch.zeros(5, 3)}, r"shape \(N, 2\)")]:
        with pytest.raises(ValueError, match=match):
            ScoreFieldExplorer(model, schedule, **{"t": 10, **kwargs})


def test_the_drawing_pad_inks_where_the_mouse_goes_and_tells_its_listeners():
    from diffedu.course.widgets import DrawingPad

    pad = DrawingPad(scale=4)
    assert pad.canvas is not None  # ipycanvas is a dependency
    assert torch.equal(pad.image, -torch.ones(1, 1, 28, 28))
    strokes = []
    pad.on_stroke(lambda: strokes.append(pad.image.clone()))
    pad._down(10 * 4 + 2, 5 * 4 + 2)  # screen (x, y) -> pixel (row 5, column 10)
    for x in (14, 19):  # a fast mouse: two events, the gap between them filled
        pad._move(x * 4 + 2, 5 * 4 + 2)
    assert not strokes  # nothing is told until the stroke ends
    pad._up(19 * 4 + 2, 5 * 4 + 2)
    assert len(strokes) == 1
    drawn = strokes[0][0, 0]
    assert drawn[5, 10:20].min() > 0.9 and drawn[20, :].max() == -1  # a line along row 5, nothing far from it
    pad._move(2, 2)  # the mouse moving without a button held draws nothing
    assert torch.equal(pad.image, strokes[0])
    pad.clear()
    assert len(strokes) == 2 and torch.equal(pad.image, -torch.ones(1, 1, 28, 28))


def test_the_drawing_pad_without_a_canvas_holds_a_fixed_sketch():
    from diffedu.course.widgets import DrawingPad, fixed_sketch

    pad = DrawingPad(canvas=False)
    assert pad.canvas is None and "fixed sketch" in pad.note.value
    assert torch.allclose(pad.image, fixed_sketch(), atol=1e-6)
    assert 40 < int((pad.image > 0).sum()) < 200  # a few strokes of ink, not an empty or a full image
    pad.set_image(torch.zeros(28, 28))
    assert torch.allclose(pad.image, torch.zeros(1, 1, 28, 28))


def test_the_sketch_explorer_redraws_when_the_strength_or_the_drawing_changes():
    from diffedu.course.widgets import DrawingPad, SketchExplorer

    schedule = make_schedule("linear", T=100)
    model = _gaussian_eps_model(schedule)
    explorer = SketchExplorer(_Wrapped(model), schedule,
                              pad=DrawingPad(canvas=False), n=3, steps=4)
    first = explorer.last_image.copy()
    assert explorer.last_images.shape == (3, 1, 28, 28)
    assert explorer.digit.layout.display == "none"  # no classes: no digit menu
    explorer.strength.value = 0.2
    assert not np.allclose(first, explorer.last_image)
    explorer.strength.value = 0.1
    low = (explorer.last_images - explorer.pad.image).abs().mean()
    explorer.strength.value = 1.0
    assert low < 0.5 * (explorer.last_images - explorer.pad.image).abs().mean()  # low strength stays near the sketch
    second = explorer.last_image.copy()
    explorer.pad.set_image(-torch.ones(1, 1, 28, 28))
    assert not np.allclose(second, explorer.last_image)


class _Wrapped(torch.nn.Module):
    """A plain function as a module (the explorer asks it for its device and config)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t, cond=None):
        return self.fn(x, t)


def test_the_sketch_explorer_asks_a_class_conditional_model_for_the_chosen_digit():
    from diffedu.course.widgets import SketchExplorer, fixed_sketch
    from diffedu.models.unet import UNet, UNetConfig

    torch.manual_seed(0)
    model = UNet(UNetConfig(image_size=28, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                            attention_resolutions=(), norm_groups=4, num_classes=10)).eval()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[2].clone()))
    explorer = SketchExplorer(model, make_schedule("linear", T=50), n=2, steps=2)
    assert torch.allclose(explorer.pad.image, fixed_sketch(), atol=1e-6)  # it starts from the sketch
    assert explorer.digit.layout.display is None and seen[-1].tolist() == [10, 10]  # "any": the null label
    explorer.digit.value = 3
    assert seen[-1].tolist() == [3, 3, 10, 10]  # guidance: the digit and the null label in one batch


def test_the_inpaint_explorer_fills_the_painted_region_and_keeps_the_rest():
    from diffedu.course.widgets import InpaintExplorer

    schedule = make_schedule("linear", T=50)
    digit = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    explorer = InpaintExplorer(_Wrapped(_gaussian_eps_model(schedule)), schedule, digit, n=2, steps=3)
    assert explorer.mask[0, 0, :14].eq(1).all() and explorer.mask[0, 0, 14:].eq(0).all()  # nothing painted: bottom
    assert torch.equal(explorer.last_images * explorer.mask, digit.expand(2, -1, -1, -1) * explorer.mask)
    first = explorer.last_image.copy()
    pad = explorer.pad
    pad._down(5 * pad.scale, 5 * pad.scale)
    pad._move(8 * pad.scale, 5 * pad.scale)
    pad._up(8 * pad.scale, 5 * pad.scale)
    assert explorer.mask[0, 0, 5, 5:8].eq(0).all() and explorer.mask[0, 0, 20].eq(1).all()  # now the stroke is the hole
    assert not np.allclose(first, explorer.last_image)
    assert torch.equal(explorer.last_images * explorer.mask, digit.expand(2, -1, -1, -1) * explorer.mask)
    explorer.resample.value = 2
    assert explorer.last_images.shape == (2, 1, 28, 28)
