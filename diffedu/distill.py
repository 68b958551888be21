"""Distillation: a consistency student that samples in 1 to 4 model calls, taught by a diffusion model's ODE.

The teacher's probability-flow ODE (lesson 10, `diffedu.solvers`) maps each noise x_T to one image. A
*consistency function* f(x_t, t) returns that image from any point x_t of the same trajectory (Song et al.
2023, "Consistency Models"); one call of it at t = T samples. The student is the teacher's U-Net fine-tuned to be
such an f, in the skip/out parametrization of Song et al. (in the EDM variables y = x_t / sqrt(abar_t) and
sigma = sqrt(1 - abar_t) / sqrt(abar_t), with sigma_data = 0.5)

    f(x_t, t) = c_skip(sigma) y + c_out(sigma) F(x_t, t),
    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),
    c_out = sigma_data (sigma - sigma_min) / sqrt(sigma^2 + sigma_data^2),

so that f(x, t_min) = x for every network F (the boundary condition: at the lowest level the data is the
answer), and at high noise f is c_out F with c_out -> sigma_data: the network predicts the image (scaled by
1 / sigma_data), a well-scaled target, unlike the eps a DDPM predicts, whose x_0 = y - sigma eps multiplies the
network's error by sigma ~ 157 at t = 999.

How it learns f here: from the teacher's own solutions. `teacher_trajectories` runs the teacher's
DPM-Solver++(2M) (16 calls on "trailing" levels, which include the student's levels 999, 749, 499 and 249) from
many noises and keeps every point of each trajectory with its end point; `distill` regresses f(x_t, t) on the end
point (mean squared error) at the levels the student will be called at (``train_levels="student"``; "all" uses
every level of the trajectories), the student starting from the teacher's weights (its last layer negated, so
that at the lowest levels, sigma << sigma_data, f starts as the teacher's own x_0, y - sigma eps; at the levels it
is trained at it starts from the teacher's features, not its answer). This is the direct form of consistency
distillation (Luhman & Luhman 2021 distilled DDIM into one step this way): Song et al. instead ask f to agree
with itself one teacher step apart (an EMA target), which needs no stored trajectories but many more training
steps than a 2-core CPU has in 20 minutes. Progressive distillation (Salimans & Ho 2022) halves the step count
round by round; latent consistency models (Luo et al. 2023) apply consistency distillation to Stable Diffusion's
latents with guidance as an input.

`consistency_sample` samples a student: one call at t = T, then (multistep, Song et al.'s Algorithm 1) noise
the answer to a lower level with fresh noise and call again. The student's output is an x_0 prediction (of the
ODE's end, not the posterior mean a diffusion model's x_0 is), recorded as ``model.provenance.prediction == "x0"``,
so `ddim_sample` and `ode_sample` accept it: DDIM steps on a student are a heuristic, measured in lesson 13.

The command (20 minutes on 2 cores):
``python -m diffedu.distill --teacher mnist_ddpm --minutes 20 --out runs/student.pt --export mnist_student``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from diffedu.checkpoints import atomic_save, check_fits, read_file, weights_dir
from diffedu.devices import default_device, device_name
from diffedu.ema import make_ema
from diffedu.models.unet import UNet, UNetConfig
from diffedu.pretrained import FORMAT, load_pretrained
from diffedu.provenance import Provenance, attach, provenance_of
from diffedu.samplers import Callback, eval_mode, progress_bar, randn, start_noise
from diffedu.schedules import NoiseSchedule, make_schedule
from diffedu.solvers import ode_sample, schedule_sigmas, solver_timesteps

__all__ = ["CHECKPOINT_FORMAT", "ConsistencyStudent", "DistillConfig", "DistillResult", "SIGMA_DATA",
           "consistency_sample", "consistency_scalings", "distill", "export_student", "load_student", "main",
           "student_timesteps", "teacher_trajectories"]

SIGMA_DATA = 0.5  # EDM's and the consistency models' sigma_data for images in [-1, 1]
CHECKPOINT_FORMAT = "diffedu-distill-checkpoint"
RECIPE = ("python -m diffedu.distill --teacher mnist_ddpm --minutes 20 --out runs/student.pt --export mnist_student  "
          "(20 minutes on 2 cores)")


def consistency_scalings(sigma: Tensor, sigma_min: float, sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) of Song et al. 2023 at noise level `sigma`: c_skip = 1 and c_out = 0 at sigma_min."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (sigma - sigma_min) / (sigma**2 + sigma_data**2).sqrt()
    return c_skip, c_out


class ConsistencyStudent(nn.Module):
    """f(x_t, t) = c_skip y + c_out F(x_t, t): a U-Net F made into a consistency function (an x_0 predictor).

    ``student(x_t, t)`` returns the predicted x_0 for x_t at integer timesteps t of `schedule` (the model's
    input is x_t itself, at unit scale, as for the teacher).
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, sigma_data: float = SIGMA_DATA) -> None:
        super().__init__()
        self.net = net
        self.config = getattr(net, "config", None)
        self.sigma_data = float(sigma_data)
        self.register_buffer("sigmas", schedule_sigmas(schedule).float(), persistent=False)
        self.sigma_min = float(self.sigmas[0])

    @classmethod
    def from_teacher(cls, teacher: nn.Module, schedule: NoiseSchedule, sigma_data: float = SIGMA_DATA
                     ) -> ConsistencyStudent:
        """A copy of the teacher's U-Net whose last layer is negated: for sigma << sigma_data f is the teacher's x_0."""
        net = copy.deepcopy(teacher)
        object.__setattr__(net, "provenance", None)
        last = _last_conv(net)
        with torch.no_grad():
            last.weight.neg_()
            if last.bias is not None:
                last.bias.neg_()
        return cls(net, schedule, sigma_data).to(next(teacher.parameters()).device)

    def forward(self, x: Tensor, t: Tensor | int, cond: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, device=x.device).long().expand(x.shape[0]) if not torch.is_tensor(t) or t.dim() == 0 \
            else t.long()
        sigma = self.sigmas.to(x.device)[t].view(-1, *([1] * (x.dim() - 1)))
        c_skip, c_out = consistency_scalings(sigma, self.sigma_min, self.sigma_data)
        y = x * (1 + sigma**2).sqrt()
        out = self.net(x, t) if cond is None else self.net(x, t, cond)
        return c_skip * y + c_out * out.float()


