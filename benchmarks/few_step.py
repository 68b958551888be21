"""Few-step sampling: sample quality of a shipped model against the number of model calls, per sampler.

Samples --samples images from the shipped model (default `mnist_ddpm`, lesson 04's reference) with each
sampler at each number of model calls (nfe), from the same seed, and scores each set with
`diffedu.metrics.evaluate_samples` (FID_self, KID, confident fraction, the real-data floor at the same count):

- "ddpm" (T calls), "ddim" (eta = 0, uniform timesteps): the course's samplers;
- "euler" on "trailing" levels, "heun" and "dpm_solver_pp_2m" on "trailing" and "karras" levels (`diffedu.solvers`),
  and with --power-rho R also DPM-Solver++ on "power" levels of exponent R (settings `rho`);
- "diffusers_dpm_multistep": diffusers' DPMSolverMultistepScheduler (order 2, dpmsolver++, its default spacing)
  through `diffedu.diffusers_bridge`, skipped with a message where diffusers is not installed;
- with --flow-model NAME, a flow-matching model instead (lesson 10's `mnist_flow`), by Euler, Heun and
  DPM-Solver++(2M) on uniform times (`diffedu.flow.flow_sample`);
- with --student NAME, a distilled consistency student instead (lesson 13's `mnist_student`, `diffedu.distill`):
  "student" (Song et al.'s multistep consistency sampling, fresh noise at each level) and "student_ddim" (the
  student's x_0 in deterministic DDIM steps) on "trailing" levels, at --student-nfe calls.

Every record's settings say `sampler`, `spacing`, `nfe`, `clip_x0` and the model. Appends to
results/few_step.jsonl and draws results/few_step_fid_vs_nfe_<model>.png.

    DIFFEDU_DATA=/path/to/npz python benchmarks/few_step.py --threads 2 --no-ddpm

DDPM costs T model calls per sample (on a 2-core CPU without bf16, about 40 minutes for 500 samples of the patch
U-Net): --no-ddpm leaves it out, and the lesson reads DDPM-1000 from the ddim_steps records of the same model.

Tests never time anything; this script does (sample_seconds: seconds per sample), and never fails on a number.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, quality_figures, record  # noqa: E402

from diffedu.diffusers_bridge import (  # noqa: E402
    diffusers_available,
    diffusers_sample,
    diffusers_scheduler,
)
from diffedu.distill import consistency_sample, load_student  # noqa: E402
from diffedu.flow import flow_sample  # noqa: E402
from diffedu.metrics import evaluate_samples  # noqa: E402
from diffedu.pretrained import load_pretrained  # noqa: E402
from diffedu.samplers import ddim_sample, ddpm_sample  # noqa: E402
from diffedu.solvers import ode_sample  # noqa: E402


def runs(nfes: list[int], full: list[int], ddpm: bool, diffusers: bool, power: bool = False
         ) -> list[tuple[str, str, int]]:
    """(sampler, spacing, levels) for every sampler at every nfe it can reach (Heun: odd nfe = 2 levels - 1).

    At the counts in `full` only DDIM, Euler, Heun and DPM-Solver++ on "trailing" levels run (a CPU's budget)."""
    out = [("ddpm", "every", 0)] if ddpm else []
    for n in nfes:
        out.append(("ddim", "ddim", n))
        spacings = ("trailing",) if n in full else ("trailing", "karras")
        for spacing in spacings:
            out += [("euler", spacing, n)] if spacing == "trailing" else []
            out.append(("dpm_solver_pp_2m", spacing, n))
            if n >= 3:
                out.append(("heun", spacing, (n + 1) // 2))
        if power and n > 1:
            out.append(("dpm_solver_pp_2m", "power", n))
        if diffusers and n not in full:
            out.append(("diffusers_dpm_multistep", "linspace", n))
    return out


def draw(model, schedule, sampler: str, spacing: str, levels: int, shape, x_T, clip_x0: bool,  # noqa: N803
         batch_index: int = 0, rho: float | None = None):
    common = {"x_T": x_T, "progress": False}
    if schedule is None:  # a flow-matching model: Euler, Heun or DPM-Solver++ on uniform times (lesson 10)
        return flow_sample(model, shape, steps=levels, sampler=sampler, **common).clamp(-1, 1)
    if sampler == "student":
        gen = torch.Generator().manual_seed(1 + batch_index)  # the fresh noise of its later calls (x_T is shared)
        return consistency_sample(model, schedule, shape, calls=levels, generator=gen, x_T=x_T)
    if sampler == "student_ddim":
        return ode_sample(model, schedule, shape, solver="euler", steps=levels, spacing="trailing", **common)
    if sampler == "ddpm":
        gen = torch.Generator().manual_seed(1)  # the noise of its steps (x_T is shared)
        return ddpm_sample(model, schedule, shape, generator=gen, clip_x0=clip_x0, **common)
    if sampler == "ddim":
        return ddim_sample(model, schedule, shape, steps=levels, eta=0.0, clip_x0=clip_x0, **common)
    if sampler == "diffusers_dpm_multistep":
        scheduler = diffusers_scheduler("dpm_multistep", schedule, solver_order=2, algorithm_type="dpmsolver++",
                                        thresholding=False)
        return diffusers_sample(model, scheduler, shape, steps=levels, **common).clamp(-1, 1)
    return ode_sample(model, schedule, shape, solver=sampler, steps=levels, spacing=spacing,
                      rho=rho if spacing == "power" else None, clip_x0=clip_x0, **common)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist_ddpm", help="a shipped eps model (diffedu/weights/NAME.pt)")
    p.add_argument("--flow-model", default=None,
                   help="a shipped flow-matching model (e.g. mnist_flow) to score instead (Euler, Heun, DPM-Solver++)")
    p.add_argument("--student", default=None,
                   help="a distilled consistency student (e.g. mnist_student) to score instead (1 to 4 calls)")
    p.add_argument("--student-nfe", type=int, nargs="*", default=[1, 2, 3, 4, 8])
    p.add_argument("--nfe", type=int, nargs="*", default=[1, 2, 3, 5, 10, 20, 50])
    p.add_argument("--few-samplers-at", type=int, nargs="*", default=[50],
                   help="model-call counts at which only the main samplers run (DDIM, and the solvers on trailing)")
    p.add_argument("--power-rho", type=float, default=None, metavar="R",
                   help="also DPM-Solver++ on 'power' levels t = T (1 - k / n)^R - 1 (R < 1: more calls at high noise)")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--no-ddpm", action="store_true", help="skip DDPM (T model calls per sample)")
    p.add_argument("--no-clip", action="store_true", help="never clamp the predicted x0 (diffusers' default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--profile", default="cpu")
    args = p.parse_args(argv)
    if args.student and args.no_clip:
        p.error("--no-clip does not apply to --student: a consistency student's samples are always clamped")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.student or args.flow_model or args.model
    device = "cpu" if args.profile != "gpu" else None
    if args.student:
        model, schedule, info = load_student(name, device=device)
    else:
        model, schedule, info = load_pretrained(name, device=device)
    if args.flow_model:
        schedule = None
    device = next(model.parameters()).device
    clip_x0 = not args.no_clip
    train = info["record"]
    if args.student:  # its record: the distillation's (teacher, trajectories, steps, minutes)
        base = {"model": name, "teacher": train["teacher"], "train_steps": train["steps"],
                "train_seconds": train["train_seconds"], "distill_seconds": train["seconds"],
                "trajectory_count": train["trajectory_count"], "objective": "consistency"}
    else:
        base = {"model": name, "train_steps": train["steps"], "train_seconds": round(train["seconds"], 1),
                "objective": ("flow" if train["train_config"].get("objective") == "flow"
                              else train["train_config"].get("prediction", "eps"))}
    base.update({"sample_count": args.samples, "seed": args.seed, "sampling_batch": args.batch,
                 "threads": torch.get_num_threads(), "clip_x0": clip_x0})
    if not diffusers_available():
        print("diffusers is not installed: its sampler is skipped (pip install diffusers)")
    x_T_all = torch.randn(args.samples, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))  # noqa: N806
    curves: dict[str, list[tuple[int, float]]] = {}
    if args.student:
        plan = [("student", "trailing", n) for n in args.student_nfe] + [
            ("student_ddim", "trailing", n) for n in args.student_nfe if n > 1]
    elif args.flow_model:
        plan = ([("euler", "uniform", n) for n in args.nfe] + [("dpm_solver_pp_2m", "uniform", n) for n in args.nfe]
                + [("heun", "uniform", (n + 1) // 2) for n in args.nfe if n >= 3])
    else:
        plan = runs(args.nfe, args.few_samplers_at, not args.no_ddpm, diffusers_available(), args.power_rho is not None)
    for sampler, spacing, levels in plan:
        nfe = schedule.T if sampler == "ddpm" else (2 * levels - 1 if sampler == "heun" else levels)
        out, started = [], time.perf_counter()
        for start in range(0, args.samples, args.batch):
            x_T = x_T_all[start:start + args.batch].to(device)  # noqa: N806
            out.append(draw(model, schedule, sampler, spacing, levels, tuple(x_T.shape), x_T, clip_x0,
                            batch_index=start // args.batch, rho=args.power_rho).cpu())
        seconds = time.perf_counter() - started
        x = torch.cat(out)
        scores = evaluate_samples(x, "mnist")
        settings = {**base, "sampler": sampler, "spacing": spacing, "nfe": nfe,
                    **({"rho": args.power_rho} if spacing == "power" else {})}
        print(f"\n{sampler} ({spacing}) nfe {nfe}: FID_self {scores['fid_self']:.3f} (floor "
              f"{scores['fid_self_floor']:.3f}), confident {scores['confident_fraction']:.3f}, {seconds:.1f} s")
        for metric, value, unit in (*quality_figures(scores),
                                    ("sample_seconds", seconds / args.samples, "s per sample")):
            record("few_step", metric, value, unit, profile=args.profile, device=device, settings=settings)
        curves.setdefault(f"{sampler} ({spacing})", []).append((nfe, scores["fid_self"]))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        points.sort()
        ax.plot([n for n, _ in points], [f for _, f in points], "o-" if len(points) > 1 else "s", label=label)
    ax.set(xscale="log", yscale="log", xlabel="model calls per sample", ylabel="FID_self",
           title=f"{name}, {args.samples} samples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"few_step_fid_vs_nfe_{name}{'_noclip' if args.no_clip else ''}.png", dpi=120)


if __name__ == "__main__":
    main()
