"""Text to image on captioned MNIST: train (or load) the model, then measure how well images follow prompts.

    python benchmarks/text2img.py --space latent --train-minutes 15 --export   # train 15 min at 1 thread, ship it
    python benchmarks/text2img.py                                  # load diffedu/weights/mnist_text.pt, measure
    python benchmarks/text2img.py --space pixel --train-minutes 15 --out runs/mnist_pixel_text.pt --name mnist_pixel_text
                                                                   # the same on 28x28 pixels (the first attempt)
    python benchmarks/text2img.py --backbone mmdit --name mnist_mmdit_text --threads 2 \
        --out runs/mnist_mmdit_text.pt --train-minutes 15 --export     # lesson 11's MMDiT, flow matching, on latents

Training is lesson 09's: captions written from the pixels (`diffedu.captions`), tokenized, and the
`Text2Img` model (text encoder + U-Net with cross-attention) trained with the course's loop, the
empty prompt replacing 10 % of the captions, on the latents of lesson 07's VAE (``--space latent``, the
shipped model) or on the 28x28 pixels (``--space pixel``). ``--backbone mmdit`` (lesson 11) swaps the U-Net for a
joint text-image transformer (`diffedu.models.mmdit`) trained with flow matching, as Stable Diffusion 3 is, on the
same latents and captions; it samples with Heun's method on the ODE (``--flow-steps``). Then, for each guidance scale w, N prompts (balanced over
the digits; each names one attribute at an extreme level) are sampled with DDIM and judged:

- class_accuracy: the yardstick classifier reads the digit asked for;
- attribute_accuracy: the attribute, measured by the same function that wrote the captions, falls at
  the level asked for (chance about 1/3);
- the same two with prompts written in held-out phrasings (templates never seen in training);
- with ``--clip mnist_clip`` (lesson 12): the CLIP score of each sample against its prompt, and how well that score
  tells the samples that show the asked attribute from those that do not (clip_attribute_auc, 0.5: not at all).

Every figure is appended to benchmarks/results/text2img.jsonl; a grid of samples goes to
benchmarks/results/text2img_{name}_{space}_w{w}.png. Never fails on a number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from record import RESULTS, record  # noqa: E402

from diffedu.captions import Captioner  # noqa: E402
from diffedu.course.profiles import device_name  # noqa: E402
from diffedu.data import load_dataset  # noqa: E402
from diffedu.flow import nfe  # noqa: E402
from diffedu.models.unet import count_parameters  # noqa: E402
from diffedu.schedules import make_schedule  # noqa: E402
from diffedu.text2img import (  # noqa: E402
    Text2Img,
    evaluate_prompts,
    export_text2img,
    load_text2img,
    mnist_latent_mmdit_text,
    mnist_latent_text,
    mnist_pixel_text,
)
from diffedu.train import TrainConfig, train  # noqa: E402
from diffedu.train_cli import git_commit  # noqa: E402

# The pixel model: `mnist_pixel_text`'s defaults (8-16-32 channels, cross-attention at 14x14, 7x7 and in the
# middle); the latent model (the shipped one): `mnist_latent_text`'s defaults.
UNET: dict = {}
SETTINGS = dict(batch_size=32, lr=2e-3, warmup_steps=100, ema_decay=0.995, cond_drop_prob=0.1, mention_prob=0.7,
                caption_seed=0, seed=0)
LATENT_SETTINGS = {**SETTINGS, "batch_size": 64}  # an 8x8 latent is cheap: a larger batch amortises each op's overhead
# The MMDiT (lesson 11): lesson 09's latent recipe (batch 64, lr 2e-3, warm-up 100, EMA 0.995) with flow matching and
# SD3's logit-normal times (lr 2e-3 beat 1e-3 in two 3-minute trials: class accuracy 0.56 against 0.47 at guidance 3).
MMDIT_SETTINGS = {**LATENT_SETTINGS, "lr": 2e-3, "objective": "flow", "time_sampling": "logit_normal"}


def train_model(minutes: float, out: Path, threads: int, limit: int | None, space: str = "pixel",
                backbone: str = "unet", lr: float | None = None, objective: str | None = None
                ) -> tuple[Text2Img, object, dict, Captioner, object]:
    """Caption MNIST, build the model and train it with the course's loop for `minutes` (resumes from `out`).

    ``space="latent"``: the images are encoded once with lesson 07's shipped VAE and the model denoises latents.
    Returns (EMA model, schedule, training record, captioner, VAE or None).
    """
    if backbone == "mmdit" and space != "latent":
        raise SystemExit("--backbone mmdit works on latents: drop --space pixel")
    settings = MMDIT_SETTINGS if backbone == "mmdit" else LATENT_SETTINGS if space == "latent" else SETTINGS
    settings = {**settings, "lr": lr} if lr is not None else settings
    if objective == "flow" and backbone == "unet":  # the control: lesson 09's U-Net with the MMDiT's objective
        if space != "latent":
            raise SystemExit("--objective flow is for latent models")
        settings = {**settings, "objective": "flow", "time_sampling": MMDIT_SETTINGS["time_sampling"]}
    elif objective == "eps" and backbone == "mmdit":
        raise SystemExit("the MMDiT trains with flow matching only: drop --objective eps")
    flow = settings.get("objective") == "flow"
    data = load_dataset("mnist", "train", limit=limit, dtype="uint8")
    captioner = Captioner.fit("mnist", data.x, data.y)
    captions = captioner.caption(data.x, data.y, seed=settings["caption_seed"], mention_prob=settings["mention_prob"])
    torch.manual_seed(settings["seed"])
    vae, train_x = None, data.x
    if space == "latent":
        from diffedu.data import uint8_to_float
        from diffedu.latent import encode_dataset, load_vae

        vae, _ = load_vae("mnist_vae", device="cpu")
        started = time.perf_counter()
        train_x = encode_dataset(vae, uint8_to_float(data.x))  # (N, 4, 8, 8), about unit variance
        print(f"encoded {len(train_x)} images to latents {tuple(train_x.shape[1:])} in "
              f"{time.perf_counter() - started:.0f} s (not counted in the training budget)", flush=True)
        config = (mnist_latent_mmdit_text if backbone == "mmdit" else mnist_latent_text)(captioner.vocabulary())
        model = Text2Img(config)
    else:
        model = Text2Img(mnist_pixel_text(captioner.vocabulary(), **UNET))
    tokens = model.tokenizer.encode(captions)  # (N, L) int64
    schedule = None if flow else make_schedule("linear", T=1000)
    objective = {"objective": "flow", "time_sampling": settings["time_sampling"]} if flow else {}
    config = TrainConfig(seconds=minutes * 60, batch_size=settings["batch_size"], lr=settings["lr"],
                         warmup_steps=settings["warmup_steps"], ema_decay=settings["ema_decay"],
                         cond_drop_prob=settings["cond_drop_prob"], null_label=tuple(model.tokenizer.empty().tolist()),
                         checkpoint_every=250, seed=settings["seed"], **objective)
    print(f"Text2Img: {count_parameters(model):,} parameters ({backbone} {count_parameters(model.denoiser):,}, "
          f"text encoder "
          f"{count_parameters(model.text_encoder):,}); {len(data)} images ({data.source}); vocabulary "
          f"{model.tokenizer.vocab_size}; {threads} thread(s); budget {minutes} min", flush=True)
    print("captions, e.g.:", "; ".join(captions[:5]), flush=True)
    result = train(model, train_x, schedule, config, labels=tokens, checkpoint=out, device="cpu")
    tail = result.losses[-100:]
    record_ = {
        "command": "python benchmarks/text2img.py " + " ".join(sys.argv[1:]),
        "dataset": "mnist", "data_source": data.source, "images": len(data), "parameters": count_parameters(model),
        "space": space, "vae": model.config.vae, "backbone": backbone, "objective": "flow" if flow else "diffusion",
        "unet_overrides": UNET if space == "pixel" else {}, "settings": settings,
        "train_config": dataclasses.asdict(config),
        "steps": result.step, "seconds": round(result.seconds, 1), "images_per_second": round(result.images_per_second, 1),
        "threads": threads, "final_loss": sum(tail) / max(len(tail), 1), "device": device_name(torch.device("cpu")),
        "torch": str(torch.__version__), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(),
    }
    out.with_suffix(".json").write_text(json.dumps(record_, indent=2) + "\n")
    print(f"trained {result.step} steps in {result.seconds / 60:.1f} min ({result.images_per_second:.0f} images/s), "
          f"final loss {record_['final_loss']:.4f}", flush=True)
    return result.ema.eval(), schedule, record_, captioner, vae


def attribute_auc(scores: torch.Tensor, result: dict) -> float | None:
    """P(score of a sample whose asked attribute was drawn > score of one whose was not), ties half: the area under
    the ROC curve of the CLIP score as a detector of the measured attribute (0.5: it cannot tell them apart)."""
    hit = torch.zeros(len(scores), dtype=torch.bool)
    asked_any = torch.zeros(len(scores), dtype=torch.bool)
    for name, asked in result["asked"].items():
        sel = asked >= 0
        asked_any |= sel
        hit |= sel & (result["measured"][name] == asked)
    good, bad = scores[asked_any & hit], scores[asked_any & ~hit]
    if len(good) == 0 or len(bad) == 0:
        return None
    diff = good[:, None] - bad[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-minutes", type=float, default=None, help="train for this long (default: load the weights)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "mnist_text_latent.pt", help="training checkpoint")
    p.add_argument("--export", action="store_true", help="write diffedu/weights/NAME.pt after training")
    p.add_argument("--name", default="mnist_text", help="the shipped weights' name (to export, or to load)")
    p.add_argument("--space", choices=("pixel", "latent"), default="latent", help="train on VAE latents or pixels")
    p.add_argument("--backbone", choices=("unet", "mmdit"), default="unet",
                   help="the denoiser: lesson 09's U-Net (eps, DDIM) or lesson 11's MMDiT (flow matching, Heun)")
    p.add_argument("--objective", choices=("eps", "flow"), default=None,
                   help="default: eps for the U-Net, flow for the MMDiT; '--backbone unet --objective flow' is the "
                        "control that separates the backbone from the objective")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--flow-steps", type=int, default=10, help="Heun steps for a flow model (2 steps - 1 model calls)")
    p.add_argument("--limit", type=int, default=None, help="train on the first LIMIT images only")
    p.add_argument("--no-eval", action="store_true", help="train (and export) only")
    p.add_argument("--n", type=int, default=480, help="samples per guidance scale and template set (a multiple of 60)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    p.add_argument("--heldout-guidance", type=float, nargs="*", default=[3.0])
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip", default=None, metavar="NAME",
                   help="also score every sample against its prompt with this shipped CLIP (lesson 12: mnist_clip): "
                        "clip_score, and clip_attribute_auc, how well the score tells samples with the asked "
                        "attribute from those without")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", default=os.environ.get("DIFFEDU_PROFILE", "cpu"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.train_minutes is not None:
        model, schedule, train_record, captioner, vae = train_model(args.train_minutes, args.out, args.threads,
                                                                    args.limit, args.space, args.backbone,
                                                                    args.lr, args.objective)
        if args.export:
            from diffedu.text2img import weights_dir

            path = export_text2img(args.out, weights_dir() / f"{args.name}.pt", name=args.name, record=train_record,
                                   captioner=captioner)
            print(f"exported the EMA weights to {path} ({path.stat().st_size / 2**20:.2f} MB)")
    else:
        model, schedule, info = load_text2img(args.name, device="cpu")
        train_record, captioner, vae = info["record"], info["captioner"], info["vae"]
    if args.no_eval:
        return

    from diffedu.course.plotting import image_grid
    from diffedu.models.classifier import load_classifier

    classifier = load_classifier("mnist")
    clip = None
    if args.clip is not None:
        from diffedu.clip import load_clip

        clip, _ = load_clip(args.clip, device="cpu")
    flow = schedule is None
    sampling = ({"sampler": "heun", "steps": args.flow_steps, "nfe": nfe("heun", args.flow_steps), "objective": "flow"}
                if flow else {"sampler": "ddim", "steps": args.steps, "eta": args.eta, "nfe": args.steps,
                              "objective": "eps", "clip_x0": model.config.vae is None})
    base = {"model": args.name, "space": train_record.get("space", "pixel"),
            "backbone": train_record.get("backbone", "unet"), "train_steps": train_record["steps"],
            "train_seconds": train_record["seconds"],
            "train_images_per_second": train_record["images_per_second"], "train_threads": train_record["threads"],
            "train_command": train_record["command"], "parameters": train_record["parameters"],
            "sample_count": args.n, "seed": args.seed, "threads": args.threads, **sampling}
    runs = [("train", w) for w in args.guidance] + [("heldout", w) for w in args.heldout_guidance]
    for templates, w in runs:
        started = time.perf_counter()
        result = evaluate_prompts(model, schedule, captioner, classifier, n=args.n, templates=templates, guidance=w,
                                  steps=sampling["steps"], eta=args.eta, seed=args.seed, vae=vae, sampler="heun")
        seconds = time.perf_counter() - started
        settings = {**base, "guidance": w, "templates": templates}
        suffix = "" if templates == "train" else "_heldout"
        record("text2img", f"class_accuracy{suffix}", result["class_accuracy"], "fraction", profile=args.profile,
               device="cpu", settings=settings)
        record("text2img", f"attribute_accuracy{suffix}", result["attribute_accuracy"], "fraction",
               profile=args.profile, device="cpu", settings=settings)
        for name, acc in result["per_attribute"].items():
            record("text2img", f"attribute_accuracy_{name}{suffix}", acc, "fraction", profile=args.profile,
                   device="cpu", settings=settings)
        record("text2img", "sample_seconds", seconds, f"s for {args.n} samples", profile=args.profile, device="cpu",
               settings=settings)
        if clip is not None:
            from diffedu.metrics import clip_score

            scores = clip_score(clip, result["images"], result["prompts"], per_pair=True)
            clip_settings = {**settings, "clip": args.clip}
            record("text2img", f"clip_score{suffix}", float(scores.mean()), "score", profile=args.profile,
                   device="cpu", settings=clip_settings)
            auc = attribute_auc(scores, result)
            if auc is not None:
                record("text2img", f"clip_attribute_auc{suffix}", auc, "probability", profile=args.profile,
                       device="cpu", settings=clip_settings)
        if templates == "train":
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            order = torch.cat([torch.nonzero(result["labels"] == k).flatten()[:10] for k in range(10)])  # 10 per digit
            fig, ax = plt.subplots(figsize=(8, 8.6))
            ax.imshow(image_grid(result["images"][order], nrow=10), interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"{args.name} ({base['space']}), w = {w:g}: class acc {result['class_accuracy']:.2f}, attribute acc "
                         f"{result['attribute_accuracy']:.2f} (rows: digits asked for)", fontsize=9)
            fig.tight_layout()
            fig.savefig(RESULTS / f"text2img_{args.name}_{base['space']}_w{w:g}.png", dpi=80)
            plt.close(fig)
        print(f"  {templates} phrasings, w = {w:g}: e.g. {result['prompts'][:3]}", flush=True)


if __name__ == "__main__":
    main()
