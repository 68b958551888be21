"""The checks of lesson 13's exercises: a right answer passes, each common mistake is named, a skip falls back."""

from __future__ import annotations

import math

import pytest
import torch

from diffedu.course.checks import lesson13 as checks
from diffedu.course.checks.core import ExerciseError
from diffedu.distill import consistency_sample, consistency_scalings
from diffedu.schedules import make_schedule
from diffedu.solvers import GaussianEps, dpm_solver_pp_2m_step, heun_sample, karras_sigmas


def _skipped(*args, **kwargs):
    raise NotImplementedError()


def test_karras_sigmas_check():
    def mine(sigma_min, sigma_max, steps, rho=7.0):
        ramp = torch.linspace(0, 1, steps)
        return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho

    assert checks.check_karras_sigmas(mine) is mine
    with pytest.raises(ExerciseError, match="run upwards"):
        checks.check_karras_sigmas(lambda a, b, n, rho=7.0: mine(a, b, n, rho).flip(0))
    with pytest.raises(ExerciseError, match="evenly spaced in sigma itself"):
        checks.check_karras_sigmas(lambda a, b, n, rho=7.0: torch.linspace(b, a, n))
    assert checks.check_karras_sigmas(_skipped) is karras_sigmas


def _heun(model, schedule, x_T, timesteps, *, corrector=True, scale_in=True):  # noqa: N803
    abar = schedule.alphas_cumprod
    sigmas = [((1 - abar[t]) / abar[t]).sqrt().item() for t in timesteps] + [0.0]
    y = x_T / abar[timesteps[0]].sqrt()
    for i, t in enumerate(timesteps):
        eps = model(y * abar[t].sqrt() if scale_in else y, torch.full((len(y),), t))
        y_next = y + (sigmas[i + 1] - sigmas[i]) * eps
        if corrector and sigmas[i + 1] > 0:
            t_next = timesteps[i + 1]
            eps_next = model(y_next * abar[t_next].sqrt() if scale_in else y_next, torch.full((len(y),), t_next))
            y_next = y + (sigmas[i + 1] - sigmas[i]) * 0.5 * (eps + eps_next)
        y = y_next
    return y


def test_heun_check_passes_a_right_loop_names_mistakes_and_falls_back():
    assert checks.check_my_heun_sample(_heun) is _heun
    with pytest.raises(ExerciseError, match="this is Euler's method"):
        checks.check_my_heun_sample(lambda *a: _heun(*a, corrector=False))
    with pytest.raises(ExerciseError, match="called on y"):
        checks.check_my_heun_sample(lambda *a: _heun(*a, scale_in=False))
    fallback = checks.check_my_heun_sample(_skipped)
    schedule = make_schedule("linear", 1000)
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))  # noqa: N806
    levels = [999, 500, 100, 0]
    expected = heun_sample(GaussianEps(schedule), schedule, x_T.shape, timesteps=levels, x_T=x_T, clip_x0=False,
                           progress=False)
    assert torch.allclose(fallback(GaussianEps(schedule), schedule, x_T, levels), expected)


def test_dpm_update_check():
    def mine(y, sigma, sigma_next, d, d_prev=None, sigma_prev=None):
        if d_prev is not None and sigma_next > 0:
            r = math.log(sigma_prev / sigma) / math.log(sigma / sigma_next)
            d = d + (d - d_prev) / (2 * r)
        return sigma_next / sigma * y + (1 - sigma_next / sigma) * d

    assert checks.check_dpm_solver_pp_2m_update(mine) is mine

    def first_order_only(y, sigma, sigma_next, d, d_prev=None, sigma_prev=None):
        return mine(y, sigma, sigma_next, d)

    with pytest.raises(ExerciseError, match="D_prev is never used"):
        checks.check_dpm_solver_pp_2m_update(first_order_only)

    def no_guard_at_zero(y, sigma, sigma_next, d, d_prev=None, sigma_prev=None):
        if d_prev is not None:
            h = torch.log(torch.tensor(sigma / sigma_next))  # inf at sigma_next = 0
            d = d + (d - d_prev) / (2 * (torch.log(torch.tensor(sigma_prev / sigma)) / h))
        return sigma_next / sigma * y + (1 - sigma_next / sigma) * d

    with pytest.raises(ExerciseError, match="at sigma_next = 0 the step is first order"):
        checks.check_dpm_solver_pp_2m_update(no_guard_at_zero)
    assert checks.check_dpm_solver_pp_2m_update(_skipped) is dpm_solver_pp_2m_step


