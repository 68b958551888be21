"""DDIM: the step, the sampler, inversion, slerp and the lesson-05 check."""

import math

import pytest
import torch

from diffedu.course import checks
from diffedu.samplers import ddim_invert, ddim_sample, ddim_step, ddim_timesteps, ddpm_sample, slerp
from diffedu.schedules import make_schedule

MU, S = 0.5, 0.3  # the Gaussian data x0 ~ N(MU, S^2) of the closed-form tests


def gaussian_eps_model(mu, s, schedule):
    """The exact eps-prediction for x0 ~ N(mu, s^2): E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / var_t."""

    def model(x_t, t):
        abar = schedule.alphas_cumprod[t].view(-1, *([1] * (x_t.ndim - 1)))
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * mu) / (abar * s**2 + 1 - abar)

    return model


def standardised(n, seed):
    """n standard-normal values with mean exactly 0 and variance exactly 1, shape (n, 1)."""
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return ((z - z.mean()) / z.std()).float()


# --- timesteps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
@pytest.mark.parametrize("T, steps", [(1000, 1), (1000, 2), (1000, 10), (1000, 50), (1000, 999), (1000, 1000),
                                      (20, 15), (7, 7), (1, 1)])
def test_timesteps_are_distinct_descending_and_span_the_range(T, steps, spacing):
    ts = ddim_timesteps(T, steps, spacing)
    assert len(ts) == steps and len(set(ts)) == steps
    assert ts == sorted(ts, reverse=True)
    assert ts[0] == T - 1 and all(0 <= t < T for t in ts)
    if steps > 1:
        assert ts[-1] == 0
    if steps == T:
        assert ts == list(range(T - 1, -1, -1))


def test_quadratic_spacing_is_denser_near_zero():
    uniform = ddim_timesteps(1000, 10, "uniform")
    quad = ddim_timesteps(1000, 10, "quadratic")
    gaps = [a - b for a, b in zip(quad, quad[1:])]  # from the noisy end to the clean end
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < gaps[0] / 5
    assert uniform == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert sum(t < 100 for t in quad) > sum(t < 100 for t in uniform)


# --- the step ----------------------------------------------------------------------------------


def test_step_by_hand_and_its_three_parts():
    s = make_schedule("linear", 10)
    x_t, eps, z = torch.tensor([[0.7]]), torch.tensor([[-0.4]]), torch.tensor([[1.3]])
    t, t_prev, eta = 6, 2, 0.8
    a_t, a_p = s.alphas_cumprod[t].item(), s.alphas_cumprod[t_prev].item()
    x0 = (0.7 - math.sqrt(1 - a_t) * -0.4) / math.sqrt(a_t)
    sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
    expected = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - sigma**2) * -0.4 + sigma * 1.3
    assert ddim_step(x_t, t, t_prev, eps, s, eta, z).item() == pytest.approx(expected, rel=1e-5)
    # the last step lands on the predicted x_0, noise or not
    assert ddim_step(x_t, t, -1, eps, s, 1.0, z).item() == pytest.approx(x0, rel=1e-5)
    # a given pred_x0 is used as is
    assert ddim_step(x_t, t, -1, eps, s, pred_x0=torch.tensor([[0.25]])).item() == pytest.approx(0.25)


def test_sigma_at_eta_one_is_the_posterior_variance():
    s = make_schedule("linear", 50)
    zero = torch.zeros(1, 1)
    for t in (1, 10, 49):
        tilde = ((1 - s.alphas_cumprod[t - 1]) / (1 - s.alphas_cumprod[t]) * s.betas[t]).sqrt().item()
        # x_t = eps = 0 leaves only sigma * z
        assert ddim_step(zero, t, t - 1, zero, s, 1.0, torch.ones(1, 1)).item() == pytest.approx(tilde, rel=1e-4)


def test_step_refuses_bad_input():
    s = make_schedule("linear", 10)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="pass noise"):
        ddim_step(x, 5, 4, x, s, eta=0.5)
    with pytest.raises(ValueError, match="t_prev"):
        ddim_step(x, 5, 5, x, s)
    with pytest.raises(ValueError, match="eta"):
        ddim_step(x, 5, 4, x, s, eta=-0.1)
    with pytest.raises(ValueError, match="eta <= 1"):
        ddim_step(x, 9, 0, x, s, eta=3.0, noise=x)


