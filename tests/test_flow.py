"""Flow matching and the ODE view (diffedu.flow): path, loss, times, solvers, the DDIM = Euler identity, training."""

import math

import pytest
import torch

from diffedu import pretrained
from diffedu.checkpoints import CheckpointError
from diffedu.course.checks import ExerciseError
from diffedu.course.checks import lesson10 as checks
from diffedu.data import toy_2d
from diffedu.device_data import DeviceImages
from diffedu.flow import (
    TIME_SCALE,
    ddim_as_euler_step,
    euler_step,
    flow_loss,
    flow_path,
    flow_sample,
    flow_timesteps,
    flow_velocity,
    nfe,
    path_straightness,
    pf_ode_sigma,
    sample_flow_time,
)
from diffedu.metrics import energy_distance
from diffedu.models.mlp import MLPDenoiser
from diffedu.models.unet import UNet, UNetConfig
from diffedu.samplers import ddim_sample, ddim_step
from diffedu.schedules import make_schedule
from diffedu.train import TrainConfig, draw_batch, train


def test_the_path_runs_from_the_data_to_the_noise_at_constant_velocity():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    assert torch.equal(flow_path(x0, 0.0, eps), x0) and torch.allclose(flow_path(x0, 1.0, eps), eps)
    t = torch.tensor([0.2, 0.5, 0.9])
    h = 1e-3
    slope = (flow_path(x0, t + h, eps) - flow_path(x0, t, eps)) / h
    assert torch.allclose(slope, flow_velocity(x0, eps), atol=1e-3)
    with pytest.raises(ValueError, match="same shape"):
        flow_path(x0, t, eps[:2])


def test_an_oracle_velocity_has_zero_loss_and_a_zero_model_the_targets_variance():
    g = torch.Generator().manual_seed(1)
    x0, eps, t = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g), torch.rand(64, generator=g)
    seen = {}

    def oracle(x_t, t_model):
        seen["t"] = t_model
        return eps - x0

    assert flow_loss(oracle, x0, t, eps).item() == 0.0
    assert torch.allclose(seen["t"], t * TIME_SCALE)  # the network sees t in DDPM's range
    zero = flow_loss(lambda x, s: torch.zeros_like(x), x0, t, eps)
    assert zero.item() == pytest.approx((eps - x0).pow(2).mean().item())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow_loss(oracle, x0, t + 1, eps)
    with pytest.raises(ValueError, match="one time per example"):
        flow_loss(oracle, x0, t[:3], eps)


def test_training_times():
    g = torch.Generator().manual_seed(2)
    uniform = sample_flow_time(20_000, "uniform", generator=g)
    logit = sample_flow_time(20_000, "logit_normal", generator=g)
    assert 0 < uniform.min() and uniform.max() < 1 and abs(uniform.mean() - 0.5) < 0.01
    assert abs(logit.median() - 0.5) < 0.01
    middle = lambda t: ((t > 0.25) & (t < 0.75)).float().mean()  # noqa: E731
    assert middle(logit) > middle(uniform) + 0.1  # the logit-normal trains more on the middle of the path
    with pytest.raises(ValueError, match="uniform"):
        sample_flow_time(4, "cosine")