def _last_conv(net: nn.Module) -> nn.Module:
    """The output convolution: the last one of the U-Net's ``out`` head (of the whole net for other modules)."""
    head = net.out if isinstance(getattr(net, "out", None), nn.Module) else net
    convs = [m for m in head.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    if not convs:
        raise ValueError("the teacher has no convolution or linear layer to start the student's output from")
    return convs[-1]


def student_timesteps(schedule: NoiseSchedule, calls: int) -> list[int]:
    """The levels a student visits in `calls` calls: "trailing" ones (T-1, then T/calls apart: 999, 749, 499, 249)."""
    return solver_timesteps(schedule, calls, "trailing")


@torch.no_grad()
def teacher_trajectories(teacher: Callable[..., Tensor], schedule: NoiseSchedule, count: int, *, steps: int = 16,
                         batch_size: int = 250, generator: torch.Generator | None = None,
                         device: torch.device | str | None = None, progress: bool = True,
                         deadline: float | None = None) -> dict[str, Any]:
    """Solve the teacher's ODE (DPM-Solver++(2M), `steps` "trailing" levels) from `count` noises.

    Returns {"levels": [t_0 > t_1 > ...], "x": (N, L, C, H, W) float16, the point of each trajectory at each
    level, "x0": (N, C, H, W) float32, its end}. With `deadline` (a time.monotonic() value) it stops after the
    batch that passes it, so N may be less than `count`.
    """
    levels = solver_timesteps(schedule, steps, "trailing")
    shape = _sample_shape(teacher)
    xs, ends = [], []
    for start in progress_bar(range(0, count, batch_size), progress, "teacher trajectories"):
        n = min(batch_size, count - start)
        x_T = start_noise(teacher, (n, *shape), None, generator, device)[0]  # noqa: N806
        points = [x_T.cpu().half()]
        end = ode_sample(teacher, schedule, tuple(x_T.shape), solver="dpm_solver_pp_2m", timesteps=levels, x_T=x_T,
                         callback=lambda s: points.append(s["x"].cpu().half()) if s["i"] + 1 < len(levels) else None,
                         progress=False)
        xs.append(torch.stack(points, dim=1))
        ends.append(end.float().cpu())
        if deadline is not None and time.monotonic() > deadline:
            break
    return {"levels": levels, "x": torch.cat(xs), "x0": torch.cat(ends), "teacher_steps": steps}


def _sample_shape(model: Any) -> tuple[int, ...]:
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("the teacher has no .config (a diffedu UNet has one): the sample shape is unknown")
    return (config.in_channels, config.image_size, config.image_size)


@torch.no_grad()
def consistency_sample(student: Callable[..., Tensor], schedule: NoiseSchedule, shape: tuple[int, ...], *,
                       calls: int | None = None, timesteps: Sequence[int] | None = None,
                       generator: torch.Generator | None = None, callback: Callback | None = None,
                       x_T: Tensor | None = None, device: torch.device | str | None = None,  # noqa: N803
                       clip_x0: bool = True, progress: bool = False) -> Tensor:
    """Sample a consistency student in `calls` calls (or at the descending `timesteps`): Song et al.'s Algorithm 1.

    x_0 = f(x_T, T); then at each lower level t: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) z with fresh noise z,
    and x_0 = f(x_t, t). `callback` gets {"i", "t", "x", "pred_x0"} after each call (x: the input of that call).
    """
    if (calls is None) == (timesteps is None):
        raise ValueError("pass exactly one of calls= (1, 2, 4, ...) or timesteps= (a descending list of ints)")
    levels = student_timesteps(schedule, calls) if calls is not None else [int(t) for t in timesteps]
    if any(not 0 <= t < schedule.T for t in levels) or any(a <= b for a, b in zip(levels, levels[1:])):
        raise ValueError(f"timesteps must be distinct integers in 0..{schedule.T - 1}, descending; got {levels}")
    x, device = start_noise(student, shape, x_T, generator, device)
    abar = schedule.alphas_cumprod.double().cpu()
    x0 = x
    with eval_mode(student):
        for i, t in enumerate(levels):
            if i > 0:
                z = randn(tuple(x.shape), generator, device)
                x = abar[t].sqrt().item() * x0 + (1 - abar[t]).sqrt().item() * z
            x0 = student(x, torch.full((x.shape[0],), t, device=device, dtype=torch.long)).float()
            x0 = x0.clamp(-1, 1) if clip_x0 else x0
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "pred_x0": x0})
    return x0


