"""The consistency student (`diffedu.distill`): its boundary condition, its start from the teacher, the teacher's
trajectories, the training loop with its checkpoint, the sampler, the weights file and the command."""

from __future__ import annotations

import pytest
import torch

from diffedu.distill import (
    ConsistencyStudent,
    DistillConfig,
    consistency_sample,
    consistency_scalings,
    distill,
    export_student,
    load_student,
    main,
    student_timesteps,
    teacher_trajectories,
)
from diffedu.models.unet import UNet, UNetConfig
from diffedu.pretrained import available, load_pretrained
from diffedu.provenance import Provenance, attach
from diffedu.samplers import ddim_sample
from diffedu.schedules import make_schedule
from diffedu.solvers import ode_sample, schedule_sigmas, solver_timesteps

SCHEDULE = make_schedule("linear", 1000)


def _teacher(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    net = UNet(UNetConfig(image_size=8, in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                          norm_groups=4, attention_resolutions=()))
    with torch.no_grad():  # the zero-initialised last layer would make every output 0
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return attach(net.eval(), Provenance.of("eps", SCHEDULE, images=True, source="a test teacher"))


def test_the_scalings_meet_the_boundary_condition_and_hand_over_to_the_network():
    sigma_min = 0.01
    c_skip, c_out = consistency_scalings(torch.tensor([sigma_min, 1.0, 157.0], dtype=torch.float64), sigma_min)
    assert c_skip[0] == 1 and c_out[0] == 0
    assert c_skip[2] < 1e-4 and abs(c_out[2] - 0.5) < 1e-3  # at high noise f is the network's, at sigma_data's scale
    assert 0 < c_skip[1] < 1 and 0 < c_out[1] < 0.5


def test_the_student_returns_its_input_at_the_lowest_level_whatever_the_network():
    student = ConsistencyStudent(_teacher(), SCHEDULE)
    x = torch.randn(3, 1, 8, 8)
    sigma_min = schedule_sigmas(SCHEDULE)[0].item()
    # y = x / sqrt(abar_0) = x sqrt(1 + sigma_min^2): the data itself at the boundary
    torch.testing.assert_close(student(x, torch.zeros(3, dtype=torch.long)), x * (1 + sigma_min**2) ** 0.5)


def test_the_student_starts_as_the_teacher_with_its_output_negated():
    teacher = _teacher()
    student = ConsistencyStudent.from_teacher(teacher, SCHEDULE)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    sigma = schedule_sigmas(SCHEDULE).float()[t].view(-1, 1, 1, 1)
    c_skip, c_out = consistency_scalings(sigma, student.sigma_min)
    with torch.no_grad():
        expected = c_skip * x * (1 + sigma**2).sqrt() - c_out * teacher(x, t)
        torch.testing.assert_close(student(x, t), expected, rtol=1e-4, atol=1e-5)
    assert teacher.provenance.prediction == "eps"  # the teacher is left as it was


def test_teacher_trajectories_hold_each_solution_and_its_levels():
    teacher = _teacher()
    data = teacher_trajectories(teacher, SCHEDULE, 5, steps=4, batch_size=3, generator=torch.Generator().manual_seed(0),
                                progress=False)
    assert data["levels"] == solver_timesteps(SCHEDULE, 4, "trailing")
    assert data["x"].shape == (5, 4, 1, 8, 8) and data["x"].dtype == torch.float16 and data["x0"].shape == (5, 1, 8, 8)
    g = torch.Generator().manual_seed(0)  # the same noises, batch by batch (3, then 2)
    x_T = torch.cat([torch.randn(3, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)])  # noqa: N806
    torch.testing.assert_close(data["x"][:, 0].float(), x_T, atol=2e-3, rtol=1e-3)  # stored in float16
    end = ode_sample(teacher, SCHEDULE, tuple(x_T.shape), solver="dpm_solver_pp_2m", timesteps=data["levels"],
                     x_T=x_T, progress=False)
    torch.testing.assert_close(end, data["x0"], atol=1e-4, rtol=1e-4)  # float32 (other batch sizes: other rounding)
    # the point at the second level is the solver's first step from x_T (first order: DDIM's, D clamped to [-1, 1])
    (t0, t1), abar, sig = data["levels"][:2], SCHEDULE.alphas_cumprod, schedule_sigmas(SCHEDULE).float()
    y0 = x_T / abar[t0].sqrt()
    with torch.no_grad():
        d = (y0 - sig[t0] * teacher(x_T, torch.full((5,), t0))).clamp(-1, 1)
    ratio = sig[t1] / sig[t0]
    torch.testing.assert_close(data["x"][:, 1].float(), (ratio * y0 + (1 - ratio) * d) * abar[t1].sqrt(),
                               atol=2e-3, rtol=2e-3)
    assert torch.isfinite(data["x"].float()).all()


def test_distillation_lowers_the_loss_and_resumes_as_if_never_stopped(tmp_path):
    teacher = _teacher()
    config = DistillConfig(trajectories=32, teacher_steps=4, steps=60, batch_size=16, lr=1e-3, warmup=5,
                           checkpoint_every=20, minutes=5, trajectory_minutes=5)
    out = tmp_path / "student.pt"
    result = distill(teacher, SCHEDULE, config, out=out, progress=False)
    assert result.step == 60 and result.trajectory_count == 32 and out.is_file()
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert result.student.provenance.prediction == "x0"
    made = (tmp_path / "student.pt.trajectories.pt").stat().st_mtime_ns
    resumed = distill(teacher, SCHEDULE, DistillConfig(**{**config.__dict__, "steps": 70}), out=out, progress=False)
    assert (tmp_path / "student.pt.trajectories.pt").stat().st_mtime_ns == made  # reused, not solved again
    straight = distill(teacher, SCHEDULE, DistillConfig(**{**config.__dict__, "steps": 70}), out=tmp_path / "b.pt",
                       progress=False)
    assert resumed.step == straight.step == 70
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5)  # the same batches, weights and Adam state
    for a, b in zip(resumed.student.state_dict().values(), straight.student.state_dict().values()):
        torch.testing.assert_close(a, b)  # the EMA too


