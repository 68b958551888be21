"""Reflow: one round of straightening the shipped flow model, and what it buys at few model calls (lesson 10).

Liu, Gong & Liu (2022, "Flow Straight and Fast", rectified flow) retrain a flow model on pairs (z, x0) where x0
is the model's own ODE solution from the noise z. A flow trained on independent pairs has curved paths (its
velocity field averages the many straight lines through each point); on the coupled pairs the lines no longer
cross, so the new paths are straighter and Euler with few steps lands nearer the end of the ODE.

1. draws --pairs noises z and solves the shipped `mnist_flow`'s ODE from each (Heun, --teacher-steps steps):
   the pairs (z, x0);
2. fine-tunes a copy of `mnist_flow` for --minutes on them: the flow loss with the paired noise
   (x_t = (1 - t) x0 + t z, target z - x0), times uniform in [0, 1] (as Liu et al.), AdamW, an EMA;
3. samples the teacher and the reflowed model with Euler at each --nfe from the same --samples noises, and
   scores them against the real test digits (FID_self, KID, confident fraction, with the floor at the same
   count) and against the teacher's own many-step solution from the same noises (mean distance per pixel);
   measures path straightness (length over chord, 1 = straight) of 64 trajectories of 50 Euler steps each.

Appends to results/reflow.jsonl with settings ``objective`` "flow", ``sampler`` "euler", ``nfe``,
``train_seconds`` (of the reflow fine-tuning; the teacher's own 10 minutes come first), ``model``.

    DIFFEDU_DATA=../shared/data python benchmarks/reflow.py --pairs 10000 --minutes 10 --threads 2

Tests never time anything; this script does, and never fails on a number.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, quality_figures, record  # noqa: E402

from diffedu.course.plotting import image_grid  # noqa: E402
from diffedu.devices import cpu_has_bf16  # noqa: E402
from diffedu.ema import make_ema  # noqa: E402
from diffedu.flow import flow_loss, flow_sample, path_straightness  # noqa: E402
from diffedu.metrics import evaluate_samples  # noqa: E402
from diffedu.pretrained import load_pretrained  # noqa: E402


def solve(model, noise: torch.Tensor, steps: int, sampler: str, batch: int) -> torch.Tensor:
    """The model's ODE solution from each noise, in batches."""
    out = [flow_sample(model, tuple(z.shape), steps=steps, sampler=sampler, x_T=z, progress=False)
           for z in noise.split(batch)]
    return torch.cat(out)


def trajectories(model, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """(steps + 1, B, ...) points of Euler's path from each noise."""
    points = [noise]
    flow_sample(model, tuple(noise.shape), steps=steps, x_T=noise, progress=False,
                callback=lambda info: points.append(info["x"]))
    return torch.stack(points)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=10_000, help="(noise, teacher solution) pairs to train on")
    p.add_argument("--teacher-steps", type=int, default=8, help="Heun steps for the pairs (2 s - 1 model calls)")
    p.add_argument("--minutes", type=float, default=10.0, help="fine-tuning budget")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--batch", type=int, default=250, help="samples per sampling batch")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="cpu", help="recorded with the figures")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, _, info = load_pretrained("mnist_flow", device="cpu")
    shape = (1, 28, 28)

    started = time.perf_counter()
    z = torch.randn(args.pairs, *shape, generator=torch.Generator().manual_seed(args.seed + 1))
    with torch.no_grad():
        x0 = solve(teacher, z, args.teacher_steps, "heun", args.batch).clamp(-1, 1)
    pair_seconds = time.perf_counter() - started
    print(f"{args.pairs} pairs by Heun with {args.teacher_steps} steps in {pair_seconds:.0f} s")

    student = copy.deepcopy(teacher).train()
    ema = make_ema(student, args.ema_decay)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 2)
    steps, started, losses = 0, time.perf_counter(), []
    while time.perf_counter() - started < args.minutes * 60:
        idx = torch.randint(0, args.pairs, (args.batch_size,), generator=g)
        t = torch.rand(args.batch_size, generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_bf16()):  # as the course's CPU recipe
            loss = flow_loss(student, x0[idx], t, z[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        ema.update_parameters(student)
        steps += 1
        losses.append(loss.item())
        if steps % 200 == 0:
            print(f"step {steps}: loss {sum(losses[-200:]) / 200:.4f}")
    train_seconds = time.perf_counter() - started
    reflowed = ema.module.eval()
    print(f"reflow: {steps} steps of {args.batch_size} in {train_seconds / 60:.1f} min")

    base = {"objective": "flow", "sampler": "euler", "teacher": "mnist_flow",
            "teacher_command": info["record"].get("command"), "pairs": args.pairs,
            "pair_sampler": f"heun, {args.teacher_steps} steps", "pair_seconds": round(pair_seconds, 1),
            "reflow_steps": steps, "batch": args.batch_size, "lr": args.lr, "ema_decay": args.ema_decay,
            "time_sampling": "uniform", "amp": "bf16" if cpu_has_bf16() else "off", "seed": args.seed,
            "sample_count": args.samples, "threads": torch.get_num_threads()}
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed + 3))
    with torch.no_grad():
        reference = solve(teacher, noise, 25, "heun", args.batch).clamp(-1, 1)  # the teacher's ODE, 49 calls
        grids = []
        for name, model, seconds in (("mnist_flow", teacher, 0.0), ("mnist_flow_reflow1", reflowed, train_seconds)):
            straight = path_straightness(trajectories(model, noise[:64], 50)).mean().item()
            settings = {**base, "model": name, "train_seconds": round(seconds, 1)}
            record("reflow", "path_straightness", straight, "length / chord", profile=args.profile, device="cpu",
                   settings={**settings, "nfe": 50})
            row = []
            for nfe in args.nfe:
                x = solve(model, noise, nfe, "euler", args.batch).clamp(-1, 1)
                scores = evaluate_samples(x, "mnist")
                gap = (x - reference).abs().mean().item()
                print(f"{name} euler nfe {nfe}: FID_self {scores['fid_self']:.2f} "
                      f"(floor {scores['fid_self_floor']:.2f}), confident {scores['confident_fraction']:.3f}, "
                      f"distance to the teacher's ODE {gap:.3f}")
                for metric, value, unit in (*quality_figures(scores),
                                            ("distance_to_teacher_ode", gap, "mean |x - x_heun25| per pixel")):
                    record("reflow", metric, value, unit, profile=args.profile, device="cpu",
                           settings={**settings, "nfe": nfe})
                row.append(x[:16])
            grids.append(torch.cat(row))
    plt.imsave(RESULTS / "reflow_samples.png", image_grid(torch.cat(grids), nrow=16), cmap="gray")


if __name__ == "__main__":
    main()
