import pytest
import torch

from diffedu.forward import q_sample
from diffedu.schedules import make_schedule


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_has_the_closed_form_mean_and_variance(name):
    """Over many draws, x_t has mean sqrt(abar) x0 and variance 1 - abar (Ho et al. eq. 4)."""
    s = make_schedule(name, 1000)
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((n, 1), 0.6)
    for step in (0, 200, 600, 999):
        t = torch.full((n,), step)
        x_t = q_sample(x0, t, torch.randn(n, 1, generator=gen), s)
        abar = s.alphas_cumprod[step].item()
        assert x_t.mean().item() == pytest.approx(abar**0.5 * 0.6, abs=4e-3)
        assert x_t.var().item() == pytest.approx(1 - abar, abs=6e-3)


def test_q_sample_by_hand():
    s = make_schedule("linear", 10)
    x0 = torch.tensor([[1.0], [-0.5]])
    eps = torch.tensor([[0.3], [2.0]])
    t = torch.tensor([0, 9])
    abar = s.alphas_cumprod
    expected = torch.tensor([
        [abar[0].sqrt() * 1.0 + (1 - abar[0]).sqrt() * 0.3],
        [abar[9].sqrt() * -0.5 + (1 - abar[9]).sqrt() * 2.0],
    ])
    assert torch.allclose(q_sample(x0, t, eps, s), expected)


def test_q_sample_uses_a_timestep_per_item_on_images():
    s = make_schedule("linear", 1000)
    x0 = torch.zeros(3, 1, 4, 4) + 0.5
    eps = torch.zeros_like(x0)
    out = q_sample(x0, torch.tensor([0, 500, 999]), eps, s)
    for k, step in enumerate((0, 500, 999)):
        assert torch.allclose(out[k], 0.5 * s.alphas_cumprod[step].sqrt().expand(1, 4, 4))


@pytest.mark.parametrize(
    "t, match",
    [
        (torch.tensor([0, 1000]), r"0\.\.999"),
        (torch.tensor([-1, 3]), r"0\.\.999"),
        (torch.tensor([0, 1, 2]), r"one timestep per item.*\(2,\)"),
        (torch.tensor([[0, 1]]), r"one timestep per item"),
    ],
)
def test_bad_timesteps(t, match):
    s = make_schedule("linear", 1000)
    x0 = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match=match):
        q_sample(x0, t, torch.zeros_like(x0), s)


def test_float_timesteps_are_refused():
    s = make_schedule("linear", 1000)
    x0 = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="integer timesteps"):
        q_sample(x0, torch.tensor([1.0, 2.0]), torch.zeros_like(x0), s)


def test_data_far_outside_minus_one_one_is_refused():
    s = make_schedule("linear", 1000)
    x0 = torch.rand(2, 1, 4, 4) * 255
    with pytest.raises(ValueError, match=r"far outside \[-1, 1\].*127\.5"):
        q_sample(x0, torch.tensor([1, 2]), torch.zeros_like(x0), s)
    with pytest.raises(ValueError, match="NaN or infinite values in 2 of 2 examples"):
        q_sample(torch.full((2, 2), float("nan")), torch.tensor([1, 2]), torch.zeros(2, 2), s)


def test_integer_images_are_refused():
    s = make_schedule("linear", 1000)
    x0 = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(TypeError, match="float tensor"):
        q_sample(x0, torch.tensor([1, 2]), torch.zeros(2, 1, 4, 4), s)


def test_noise_of_the_wrong_shape_is_refused():
    s = make_schedule("linear", 1000)
    with pytest.raises(ValueError, match="eps must have the shape"):
        q_sample(torch.zeros(2, 3), torch.tensor([1, 2]), torch.zeros(2, 4), s)
