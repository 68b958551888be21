import math

import pytest
import torch

from diffedu.schedules import (
    cosine_beta_schedule,
    linear_beta_schedule,
    make_schedule,
    schedule_from_betas,
    snr,
    snr_db,
)


def test_linear_matches_the_paper():
    s = linear_beta_schedule(1000)
    assert s.T == 1000
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(s.alphas, 1 - s.betas)
    # alpha-bar_T of DDPM's schedule is about 4.04e-5 (computed in float64)
    expected = math.prod(1 - (1e-4 + (0.02 - 1e-4) * k / 999) for k in range(1000))
    assert s.alphas_cumprod[-1].item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [10, 100, 1000])
def test_alphas_cumprod_is_decreasing_from_one_towards_zero(name, T):
    s = make_schedule(name, T)
    abar = s.alphas_cumprod
    assert torch.all(abar[1:] < abar[:-1]), "alpha-bar must fall strictly"
    assert 0.9 < abar[0].item() <= 1.0
    assert abar[-1].item() < 1e-3
    assert torch.all((s.betas > 0) & (s.betas < 1))
    assert torch.allclose(abar, torch.cumprod(s.alphas.double(), 0).float(), rtol=1e-5)


def test_cosine_follows_its_formula():
    T, s_off = 1000, 0.008
    sched = cosine_beta_schedule(T)
    f = lambda t: math.cos((t / T + s_off) / (1 + s_off) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):  # code index t is the paper's step t + 1
        assert sched.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-4, abs=1e-7)


def test_make_schedule_scales_linear_for_short_chains():
    short = make_schedule("linear", 50)
    assert short.betas[-1].item() == pytest.approx(0.02 * 1000 / 50)
    assert short.alphas_cumprod[-1].item() < 1e-3
    # the paper's betas with 50 steps leave most of the signal
    assert linear_beta_schedule(50).alphas_cumprod[-1].item() > 0.5


def test_snr():
    s = make_schedule("cosine", 100)
    abar = s.alphas_cumprod
    assert torch.allclose(snr(s), abar / (1 - abar), rtol=1e-4)
    assert torch.allclose(snr_db(s), 10 * torch.log10(abar / (1 - abar)), atol=1e-3)
    assert torch.all(snr_db(s)[1:] < snr_db(s)[:-1])


def test_bad_names_and_sizes_are_refused():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'.*'linear', 'cosine'"):
        make_schedule("quadratic")
    with pytest.raises(ValueError, match="positive integer"):
        make_schedule("linear", 0)
    with pytest.raises(ValueError, match="positive integer"):
        linear_beta_schedule(2.5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        schedule_from_betas(torch.tensor([0.1, 1.5]))


def test_to_device_and_repr():
    s = make_schedule("linear", 10).to("cpu")
    assert s.betas.device.type == "cpu"
    assert "T=10" in repr(s)


def test_betas_from_alpha_bar_refuses_a_curve_it_cannot_use():
    from diffedu.schedules import betas_from_alpha_bar

    with pytest.raises(ValueError, match="alpha_bar\\(u\\) must map"):
        betas_from_alpha_bar(lambda u: u[:-1], 10)  # the wrong shape
    with pytest.raises(ValueError, match="positive at u = 0"):
        betas_from_alpha_bar(lambda u: u, 10)  # no signal before the first step
    betas = betas_from_alpha_bar(lambda u: 1 - u, 10, max_beta=0.5)
    assert betas.shape == (10,) and betas.max() == 0.5  # the last step (1 - 0 / 0.1) is clipped
