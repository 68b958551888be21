"""Latent against pixel diffusion on MNIST, in one run, with the same U-Net width: step cost and quality per time.

1. The VAE: trained first (`diffedu.models.vae.train_vae`, --vae-minutes), or loaded from --vae; its training time
   is reported on its own. Its reconstructions of test digits are scored with FID_self: the best a latent
   model can do with this VAE. Then the training set is encoded once (timed, reported on its own too).
2. The cost of a training step: short runs of the course's loop (`diffedu.train.train`), `mnist_small` on
   pixels (1x28x28) and the same U-Net (same base channels, levels and blocks) on the scaled latents (4x8x8),
   taking turns for --cost-rounds rounds so that both see the same load of a shared machine; the medians give
   ms per step, images/s and the speed-up (latent_step_speedup).
3. The race (skipped with --minutes 0): both models trained from scratch with the same loop, batch, lr and EMA
   for --minutes of training time each. A `QualityLog` samples both at the same training times (DDIM,
   --steps, --eta, the same noise every time) and scores FID_self; sampling time is not counted as training.
   Records the average step cost over the race, FID_self of both at the end of the same budget, and the
   training time each took to reach given FID_self values; saves grids of samples and the FID_self curves
   (results/latent_*.png).

All figures go to results/latent.jsonl.

    DIFFEDU_DATA=/path/to/npz python benchmarks/latent.py --profile cpu --threads 1 --minutes 5 --vae-minutes 5

``--export`` also writes the VAE and the latent model to diffedu/weights/ (mnist_vae.pt, mnist_latent.pt);
``--vae mnist_vae --minutes 0`` measures only the step cost, with the shipped VAE.
Tests never time anything; this script does, and never fails on a number.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, record  # noqa: E402

from diffedu.course.plotting import show_images  # noqa: E402
from diffedu.data import load_dataset  # noqa: E402
from diffedu.latent import (  # noqa: E402
    QualityLog,
    encode_dataset,
    latent_unet_config,
    load_vae,
    sample_decoded,
    save_vae,
    seconds_to_reach,
    vae_weights_path,
)
from diffedu.metrics import SmallSampleWarning, evaluate_samples  # noqa: E402
from diffedu.models.unet import UNet, count_parameters, mnist_small  # noqa: E402
from diffedu.models.vae import VAE, VAETrainConfig, mnist_vae, train_vae  # noqa: E402
from diffedu.pretrained import export_weights, weights_dir  # noqa: E402
from diffedu.samplers import ddim_sample  # noqa: E402
from diffedu.schedules import make_schedule  # noqa: E402
from diffedu.train import TrainConfig, train  # noqa: E402

BENCH = "latent"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--minutes", type=float, default=5.0, help="training time of each model in the race (0: no race)")
    p.add_argument("--cost-rounds", type=int, default=5, help="rounds of the interleaved step-cost measurement")
    p.add_argument("--cost-seconds", type=float, default=12.0, help="training seconds of each model per round")
    p.add_argument("--vae-minutes", type=float, default=5.0, help="training time of the VAE (when not loaded)")
    p.add_argument("--vae", default=None, help="load this VAE weights file (or shipped name) instead of training one")
    p.add_argument("--beta", type=float, default=1e-3, help="KL weight of the VAE")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--samples", type=int, default=256, help="samples per FID_self evaluation")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps for the evaluations")
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--eval-at", type=float, nargs="*", default=None,
                   help="training seconds at which to evaluate (default: 15, 30, 60 and every minute)")
    p.add_argument("--thresholds", type=float, nargs="*", default=[100.0, 50.0, 30.0, 20.0, 10.0])
    p.add_argument("--out", default="runs/latent_bench", help="folder for checkpoints")
    p.add_argument("--export", action="store_true", help="write diffedu/weights/mnist_vae.pt and mnist_latent.pt")
    p.add_argument("--limit", type=int, default=None, help="use only the first LIMIT training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.profile == "gpu" and torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.minutes * 60
    eval_at = args.eval_at or sorted({15.0, 30.0, *[60.0 * k for k in range(1, int(args.minutes) + 1)]} - {budget})
    eval_at = [s for s in eval_at if s < budget]
    command = "python benchmarks/latent.py " + " ".join(argv if argv is not None else sys.argv[1:])
    data = load_dataset("mnist", "train", limit=args.limit)
    test = load_dataset("mnist", "test")
    base = {"dataset": "mnist", "data_source": data.source, "images": len(data), "batch": args.batch, "lr": args.lr,
            "seed": args.seed, "threads": torch.get_num_threads(), "sample_count": args.samples,
            "sampler": "ddim", "steps": args.steps, "eta": args.eta}

    # 1. the VAE ----------------------------------------------------------------------------------
    if args.vae:
        vae, info = load_vae(args.vae, device=device)
        vae_record = info["record"]
        print(f"loaded the VAE {info['path']}: {vae_record}")
    else:
        torch.manual_seed(args.seed)
        vae = VAE(mnist_vae())
        vae_config = VAETrainConfig(seconds=args.vae_minutes * 60, batch_size=args.batch, beta=args.beta,
                                    seed=args.seed)
        result = train_vae(vae, data.x, vae_config, device=device, progress=False)
        vae_record = {"steps": result.step, "seconds": round(result.seconds, 1),
                      "images_per_second": round(result.images_per_second, 1),
                      "train_config": dataclasses.asdict(vae_config), "final_recon": sum(result.recon[-50:]) / 50,
                      "final_kl": sum(result.kl[-50:]) / 50, "threads": torch.get_num_threads(),
                      "command": command}
        save_vae(vae, out / "vae.pt", name="mnist_vae", record=vae_record)
        if args.export:
            print("exported the VAE to", save_vae(vae, vae_weights_path("mnist_vae"), name="mnist_vae", record=vae_record))
    vae.eval()
    vae_settings = {**base, "vae_config": dataclasses.asdict(vae.config), "vae_parameters": count_parameters(vae),
                    "vae_steps": vae_record.get("steps"), "vae_seconds": vae_record.get("seconds"),
                    "beta": vae_record.get("train_config", {}).get("beta")}
    if not args.vae:  # measured in this run
        record(BENCH, "vae_train_seconds", vae_record["seconds"], "s", profile=args.profile, device=device,
               settings=vae_settings)
    else:
        vae_settings["vae_loaded_from"] = str(args.vae)
    with torch.no_grad():
        real = test.x[:args.samples].to(device)
        recon = vae.decode(vae.encode(real)).cpu()
    mse = (recon - real.cpu()).square().mean().item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        recon_scores = evaluate_samples(recon, "mnist")
    record(BENCH, "vae_recon_mse", mse, "per pixel, [-1, 1] scale", profile=args.profile, device=device,
           settings=vae_settings)
    record(BENCH, "fid_self_reconstructions", recon_scores["fid_self"], "dimensionless", profile=args.profile,
           device=device, settings={**vae_settings, "fid_self_floor": recon_scores["fid_self_floor"]})

    started = time.perf_counter()
    latents = encode_dataset(vae, data.x)  # (N, 4, 8, 8), scaled
    encode_seconds = time.perf_counter() - started
    test_latents = encode_dataset(vae, test.x[:2000])
    record(BENCH, "encode_seconds", encode_seconds, "s", profile=args.profile, device=device,
           settings={**vae_settings, "encoded": len(latents)})
    record(BENCH, "latent_std", test_latents.std().item(), "dimensionless (scaled, test digits)", profile=args.profile,
           device=device, settings={**vae_settings, "latent_scale": vae.latent_scale.item()})

    # 2. the cost of a training step, interleaved ---------------------------------------------------
    schedule = make_schedule("linear", 1000).to(device)
    pixel_config = mnist_small()
    latent_config = latent_unet_config(pixel_config, vae.config)
    spaces = {"pixel": (pixel_config, data.x), "latent": (latent_config, latents)}
    # Short runs of the course's loop, pixel and latent taking turns, so that both see the same machine (a
    # shared CPU's load drifts over minutes); the median over rounds is the figure.
    per_round = {space: [] for space in spaces}
    for _ in range(args.cost_rounds):
        for space, (config, x) in spaces.items():
            torch.manual_seed(args.seed)
            result = train(UNet(config), x, schedule, TrainConfig(seconds=args.cost_seconds, batch_size=args.batch,
                           lr=args.lr, warmup_steps=10, checkpoint_every=None), device=device, progress=False)
            per_round[space].append(1000 * result.seconds / result.step)
    ms = {}
    for space, (config, _) in spaces.items():
        ms[space] = statistics.median(per_round[space])
        settings = {**base, "space": space, "model": "mnist_small", "unet_config": dataclasses.asdict(config),
                    "parameters": count_parameters(UNet(config)), "method": "interleaved",
                    "rounds": args.cost_rounds, "seconds_per_round": args.cost_seconds,
                    "ms_per_round": [round(v, 1) for v in per_round[space]]}
        record(BENCH, "train_step_ms", ms[space], "ms/step", profile=args.profile, device=device, settings=settings)
        record(BENCH, "train_images_per_s", 1000 * args.batch / ms[space], "images/s", profile=args.profile,
               device=device, settings=settings)
    record(BENCH, "latent_step_speedup", ms["pixel"] / ms["latent"], "x", profile=args.profile, device=device,
           settings={**base, "pixel_ms": ms["pixel"], "latent_ms": ms["latent"], "model": "mnist_small",
                     "method": "interleaved", "rounds": args.cost_rounds, "seconds_per_round": args.cost_seconds})
    if budget <= 0:
        return

    # 3. the race -----------------------------------------------------------------------------------
    train_config = TrainConfig(seconds=budget, batch_size=args.batch, lr=args.lr, warmup_steps=100, ema_decay=0.995,
                               seed=args.seed, checkpoint_every=None, preview_every=5)

    def pixel_samples(model):
        g = torch.Generator().manual_seed(args.seed + 1)
        return ddim_sample(model, schedule, (args.samples, 1, 28, 28), steps=args.steps, eta=args.eta, generator=g,
                           clip_x0=True, device=device, progress=False).clamp(-1, 1).cpu()

    def latent_samples(model):
        g = torch.Generator().manual_seed(args.seed + 1)
        return sample_decoded(model, schedule, vae, args.samples, steps=args.steps, eta=args.eta, generator=g,
                              device=device)

    runs = {}
    for space, sample_fn in (("pixel", pixel_samples), ("latent", latent_samples)):
        config, x = spaces[space]
        torch.manual_seed(args.seed)
        model = UNet(config)
        log = QualityLog(sample_fn, at_seconds=eval_at)
        ckpt = out / f"{space}.pt"
        ckpt.unlink(missing_ok=True)  # a fresh race every run
        log.start()
        result = train(model, x, schedule, train_config, callback=log, checkpoint=ckpt, device=device, progress=False)
        log.evaluate(result.ema, result.step, result.seconds)
        runs[space] = (result, log, sample_fn(result.ema), config)
        for row in log.rows:
            print(f"{space:>6}: step {row['step']:5d}, {row['seconds']:6.1f} s: FID_self {row['fid_self']:.2f} "
                  f"(floor {row['fid_self_floor']:.2f}), confident {row['confident_fraction']:.2f}")

    for space, (result, log, _, config) in runs.items():
        settings = {**base, "space": space, "model": "mnist_small", "unet_config": dataclasses.asdict(config),
                    "parameters": count_parameters(UNet(config)), "train_seconds": round(result.seconds, 1),
                    "train_steps": result.step, "ema_decay": train_config.ema_decay,
                    "vae_seconds": vae_record.get("seconds"), "curve": [
                        {k: round(row[k], 3) for k in ("seconds", "fid_self")} | {"step": row["step"]} for row in log.rows]}
        record(BENCH, "race_step_ms", 1000 * result.seconds / result.step, "ms/step", profile=args.profile,
               device=device, settings=settings)
        record(BENCH, "race_images_per_s", result.images_per_second, "images/s", profile=args.profile, device=device,
               settings=settings)
        final = log.rows[-1]
        record(BENCH, "fid_self", final["fid_self"], "dimensionless", profile=args.profile, device=device,
               settings={**settings, "fid_self_floor": final["fid_self_floor"], "kid_self": final["kid_self"],
                         "confident_fraction": final["confident_fraction"]})
        targets = sorted({*args.thresholds, round(runs["pixel"][1].rows[-1]["fid_self"], 2)}, reverse=True)
        for target in targets:
            reached = seconds_to_reach(log.rows, target)
            if reached is None:
                print(f"{space}: FID_self {target:g} not reached in {result.seconds:.0f} s")
                continue
            record(BENCH, "seconds_to_fid_self", reached, "s", profile=args.profile, device=device,
                   settings={**settings, "target_fid_self": target,
                             "resolution": "training time of the first evaluation at or below the target"})

    # pictures
    tag = f"{args.profile}_{args.minutes:g}min"
    fig, axes = plt.subplots(4, 1, figsize=(9, 6.4))
    show_images(real[:32].cpu(), nrow=16, ax=axes[0], title="real test digits")
    show_images(recon[:32], nrow=16, ax=axes[1], title=f"VAE reconstructions ({vae_record.get('seconds', 0) / 60:.0f} min)")
    for ax, space in zip(axes[2:], ("pixel", "latent")):
        result, log, samples, _ = runs[space]
        show_images(samples[:32], nrow=16, ax=ax, title=f"{space} diffusion, {result.seconds / 60:.0f} min, "
                    f"{result.step} steps: FID_self {log.rows[-1]['fid_self']:.1f}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"latent_samples_{tag}.png", dpi=110)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for space, (_, log, _, _) in runs.items():
        ax.plot([r["seconds"] for r in log.rows], [r["fid_self"] for r in log.rows], "o-", label=space)
    ax.axhline(recon_scores["fid_self"], color="gray", ls=":", label="VAE reconstructions")
    ax.axhline(recon_scores["fid_self_floor"], color="k", ls="--", lw=1, label="real digits (floor)")
    ax.set(xlabel="training seconds", ylabel="FID_self", yscale="log",
           title=f"quality against training time (N = {args.samples}, DDIM {args.steps}, eta {args.eta:g})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"latent_fid_curve_{tag}.png", dpi=110)

    if args.export:
        result = runs["latent"][0]
        latent_record = {"command": command, "vae": "mnist_vae",
                         "latent_scale": vae.latent_scale.item(), "steps": result.step,
                         "seconds": round(result.seconds, 1), "images_per_second": round(result.images_per_second, 1),
                         "train_config": dataclasses.asdict(train_config), "threads": torch.get_num_threads(),
                         "final_fid_self": runs["latent"][1].rows[-1]["fid_self"], "fid_samples": args.samples}
        print("exported the latent model to", export_weights(out / "latent.pt", weights_dir() / "mnist_latent.pt",
                                                               name="mnist_latent", record=latent_record))


if __name__ == "__main__":
    main()
