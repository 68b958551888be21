"""MNIST: the U-Net against the Diffusion Transformer at equal FLOPs per image, FID_self against minutes (lesson 11).

For each backbone given (``--backbones unet dit``): `mnist_patch` (the U-Net of lessons 04 and 10), `mnist_dit`
(a DiT on 4x4 patches of about the same FLOPs per image, counted by `diffedu.models.flops.count_flops`) or
`mnist_dit_p2` (2x2 patches, narrower: its linear layers cost the same, its attention adds 40 %), trained with flow matching by the
course's command (``python -m diffedu.train``) and one recipe for both (batch 64, lr 1e-3, warm-up 100, EMA 0.995,
lesson 10's; --lr changes the learning rate, recorded in the settings), stopped at each of --minutes in turn (the
run is resumed, so the budgets are one training seen at
several times); at each stop --samples images by Heun at --nfe model calls are scored with
`diffedu.metrics.evaluate_samples` (FID_self, KID, confident fraction, the real-data floor at the same count).
Appends to results/backbones.jsonl (settings: ``backbone``, ``train_seconds``, ``flops_per_image``,
``parameters``, ``sampler``, ``nfe``) and draws results/backbones_fid_vs_minutes.png.

    DIFFEDU_DATA=../shared/data python benchmarks/backbones.py --threads 2

``--export-dit NAME`` / ``--export-unet NAME`` write the DiT's / the U-Net's EMA weights at the last stop to
diffedu/weights/NAME.pt (the shipped ``mnist_dit`` and ``mnist_unet_flow``: lesson 11 samples both).
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
from diffedu.models.flops import count_flops  # noqa: E402
from diffedu.models.unet import count_parameters  # noqa: E402
from diffedu.pretrained import export_weights, model_from_checkpoint  # noqa: E402
from diffedu.train_cli import PRESETS  # noqa: E402
from diffedu.train_cli import main as train_main  # noqa: E402

BACKBONES = {"unet": "mnist_patch", "dit": "mnist_dit", "dit_p2": "mnist_dit_p2"}
RECIPE = ["--dataset", "mnist", "--objective", "flow", "--batch-size", "64", "--warmup", "100", "--ema-decay", "0.995",
          "--checkpoint-every", "1000"]


def flops_per_image(model: torch.nn.Module) -> int:
    """Forward FLOPs for one 28x28 image (`count_flops`: a multiply-add counts 2, attention included). Records
    before 2026-12-03 used torch's FlopCounterMode alone, which misses the CPU's fused attention: their DiT figures
    are low (mnist_dit 0.098 for 0.104 GFLOP, mnist_dit_p2 0.097 for 0.146)."""
    return count_flops(model, torch.zeros(1, 1, 28, 28, device=next(model.parameters()).device),
                       torch.tensor([500.0]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", choices=tuple(BACKBONES), default=["unet", "dit"],
                   help="dit: 4x4 patches, width 128; dit_p2: 2x2 patches, width 64 (the same FLOPs)")
    p.add_argument("--minutes", type=float, nargs="+", default=[2.5, 5.0, 10.0],
                   help="training budgets at which to score (ascending; one run, resumed)")
    p.add_argument("--nfe", type=int, default=15, help="model calls per sample (Heun: odd)")
    p.add_argument("--lr", type=float, default=1e-3, help="the learning rate (1e-3: lesson 10's recipe)")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--runs", default="runs")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--export-dit", metavar="NAME", default=None)
    p.add_argument("--export-unet", metavar="NAME", default=None)
    args = p.parse_args(argv)
    if args.nfe % 2 == 0 or args.nfe < 3:
        p.error(f"--nfe must be odd and at least 3 (Heun takes 2 levels - 1 calls), got {args.nfe}")
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = ["--amp", "bf16"] if cpu_has_bf16() else ["--amp", "off"]
    curves: dict[str, list[tuple[float, float]]] = {}
    tag = "" if args.lr == 1e-3 else f"_lr{args.lr:g}"  # the default recipe's files keep their plain names
    for backbone in args.backbones:
        preset = BACKBONES[backbone]
        model_class, make_config = PRESETS[preset]
        fresh = model_class(make_config())
        flops, params = flops_per_image(fresh), count_parameters(fresh)
        ckpt = Path(args.runs) / f"backbone_{backbone}{tag}.pt"
        for minutes in sorted(args.minutes):
            train_main([*RECIPE, "--preset", preset, "--lr", str(args.lr), *amp, "--minutes", str(minutes),
                        "--out", str(ckpt), *(["--threads", str(args.threads)] if args.threads else [])])
            train_record = json.loads(ckpt.with_suffix(".json").read_text())
            model, _, state = model_from_checkpoint(ckpt, device="cpu")
            out, started = [], time.perf_counter()
            generator = torch.Generator().manual_seed(args.seed)
            for start in range(0, args.samples, args.batch):
                shape = (min(args.batch, args.samples - start), 1, 28, 28)
                out.append(flow_sample(model, shape, steps=(args.nfe + 1) // 2, sampler="heun", generator=generator,
                                       device="cpu", progress=False).clamp(-1, 1))
            seconds = time.perf_counter() - started
            x = torch.cat(out)
            scores = evaluate_samples(x, "mnist")
            settings = {"backbone": backbone, "model": preset, "objective": "flow", "train_steps": state["step"],
                        "train_seconds": round(state["seconds"], 1), "flops_per_image": flops, "parameters": params,
                        "batch": 64, "lr": args.lr, "ema_decay": 0.995, "amp": train_record["train_config"]["amp"],
                        "sampler": "heun", "nfe": args.nfe, "sample_count": args.samples, "seed": args.seed,
                        "threads": torch.get_num_threads(), "train_command": train_record["command"]}
            print(f"{backbone} at {state['seconds'] / 60:.1f} min ({state['step']} steps): FID_self "
                  f"{scores['fid_self']:.2f} (floor {scores['fid_self_floor']:.2f}), confident "
                  f"{scores['confident_fraction']:.3f}")
            for metric, value, unit in (*quality_figures(scores),
                                        ("sample_seconds", seconds / args.samples, "s per sample"),
                                        ("train_images_per_s", train_record["images_per_second"], "images/s")):
                record("backbones", metric, value, unit, profile=args.profile, device="cpu", settings=settings)
            label = f"{backbone} ({preset}, {flops / 1e9:.3f} GFLOP, {params / 1e6:.2f}M params, lr {args.lr:g})"
            curves.setdefault(label, []).append((state["seconds"] / 60, scores["fid_self"]))
        plt.imsave(RESULTS / f"backbones_{backbone}{tag}_samples.png", image_grid(x[:32], nrow=16), cmap="gray")
        export = {"dit": args.export_dit, "unet": args.export_unet}.get(backbone)
        if export:
            print("exported to", export_weights(ckpt, weights_dir() / f"{export}.pt", name=export, record=train_record))

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, points in curves.items():
        ax.plot(*zip(*points), "o-", label=label)
    ax.set(xlabel="CPU minutes of training (2 cores)", ylabel=f"FID_self (Heun, {args.nfe} calls)", yscale="log",
           title=f"MNIST, flow matching, {args.samples} samples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"backbones_fid_vs_minutes{tag}.png", dpi=120)


if __name__ == "__main__":
    main()
