"""diffedu.solvers (Euler, Heun, DPM-Solver++(2M) on the probability-flow ODE) and diffedu.diffusers_bridge."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from diffedu.diffusers_bridge import diffusers_available
from diffedu.samplers import ddim_sample
from diffedu.schedules import make_schedule
from diffedu.solvers import (
    GaussianEps,
    dpm_solver_pp_2m_sample,
    euler_sample,
    gaussian_ode_end,
    heun_sample,
    karras_sigmas,
    nfe,
    ode_sample,
    solver_timesteps,
)


@pytest.fixture
def toy():
    schedule = make_schedule("linear", 1000)
    return GaussianEps(schedule), schedule


def test_karras_sigmas_ends_and_spacing():
    s = karras_sigmas(0.01, 80.0, 10, rho=7.0)
    assert s[0].item() == pytest.approx(80.0) and s[-1].item() == pytest.approx(0.01) and len(s) == 10
    assert (s[1:] < s[:-1]).all()
    # evenly spaced in sigma^(1/rho); rho = 1 is evenly spaced in sigma
    assert torch.allclose((s ** (1 / 7)).diff(), (s ** (1 / 7)).diff()[0].expand(9))
    assert torch.allclose(karras_sigmas(1.0, 3.0, 3, rho=1.0), torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        karras_sigmas(5.0, 1.0, 4)


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 50, 200])
def test_solver_timesteps_are_distinct_descending_from_noise(steps):
    schedule = make_schedule("linear", 1000)
    for spacing in ("trailing", "ddim", "karras"):
        ts = solver_timesteps(schedule, steps, spacing)
        assert len(ts) == steps and ts[0] == 999 and all(a > b >= 0 for a, b in zip(ts, ts[1:]))
    assert solver_timesteps(schedule, steps, "ddim")[-1] == (0 if steps > 1 else 999)
    assert solver_timesteps(schedule, steps, "trailing")[-1] == 1000 // steps - 1
    if steps >= 5:  # Karras spends more of its levels at low noise than the uniform spacing
        karras, uniform = solver_timesteps(schedule, steps, "karras"), solver_timesteps(schedule, steps, "ddim")
        assert sum(t < 150 for t in karras) > sum(t < 150 for t in uniform)
    for rho in (0.5, 0.8, 1.5, 3.0):
        ts = solver_timesteps(schedule, steps, "power", rho=rho)
        assert len(ts) == steps and ts[0] == 999 and all(a > b >= 0 for a, b in zip(ts, ts[1:])), (rho, ts)
    assert solver_timesteps(schedule, steps, "power", rho=1.0) == solver_timesteps(schedule, steps, "trailing")
    if steps >= 5:  # rho < 1 bends trailing towards the noise: every level at or above trailing's, the last higher
        bent, trailing = solver_timesteps(schedule, steps, "power", rho=0.8), solver_timesteps(schedule, steps)
        assert all(b >= t for b, t in zip(bent, trailing)) and bent[-1] > trailing[-1]


def test_power_spacing_needs_its_exponent():
    schedule = make_schedule("linear", 1000)
    assert solver_timesteps(schedule, 10, "power", rho=0.8) == [999, 918, 836, 751, 664, 573, 479, 381, 275, 157]
    for rho in (None, 0.0, -1.0):
        with pytest.raises(ValueError, match="needs its exponent rho > 0"):
            solver_timesteps(schedule, 10, "power", rho=rho)


def test_euler_on_uniform_levels_is_deterministic_ddim(toy):
    model, schedule = toy
    x_T = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    ours = euler_sample(model, schedule, x_T.shape, steps=12, spacing="ddim", x_T=x_T, progress=False)
    ddim = ddim_sample(model, schedule, x_T.shape, steps=12, eta=0.0, x_T=x_T, clip_x0=False, progress=False)
    assert torch.allclose(ours, ddim, atol=1e-5)


@pytest.mark.parametrize("solver", ["euler", "heun", "dpm_solver_pp_2m"])
def test_calls_and_callback(toy, solver):
    model, schedule = toy
    seen = []
    x = ode_sample(model, schedule, (3, 2), solver=solver, steps=6, generator=torch.Generator().manual_seed(1),
                   callback=seen.append, progress=False)
    assert model.calls == nfe(solver, 6) and x.shape == (3, 2) and torch.isfinite(x).all()
    assert [s["i"] for s in seen] == list(range(6)) and [s["t"] for s in seen] == [999, 832, 666, 499, 332, 166]
    assert torch.equal(seen[-1]["x"], x)


def test_convergence_orders_on_the_exact_ode(toy):
    """On the Gaussian toy the ODE's end point is known. Euler is first order (4x the levels: about 4x less error),
    Heun and DPM-Solver++(2M) second order (4x the levels: more than 12x less), and at about 50 model calls
    both land closer than Euler (Heun 2x, DPM-Solver++ 8x in this case)."""
    model, schedule = toy
    x_T = torch.randn(256, 4, generator=torch.Generator().manual_seed(2))
    exact = gaussian_ode_end(x_T.double(), schedule, 999)

    def error(solver, steps):
        x = ode_sample(model, schedule, x_T.shape, solver=solver, steps=steps, spacing="karras", x_T=x_T,
                       progress=False)
        return (x.double() - exact).abs().max().item()

    euler = {n: error("euler", n) for n in (50, 200)}
    assert 3.0 < euler[50] / euler[200] < 5.0, euler
    for solver in ("heun", "dpm_solver_pp_2m"):
        ratio = error(solver, 50) / error(solver, 200)
        assert ratio > 12, f"{solver}: 4x the levels cut the error only {ratio:.1f}x"
    assert error("heun", 25) < euler[50] / 1.5  # 49 calls against 50
    assert error("dpm_solver_pp_2m", 50) < euler[50] / 5


def test_timesteps_can_be_given_and_are_checked(toy):
    model, schedule = toy
    x = dpm_solver_pp_2m_sample(model, schedule, (2, 3), timesteps=[999, 500, 100], progress=False)
    assert model.calls == 3 and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="descending"):
        heun_sample(model, schedule, (2, 3), timesteps=[100, 500], progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        heun_sample(model, schedule, (2, 3), steps=4, timesteps=[999, 10], progress=False)
    with pytest.raises(ValueError, match="unknown solver"):
        ode_sample(model, schedule, (2, 3), solver="rk4", steps=4)


def test_guidance_goes_through_one_batched_call(toy):
    model, schedule = toy
    cond = torch.tensor([1, 2])
    x = heun_sample(model, schedule, (2, 3), steps=3, cond=cond, guidance=2.0, uncond=10, progress=False)
    assert model.calls == nfe("heun", 3) and x.shape == (2, 3)


# ---- diffusers: the same solver, another library --------------------------------------------------------------

# CI never skips these: the [dev] extra installs diffusers
needs_diffusers = pytest.mark.skipif(not diffusers_available() and not os.environ.get("CI"),
                                     reason="diffusers is optional (pip install -e \".[dev]\")")


def test_without_diffusers_the_bridge_says_how_to_get_it(monkeypatch):
    from diffedu.diffusers_bridge import diffusers_scheduler

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now fails, as where it is not installed
    assert not diffusers_available()
    with pytest.raises(ImportError, match="pip install diffusers"):
        diffusers_scheduler("dpm_multistep", make_schedule("linear", 10))


@needs_diffusers
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_dpm_solver_pp_2m_matches_diffusers(toy, steps):
    """Same model, same timesteps, same x_T: our DPM-Solver++(2M) and diffusers' DPMSolverMultistepScheduler
    (solver_order=2, dpmsolver++, midpoint, final sigma 0) agree to float32 rounding."""
    from diffedu.diffusers_bridge import diffusers_sample, diffusers_scheduler

    model, schedule = toy
    x_T = torch.randn(8, 1, 5, 5, generator=torch.Generator().manual_seed(3))
    scheduler = diffusers_scheduler("dpm_multistep", schedule, solver_order=2, algorithm_type="dpmsolver++")
    theirs = diffusers_sample(model, scheduler, x_T.shape, steps=steps, x_T=x_T, progress=False)
    levels = scheduler.timesteps.tolist()
    ours = dpm_solver_pp_2m_sample(model, schedule, x_T.shape, timesteps=levels, x_T=x_T, clip_x0=False, progress=False)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4), (ours - theirs).abs().max()
    assert model.calls == 2 * steps


@needs_diffusers
def test_diffusers_ddim_matches_ours_on_the_same_timesteps(toy):
    from diffedu.diffusers_bridge import diffusers_sample, diffusers_scheduler

    model, schedule = toy
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
    scheduler = diffusers_scheduler("ddim", schedule)
    theirs = diffusers_sample(model, scheduler, x_T.shape, steps=6, x_T=x_T, progress=False)
    levels = scheduler.timesteps.tolist()  # "leading" spacing: 830, 664, ..., 0
    ours = euler_sample(model, schedule, x_T.shape, timesteps=levels, x_T=x_T, progress=False)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


@needs_diffusers
def test_diffusers_scheduler_refuses_unknown_names():
    from diffedu.diffusers_bridge import diffusers_scheduler

    with pytest.raises(ValueError, match="unknown scheduler"):
        diffusers_scheduler("lms", make_schedule("linear", 10))


# ---- the same solvers for a flow-matching model (diffedu.flow.flow_sample) ------------------------------------


class GaussianVelocity(torch.nn.Module):
    """The exact velocity E[eps - x0 | x_t] of the straight path x_t = (1 - t) x0 + t eps for x0 ~ N(0, s^2 I):
    v = x (t - (1 - t) s^2) / m(t)^2 with m(t)^2 = (1 - t)^2 s^2 + t^2, whose ODE scales x by m(t): x_0 = s x_1."""

    def __init__(self, s=0.5):
        super().__init__()
        self.s, self.calls = s, 0

    def forward(self, x, t_model, cond=None):
        self.calls += 1
        t = (t_model.double() / 1000.0).reshape(-1, *([1] * (x.ndim - 1)))
        return (x.double() * (t - (1 - t) * self.s**2) / ((1 - t) ** 2 * self.s**2 + t**2)).to(x.dtype)


def test_flow_dpm_solver_pp_converges_at_second_order_and_its_first_step_is_euler():
    from diffedu.flow import flow_sample
    from diffedu.flow import nfe as flow_nfe

    model = GaussianVelocity(0.5)
    x_T = torch.randn(512, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = 0.5 * x_T

    def error(sampler, steps):
        x = flow_sample(model, x_T.shape, steps=steps, sampler=sampler, x_T=x_T, progress=False)
        return (x - exact).abs().max().item()

    # uniform times are very uneven steps in lambda = log((1 - t) / t), so the order shows only from about 40 steps on
    euler, dpm = {n: error("euler", n) for n in (40, 160)}, {n: error("dpm_solver_pp_2m", n) for n in (40, 160)}
    assert 3.0 < euler[40] / euler[160] < 5.0, euler
    assert dpm[40] / dpm[160] > 6 and dpm[40] < euler[40] / 5, (dpm, euler)
    # with one or two steps there is nothing to extrapolate from: DPM-Solver++ is Euler
    for steps in (1, 2):
        assert error("dpm_solver_pp_2m", steps) == pytest.approx(error("euler", steps), abs=1e-12)
    model.calls = 0
    flow_sample(model, x_T.shape, steps=7, sampler="dpm_solver_pp_2m", x_T=x_T, progress=False)
    assert model.calls == flow_nfe("dpm_solver_pp_2m", 7) == 7 and flow_nfe("heun", 7) == 13
