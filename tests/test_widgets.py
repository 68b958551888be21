import numpy as np
import pytest
import torch

from diffedu.schedules import make_schedule
from diffedu.widgets import ForwardNoisingExplorer


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