def test_the_ema_warms_up_instead_of_keeping_the_teachers_start():
    teacher = _teacher()
    result = distill(teacher, SCHEDULE, DistillConfig(trajectories=8, teacher_steps=4, steps=20, batch_size=4,
                                                      lr=1e-3, warmup=1), progress=False)
    start = ConsistencyStudent.from_teacher(teacher, SCHEDULE)
    trained, ema = result.student.net.state_dict(), start.net.state_dict()
    # with a plain 0.999 average, 20 steps leave the EMA within 2 % of its start; with warm-up it follows the model
    moved = max((trained[k] - ema[k]).abs().max().item() for k in ema if ema[k].is_floating_point())
    assert moved > 1e-3


def test_a_run_with_other_settings_is_refused_rather_than_mixed(tmp_path):
    teacher, out = _teacher(), tmp_path / "s.pt"
    config = DistillConfig(trajectories=4, teacher_steps=4, steps=2, batch_size=2)
    distill(teacher, SCHEDULE, config, out=out, progress=False)
    with pytest.raises(ValueError, match="trajectories of 4 teacher steps"):
        distill(teacher, SCHEDULE, DistillConfig(**{**config.__dict__, "teacher_steps": 8}), out=out, progress=False)
    with pytest.raises(ValueError, match="other settings \\(lr: 0.0004\\)"):
        distill(teacher, SCHEDULE, DistillConfig(**{**config.__dict__, "lr": 1e-3}), out=out, progress=False)


def test_the_student_levels_must_be_on_the_teachers_trajectories():
    config = DistillConfig(trajectories=2, teacher_steps=2, steps=1, batch_size=2)
    with pytest.raises(ValueError, match="miss the student's levels \\[249, 749\\]"):
        distill(_teacher(), SCHEDULE, config, progress=False)
    result = distill(_teacher(), SCHEDULE, DistillConfig(**{**config.__dict__, "train_levels": "all"}), progress=False)
    assert result.step == 1