def test_sampling_times_and_their_shift():
    assert flow_timesteps(4) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    shifted = flow_timesteps(4, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0 and all(a > b for a, b in zip(shifted, shifted[1:]))
    assert shifted[2] == pytest.approx(0.75)  # 3 * 0.5 / (1 + 2 * 0.5): more of the steps near the noise
    for bad, match in [({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": 3, "shift": 0}, "shift")]:
        with pytest.raises(ValueError, match=match):
            flow_timesteps(**bad)


def test_euler_is_exact_for_a_constant_field_and_heun_for_one_linear_in_t():
    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    const = torch.tensor([0.3, -1.2])
    out = flow_sample(lambda x, s: const.expand_as(x), x_T.shape, steps=3, x_T=x_T, progress=False)
    assert torch.allclose(out, x_T - const, atol=1e-6)  # x_0 = x_1 + (0 - 1) v

    def linear_in_t(x, s):  # v = 2 t  =>  x(0) = x(1) - 1 exactly
        return (2 * s / TIME_SCALE)[:, None].expand_as(x)

    euler = flow_sample(linear_in_t, x_T.shape, steps=4, sampler="euler", x_T=x_T, progress=False)
    assert not torch.allclose(euler, x_T - 1, atol=1e-3)  # Euler's first-order error
    heun = flow_sample(linear_in_t, x_T.shape, steps=4, sampler="heun", x_T=x_T, progress=False)
    # Heun is exact on every step but the last, Euler's from t = 1/4 to 0: it moves by 1/4 * v(1/4) = 1/8, not 1/16
    assert torch.allclose(heun, x_T - 1 - 0.25**2, atol=1e-5)


def test_model_calls_and_callback():
    calls, seen = [], []

    def model(x, s):
        calls.append(s[0].item())
        return torch.zeros_like(x)

    flow_sample(model, (2, 2), steps=4, sampler="heun", callback=seen.append, progress=False)
    assert len(calls) == nfe("heun", 4) == 7 and [info["i"] for info in seen] == [0, 1, 2, 3]
    assert [info["t"] for info in seen] == pytest.approx([1.0, 0.75, 0.5, 0.25]) and set(seen[0]) == {
        "i", "t", "x", "pred_x0"}
    calls.clear()
    flow_sample(model, (2, 2), steps=5, progress=False)
    assert len(calls) == nfe("euler", 5) == 5 and calls[0] == TIME_SCALE
    with pytest.raises(ValueError, match="'euler', 'heun'"):
        flow_sample(model, (2, 2), steps=2, sampler="rk4", progress=False)
    with pytest.raises(ValueError, match="x_T has shape"):
        flow_sample(model, (2, 2), steps=2, x_T=torch.zeros(3, 2), progress=False)


def test_deterministic_ddim_is_euler_on_the_probability_flow_ode():
    schedule = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(4)
    x_t, eps = torch.randn(2, 1, 5, 5, generator=g), torch.randn(2, 1, 5, 5, generator=g)
    for t, t_prev in [(999, 949), (700, 500), (300, 299), (50, 0), (10, -1)]:
        by_ddim = ddim_step(x_t, t, t_prev, eps, schedule, eta=0.0)
        assert torch.allclose(by_ddim, ddim_as_euler_step(x_t, t, t_prev, eps, schedule), atol=1e-5, rtol=1e-5)
    abar = schedule.alphas_cumprod[999].item()
    assert pf_ode_sigma(schedule, 999) == pytest.approx(math.sqrt((1 - abar) / abar))
    assert pf_ode_sigma(schedule, -1) == 0


def test_straightness():
    line = torch.linspace(0, 1, 11)[:, None, None] * torch.tensor([[3.0, 4.0]])  # (11, 1, 2)
    assert path_straightness(line).item() == pytest.approx(1.0)
    corner = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]]])
    assert path_straightness(corner).item() == pytest.approx(2 / math.sqrt(2))
    with pytest.raises(ValueError, match="at least 2 points"):
        path_straightness(torch.zeros(1, 3, 2))


def test_flow_matching_learns_the_moons_and_beats_ddim_at_two_calls():
    data = toy_2d("moons", 4000, generator=torch.Generator().manual_seed(0)) / 2
    torch.manual_seed(0)
    result = train(MLPDenoiser(), data, None, TrainConfig(steps=600, batch_size=256, lr=2e-3, warmup_steps=30,
                                                          objective="flow", ema_decay=0.99, checkpoint_every=None),
                   progress=False)
    assert sum(result.losses[-50:]) < sum(result.losses[:50])
    schedule = make_schedule("linear", 1000)
    torch.manual_seed(0)
    eps_result = train(MLPDenoiser(), data, schedule, TrainConfig(steps=600, batch_size=256, lr=2e-3, warmup_steps=30,
                                                                   ema_decay=0.99, checkpoint_every=None),
                       progress=False)
    x_T = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1))
    flow2 = flow_sample(result.ema, x_T.shape, steps=2, x_T=x_T, progress=False)
    ddim2 = ddim_sample(eps_result.ema, schedule, x_T.shape, steps=2, x_T=x_T, progress=False)
    assert energy_distance(flow2, data[:1000]) < energy_distance(ddim2, data[:1000])
    points = [x_T[:10]]
    flow_sample(result.ema, (10, 2), steps=50, x_T=x_T[:10], callback=lambda info: points.append(info["x"]),
                progress=False)
    assert len(points) == 51 and path_straightness(torch.stack(points)).mean() < 1.2


