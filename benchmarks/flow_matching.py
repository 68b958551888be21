"""MNIST: flow matching against the eps objective at equal training time, scored against model calls (lesson 10).

For each objective given (``--objectives eps flow``):

1. trains `mnist_patch` with the course's command (``python -m diffedu.train``) for --minutes, with lesson 04's
   CPU recipe (batch 64, lr 1e-3, warm-up 100, EMA 0.995, bf16 where the CPU computes it natively; min-SNR 5 for
   eps), or reuses runs/flow_bench_<objective>.pt when it has already spent that budget;
2. draws --samples images at each number of model calls (NFE) in --nfe: the eps model with DDIM at eta 0 (the
   probability-flow ODE, Euler in sigma) and eta 1; the flow model with Euler and with Heun (Heun at odd NFE
   2 s - 1 only);
3. scores each set with `diffedu.metrics.evaluate_samples` (FID_self, KID, confident fraction, and the
   real-vs-real floor at the same count) and appends the figures to results/flow_matching.jsonl, with
   settings ``objective``, ``sampler``, ``nfe``, ``train_seconds``; saves a grid per objective and sampler.

``--export NAME`` writes the flow model's EMA weights to diffedu/weights/NAME.pt (the shipped ``mnist_flow``).

    DIFFEDU_DATA=../shared/data python benchmarks/flow_matching.py --minutes 10 --threads 2 --export mnist_flow

Tests never time anything; this script does, and never fails on a number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, quality_figures, record  # noqa: E402

from diffedu.checkpoints import weights_dir  # noqa: E402
from diffedu.course.plotting import image_grid  # noqa: E402
from diffedu.devices import cpu_has_bf16  # noqa: E402
from diffedu.flow import flow_sample  # noqa: E402
from diffedu.metrics import evaluate_samples  # noqa: E402
from diffedu.pretrained import export_weights, model_from_checkpoint  # noqa: E402
from diffedu.samplers import ddim_sample  # noqa: E402
from diffedu.train_cli import main as train_main  # noqa: E402

RECIPE = ["--dataset", "mnist", "--preset", "mnist_patch", "--batch-size", "64", "--lr", "1e-3", "--warmup", "100",
          "--ema-decay", "0.995"]
OBJECTIVE_ARGS = {"eps": ["--min-snr-gamma", "5"], "flow": ["--objective", "flow"]}


def draw(model, schedule, objective: str, sampler: str, nfe: int, n: int, batch: int, seed: int,
         device) -> tuple[torch.Tensor, float]:
    """n samples with `nfe` model calls each; returns them and the seconds it took."""
    out, started = [], time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch):
        shape = (min(batch, n - start), 1, 28, 28)
        if objective == "flow":
            steps = nfe if sampler == "euler" else (nfe + 1) // 2
            x = flow_sample(model, shape, steps=steps, sampler=sampler, generator=generator, device=device,
                            progress=False)
        else:
            x = ddim_sample(model, schedule, shape, steps=nfe, eta=1.0 if sampler == "ddim_eta1" else 0.0,
                            generator=generator, clip_x0=True, device=device, progress=False)
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out), time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objectives", nargs="+", choices=("eps", "flow"), default=["eps", "flow"])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 50])
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--batch", type=int, default=256, help="samples per sampling batch")
    p.add_argument("--runs", default="runs", help="folder of the training checkpoints")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="cpu", help="recorded with the figures")
    p.add_argument("--export", metavar="NAME", default=None, help="export the flow model to diffedu/weights/NAME.pt")
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[], help="more options for the training command")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = ["--amp", "bf16"] if cpu_has_bf16() else []

    for objective in args.objectives:
        ckpt = Path(args.runs) / f"flow_bench_{objective}.pt"
        record_path = ckpt.with_suffix(".json")
        done = record_path.exists() and json.loads(record_path.read_text())["seconds"] >= args.minutes * 60
        if not done:
            train_main([*RECIPE, *OBJECTIVE_ARGS[objective], *amp, "--minutes", str(args.minutes), "--out", str(ckpt),
                        *(["--threads", str(args.threads)] if args.threads else []), *args.train_args])
        train_record = json.loads(record_path.read_text())
        model, schedule, state = model_from_checkpoint(ckpt, device="cpu")
        if objective == "flow" and args.export:
            print("exported to", export_weights(ckpt, weights_dir() / f"{args.export}.pt", name=args.export,
                                                record=train_record))
        base = {"model": train_record["preset"], "objective": objective, "train_steps": state["step"],
                "train_seconds": round(state["seconds"], 1), "batch": train_record["train_config"]["batch_size"],
                "lr": train_record["train_config"]["lr"], "amp": train_record["train_config"]["amp"],
                "ema_decay": train_record["train_config"]["ema_decay"],
                "min_snr_gamma": train_record["train_config"]["min_snr_gamma"],
                "time_sampling": train_record["train_config"].get("time_sampling") if objective == "flow" else None,
                "threads": train_record["threads"], "seed": args.seed, "sample_count": args.samples,
                "train_command": train_record["command"]}
        record("flow_matching", "train_images_per_s", train_record["images_per_second"], "images/s",
               profile=args.profile, device="cpu", settings=base)
        samplers = ("euler", "heun") if objective == "flow" else ("ddim_eta0", "ddim_eta1")
        for sampler in samplers:
            grid = []
            for nfe in args.nfe:
                if sampler == "heun" and nfe % 2 == 0:  # Heun takes 2 s - 1 calls: odd counts only
                    nfe = nfe - 1
                    if nfe < 3:
                        continue
                x, seconds = draw(model, schedule, objective, sampler, nfe, args.samples, args.batch, args.seed, "cpu")
                scores = evaluate_samples(x, "mnist")
                settings = {**base, "sampler": sampler, "nfe": nfe, "sampling_batch": args.batch}
                print(f"{objective} {sampler} nfe {nfe}: FID_self {scores['fid_self']:.2f} "
                      f"(floor {scores['fid_self_floor']:.2f}), confident {scores['confident_fraction']:.3f}, "
                      f"{seconds:.1f} s")
                for metric, value, unit in (
                    *quality_figures(scores),
                    ("sample_seconds", seconds, f"s for {args.samples} samples"),
                ):
                    record("flow_matching", metric, value, unit, profile=args.profile, device="cpu", settings=settings)
                grid.append(x[:16])
            tag = "" if base["ema_decay"] == 0.995 else f"_ema{base['ema_decay']:g}"
            plt.imsave(RESULTS / f"flow_matching_{objective}_{sampler}_{args.minutes:g}min{tag}.png",
                       image_grid(torch.cat(grid), nrow=16), cmap="gray")


if __name__ == "__main__":
    main()
