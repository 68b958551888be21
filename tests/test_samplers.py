import pytest
import torch

from diffedu.forward import q_sample
from diffedu.predictions import eps_from_x0
from diffedu.samplers import ddpm_posterior, ddpm_sample, ddpm_step
from diffedu.schedules import linear_beta_schedule, make_schedule


def test_posterior_by_hand():
    """q(x_{t-1} | x_t, x_0) for a 3-step schedule, with the coefficients worked out on paper."""
    s = linear_beta_schedule(3, 0.1, 0.3)  # betas 0.1, 0.2, 0.3
    a = [0.9, 0.8, 0.7]
    abar = [0.9, 0.72, 0.504]
    x0, x_t = torch.tensor([1.0]), torch.tensor([-2.0])
    t = 2
    mean, var = ddpm_posterior(x0, x_t, t, s)
    c0 = abar[1] ** 0.5 * 0.3 / (1 - abar[2])
    ct = a[2] ** 0.5 * (1 - abar[1]) / (1 - abar[2])
    assert mean.item() == pytest.approx(c0 * 1.0 + ct * -2.0, rel=1e-5)
    assert var == pytest.approx((1 - abar[1]) / (1 - abar[2]) * 0.3, rel=1e-5)
    # at t = 0 the posterior is the point x0 itself
    mean0, var0 = ddpm_posterior(x0, x_t, 0, s)
    assert var0 == pytest.approx(0.0)
    assert mean0.item() == pytest.approx(1.0, rel=1e-5)


def test_step_with_the_true_noise_gives_the_posterior_mean():
    """The eps-form update equals the posterior mean when eps is the noise that made x_t."""
    s = make_schedule("linear", 50)
    x0 = torch.rand(5, 2) * 2 - 1
    eps = torch.randn(5, 2)
    for t in (1, 20, 49):
        x_t = q_sample(x0, torch.full((5,), t), eps, s)
        mean, _ = ddpm_posterior(x0, x_t, t, s)
        assert torch.allclose(ddpm_step(x_t, t, eps, s, torch.zeros_like(x_t)), mean, atol=1e-4)


def test_step_noise_scale():
    s = make_schedule("linear", 50)
    x = torch.zeros(1, 1)
    z = torch.ones(1, 1)
    eps = torch.zeros(1, 1)
    t = 10
    assert ddpm_step(x, t, eps, s, z).item() == pytest.approx(s.betas[t].sqrt().item(), rel=1e-5)
    tilde = ((1 - s.alphas_cumprod[t - 1]) / (1 - s.alphas_cumprod[t]) * s.betas[t]).sqrt().item()
    assert ddpm_step(x, t, eps, s, z, variance="beta_tilde").item() == pytest.approx(tilde, rel=1e-5)
    assert ddpm_step(x, 0, eps, s, z).item() == 0.0  # no noise at the last step
    with pytest.raises(ValueError, match="unknown variance"):
        ddpm_step(x, t, eps, s, z, variance="big")


def gaussian_eps_model(mu, sigma, schedule):
    """The exact eps-prediction for data x0 ~ N(mu, sigma^2) (per dimension)."""

    def model(x_t, t):
        abar = schedule.alphas_cumprod[t].view(-1, *([1] * (x_t.ndim - 1)))
        var_t = abar * sigma**2 + (1 - abar)
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * mu) / var_t

    return model


def test_ddpm_sample_reaches_gaussian_data_with_the_exact_model():
    s = make_schedule("linear", 200)
    mu, sigma = 0.5, 0.3
    x = ddpm_sample(gaussian_eps_model(mu, sigma, s), s, (20_000, 1), generator=torch.Generator().manual_seed(0),
                    progress=False)
    assert x.mean().item() == pytest.approx(mu, abs=0.02)
    assert x.std().item() == pytest.approx(sigma, abs=0.02)


def test_sampling_is_reproducible_and_reports_each_step():
    s = make_schedule("linear", 20)
    model = gaussian_eps_model(0.0, 0.5, s)
    seen = []
    a = ddpm_sample(model, s, (4, 2), generator=torch.Generator().manual_seed(3), progress=False,
                    callback=lambda info: seen.append((info["i"], info["t"], info["x"].shape, info["pred_x0"].shape)))
    b = ddpm_sample(model, s, (4, 2), generator=torch.Generator().manual_seed(3), progress=False)
    assert torch.equal(a, b)
    assert [i for i, *_ in seen] == list(range(20))
    assert [t for _, t, *_ in seen] == list(range(19, -1, -1))
    assert seen[0][2] == (4, 2) and seen[0][3] == (4, 2)


def test_clip_x0_keeps_predictions_in_range():
    s = make_schedule("linear", 20)
    preds = []
    ddpm_sample(lambda x, t: -10 * torch.ones_like(x), s, (3, 2), clip_x0=True, progress=False,
                callback=lambda info: preds.append(info["pred_x0"]))
    assert all(p.abs().max() <= 1.0 for p in preds)


def test_eps_from_x0_round_trip():
    s = make_schedule("cosine", 30)
    x0 = torch.rand(3, 2) * 2 - 1
    eps = torch.randn(3, 2)
    t = torch.tensor([0, 10, 20])
    assert torch.allclose(eps_from_x0(x0, q_sample(x0, t, eps, s), t, s), eps, atol=1e-4)


def test_bad_starting_noise_shape():
    s = make_schedule("linear", 5)
    with pytest.raises(ValueError, match="x_T has shape"):
        ddpm_sample(lambda x, t: x, s, (2, 2), x_T=torch.zeros(3, 2), progress=False)