def test_the_objective_is_checked_and_kept_with_the_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="unknown objective"):
        TrainConfig(steps=1, objective="score")
    with pytest.raises(ValueError, match="min_snr_gamma belong"):
        TrainConfig(steps=1, objective="flow", min_snr_gamma=5.0)
    with pytest.raises(ValueError, match="unknown time_sampling"):
        TrainConfig(steps=1, objective="flow", time_sampling="cosine")
    images = torch.rand(32, 1, 8, 8) * 2 - 1
    make = lambda: UNet(UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,  # noqa: E731
                                   norm_groups=4))
    flow_config = TrainConfig(steps=3, batch_size=8, warmup_steps=1, objective="flow", checkpoint_every=None)
    with pytest.raises(ValueError, match="needs a noise schedule"):
        train(make(), images, None, TrainConfig(steps=1, batch_size=8), progress=False)
    with pytest.raises(ValueError, match="schedule=None"):
        train(make(), images, make_schedule("linear", 50), flow_config, progress=False)
    path = tmp_path / "flow.pt"
    train(make(), images, None, flow_config, checkpoint=path, progress=False)
    with pytest.raises(CheckpointError, match="objective='flow'"):
        train(make(), images, make_schedule("linear", 50), TrainConfig(steps=5, batch_size=8, warmup_steps=1),
              checkpoint=path, progress=False)
    resumed = train(make(), images, None, TrainConfig(steps=5, batch_size=8, warmup_steps=1, objective="flow",
                                                      checkpoint_every=None), checkpoint=path, progress=False)
    assert resumed.step == 5
    out = pretrained.export_weights(path, tmp_path / "tiny_flow.pt", name="tiny_flow", record={"note": "test"})
    model, schedule, info = pretrained.load_pretrained("tiny_flow", "cpu", directory=tmp_path)
    assert out.exists() and schedule is None and info["prediction"] == "flow" and not model.training
    assert flow_sample(model, (2, 1, 8, 8), steps=2, progress=False).shape == (2, 1, 8, 8)


def test_draw_batch_gives_flow_times_in_the_unit_interval():
    data = DeviceImages(torch.rand(16, 1, 4, 4) * 2 - 1, None, device="cpu")
    g = torch.Generator().manual_seed(0)
    _, _, t, eps = draw_batch(data, 64, None, g, time_sampling="logit_normal")
    assert t.dtype == torch.float32 and 0 < t.min() and t.max() < 1 and eps.shape == (64, 1, 4, 4)


def test_the_lesson_checks_name_the_common_mistakes():
    def loss_flipped(model, x0, t, eps):
        tb = t.reshape(-1, *([1] * (x0.ndim - 1)))
        return ((model((1 - tb) * x0 + tb * eps, t * TIME_SCALE) - (x0 - eps)) ** 2).mean()

    def loss_2d_only(model, x0, t, eps):
        tb = t[:, None]
        return ((model((1 - tb) * x0 + tb * eps, t * TIME_SCALE) - (eps - x0)) ** 2).mean()

    with pytest.raises(ExerciseError, match="wrong sign"):
        checks.check_flow_loss(loss_flipped)
    with pytest.raises(ExerciseError, match="broadcast"):
        checks.check_flow_loss(loss_2d_only)
    with pytest.raises(ExerciseError, match="wrong way"):
        checks.check_euler_step(lambda x, t, t_next, v: x + (t - t_next) * v)
    assert checks.check_euler_step(euler_step) is euler_step

    with pytest.raises(ExerciseError, match="plain Euler step"):
        checks.check_heun_sample(lambda m, x, n, cb=None: _heun(m, x, n, cb, euler_last=False))

    def skipped(model, x_T, steps, callback=None):  # noqa: N803
        raise NotImplementedError()

    fallback = checks.check_heun_sample(skipped)
    x = torch.randn(2, 2)
    assert torch.allclose(fallback(lambda x, s: -x, x, 3), flow_sample(lambda x, s: -x, (2, 2), steps=3,
                                                                        sampler="heun", x_T=x, progress=False))


def test_the_heun_check_compares_what_the_callback_gets_and_the_loss_check_the_reduction():
    with pytest.raises(ExerciseError, match="pred_x0 is computed from the new point"):
        checks.check_heun_sample(lambda m, x, n, cb=None: _heun(m, x, n, cb, pred_from_new=True))

    def per_example(model, x0, t, eps):
        tb = t.reshape(-1, *([1] * (x0.ndim - 1)))
        err = (model((1 - tb) * x0 + tb * eps, t * TIME_SCALE) - (eps - x0)) ** 2
        return err.flatten(1).sum(1).mean()

    with pytest.raises(ExerciseError, match="mean over all elements"):
        checks.check_flow_loss(per_example)


def _heun(model, x_T, steps, callback=None, *, euler_last=True, pred_from_new=False):  # noqa: N803
    """A learner's Heun sampler, written out; ``euler_last=False`` or ``pred_from_new=True`` give wrong answers."""
    times = torch.linspace(1, 0, steps + 1).tolist()
    x = x_T
    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        v = model(x, torch.full((x.shape[0],), t * TIME_SCALE))
        new = x + (t_next - t) * v
        if t_next > 0 or not euler_last:
            new = x + (t_next - t) * 0.5 * (v + model(new, torch.full((x.shape[0],), t_next * TIME_SCALE)))
        if callback is not None:
            callback({"i": i, "t": t, "x": new, "pred_x0": (new if pred_from_new else x) - t * v})
        x = new
    return x