# --- the sampler -------------------------------------------------------------------------------


def test_eta_zero_is_deterministic():
    s = make_schedule("linear", 100)
    model = gaussian_eps_model(MU, S, s)
    a = ddim_sample(model, s, (8, 3), steps=10, generator=torch.Generator().manual_seed(0), progress=False)
    b = ddim_sample(model, s, (8, 3), steps=10, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(a, b)
    # given x_T, the generator plays no part at eta = 0, and none of it is used
    x_T = torch.randn(8, 3)
    g = torch.Generator().manual_seed(1)
    c = ddim_sample(model, s, (8, 3), steps=10, x_T=x_T, generator=g, progress=False)
    d = ddim_sample(model, s, (8, 3), steps=10, x_T=x_T, generator=torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(c, d)
    assert torch.equal(torch.randn(1, generator=g), torch.randn(1, generator=torch.Generator().manual_seed(1)))
    # eta > 0 does use fresh noise
    e = ddim_sample(model, s, (8, 3), steps=10, eta=1.0, x_T=x_T, generator=torch.Generator().manual_seed(2),
                    progress=False)
    assert not torch.allclose(c, e)


@pytest.mark.parametrize("name, T", [("linear", 100), ("cosine", 60)])
def test_every_step_with_eta_one_is_ddpm_with_beta_tilde(name, T):
    s = make_schedule(name, T)
    model = gaussian_eps_model(MU, S, s)
    ddpm = ddpm_sample(model, s, (16, 2), generator=torch.Generator().manual_seed(7), variance="beta_tilde",
                       progress=False)
    ddim = ddim_sample(model, s, (16, 2), steps=T, eta=1.0, generator=torch.Generator().manual_seed(7),
                       progress=False)
    assert torch.allclose(ddim, ddpm, atol=1e-4)
    # with the "beta" variance they differ: the match is not an accident
    beta = ddpm_sample(model, s, (16, 2), generator=torch.Generator().manual_seed(7), progress=False)
    assert not torch.allclose(ddim, beta, atol=1e-3)


def test_callback_reports_each_step():
    s = make_schedule("linear", 100)
    seen = []
    x = ddim_sample(gaussian_eps_model(MU, S, s), s, (4, 1, 2, 2), steps=7, spacing="quadratic", progress=False,
                    callback=lambda info: seen.append(info))
    assert [info["i"] for info in seen] == list(range(7))
    assert [info["t"] for info in seen] == ddim_timesteps(100, 7, "quadratic")
    assert all(info["x"].shape == info["pred_x0"].shape == (4, 1, 2, 2) for info in seen)
    assert torch.equal(seen[-1]["x"], x)


def test_clip_x0_keeps_predictions_in_range():
    s = make_schedule("linear", 20)
    preds = []
    ddim_sample(lambda x, t: -10 * torch.ones_like(x), s, (3, 2), steps=5, clip_x0=True, progress=False,
                callback=lambda info: preds.append(info["pred_x0"]))
    assert all(p.abs().max() <= 1.0 for p in preds)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps must be an integer from 1 to T = 20, got 0"),
        ({"steps": 21}, "got 21"),
        ({"steps": 2.5}, "got 2.5"),
        ({"steps": 5, "spacing": "cubic"}, "unknown spacing 'cubic'; choose one of 'uniform', 'quadratic'"),
        ({"steps": 5, "eta": -0.5}, "eta must be a number >= 0"),
        ({"steps": 5, "x_T": torch.zeros(3, 2)}, "x_T has shape"),
        ({"steps": 5, "prediction": "noise"}, "unknown prediction type"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, message):
    s = make_schedule("linear", 20)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        ddim_sample(lambda x, t: x, s, (2, 2), progress=False, **kwargs)


# --- Gaussian data with the exact model -------------------------------------------------------


def test_inversion_then_sampling_reconstructs_the_input():
    s = make_schedule("linear", 1000)
    model = gaussian_eps_model(MU, S, s)
    x0 = MU + S * torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    errors = {}
    for steps in (50, 200, 1000):
        x_T = ddim_invert(model, s, x0, steps=steps, progress=False)
        back = ddim_sample(model, s, x0.shape, steps=steps, x_T=x_T, progress=False)
        errors[steps] = ((back - x0).pow(2).mean().sqrt() / S).item()  # RMS error in units of the data's std
        if steps == 1000:
            assert x_T.std().item() == pytest.approx(1.0, abs=0.1)  # the encoding looks like noise
    assert errors[50] > errors[200] > errors[1000]
    assert errors[1000] < 0.02  # measured: 0.15, 0.04, 0.008 (the inversion is first-order accurate)


def test_inversion_callback_climbs_the_timesteps():
    s = make_schedule("linear", 50)
    seen = []
    ddim_invert(gaussian_eps_model(MU, S, s), s, torch.zeros(2, 3), steps=5, progress=False,
                callback=lambda info: seen.append(info["t"]))
    assert seen == ddim_timesteps(50, 5)[::-1]


def predicted_variance(s, steps):
    """The variance DDIM (eta = 0, exact model) gives from x_T of variance 1, worked out step by step."""
    abar = s.alphas_cumprod.double().tolist()
    ts = ddim_timesteps(s.T, steps) + [-1]
    k = 1.0
    for t, t_prev in zip(ts, ts[1:]):
        a_t, a_p = abar[t], (abar[t_prev] if t_prev >= 0 else 1.0)
        k *= ((a_p * a_t) ** 0.5 * S**2 + ((1 - a_p) * (1 - a_t)) ** 0.5) / (a_t * S**2 + 1 - a_t)
    return k**2


def test_samples_approach_the_data_distribution_as_steps_grow():
    """With the exact model each DDIM step is affine in x, so a standardised x_T gives exact moments.

    Each step shrinks the variance a little (Cauchy-Schwarz), more for bigger jumps, so few steps give
    samples that are too concentrated around the mean; the error vanishes as steps -> T.
    """
    s = make_schedule("linear", 1000)
    model = gaussian_eps_model(MU, S, s)
    x_T = standardised(1000, seed=0)
    rows = []
    for steps in (5, 10, 20, 50, 100, 1000):
        x = ddim_sample(model, s, x_T.shape, steps=steps, x_T=x_T, progress=False).double()
        rows.append((steps, x.mean().item(), x.var().item()))
    print(f"\nDDIM, eta = 0, exact model, data N({MU}, {S}^2) (variance {S**2:.4f}), linear schedule T = 1000")
    print(f"{'steps':>6} {'mean':>8} {'variance':>9} {'var / data var':>15}")
    for steps, mean, var in rows:
        print(f"{steps:>6} {mean:>8.4f} {var:>9.5f} {var / S**2:>15.3f}")
    for steps, _, var in rows:  # each step multiplies the spread by k = cos of the angle between
        # (sqrt(abar_prev) S, sqrt(1 - abar_prev)) and (sqrt(abar_t) S, sqrt(1 - abar_t)), so k <= 1
        assert var == pytest.approx(predicted_variance(s, steps), rel=1e-3)
    var_errors = [abs(var / S**2 - 1) for _, _, var in rows]
    assert all(later < earlier for earlier, later in zip(var_errors, var_errors[1:]))
    assert all(var < S**2 for _, _, var in rows)  # always too small, never too big
    assert var_errors[-1] < 0.02 and var_errors[-2] < 0.1
    assert all(abs(mean - MU) < 0.005 for _, mean, _ in rows)


# --- slerp ---------------------------------------------------------------------------------------


def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    assert torch.allclose(slerp(z0, z1, 0.0), z0, atol=1e-6)
    assert torch.allclose(slerp(z0, z1, 1.0), z1, atol=1e-6)
    n0 = z0 / z0.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    n1 = z1 / z1.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    for alpha in (0.1, 0.5, 0.9):
        norms = slerp(n0, n1, alpha).flatten(1).norm(dim=1)
        assert torch.allclose(norms, torch.ones(3), atol=1e-5)
    # lerp would cut inside the sphere
    assert ((0.5 * n0 + 0.5 * n1).flatten(1).norm(dim=1) < 0.99).all()


def test_slerp_with_several_alphas_returns_a_batch():
    g = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(1, 2, 3, generator=g), torch.randn(1, 2, 3, generator=g)
    alphas = torch.linspace(0, 1, 5)
    path = slerp(z0, z1, alphas)
    assert path.shape == (5, 2, 3)
    assert torch.allclose(path[0], z0[0], atol=1e-6) and torch.allclose(path[-1], z1[0], atol=1e-6)
    assert torch.allclose(path[2:3], slerp(z0, z1, 0.5))
    two = torch.randn(2, 2, 3, generator=g)
    assert slerp(two, two.flip(0), alphas).shape == (10, 2, 3)  # alpha-major: (n * B, ...)


def test_slerp_of_nearly_parallel_noises_is_lerp():
    z = torch.randn(2, 8)
    z1 = z * 2 + 1e-9
    assert torch.allclose(slerp(z, z1, 0.25), 0.75 * z + 0.25 * z1, atol=1e-5)
    assert torch.isfinite(slerp(z, z.clone(), 0.3)).all()
    with pytest.raises(ValueError, match="same shape"):
        slerp(z, z[:1], 0.5)


# --- the lesson-05 check -------------------------------------------------------------------------


def test_the_reference_passes_its_own_check(capsys):
    assert checks.check_ddim_step(ddim_step) is ddim_step
    assert "✓ ddim_step is correct" in capsys.readouterr().out


def abar(s, t):
    return s.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)


def ddim_with(*, direction_sqrt=True, subtract_sigma=True, use_eta=True, index_minus_one=False, alphas=False):
    """A learner's ddim_step with one of the common mistakes."""

    def learner(x_t, t, t_prev, eps, s, eta, noise):
        values = s.alphas if alphas else s.alphas_cumprod
        a_t = values[t]
        a_p = values[t_prev] if (t_prev >= 0 or index_minus_one) else torch.tensor(1.0)
        x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = (eta if use_eta else 1.0) * ((1 - a_p) / (1 - a_t)).sqrt() * (1 - a_t / a_p).clamp_min(0).sqrt()
        var = 1 - a_p - (sigma**2 if subtract_sigma else 0)
        return a_p.sqrt() * x0 + (var.sqrt() if direction_sqrt else var) * eps + sigma * noise

    return learner


@pytest.mark.parametrize(
    "learner, hint",
    [
        (ddim_with(alphas=True), "not alpha_t"),
        (ddim_with(direction_sqrt=False), "it needs the square root"),
        (ddim_with(subtract_sigma=False), "subtract sigma"),
        (ddim_with(use_eta=False), "with eta = 0 there is no noise"),
        (ddim_with(index_minus_one=True), "Python's negative index"),
    ],
)
def test_common_ddim_mistakes_are_named(learner, hint):
    with pytest.raises(checks.ExerciseError, match=hint) as info:
        checks.check_ddim_step(learner)
    assert "Likely mistake" in str(info.value)


def test_a_skipped_ddim_step_falls_back_to_the_reference():
    def blank(x_t, t, t_prev, eps, schedule, eta, noise):
        raise NotImplementedError

    assert checks.check_ddim_step(blank) is ddim_step


def test_ddim_check_names_the_negative_index_at_the_last_step():
    """alphas_cumprod[-1] is the last entry, not alpha-bar_{-1} = 1: the eta = 0 case names the mistake."""
    from diffedu.course import checks

    def negative_index(x_t, t, t_prev, eps, s, eta, noise):
        abar, abar_prev = s.alphas_cumprod[t], s.alphas_cumprod[t_prev]
        x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        sigma = eta * ((1 - abar_prev) / (1 - abar)).sqrt() * (1 - abar / abar_prev).sqrt()
        out = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).sqrt() * eps
        return out + sigma * noise if eta > 0 else out

    with pytest.raises(checks.ExerciseError, match="alphas_cumprod\\[-1\\]"):
        checks.check_ddim_step(negative_index)