def test_one_call_is_the_student_at_the_top_level_and_more_calls_visit_trailing_levels():
    student = ConsistencyStudent(_teacher(), SCHEDULE)
    x_T = torch.randn(2, 1, 8, 8)  # noqa: N806
    with torch.no_grad():
        expected = student(x_T, torch.full((2,), 999)).clamp(-1, 1)
    torch.testing.assert_close(consistency_sample(student, SCHEDULE, (2, 1, 8, 8), calls=1, x_T=x_T), expected)
    seen = []
    consistency_sample(student, SCHEDULE, (2, 1, 8, 8), calls=4, x_T=x_T, callback=lambda s: seen.append(s["t"]))
    assert seen == [999, 749, 499, 249] == student_timesteps(SCHEDULE, 4)
    a, b = (consistency_sample(student, SCHEDULE, (2, 1, 8, 8), calls=2, x_T=x_T,
                               generator=torch.Generator().manual_seed(seed)) for seed in (1, 2))
    assert not torch.allclose(a, b)  # the second call's fresh noise matters
    with pytest.raises(ValueError, match="exactly one of calls"):
        consistency_sample(student, SCHEDULE, (2, 1, 8, 8))
    with pytest.raises(ValueError, match="descending"):
        consistency_sample(student, SCHEDULE, (2, 1, 8, 8), timesteps=[200, 900])


def test_the_student_is_an_x0_model_for_the_other_samplers():
    teacher = _teacher()
    result = distill(teacher, SCHEDULE, DistillConfig(trajectories=8, teacher_steps=4, steps=2, batch_size=4),
                     progress=False)
    x_T = torch.randn(2, 1, 8, 8)  # noqa: N806
    out = ode_sample(result.student, SCHEDULE, (2, 1, 8, 8), solver="euler", timesteps=[999], x_T=x_T, progress=False)
    with torch.no_grad():  # one Euler (DDIM) step to sigma = 0 returns the model's x_0: the student's answer
        torch.testing.assert_close(out, result.student(x_T, torch.full((2,), 999)).clamp(-1, 1), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="trained to predict 'x0'"):
        ddim_sample(result.student, SCHEDULE, (2, 1, 8, 8), steps=2, prediction="eps", progress=False)


def test_the_weights_file_round_trips_and_is_refused_by_the_diffusion_loader(tmp_path):
    teacher = _teacher()
    result = distill(teacher, SCHEDULE, DistillConfig(trajectories=8, teacher_steps=4, steps=3, batch_size=4),
                     progress=False)
    export_student(result, SCHEDULE, tmp_path / "tiny_student.pt", name="tiny_student", record={"how": "a test"})
    student, schedule, info = load_student("tiny_student", device="cpu", directory=tmp_path)
    assert info["record"] == {"how": "a test"} and student.provenance.prediction == "x0"
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([999, 300])
    with torch.no_grad():
        torch.testing.assert_close(student(x, t), result.student(x, t))
    payload = torch.load(tmp_path / "tiny_student.pt", weights_only=True)  # tensors and primitives only
    assert payload["consistency"]["sigma_data"] == 0.5
    with pytest.raises(ValueError, match="load_student"):
        load_pretrained("tiny_student", device="cpu", directory=tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m diffedu.distill"):
        load_student("missing", directory=tmp_path)


def test_the_diffusion_models_listed_leave_out_students(tmp_path):
    result = distill(_teacher(), SCHEDULE, DistillConfig(trajectories=4, teacher_steps=4, steps=1, batch_size=2),
                     progress=False)
    export_student(result, SCHEDULE, tmp_path / "s.pt", name="s", record={})
    assert available(tmp_path) == [] and "mnist_ddpm" in available()


def test_load_student_refuses_a_diffusion_models_weights():
    with pytest.raises(ValueError, match="load_pretrained"):
        load_student("mnist_ddpm", device="cpu")


def test_the_command_distils_the_shipped_teacher_and_exports_with_a_record(tmp_path):
    result = main(["--teacher", "mnist_ddpm", "--trajectories", "4", "--teacher-steps", "4", "--steps", "2",
                   "--batch-size", "2", "--out", str(tmp_path / "s.pt"), "--export", "cli_student",
                   "--weights-dir", str(tmp_path), "--device", "cpu"])
    assert result.step == 2
    student, _, info = load_student("cli_student", device="cpu", directory=tmp_path)
    record = info["record"]
    assert record["teacher"] == "mnist_ddpm" and record["trajectory_count"] == 4 and record["steps"] == 2
    assert record["command"].startswith("python -m diffedu.distill --teacher mnist_ddpm")


@pytest.mark.parametrize("argv, message", [
    (["--teacher", "mnist_flow"], "flow-matching"),
    (["--minutes", "0"], "--minutes must be above 0"),
])
def test_the_command_refuses_bad_input(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "s.pt"), "--device", "cpu"])
    assert message in capsys.readouterr().err
