import pytest
import torch

from diffedu.forward import q_sample
from diffedu.losses import ddpm_loss
from diffedu.predictions import eps_from_x0, to_x0_and_eps, training_target
from diffedu.schedules import make_schedule

S = make_schedule("cosine", 100)


def test_an_oracle_that_knows_the_noise_has_zero_loss():
    x0 = torch.rand(8, 2) * 2 - 1
    t = torch.randint(0, S.T, (8,))
    eps = torch.randn(8, 2)
    assert ddpm_loss(lambda x_t, t_: eps, x0, S, t, eps).item() == 0.0


def test_a_zero_model_has_loss_equal_to_the_noise_power():
    x0 = torch.rand(4096, 2) * 2 - 1
    loss = ddpm_loss(lambda x_t, t: torch.zeros_like(x_t), x0, S, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(1.0, abs=0.05)


def test_loss_is_the_mean_squared_error_by_hand():
    x0 = torch.tensor([[0.5, -0.5]])
    t = torch.tensor([10])
    eps = torch.tensor([[1.0, 2.0]])
    model = lambda x_t, t_: 2 * x_t  # noqa: E731
    x_t = q_sample(x0, t, eps, S)
    expected = ((2 * x_t - eps) ** 2).mean()
    assert torch.allclose(ddpm_loss(model, x0, S, t, eps), expected)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_every_prediction_type_has_a_zero_loss_oracle(prediction):
    x0 = torch.rand(16, 3) * 2 - 1
    t = torch.randint(0, S.T, (16,))
    eps = torch.randn(16, 3)
    target = training_target(x0, eps, t, S, prediction)
    assert ddpm_loss(lambda x_t, t_: target, x0, S, t, eps, prediction=prediction).item() == 0.0


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_conversions_recover_x0_and_eps(prediction):
    x0 = torch.rand(16, 3) * 2 - 1
    t = torch.randint(0, S.T - 1, (16,))  # avoid the last step, where abar ~ 0 makes x0 ill-defined from eps
    eps = torch.randn(16, 3)
    x_t = q_sample(x0, t, eps, S)
    out = training_target(x0, eps, t, S, prediction)
    got_x0, got_eps = to_x0_and_eps(out, x_t, t, S, prediction)
    assert torch.allclose(got_eps, eps, atol=1e-3)
    assert torch.allclose(got_x0, x0, atol=1e-2)
    assert torch.allclose(eps_from_x0(x0, x_t, t, S), eps, atol=1e-3)


def test_conditioning_is_passed_to_the_model():
    seen = {}

    def model(x_t, t, cond):
        seen["cond"] = cond
        return torch.zeros_like(x_t)

    ddpm_loss(model, torch.zeros(2, 2), S, cond=torch.tensor([3, 4]))
    assert seen["cond"].tolist() == [3, 4]


def test_bad_prediction_and_model_output_shape():
    with pytest.raises(ValueError, match="unknown prediction type 'score'.*'eps', 'x0', 'v'"):
        ddpm_loss(lambda x, t: x, torch.zeros(2, 2), S, prediction="score")
    with pytest.raises(ValueError, match="model returned shape"):
        ddpm_loss(lambda x, t: x[:, :1], torch.zeros(2, 2), S)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weighting_counts_an_x0_error_by_min_snr(prediction):
    """Whatever the network predicts, an error delta on x0 costs min(SNR_t, gamma) * delta^2 (Hang et al. 2023)."""
    torch.manual_seed(0)
    x0, eps = torch.rand(64, 3) * 2 - 1, torch.randn(64, 3)
    t = torch.arange(64) * (S.T // 64)  # from nearly clean (SNR in the thousands) to pure noise
    x_t = q_sample(x0, t, eps, S)
    delta = 0.1 * torch.randn(64, 3)
    wrong_x0 = x0 + delta
    output = training_target(wrong_x0, eps_from_x0(wrong_x0, x_t, t, S), t, S, prediction)
    abar = S.alphas_cumprod[t]
    expected = ((abar / (1 - abar)).clamp(max=5.0) * delta.square().mean(dim=1)).mean()
    loss = ddpm_loss(lambda x, t_: output, x0, S, t, eps, prediction=prediction, min_snr_gamma=5.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-3)
    plain = ddpm_loss(lambda x, t_: output, x0, S, t, eps, prediction=prediction)
    assert plain.item() != pytest.approx(loss.item(), rel=0.1)  # the weighting changes the number


def test_min_snr_gamma_must_be_positive():
    with pytest.raises(ValueError, match="min_snr_gamma must be positive"):
        ddpm_loss(lambda x, t: x, torch.zeros(2, 2), S, min_snr_gamma=0.0)
