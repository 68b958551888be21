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
