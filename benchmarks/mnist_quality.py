"""MNIST: train in a profile for a time budget, then measure sample quality and speed, DDPM against DDIM.

1. Trains `mnist_small` (or the --preset given in --train-args) with the course's loop
   (`python -m diffedu.train`), or reuses the checkpoint at --out when it has already spent its budget
   (its JSON record gives the training figures).
2. Draws --samples images with DDPM (T steps) and with DDIM at each of --ddim-steps, all from the EMA
   weights, and scores each set with `diffedu.metrics.evaluate_samples` (FID_self, KID, confident
   fraction, with the real-vs-real floor at the same count).
3. Appends figures to results/mnist_train.jsonl (training and DDPM quality) and results/ddim_steps.jsonl
   (quality and time per batch against the number of steps), and saves a grid of samples per sampler.

    DIFFEDU_DATA=/path/to/npz python benchmarks/mnist_quality.py --profile cpu --minutes 10 --out runs/mnist.pt

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

from diffedu.course.plotting import image_grid  # noqa: E402
from diffedu.metrics import evaluate_samples  # noqa: E402
from diffedu.pretrained import load_pretrained, model_from_checkpoint  # noqa: E402
from diffedu.samplers import ddim_sample, ddpm_sample  # noqa: E402
from diffedu.train_cli import main as train_main  # noqa: E402


def sample(model, schedule, n: int, batch: int, seed: int, steps: int | None, device,
           eta: float = 0.0) -> tuple[torch.Tensor, float]:
    """n samples in batches (DDPM when steps is None, else DDIM with `steps` and `eta`); returns them and the seconds."""
    out, started = [], time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch):
        shape = (min(batch, n - start), 1, 28, 28)
        if steps is None:
            x = ddpm_sample(model, schedule, shape, generator=generator, clip_x0=True, device=device, progress=False)
        else:
            x = ddim_sample(model, schedule, shape, steps=steps, eta=eta, generator=generator, clip_x0=True,
                            device=device, progress=False)
        out.append(x.cpu())
    return torch.cat(out), time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--out", default="runs/mnist_bench.pt", help="checkpoint; reused when its budget is spent")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--batch", type=int, default=250, help="samples per sampling batch")
    p.add_argument("--ddim-steps", type=int, nargs="*", default=[10, 20, 50, 100])
    p.add_argument("--etas", type=float, nargs="*", default=[0.0], help="DDIM eta values (each with every step count)")
    p.add_argument("--checkpoint", default=None, help="score this checkpoint or exported weights file; no training")
    p.add_argument("--no-ddpm", action="store_true", help="skip DDPM (it costs T model calls per batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[], help="passed on to python -m diffedu.train")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.checkpoint:  # a shipped model (diffedu/weights/NAME.pt): score it, no training
        model, schedule, info = load_pretrained(args.checkpoint, device="cpu" if args.profile != "gpu" else None)
        train_record, config, ckpt_name = info["record"], info["record"]["train_config"], args.checkpoint
        state = {"step": train_record["steps"], "seconds": train_record["seconds"]}
    else:
        ckpt, record_path = Path(args.out), Path(args.out).with_suffix(".json")
        done = ckpt.exists() and record_path.exists() and json.loads(record_path.read_text())["seconds"] >= args.minutes * 60
        if not done:  # train (or resume) with the course's own command; it writes the JSON record
            train_main(["--dataset", "mnist", "--preset", "mnist_small", "--profile", args.profile,
                        "--minutes", str(args.minutes), "--out", args.out, *args.train_args])
        train_record = json.loads(record_path.read_text())
        model, schedule, state = model_from_checkpoint(ckpt, device="cpu" if args.profile != "gpu" else None)
        config, ckpt_name = state["train_config"], args.out
    device = next(model.parameters()).device
    base = {"model": train_record.get("preset", "mnist_small"), "train_steps": state["step"],
            "train_seconds": round(state["seconds"], 1),
            "batch": config["batch_size"], "lr": config["lr"], "seed": args.seed, "sample_count": args.samples,
            "threads": train_record.get("threads"), "checkpoint": ckpt_name, "train_command": train_record["command"]}
    if not args.checkpoint:  # a shipped model's training speed was recorded when it was trained
        record("mnist_train", "train_images_per_s", train_record["images_per_second"], "images/s",
               profile=args.profile, device=device, settings=base)

    runs = ([] if args.no_ddpm else [("ddpm", None, 1.0)]) + [("ddim", s, e) for e in args.etas for s in args.ddim_steps]
    for name, steps, eta in runs:
        x, seconds = sample(model, schedule, args.samples, args.batch, args.seed, steps, device, eta)
        scores = evaluate_samples(x, "mnist")
        n_steps = schedule.T if steps is None else steps
        settings = {**base, "sampler": name, "steps": n_steps, "eta": eta, "sampling_batch": args.batch}
        tag = f"{name}{n_steps}" + (f"_eta{eta:g}" if name == "ddim" and eta else "")
        plt.imsave(RESULTS / f"mnist_{args.profile}_{args.checkpoint or f'{args.minutes:g}min'}_{tag}.png", image_grid(x[:64], nrow=16))
        per_batch = seconds / -(-args.samples // args.batch)
        print(f"\n{name} {n_steps} steps (eta {eta:g}): {seconds:.0f} s for {args.samples} samples; "
              f"FID_self {scores['fid_self']:.3f} (floor {scores['fid_self_floor']:.3f}), "
              f"KID {scores['kid_self']:.4f}, confident {scores['confident_fraction']:.3f}")
        benchmarks = ["ddim_steps"] + (["mnist_train"] if name == "ddpm" else [])
        for bench in benchmarks:
            for metric, value, unit in (
                *quality_figures(scores),
                ("sample_seconds", per_batch, f"s per batch of {args.batch}"),
            ):
                record(bench, metric, value, unit, profile=args.profile, device=device, settings=settings)


if __name__ == "__main__":
    main()
