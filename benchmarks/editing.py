"""Editing with the shipped models (lesson 12): inpainting, SDEdit, CLIP guidance against classifier-free guidance,
and edits through DDIM inversion. Nothing is trained here.

    python benchmarks/editing.py --threads 2                       # everything, N = 500 test digits
    python benchmarks/editing.py --threads 2 --parts inpaint --n 100

The models: lesson 08's class-conditional `mnist_cond` (where a class is given, and unconditionally with its null
label) and the unconditional reference `mnist_ddpm` (lesson 04); the yardstick is the course's classifier; the CLIP
is lesson 12's `mnist_clip`.

- inpaint (N = --n, 500): the bottom half, and separately the right half, of N test digits masked and filled in
  (DDIM steps with eta = 1, the known half replaced at every step), with the digit's class given (`mnist_cond`,
  guidance w) and without it (`mnist_cond` with its null label; `mnist_ddpm`, also with `--resample` RePaint
  resamplings). inpaint_accuracy: the share the classifier reads as the original digit; FID_self of the completed
  digits. Baselines: the masked half filled with noise, with black (-1), and the original digit itself.
- sdedit (N = --n-other, 200): test digits noised to strength s and denoised by `mnist_ddpm`, for s from 0.1 to 1:
  faithfulness, the mean distance per pixel to the input (sdedit_distance), and realism, the confident fraction.
- clip_guidance: prompts "a {digit}" (balanced), `mnist_cond` with its null label steered by CLIP's gradient on the
  predicted x0 (one model call per step), against classifier-free guidance of the same network at the same model
  calls (half the steps: two calls each): class_accuracy, clip_score, confident_fraction.
- invert_edit: test digits inverted under their own label by `mnist_cond` to strength s and regenerated under the
  next digit ((y + 1) mod 10): class_accuracy (read as the new digit) and the distance to the original.
  invert_control: the same with the digit's own label on the way down (how far the round trip itself moves it).
- sdedit_sketch: a rough drawn seven (the drawing pad's fixed sketch), n seeds per strength: distance to the
  sketch, the confident fraction, and the share read as a seven.

Every figure goes to benchmarks/results/editing.jsonl; the SDEdit trade-off plot to
benchmarks/results/editing_sdedit.png. Never fails on a number.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from record import RESULTS, record  # noqa: E402

from diffedu.clip import clip_guided_sample, load_clip  # noqa: E402
from diffedu.course.widgets import fixed_sketch  # noqa: E402
from diffedu.data import load_dataset  # noqa: E402
from diffedu.editing import half_mask, inpaint, invert_edit, sdedit  # noqa: E402
from diffedu.metrics import clip_score, confident_fraction, evaluate_samples  # noqa: E402
from diffedu.models.classifier import load_classifier  # noqa: E402
from diffedu.pretrained import load_pretrained  # noqa: E402
from diffedu.samplers import ddim_sample  # noqa: E402

NULL = 10  # mnist_cond's null label


def batched(fn, n: int, batch: int):  # noqa: ANN001, ANN201
    """fn(start, stop) over [0, n) in batches, concatenated (on the CPU)."""
    return torch.cat([fn(k, min(n, k + batch)).cpu() for k in range(0, n, batch)])


def read(classifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """The classifier's predicted class and probabilities, (N,), (N, 10)."""
    with torch.no_grad():
        probs = torch.cat([classifier(images[i: i + 500]).softmax(1) for i in range(0, len(images), 500)])
    return probs.argmax(1), probs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["inpaint", "sdedit", "sdedit_sketch", "clip_guidance", "invert_edit",
                                                  "invert_control"],
                   help="also 'baselines': the inpainting baselines alone (the masked halves filled with black or "
                        "noise, the originals, and the real-data floor of FID_self)")
    p.add_argument("--n", type=int, default=500, help="test digits for inpainting")
    p.add_argument("--n-other", type=int, default=200, help="digits or prompts for the other parts")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale where a class is given")
    p.add_argument("--resample", type=int, nargs="+", default=[1, 3],
                   help="RePaint resamplings to measure (unconditional, mnist_ddpm)")
    p.add_argument("--masks", nargs="+", default=["bottom", "right"])
    p.add_argument("--clip-scales", type=float, nargs="+", default=[0.0, 10.0, 30.0, 100.0, 300.0])
    p.add_argument("--strengths", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    p.add_argument("--edit-strengths", type=float, nargs="+", default=[0.5, 0.7, 1.0])
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-record", action="store_true", help="print only (for trying settings)")
    p.add_argument("--profile", default=os.environ.get("DIFFEDU_PROFILE", "cpu"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    models = {name: load_pretrained(name, device="cpu") for name in ("mnist_cond", "mnist_ddpm")}
    classifier = load_classifier("mnist").eval()
    test = load_dataset("mnist", "test")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[: max(args.n, args.n_other)]
    x_all, y_all = test.x[order], test.y[order]
    base = {"seed": args.seed, "threads": args.threads}

    def put(metric: str, value: float, unit: str = "fraction", *, model: str, n: int, **settings: object) -> None:
        info = models[model][2] if model in models else {"record": {}}
        settings = {**base, "model": model, "train_seconds": info["record"].get("seconds"), "sample_count": n,
                    **settings}
        if args.no_record:
            print(f"  {metric} = {value:.4g}  {settings}", flush=True)
        else:
            record("editing", metric, value, unit, profile=args.profile, device="cpu", settings=settings)

    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    if "inpaint" in args.parts or "baselines" in args.parts:
        x, y, n = x_all[: args.n], y_all[: args.n], args.n
        runs = [("mnist_cond", True, 1), ("mnist_cond", False, 1), *(("mnist_ddpm", False, r) for r in args.resample)]
        runs = runs if "inpaint" in args.parts else []
        for which in args.masks:
            mask = half_mask(x.shape, which)
            noise = torch.randn(x.shape, generator=gen(1)).clamp(-1, 1)
            baselines = (("original", x), ("zeros", x * mask - (1 - mask)), ("noise", x * mask + (1 - mask) * noise))
            for fill, images in baselines:
                predicted, _ = read(classifier, images)
                put("inpaint_accuracy", float((predicted == y).float().mean()), model="none", n=n, mask=which,
                    conditioned=False, method=f"fill: {fill}")
                scores = evaluate_samples(images, "mnist")
                put("fid_self", scores["fid_self"], "dimensionless", model="none", n=n, mask=which,
                    conditioned=False, method=f"fill: {fill}")
                if fill == "original":
                    put("fid_self_floor", scores["fid_self_floor"], "dimensionless", model="none", n=n, mask=which,
                        conditioned=False, method="real test digits against real (the floor)")
            for name, conditioned, resample in runs:
                model, schedule, _ = models[name]
                started = time.perf_counter()

                def fill(a: int, b: int) -> torch.Tensor:
                    labels = y[a:b] if conditioned else torch.full((b - a,), NULL) if name == "mnist_cond" else None
                    return inpaint(model, schedule, x[a:b], mask, steps=args.steps, resample=resample,  # noqa: B023
                                   cond=labels, guidance=args.guidance if conditioned else None,  # noqa: B023
                                   uncond=torch.tensor(NULL) if conditioned else None, generator=gen(a + 7),  # noqa: B023
                                   progress=False).clamp(-1, 1)

                done = batched(fill, n, args.batch)
                seconds = time.perf_counter() - started
                predicted, _ = read(classifier, done)
                settings = {"mask": which, "conditioned": conditioned, "method": "inpaint", "sampler": "ddim",
                            "eta": 1.0, "steps": args.steps, "resample": resample,
                            "guidance": args.guidance if conditioned else None,
                            "nfe": ((args.steps - 1) * resample + 1) * (2 if conditioned else 1)}
                put("inpaint_accuracy", float((predicted == y).float().mean()), model=name, n=n, **settings)
                put("fid_self", evaluate_samples(done, "mnist")["fid_self"], "dimensionless", model=name, n=n,
                    **settings)
                put("sample_seconds", seconds, f"s for {n}", model=name, n=n, **settings)
                kept = float(((done - x).abs() * mask).max())
                print(f"  inpaint {which}, {name}, conditioned {conditioned}, resample {resample}: known pixels "
                      f"moved by at most {kept:.1e}; {seconds:.0f} s", flush=True)

    x, y, n = x_all[: args.n_other], y_all[: args.n_other], args.n_other
    if "sdedit" in args.parts:
        model, schedule, _ = models["mnist_ddpm"]
        distances, realism = [], []
        for strength in args.strengths:
            done = batched(lambda a, b: sdedit(model, schedule, x[a:b], strength, steps=args.steps,  # noqa: B023
                                               generator=gen(a + 11), progress=False).clamp(-1, 1), n, args.batch)
            distance = float((done - x).abs().mean())
            _, probs = read(classifier, done)
            predicted = probs.argmax(1)
            settings = {"strength": strength, "sampler": "ddim", "eta": 1.0, "steps": args.steps,
                        "conditioned": False}
            put("sdedit_distance", distance, "mean |pixel difference| in [-1, 1] units", model="mnist_ddpm", n=n,
                **settings)
            put("confident_fraction", confident_fraction(probs), model="mnist_ddpm", n=n, **settings)
            put("class_kept", float((predicted == y).float().mean()), model="mnist_ddpm", n=n, **settings)
            distances.append(distance)
            realism.append(confident_fraction(probs))
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot(distances, realism, "o-")
        for s, d, r in zip(args.strengths, distances, realism):
            ax.annotate(f"{s:g}", (d, r), textcoords="offset points", xytext=(4, -10), fontsize=8)
        ax.set_xlabel("distance to the input (mean |difference| per pixel)")
        ax.set_ylabel("confident fraction of the result")
        ax.set_title(f"SDEdit on {n} test digits, mnist_ddpm, DDIM eta = 1 (labels: strength)", fontsize=9)
        fig.tight_layout()
        if not args.no_record:
            fig.savefig(RESULTS / "editing_sdedit.png", dpi=90)
        plt.close(fig)

    if "sdedit_sketch" in args.parts:  # a rough drawn seven (the drawing pad's fallback), n seeds per strength
        model, schedule, _ = models["mnist_ddpm"]
        sketch = fixed_sketch()
        for strength in args.strengths:
            done = batched(lambda a, b: sdedit(model, schedule, sketch.expand(b - a, -1, -1, -1), strength,  # noqa: B023
                                               steps=args.steps, generator=gen(a + 17), progress=False).clamp(-1, 1),
                           n, args.batch)
            predicted, probs = read(classifier, done)
            settings = {"strength": strength, "sampler": "ddim", "eta": 1.0, "steps": args.steps,
                        "conditioned": False, "method": "sdedit from a sketch of a seven"}
            put("sdedit_distance", float((done - sketch).abs().mean()), "mean |pixel difference| in [-1, 1] units",
                model="mnist_ddpm", n=n, **settings)
            put("confident_fraction", confident_fraction(probs), model="mnist_ddpm", n=n, **settings)
            put("class_kept", float((predicted == 7).float().mean()), model="mnist_ddpm", n=n, **settings)

    if "clip_guidance" in args.parts:
        model, schedule, _ = models["mnist_cond"]
        clip, _ = load_clip("mnist_clip", device="cpu")
        labels = torch.arange(n) % 10
        prompts = [f"a {w}" for w in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                      "nine")]
        texts = [prompts[int(k)] for k in labels]
        for scale in args.clip_scales:
            done = batched(lambda a, b: clip_guided_sample(model, schedule, clip, texts[a:b], scale=scale,
                                                           steps=args.steps, cond=torch.full((b - a,), NULL),
                                                           generator=gen(a + 13), progress=False).clamp(-1, 1),
                           n, args.batch)
            predicted, probs = read(classifier, done)
            settings = {"method": "clip guidance", "clip_scale": scale, "sampler": "ddim", "eta": 1.0,
                        "steps": args.steps, "nfe": args.steps, "prompts": "a {digit}"}
            put("class_accuracy", float((predicted == labels).float().mean()), model="mnist_cond", n=n, **settings)
            put("clip_score", clip_score(clip, done, texts), "score", model="mnist_cond", n=n, **settings)
            put("confident_fraction", confident_fraction(probs), model="mnist_cond", n=n, **settings)
        cfg_steps = args.steps // 2
        for w in (1.0, args.guidance):
            done = batched(lambda a, b: ddim_sample(model, schedule, (b - a, 1, 28, 28), steps=cfg_steps, eta=1.0,
                                                    cond=labels[a:b], guidance=w, uncond=torch.tensor(NULL),
                                                    generator=gen(a + 13), progress=False).clamp(-1, 1),
                           n, args.batch)
            predicted, probs = read(classifier, done)
            settings = {"method": "classifier-free guidance", "guidance": w, "sampler": "ddim", "eta": 1.0,
                        "steps": cfg_steps, "nfe": 2 * cfg_steps, "prompts": "a {digit}"}
            put("class_accuracy", float((predicted == labels).float().mean()), model="mnist_cond", n=n, **settings)
            put("clip_score", clip_score(clip, done, texts), "score", model="mnist_cond", n=n, **settings)
            put("confident_fraction", confident_fraction(probs), model="mnist_cond", n=n, **settings)

    for part, target_rule in (("invert_edit", "(y + 1) mod 10"), ("invert_control", "y (the control)")):
        if part not in args.parts:
            continue
        model, schedule, _ = models["mnist_cond"]
        target = (y + 1) % 10 if part == "invert_edit" else y
        for strength in args.edit_strengths:
            done = batched(lambda a, b: invert_edit(model, schedule, x[a:b], y[a:b], target[a:b], strength=strength,
                                                    steps=args.steps, guidance=args.guidance,
                                                    uncond=torch.tensor(NULL), progress=False).clamp(-1, 1),
                           n, args.batch)
            predicted, probs = read(classifier, done)
            settings = {"method": "invert_edit", "strength": strength, "guidance": args.guidance,
                        "steps": args.steps, "target": target_rule}
            put("class_accuracy", float((predicted == target).float().mean()), model="mnist_cond", n=n, **settings)
            put("sdedit_distance", float((done - x).abs().mean()), "mean |pixel difference| in [-1, 1] units",
                model="mnist_cond", n=n, **settings)
            put("confident_fraction", confident_fraction(probs), model="mnist_cond", n=n, **settings)


if __name__ == "__main__":
    main()
