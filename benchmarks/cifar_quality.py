"""CIFAR-10: FID_self against training wall-clock, with the whole speed recipe (a GPU benchmark).

1. The yardstick: the CIFAR-10 classifier at --classifier (default diffedu/weights/cifar10_classifier.pt);
   with --train-classifier it is trained first when missing (`python -m diffedu.models.classifier --dataset cifar10`,
   a few minutes on a GPU). Without one, the script trains and samples but records no FID_self.
2. Trains --preset (default ddpm_cifar10, 35.7M parameters) with the course's loop (`diffedu.train.train`,
   data on the device, random flips, bf16 autocast on CUDA, channels_last, torch.compile, fused AdamW, the
   foreach EMA), checkpointed at --out, so a second run with a larger --minutes continues.
3. Every --every minutes of training (judging time excluded) draws --samples images from the EMA weights
   (DDIM, --ddim-steps, the same noise each time) and records FID_self, its real-data floor and KID.
   Also records the training images/s, and saves the last grid of samples as results/cifar_<profile>_<min>min.png.

    python benchmarks/cifar_quality.py --train-classifier --minutes 60 --every 10
    python benchmarks/cifar_quality.py --profile cpu --preset cifar10_small --minutes 2 --every 1 --samples 64 \
        --batch 32 --lr 1e-3 --no-recipe --threads 1          # a smoke test on a CPU

Figures go to results/cifar_quality.jsonl. Tests never time anything; this script does, and never fails on a number.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, record  # noqa: E402

from diffedu.course.plotting import image_grid  # noqa: E402
from diffedu.course.profiles import get_profile  # noqa: E402
from diffedu.data import load_dataset  # noqa: E402
from diffedu.device_data import DeviceImages  # noqa: E402
from diffedu.metrics import SmallSampleWarning, evaluate_samples  # noqa: E402
from diffedu.models import unet  # noqa: E402
from diffedu.models.classifier import load_classifier, save_classifier, train_classifier, weights_path  # noqa: E402
from diffedu.samplers import ddim_sample  # noqa: E402
from diffedu.schedules import make_schedule  # noqa: E402
from diffedu.train import TrainConfig, scale_learning_rate, train  # noqa: E402

BENCHMARK = "cifar_quality"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=("quick", "cpu", "gpu"), default=None)
    p.add_argument("--preset", choices=("ddpm_cifar10", "cifar10_small"), default="ddpm_cifar10")
    p.add_argument("--minutes", type=float, default=60.0, help="training budget (a resumed run counts its past)")
    p.add_argument("--every", type=float, default=10.0, help="minutes of training between FID_self points")
    p.add_argument("--out", default="runs/cifar10_bench.pt", help="checkpoint; resumed when it exists")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-4, help="at --lr-base-batch (DDPM: 2e-4 at 128)")
    p.add_argument("--lr-base-batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--ema-decay", type=float, default=0.9999)
    p.add_argument("--no-recipe", action="store_true", help="no channels_last, compile or fused AdamW (CPU)")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--ddim-steps", type=int, default=100)
    p.add_argument("--n-real", type=int, default=10_000)
    p.add_argument("--classifier", default=None, help="CIFAR-10 classifier weights (default: the shipped path)")
    p.add_argument("--train-classifier", action="store_true", help="train the classifier first when it is missing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    device = profile.device
    warnings.filterwarnings("ignore", category=SmallSampleWarning)

    classifier_file = Path(args.classifier) if args.classifier else weights_path("cifar10")
    if not classifier_file.is_file() and args.train_classifier:
        judge, judge_record = train_classifier("cifar10", device=device)
        save_classifier(judge, judge_record, classifier_file)
    judge = load_classifier("cifar10", device=device, path=classifier_file) if classifier_file.is_file() else None
    if judge is None:
        print(f"no CIFAR-10 classifier at {classifier_file}: no FID_self will be recorded. Train one with\n"
              f"  python -m diffedu.models.classifier --dataset cifar10   (or pass --train-classifier)")
    else:
        print(f"yardstick: {classifier_file} ({judge.metadata['test_accuracy']:.1%} test accuracy)")

    images = load_dataset("cifar10", "train", dtype="uint8")
    data = DeviceImages(images, device=device)
    schedule = make_schedule("linear", 1000)
    recipe = not args.no_recipe
    config = TrainConfig(seconds=args.minutes * 60, batch_size=args.batch,
                         lr=scale_learning_rate(args.lr, args.batch, args.lr_base_batch), warmup_steps=args.warmup,
                         ema_decay=args.ema_decay, flip=True, channels_last=recipe, compile=recipe, fused_adam=recipe,
                         ema_impl="foreach", checkpoint_every=2000, preview_every=50, seed=args.seed)
    torch.manual_seed(args.seed)
    model = unet.UNet(getattr(unet, args.preset)())
    settings: dict[str, Any] = {"model": args.preset, "batch": args.batch, "lr": config.lr, "seed": args.seed,
                                "ema_decay": args.ema_decay, "recipe": recipe, "sample_count": args.samples,
                                "ddim_steps": args.ddim_steps, "n_real": args.n_real, "data_source": images.source,
                                "threads": torch.get_num_threads(), "checkpoint": args.out,
                                "classifier": str(classifier_file) if judge is not None else None}
    last: dict[str, Any] = {}
    start, judging = time.perf_counter(), 0.0

    def judge_now(ema: torch.nn.Module, step: int, trained: float) -> None:
        x = ddim_sample(ema, schedule, (args.samples, 3, 32, 32), steps=args.ddim_steps, clip_x0=True, progress=False,
                        generator=torch.Generator().manual_seed(args.seed + 1), device=device).cpu()
        last.update(samples=x, step=step, minutes=trained / 60)
        if judge is None:
            print(f"step {step}, {trained / 60:.1f} min: sampled (no yardstick)")
            return
        scores = evaluate_samples(x, "cifar10", extractor=judge, n_real=args.n_real)
        print(f"step {step}, {trained / 60:.1f} min of training: FID_self {scores['fid_self']:.2f} "
              f"(floor {scores['fid_self_floor']:.2f}), KID {scores['kid_self']:.4f}", flush=True)
        at = {**settings, "train_steps": step, "train_minutes": round(trained / 60, 2)}
        for metric in ("fid_self", "fid_self_floor", "kid_self"):
            record(BENCHMARK, metric, scores[metric], "dimensionless", profile=profile.name, device=device, settings=at)

    def callback(info: dict[str, Any]) -> None:
        nonlocal judging
        started = time.perf_counter()
        trained = started - start - judging
        if trained >= args.every * 60 * (len(done) + 1):
            done.append(info["step"])
            judge_now(info["ema"], info["step"], trained)
        judging += time.perf_counter() - started

    done: list[int] = []
    result = train(model, data, schedule, config, checkpoint=args.out, callback=callback, device=device)
    judge_now(result.ema, result.step, result.seconds)
    record(BENCHMARK, "train_images_per_s", result.images_per_second, "images/s", profile=profile.name, device=device,
           settings={**settings, "train_steps": result.step, "train_seconds": round(result.seconds, 1)})
    png = RESULTS / f"cifar_{profile.name}_{round(args.minutes)}min.png"
    plt.imsave(png, image_grid(last["samples"][:64], nrow=8))
    print(f"samples after {result.seconds / 60:.1f} min ({result.step} steps) -> {png}")


if __name__ == "__main__":
    main()