@dataclasses.dataclass
class DistillConfig:
    """The settings of a distillation run (`distill`); the command line has one flag for each."""

    teacher: str = "mnist_ddpm"
    minutes: float = 20.0  # the whole budget: trajectories and training
    trajectory_minutes: float = 5.0  # of which the teacher's trajectories (stopping at `trajectories` if sooner)
    trajectories: int = 20_000
    teacher_steps: int = 16
    steps: int | None = None  # training steps; None: until the budget is spent
    batch_size: int = 64
    lr: float = 4e-4
    warmup: int = 50
    ema_decay: float = 0.999
    train_levels: str = "student"  # "student": only the 1-, 2- and 4-call levels (999, 749, 499, 249); "all"
    first_level_share: float = 0.0  # a share of each batch drawn at t = T - 1 (the one-call level) on top
    sigma_data: float = SIGMA_DATA
    seed: int = 0
    checkpoint_every: int = 200


@dataclasses.dataclass
class DistillResult:
    student: ConsistencyStudent  # the EMA student, eval mode
    losses: list[float]
    step: int
    seconds: float  # training, without the trajectories
    trajectory_seconds: float
    trajectory_count: int


def distill(teacher: nn.Module, schedule: NoiseSchedule, config: DistillConfig, *,
            out: str | os.PathLike[str] | None = None, device: torch.device | str | None = None,
            progress: bool = True, callback: Callable[[dict[str, Any]], None] | None = None) -> DistillResult:
    """Teach a `ConsistencyStudent` the teacher's ODE end points, within ``config.minutes`` (see the module doc).

    With `out`, the trajectories are kept in ``<out>.trajectories.pt`` and the training state in `out`
    (atomically, every ``config.checkpoint_every`` steps and at the end); a run with the same `out` reuses the
    trajectories and continues training, the budget counting the earlier part.
    """
    if not 0 <= config.first_level_share <= 1:
        raise ValueError(f"first_level_share must be in [0, 1], got {config.first_level_share}")
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    started = time.monotonic()
    out = Path(out) if out is not None else None
    gen = torch.Generator().manual_seed(config.seed + 1)  # the batches (the trajectories' noises have their own)
    traj_path = out.with_name(out.name + ".trajectories.pt") if out is not None else None
    if traj_path is not None and traj_path.is_file():
        data = torch.load(traj_path, map_location="cpu", weights_only=True)
        if data.get("teacher_steps") != config.teacher_steps or data.get("seed") != config.seed:
            raise ValueError(f"{traj_path} holds trajectories of {data.get('teacher_steps')} teacher steps (seed "
                             f"{data.get('seed')}), but this run asks for {config.teacher_steps} (seed {config.seed}): "
                             f"delete it (and {out}) to solve them again, or give another out path")
    else:
        budget = config.trajectory_minutes * 60
        data = teacher_trajectories(teacher, schedule, config.trajectories, steps=config.teacher_steps,
                                    generator=torch.Generator().manual_seed(config.seed),
                                    device=device, progress=progress,
                                    deadline=started + budget if budget > 0 else None)
        data["seconds"], data["seed"] = time.monotonic() - started, config.seed
        if traj_path is not None:
            atomic_save(data, traj_path)
    student = ConsistencyStudent.from_teacher(teacher, schedule, config.sigma_data).train()
    ema = make_ema(student, config.ema_decay)  # with warm-up: the EMA follows the student's first steps
    optimizer = torch.optim.Adam(student.net.parameters(), lr=config.lr)
    step, seconds, losses = 0, 0.0, []
    if out is not None and out.is_file():
        state = read_file(out, CHECKPOINT_FORMAT, f"Delete {out} to start again")
        changed = [k for k, v in dataclasses.asdict(config).items()
                   if k not in ("minutes", "steps", "checkpoint_every") and state["config"].get(k) != v]
        if changed:
            was = ", ".join(f"{k}: {state['config'].get(k)!r}" for k in changed)
            raise ValueError(f"{out} was distilled with other settings ({was}); continue it with those, or delete it "
                             f"to start again")
        student.net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds, losses = state["step"], state["seconds"], state["losses"].tolist()
        gen.set_state(state["rng"])
    levels = data["levels"]
    x_all, x0_all = data["x"], data["x0"]
    n = x_all.shape[0]
    if config.train_levels == "student":
        wanted = student_timesteps(schedule, 4)
        missing = sorted(set(wanted) - set(levels))
        if missing:
            raise ValueError(f"the teacher's trajectories (levels {levels}) miss the student's levels {missing}: use "
                             f"teacher_steps = 4, 8, 16, ... (trailing levels T/steps apart include them)")
        columns = torch.tensor([levels.index(t) for t in wanted])
    elif config.train_levels == "all":
        columns = torch.arange(len(levels))
    else:
        raise ValueError(f"train_levels must be 'student' or 'all', got {config.train_levels!r}")
    level_t = torch.tensor(levels)
    budget = config.minutes * 60 - data["seconds"]
    clock = time.monotonic() - seconds

    def save() -> None:
        if out is not None:
            atomic_save({"format": CHECKPOINT_FORMAT, "net": student.net.state_dict(), "ema": ema.state_dict(),
                         "optimizer": optimizer.state_dict(), "step": step, "seconds": time.monotonic() - clock,
                         "losses": torch.tensor(losses), "rng": gen.get_state(),
                         "config": dataclasses.asdict(config), "teacher_config": dataclasses.asdict(teacher.config),
                         "schedule": {"name": schedule.name, "T": schedule.T, "betas": schedule.betas.detach().cpu()},
                         "trajectory_count": n, "trajectory_seconds": data["seconds"], "levels": levels}, out)

    bar = progress_bar(iter(int, 1), progress, "distilling")
    for _ in bar:
        if (config.steps is not None and step >= config.steps) or (
                config.steps is None and time.monotonic() - clock >= budget):
            break
        b = config.batch_size
        rows = torch.randint(0, n, (b,), generator=gen)
        first = torch.rand(b, generator=gen) < config.first_level_share
        cols = torch.where(first, 0, columns[torch.randint(0, len(columns), (b,), generator=gen)])
        x_t = x_all[rows, cols].float().to(device)
        target = x0_all[rows].to(device)
        t = level_t[cols].to(device)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / max(config.warmup, 1))
        loss = (student(x_t, t) - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update_parameters(student)
        losses.append(loss.item())
        step += 1
        if callback is not None:
            callback({"step": step, "loss": losses[-1], "losses": losses})
        if out is not None and step % config.checkpoint_every == 0:
            save()
    save()
    final = ema.module.eval()
    attach(final, Provenance.of("x0", schedule, images=_images(teacher), source="the distilled student"))
    return DistillResult(final, losses, step, time.monotonic() - clock, data["seconds"], n)


def _images(teacher: Any) -> bool:
    p = provenance_of(teacher)
    return True if p is None else p.images


def export_student(result: DistillResult, schedule: NoiseSchedule, out_path: str | os.PathLike[str], *, name: str,
                   record: dict[str, Any]) -> Path:
    """Write the EMA student's U-Net, its scalings and `record` (how it was made) as a weights file (float32)."""
    net = result.student.net
    payload = {
        "format": FORMAT, "format_version": 1, "name": name,
        "state_dict": {k: v.detach().cpu().float() for k, v in net.state_dict().items()}, "dtype": "float32",
        "model_class": "UNet", "model_config": json.loads(json.dumps(dataclasses.asdict(net.config))),
        "schedule": {"name": schedule.name, "T": schedule.T}, "prediction": "x0", "step": result.step,
        "images": _images(result.student), "record": json.loads(json.dumps(record)),
        "consistency": {"sigma_data": result.student.sigma_data, "sigma_min": result.student.sigma_min},
    }
    return atomic_save(payload, out_path)


def load_student(name: str = "mnist_student", device: torch.device | str | None = None, *,
                 directory: str | os.PathLike[str] | None = None
                 ) -> tuple[ConsistencyStudent, NoiseSchedule, dict[str, Any]]:
    """The shipped consistency student `name` (eval mode), its schedule and an info dict (with its record)."""
    folder = Path(directory) if directory is not None else weights_dir()
    path = folder / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no student weights {name!r} at {path}. Distil one on a CPU:\n    {RECIPE}")
    payload = read_file(path, FORMAT, f"Delete it and distil it again ({RECIPE})")
    if "consistency" not in payload:
        raise ValueError(f"{path} is a diffusion model's weights, not a consistency student's: load it with "
                         f"diffedu.pretrained.load_pretrained({name!r})")
    net = UNet(UNetConfig(**payload["model_config"]))
    check_fits(net, payload["state_dict"], path, payload.get("model_class"), payload["model_config"])
    net.load_state_dict(payload["state_dict"])
    schedule = make_schedule(payload["schedule"]["name"], payload["schedule"]["T"])
    student = ConsistencyStudent(net, schedule, payload["consistency"]["sigma_data"])
    device = torch.device(device) if device is not None else default_device()
    attach(student, Provenance.of("x0", schedule, images=bool(payload["images"]),
                                  source=f"the student weights {name!r}"))
    info = {k: payload[k] for k in ("name", "model_config", "step", "record")}
    return student.to(device).eval(), schedule.to(device), {**info, "path": path}


def main(argv: list[str] | None = None) -> DistillResult:
    """``python -m diffedu.distill --teacher mnist_ddpm --minutes 20 --out runs/student.pt --export mnist_student``."""
    p = argparse.ArgumentParser(prog="python -m diffedu.distill", description=__doc__.splitlines()[0])
    defaults = DistillConfig()
    p.add_argument("--teacher", default=defaults.teacher, help="a shipped eps model (diffedu/weights/NAME.pt)")
    p.add_argument("--minutes", type=float, default=defaults.minutes, help="the whole budget, trajectories included")
    p.add_argument("--trajectory-minutes", type=float, default=defaults.trajectory_minutes)
    p.add_argument("--trajectories", type=int, default=defaults.trajectories, help="at most this many")
    p.add_argument("--teacher-steps", type=int, default=defaults.teacher_steps)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: until the budget is spent)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--train-levels", choices=("student", "all"), default=defaults.train_levels,
                   help="student: only the levels a 1-, 2- or 4-call student visits; all: every trajectory level")
    p.add_argument("--first-level-share", type=float, default=defaults.first_level_share)
    p.add_argument("--ema-decay", type=float, default=defaults.ema_decay)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--out", type=Path, required=True, help="training state; continued if it exists")
    p.add_argument("--export", default=None, metavar="NAME", help="write diffedu/weights/NAME.pt at the end")
    p.add_argument("--weights-dir", type=Path, default=None, help="export there instead of diffedu/weights")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    for flag in ("minutes", "trajectories", "teacher_steps", "batch_size", "lr"):
        if not getattr(args, flag) > 0:
            p.error(f"--{flag.replace('_', '-')} must be above 0, got {getattr(args, flag)}")
    config = DistillConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DistillConfig)
                              if hasattr(args, f.name)})
    device = torch.device(args.device) if args.device else default_device()
    teacher, schedule, info = load_pretrained(args.teacher, device=device)
    if info["prediction"] == "flow" or schedule is None:
        p.error(f"--teacher {args.teacher} is a flow-matching model; distil a diffusion (eps) model such as mnist_ddpm")
    result = distill(teacher, schedule, config, out=args.out, device=device)
    final_loss = sum(result.losses[-50:]) / max(1, len(result.losses[-50:]))
    print(f"{result.step} steps, {result.seconds / 60:.1f} min of training after {result.trajectory_seconds / 60:.1f} "
          f"min of {result.trajectory_count} teacher trajectories; final loss {final_loss:.4f}")
    if args.export:
        record = {"command": "python -m diffedu.distill " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "teacher": args.teacher, "config": dataclasses.asdict(config), "steps": result.step,
                  "seconds": round(result.seconds + result.trajectory_seconds, 1),
                  "minutes": round((result.seconds + result.trajectory_seconds) / 60, 2),
                  "train_seconds": round(result.seconds, 1), "trajectory_seconds": round(result.trajectory_seconds, 1),
                  "trajectory_count": result.trajectory_count,
                  "final_loss": round(final_loss, 5),
                  "device": device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__}
        folder = args.weights_dir if args.weights_dir is not None else weights_dir()
        path = export_student(result, schedule, folder / f"{args.export}.pt", name=args.export, record=record)
        print(f"exported {path} ({path.stat().st_size / 2**20:.1f} MB)")
    return result


if __name__ == "__main__":
    main()