def test_consistency_scalings_check():
    def mine(sigma, sigma_min, sigma_data=0.5):
        return (sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2),
                sigma_data * (sigma - sigma_min) / (sigma**2 + sigma_data**2).sqrt())

    def edm(sigma, sigma_min, sigma_data=0.5):
        return sigma_data**2 / (sigma**2 + sigma_data**2), sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()

    def c_out_unshifted(sigma, sigma_min, sigma_data=0.5):
        return mine(sigma, sigma_min, sigma_data)[0], edm(sigma, sigma_min, sigma_data)[1]

    def shifted_denominator(sigma, sigma_min, sigma_data=0.5):
        d = sigma - sigma_min
        return mine(sigma, sigma_min, sigma_data)[0], sigma_data * d / (d**2 + sigma_data**2).sqrt()

    assert checks.check_consistency_scalings(mine) is mine
    with pytest.raises(ExerciseError, match="c_skip\\(sigma_min\\) = 0.99"):
        checks.check_consistency_scalings(edm)
    with pytest.raises(ExerciseError, match="c_out\\(sigma_min\\) = 0.00199998"):
        checks.check_consistency_scalings(c_out_unshifted)
    with pytest.raises(ExerciseError, match="denominator is shifted too"):
        checks.check_consistency_scalings(shifted_denominator)
    with pytest.raises(ExerciseError, match="negative"):
        checks.check_consistency_scalings(lambda s, m, d=0.5: (mine(s, m, d)[0], -mine(s, m, d)[1]))
    assert checks.check_consistency_scalings(_skipped) is consistency_scalings


def _consistency_loop(student, schedule, x_T, timesteps, generator, *, fresh=True, clamp=True,  # noqa: N803
                      noise_x=False, as_y=False, return_x=False):
    abar = schedule.alphas_cumprod
    x_t, x0 = x_T, None
    for i, t in enumerate(timesteps):
        if i > 0:
            z = torch.randn(x_T.shape, generator=generator) if fresh else x_T
            x_t = abar[t].sqrt() * (x_t if noise_x else x0) + (1 - abar[t]).sqrt() * z
            if as_y:
                x_t = x0 + ((1 - abar[t]) / abar[t]).sqrt() * z
        x0 = student(x_t, torch.full((len(x_T),), t))
        x0 = x0.clamp(-1, 1) if clamp else x0
    return x_t if return_x else x0


def test_my_consistency_sample_check():
    assert checks.check_my_consistency_sample(_consistency_loop) is _consistency_loop
    with pytest.raises(ExerciseError, match="fresh noise"):
        checks.check_my_consistency_sample(lambda *a: _consistency_loop(*a, fresh=False))
    with pytest.raises(ExerciseError, match="not clamped"):
        checks.check_my_consistency_sample(lambda *a: _consistency_loop(*a, clamp=False))
    with pytest.raises(ExerciseError, match="the current x_t is noised"):
        checks.check_my_consistency_sample(lambda *a: _consistency_loop(*a, noise_x=True))
    with pytest.raises(ExerciseError, match="x_0 \\+ sigma z is y"):
        checks.check_my_consistency_sample(lambda *a: _consistency_loop(*a, as_y=True))
    with pytest.raises(ExerciseError, match="the last x_t is returned"):
        checks.check_my_consistency_sample(lambda *a: _consistency_loop(*a, return_x=True))
    with pytest.raises(ExerciseError, match="shape \\(B,\\)"):
        checks.check_my_consistency_sample(lambda s, sch, x, ts, g: s(x, ts[0]))
    fallback = checks.check_my_consistency_sample(_skipped)
    schedule = make_schedule("linear", 1000)
    x_T = torch.randn(2, 3)  # noqa: N806
    student = lambda x, t: torch.tanh(x)  # noqa: E731
    torch.testing.assert_close(fallback(student, schedule, x_T, [999, 499], torch.Generator().manual_seed(0)),
                               consistency_sample(student, schedule, (2, 3), timesteps=[999, 499], x_T=x_T,
                                                  generator=torch.Generator().manual_seed(0)))
