"""The training command, ``python -m diffedu.train --dataset mnist --preset mnist_small --minutes 10 --out runs/m.pt``.

The same loop as the notebooks (`diffedu.train.train`), sized by a profile, with a record of the run
(command, steps, minutes, device, commit) written beside the checkpoint, and ``--export NAME`` to write
the EMA weights to ``diffedu/weights/NAME.pt`` (`diffedu.pretrained.export_weights`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from diffedu import distributed
from diffedu.checkpoints import weights_dir
from diffedu.data import DATASETS, load_dataset
from diffedu.devices import default_device, device_name
from diffedu.ema import EMA_IMPLS
from diffedu.flow import TIME_SAMPLINGS
from diffedu.models import dit, unet
from diffedu.pretrained import export_weights
from diffedu.schedules import SCHEDULES, make_schedule
from diffedu.train import (
    AMP_MODES,
    LR_DECAYS,
    LR_SCALINGS,
    OBJECTIVES,
    TrainConfig,
    TrainResult,
    scale_learning_rate,
    train,
)

__all__ = ["DEFAULTS", "PRESETS", "git_commit", "main", "profile_name"]

# The defaults of each profile (the course's quick / cpu / gpu sizes; see diffedu.course.profiles).
DEFAULTS = {
    "quick": {"minutes": 0.5, "batch_size": 32, "warmup": 20},
    "cpu": {"minutes": 10.0, "batch_size": 32, "warmup": 100},
    "gpu": {"minutes": 30.0, "batch_size": 128, "warmup": 200},
}


def profile_name(name: str | None = None) -> str:
    """`name`, else $DIFFEDU_PROFILE, else "gpu" where CUDA is available and "cpu" elsewhere."""
    name = name or os.environ.get("DIFFEDU_PROFILE") or ("gpu" if torch.cuda.is_available() else "cpu")
    name = name.strip().lower()
    if name not in DEFAULTS:
        raise SystemExit(f"unknown profile {name!r} (from --profile or DIFFEDU_PROFILE); choose one of "
                         f"{', '.join(map(repr, DEFAULTS))}")
    return name

# Each preset: the denoiser's class and the function that makes its config (lesson 11's DiT beside the U-Nets).
PRESETS = {"mnist_small": (unet.UNet, unet.mnist_small), "mnist_patch": (unet.UNet, unet.mnist_patch),
           "cifar10_small": (unet.UNet, unet.cifar10_small), "ddpm_cifar10": (unet.UNet, unet.ddpm_cifar10),
           "mnist_dit": (dit.DiT, dit.mnist_dit), "mnist_dit_p2": (dit.DiT, dit.mnist_dit_p2)}


def positive(kind: type, *, zero: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` above 0 (at least 0 with `zero`), refused with a message otherwise."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not (value >= 0 if zero else value > 0) or value != value:
            raise argparse.ArgumentTypeError(f"must be {'at least 0' if zero else 'above 0'}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def main(argv: list[str] | None = None) -> TrainResult:
    """``python -m diffedu.train --dataset mnist --preset mnist_small --minutes 10 --out runs/mnist.pt``.

    The same loop as the notebooks. Run it again with the same --out to resume. On several GPUs:
    ``torchrun --nproc_per_node N -m diffedu.train ...`` (then --batch-size is the global batch).
    """
    p = argparse.ArgumentParser(prog="python -m diffedu.train", description=main.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--preset", choices=tuple(PRESETS), default="mnist_small",
                   help="the denoiser: a U-Net, or mnist_dit (a Diffusion Transformer, lesson 11)")
    p.add_argument("--profile", choices=tuple(DEFAULTS), default=None,
                   help="sizes the defaults; default: DIFFEDU_PROFILE, else by device")
    p.add_argument("--minutes", type=positive(float, zero=True), default=None,
                   help="wall-clock budget; 0: none, train --steps (default: 0.5 quick, 10 cpu, 30 gpu)")
    p.add_argument("--steps", type=positive(int), default=None)
    p.add_argument("--out", type=Path, required=True, help="checkpoint path; resumed if it exists")
    p.add_argument("--batch-size", type=positive(int), default=None,
                   help="the global batch, over all processes (default: 32 quick/cpu, 128 gpu)")
    p.add_argument("--lr", type=positive(float), default=1e-3)
    p.add_argument("--lr-base-batch", type=positive(int), default=None, metavar="B0",
                   help="--lr is for batch B0: scale it to --batch-size with --lr-scaling")
    p.add_argument("--lr-scaling", choices=LR_SCALINGS, default="sqrt")
    p.add_argument("--lr-decay", choices=LR_DECAYS, default="constant")
    p.add_argument("--warmup", type=positive(int, zero=True), default=None, help="warm-up steps (default: 20 quick, 100 cpu, 200 gpu)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--T", type=positive(int), default=1000)
    p.add_argument("--schedule", choices=SCHEDULES, default="linear")
    p.add_argument("--objective", choices=OBJECTIVES, default="diffusion",
                   help="diffusion (eps-prediction on --schedule) or flow (flow matching: no schedule; lesson 10)")
    p.add_argument("--time-sampling", choices=TIME_SAMPLINGS, default="logit_normal",
                   help="flow matching's training times (default: SD3's logit-normal)")
    p.add_argument("--min-snr-gamma", type=positive(float), default=None, metavar="G",
                   help="weight the loss by min(SNR, G) (Hang et al. 2023; 5 is usual); default: plain mean")
    p.add_argument("--conditional", action="store_true", help="class-conditional, with label dropout 0.1")
    p.add_argument("--flip", action="store_true", help="random horizontal flips (CIFAR-10; not digits)")
    p.add_argument("--limit", type=positive(int), default=None, help="use only the first LIMIT training images")
    p.add_argument("--device", default=None)
    p.add_argument("--amp", choices=AMP_MODES, default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--fused-adam", action="store_true")
    p.add_argument("--ema-impl", choices=EMA_IMPLS, default="foreach")
    p.add_argument("--checkpoint-every", type=positive(int), default=500, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive(int), default=None, help="CPU threads (1 is faster on a busy shared CPU)")
    p.add_argument("--export", metavar="NAME", default=None, help="also write diffedu/weights/NAME.pt (EMA weights)")
    args = p.parse_args(argv)

    profile = profile_name(args.profile)
    world = distributed.init_distributed(args.device)  # one process unless started by torchrun
    device = world.device if world.enabled or args.device else default_device()
    minutes = args.minutes if args.minutes is not None else DEFAULTS[profile]["minutes"]
    batch_size = args.batch_size if args.batch_size is not None else DEFAULTS[profile]["batch_size"]
    lr = args.lr if args.lr_base_batch is None else scale_learning_rate(args.lr, batch_size, args.lr_base_batch,
                                                                         args.lr_scaling)
    warmup = args.warmup if args.warmup is not None else DEFAULTS[profile]["warmup"]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    say = print if world.is_main else (lambda *a, **k: None)
    images = load_dataset(args.dataset, "train", limit=args.limit, dtype="uint8")  # scaled batch by batch
    overrides = {"num_classes": len(images.classes)} if args.conditional else {}
    torch.manual_seed(args.seed)  # the initial weights (DDP also broadcasts rank 0's)
    model_class, make_config = PRESETS[args.preset]
    model = model_class(make_config(**overrides))
    torch.manual_seed(args.seed + 1_000_003 * world.rank)  # dropout masks differ between ranks
    config = TrainConfig(steps=args.steps, seconds=minutes * 60 if minutes else None, batch_size=batch_size,
                         lr=lr, warmup_steps=warmup, lr_decay=args.lr_decay, ema_decay=args.ema_decay, amp=args.amp,
                         channels_last=args.channels_last, compile=args.compile, fused_adam=args.fused_adam,
                         ema_impl=args.ema_impl, flip=args.flip, min_snr_gamma=args.min_snr_gamma,
                         objective=args.objective, time_sampling=args.time_sampling,
                         cond_drop_prob=0.1 if args.conditional else 0.0, checkpoint_every=args.checkpoint_every,
                         seed=args.seed)
    flow = args.objective == "flow"
    schedule = None if flow else make_schedule(args.schedule, args.T)
    what = f"flow matching ({args.time_sampling} times)" if flow else repr(schedule)
    say(f"{args.preset}: {unet.count_parameters(model):,} parameters | {images!r} | {what} | "
        f"device {device} ({device_name(device)}, {torch.get_num_threads()} threads)"
        + (f" x {world.world_size} processes" if world.enabled else "")
        + f" | budget {minutes} min, steps {args.steps}, batch {batch_size}, lr {lr:.3g}, warm-up {warmup}")
    try:
        result = train(model, images.x, schedule, config, labels=images.y if args.conditional else None,
                       checkpoint=args.out, device=device)
        if not world.is_main:
            return result
        tail = result.losses[-100:]
        record = {
            "command": " ".join(["python -m diffedu.train", *(argv if argv is not None else sys.argv[1:])]),
            "dataset": args.dataset, "data_source": images.source, "images": len(images), "preset": args.preset,
            "model_class": type(model).__name__,
            "parameters": unet.count_parameters(model), "model_config": dataclasses.asdict(model.config),
            "schedule": None if flow else args.schedule, "T": None if flow else args.T,
            "objective": args.objective, "train_config": dataclasses.asdict(config),
            "steps": result.step, "seconds": round(result.seconds, 1),
            "images_per_second": round(result.images_per_second, 1), "interrupted": result.interrupted,
            "threads": torch.get_num_threads(), "processes": world.world_size,
            "final_loss": sum(tail) / max(len(tail), 1), "device": device_name(device), "torch": str(torch.__version__),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(),
        }
        record_path = args.out.with_suffix(".json")
        tmp = record_path.with_name(f".{record_path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, record_path)
        say(f"step {result.step}, {result.seconds / 60:.1f} min, {result.images_per_second:.0f} images/s, "
            f"final loss {record['final_loss']:.4f} -> {args.out}, {record_path}")
        if args.export:
            out = export_weights(args.out, weights_dir() / f"{args.export}.pt", name=args.export, record=record)
            say(f"exported the EMA weights to {out}")
        return result
    finally:
        distributed.cleanup()


def git_commit() -> str | None:
    """The repository's HEAD commit, with "-dirty" when tracked files changed; None outside git."""
    try:
        root = Path(__file__).resolve().parent
        run = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=5)  # noqa: E731
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    main()
