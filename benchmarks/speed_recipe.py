"""The speed recipe, one switch at a time: training images/s and model FLOP utilisation, beside diffusers.

Each row adds one switch of `diffedu.train.TrainConfig` to the row above and trains the same U-Net
with the course's own loop (`diffedu.train.train`, data kept on the device, CIFAR-10 with flips):

    fp32 baseline        amp="off", EMA through torch.optim.swa_utils (ema_impl="swa_utils"), batch B
    + bf16 autocast      amp="bf16"
    + channels_last      channels_last=True
    + torch.compile      compile=True
    + fused AdamW        fused_adam=True
    + foreach EMA        ema_impl="foreach"
    + larger batch       batch 4B, lr scaled by sqrt(4) (`scale_learning_rate`)

Timing: a run of --warmup steps (compilation happens here) then --rounds x --warmup measured steps; the
clock is read in the loop's preview callback, which comes right after the loop has read the losses
back (so the GPU has finished those steps). images/s = measured steps x batch / seconds.

MFU (model FLOP utilisation) = images/s x 3 x F / peak, where F is the forward FLOPs per image counted
by `torch.utils.flop_counter.FlopCounterMode` (backward ~ 2 x forward, so training ~ 3 F) and peak the
GPU's dense bf16 tensor-core peak from PEAK_BF16_TFLOPS (by name; unknown GPUs and CPUs get no MFU).

The peer: a diffusers `UNet2DModel` built from the same config (same channels, blocks per level,
attention resolutions, groups, dropout; the parameter counts are printed), trained by the same loop in
the same process, at the fp32 baseline and with the whole recipe; the ratio of images/s is recorded
as speedup_vs_diffusers. diffusers is optional (`pip install diffusers`; no download: the model is
built from its config).

    python benchmarks/speed_recipe.py                               # a GPU: ddpm_cifar10, batch 128 -> 512
    python benchmarks/speed_recipe.py --profile cpu --preset tiny --batch 8 --warmup 2 --rounds 2 --threads 1

Figures go to results/speed_recipe.jsonl. Tests never time anything; this script does, and never fails
on a number.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import record  # noqa: E402

from diffedu.course.profiles import device_name, get_profile  # noqa: E402
from diffedu.data import SampleDataWarning, load_dataset  # noqa: E402
from diffedu.device_data import DeviceImages  # noqa: E402
from diffedu.models import unet  # noqa: E402
from diffedu.schedules import make_schedule  # noqa: E402
from diffedu.train import TrainConfig, scale_learning_rate, train  # noqa: E402

BENCHMARK = "speed_recipe"
# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets, without sparsity), by a substring of
# torch.cuda.get_device_name(); the first match wins, so the more specific names come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),  # also GH200
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
)
# The recipe: each row's name and the TrainConfig fields it changes (cumulative).
RECIPE: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fp32 baseline", {"amp": "off", "ema_impl": "swa_utils"}),
    ("+ bf16 autocast", {"amp": "bf16"}),
    ("+ channels_last", {"channels_last": True}),
    ("+ torch.compile", {"compile": True}),
    ("+ fused AdamW", {"fused_adam": True}),
    ("+ foreach EMA", {"ema_impl": "foreach"}),
    ("+ larger batch", {}),  # batch and lr set in main
)


def tiny(**overrides: Any) -> unet.UNetConfig:
    """A CIFAR-shaped U-Net small enough to run the whole recipe on a CPU in a few minutes (attention at 16x16)."""
    return dataclasses.replace(unet.UNetConfig(image_size=32, in_channels=3, base_channels=16, channel_mults=(1, 2),
                                               num_res_blocks=1, attention_resolutions=(16,), norm_groups=8),
                               **overrides)


PRESETS = {"ddpm_cifar10": unet.ddpm_cifar10, "cifar10_small": unet.cifar10_small, "tiny": tiny,
           "mnist_small": unet.mnist_small}


def peak_tflops(device: torch.device) -> tuple[float | None, str]:
    """The dense bf16 peak of this GPU and the table row it came from; (None, why) when unknown."""
    if device.type != "cuda":
        return None, f"no MFU on {device.type}: PEAK_BF16_TFLOPS lists GPUs only"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"{name}: {key} dense bf16 peak {tflops:g} TFLOP/s"
    return None, f"no MFU: {name!r} is not in PEAK_BF16_TFLOPS; add its dense bf16 peak there"


def forward_flops_per_image(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> float:
    """Forward FLOPs per image, counted by FlopCounterMode on a batch of 2 (convs, matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(2, *shape, device=device)
    t = torch.zeros(2, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    model.train(was_training)
    return counter.get_total_flops() / 2


class DiffusersUNet(nn.Module):
    """A diffusers UNet2DModel behind the course's model interface: ``model(x_t, t) -> eps``."""

    def __init__(self, config: unet.UNetConfig) -> None:
        super().__init__()
        from diffusers import UNet2DModel  # optional: only this benchmark needs it

        attn = [res in config.attention_resolutions for res in config.resolutions]
        heads_dim = None if config.num_heads == 1 else config.level_channels[-1] // config.num_heads
        self.net = UNet2DModel(
            sample_size=config.image_size, in_channels=config.in_channels, out_channels=config.resolved_out_channels,
            block_out_channels=config.level_channels, layers_per_block=config.num_res_blocks,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            norm_num_groups=config.norm_groups, dropout=config.dropout, attention_head_dim=heads_dim,
            time_embedding_dim=config.time_embed_dim,
        )

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.net(x, t, return_dict=False)[0]


def diffusers_version() -> str | None:
    try:
        import diffusers
    except ImportError:
        return None
    return diffusers.__version__


def measure(model: nn.Module, data: DeviceImages, config: TrainConfig, warmup: int, rounds: int,
            device: torch.device) -> tuple[float, float]:
    """Train `model` for warmup + rounds x warmup steps; return (images/s, seconds) of the measured steps."""
    stamps: list[float] = []
    cfg = dataclasses.replace(config, steps=warmup * (rounds + 1), seconds=None, preview_every=warmup,
                              checkpoint_every=None)
    train(model, data, make_schedule("linear", 1000), cfg, device=device, progress=False,
          callback=lambda info: stamps.append(time.perf_counter()))
    seconds = stamps[-1] - stamps[0]
    return rounds * warmup * cfg.batch_size / seconds, seconds


def release(device: torch.device, forget_compiled: bool = False) -> None:
    """Free cached memory between rows (and, between models, the compiled graphs)."""
    if forget_compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=("quick", "cpu", "gpu"), default=None, help="recorded with the figures")
    p.add_argument("--preset", choices=tuple(PRESETS), default="ddpm_cifar10")
    p.add_argument("--batch", type=int, default=128, help="the batch of every row but the last")
    p.add_argument("--large-batch-factor", type=int, default=4, help="the last row's batch is this times --batch")
    p.add_argument("--lr", type=float, default=2e-4, help="lr at --batch (DDPM's CIFAR-10 value)")
    p.add_argument("--warmup", type=int, default=10, help="steps before timing starts (compilation happens here)")
    p.add_argument("--rounds", type=int, default=5, help="timed steps = rounds x warmup")
    p.add_argument("--skip", nargs="*", default=[],
                   help="switches to leave out (their rows, and the switch in later rows), by a word of the row's "
                        "name, e.g. --skip compile")
    p.add_argument("--no-diffusers", action="store_true", help="leave out the diffusers peer")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-record", action="store_true", help="print only; append nothing to results/")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    device = torch.device(args.device) if args.device else profile.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())

    config = PRESETS[args.preset]()
    dataset = "mnist" if config.in_channels == 1 else "cifar10"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleDataWarning)  # the content does not matter for speed
        images = load_dataset(dataset, "train", dtype="uint8")
    data = DeviceImages(images.x, device=device)
    shape = tuple(images.x.shape[1:])
    torch.manual_seed(args.seed)
    ours = unet.UNet(config)
    flops = forward_flops_per_image(ours.to(device), shape, device)
    peak, peak_note = peak_tflops(device)
    version = diffusers_version()
    print(f"{args.preset}: {unet.count_parameters(ours):,} parameters, {flops / 1e9:.2f} GFLOP per image forward "
          f"({3 * flops / 1e9:.2f} per training image) | {dataset} {images.source} on {device} "
          f"({device_name(device)}, {torch.get_num_threads()} threads) | {peak_note}")
    if version is None and not args.no_diffusers:
        print("diffusers is NOT installed: the peer comparison is skipped. `pip install diffusers` to include it "
              "(no download needed: the model is built from its config).")
    del ours

    common = dict(lr=args.lr, warmup_steps=args.warmup, flip=dataset == "cifar10", seed=args.seed, grad_clip=1.0,
                  ema_decay=0.9999)
    base = {"amp": "off", "channels_last": False, "compile": False, "fused_adam": False, "ema_impl": "swa_utils"}
    large, large_lr = args.batch * args.large_batch_factor, scale_learning_rate(args.lr, args.batch * args.large_batch_factor, args.batch)
    switches, rows = dict(base), []
    run_id = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")  # groups this run's rows

    def settings(name: str, model_name: str, cfg: TrainConfig, seconds: float) -> dict[str, Any]:
        return {"run_id": run_id, "model": model_name, "preset": args.preset, "row": name, "batch": cfg.batch_size, "lr": cfg.lr,
                "amp": cfg.amp, "channels_last": cfg.channels_last, "compile": cfg.compile,
                "fused_adam": cfg.fused_adam, "ema_impl": cfg.ema_impl, "warmup_steps": args.warmup,
                "timed_steps": args.rounds * args.warmup, "timed_seconds": round(seconds, 3), "seed": args.seed,
                "threads": torch.get_num_threads(), "gflop_per_image_forward": round(flops / 1e9, 4),
                "dataset": dataset, "float32_matmul_precision": torch.get_float32_matmul_precision(),
                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}

    def run_row(name: str, model: nn.Module, model_name: str, cfg: TrainConfig) -> float | None:
        try:
            ips, seconds = measure(model, data, cfg, args.warmup, args.rounds, device)
        except Exception as exc:  # e.g. compile unavailable, out of memory: report and go on
            print(f"{name:<34} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            release(device, forget_compiled=True)
            return None
        mfu = ips * 3 * flops / (peak * 1e12) if peak else None
        print(f"{name:<34} batch {cfg.batch_size:5d}  {ips:10.1f} images/s"
              + (f"  MFU {100 * mfu:5.1f} %" if mfu is not None else ""), flush=True)
        if not args.no_record:
            row_settings = settings(name, model_name, cfg, seconds)
            record(BENCHMARK, "train_images_per_s", ips, "images/s", profile=profile.name, device=device,
                   settings=row_settings)
            if mfu is not None:
                record(BENCHMARK, "mfu", mfu, "fraction of dense bf16 peak", profile=profile.name, device=device,
                       settings={**row_settings, "peak_tflops": peak})
        release(device)
        return ips

    def fresh_ours() -> nn.Module:
        torch.manual_seed(args.seed)
        return unet.UNet(config)

    for name, change in RECIPE:
        if any(word in name for word in args.skip):
            print(f"{name:<34} skipped (--skip): left out of this row and the rows below")
            continue
        switches.update(change)
        batch, lr = (large, large_lr) if name == "+ larger batch" else (args.batch, args.lr)
        if name == "+ larger batch":
            name = f"+ batch {large}, lr x{large_lr / args.lr:.3g}"
        cfg = TrainConfig(steps=1, batch_size=batch, **{**common, "lr": lr}, **switches)
        rows.append((name, cfg, run_row(name, fresh_ours(), args.preset, cfg)))

    if version is not None and not args.no_diffusers and rows:
        release(device, forget_compiled=True)  # another model: compile afresh
        first, last = rows[0], rows[-1]
        for label, (name, cfg, ips) in (("fp32 baseline", first), ("whole recipe", last)):
            torch.manual_seed(args.seed)
            try:
                peer = DiffusersUNet(config)
            except Exception as exc:
                print(f"diffusers UNet2DModel could not be built from {args.preset}: {type(exc).__name__}: {exc}")
                break
            count, own = unet.count_parameters(peer), unet.count_parameters(fresh_ours())
            peer_name = f"diffusers {version} UNet2DModel"
            peer_ips = run_row(f"{peer_name}, {label} ({count / 1e6:.1f}M vs our {own / 1e6:.1f}M params)",
                               peer, peer_name, cfg)
            if peer_ips and ips:
                ratio = ips / peer_ips
                print(f"{'':<34} ours / diffusers at the {label} ({name}): {ratio:.2f}x")
                if not args.no_record:
                    record(BENCHMARK, "speedup_vs_diffusers", ratio, "x (our images/s over diffusers')",
                           profile=profile.name, device=device,
                           settings={**settings(name, args.preset, cfg, 0.0), "peer": peer_name,
                                     "peer_parameters": count, "our_parameters": own, "comparison": label,
                                     "our_images_per_s": ips, "peer_images_per_s": peer_ips})

    base_ips = rows[0][2] if rows and rows[0][2] else None
    print("\nstep                               batch    images/s   vs baseline")
    for name, cfg, ips in rows:
        vs = f"{ips / base_ips:8.2f}x" if ips and base_ips else ""
        print(f"{name:<34} {cfg.batch_size:6d} {ips or float('nan'):11.1f}  {vs}")


if __name__ == "__main__":
    main()
