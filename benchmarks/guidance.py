"""Classifier-free guidance on the shipped class-conditional MNIST model: fidelity and FID_self against w.

For each guidance scale w the same balanced labels (each digit equally often) and the same starting noise
go through DDIM with `guidance=w, uncond=null`; the samples are scored with

- class_accuracy (the conditional accuracy): the share that the yardstick classifier (`diffedu.models.classifier`)
  reads as the requested digit;
- FID_self, its real-vs-real floor at the same count, KID and the confident fraction (`evaluate_samples`);
- the within-class spread: mean distance between classifier features of two samples of one requested digit;
- the sampling time per batch (two model evaluations per step, batched into one call).

Figures go to results/guidance.jsonl (benchmark "guidance"); the plot of accuracy and FID_self against w
to results/guidance_mnist.png and a grid of samples (rows: w, columns: digits) to results/guidance_mnist_grid.png.

    DIFFEDU_DATA=/path/to/npz OMP_NUM_THREADS=1 python benchmarks/guidance.py --threads 1

Tests never time anything; this script does, and never fails on a number.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, quality_figures, record  # noqa: E402

from diffedu.course.plotting import image_grid  # noqa: E402
from diffedu.data import load_dataset  # noqa: E402
from diffedu.metrics import evaluate_samples, extract_features  # noqa: E402
from diffedu.models.classifier import load_classifier  # noqa: E402
from diffedu.pretrained import load_pretrained  # noqa: E402
from diffedu.samplers import ddim_sample  # noqa: E402


def guided_samples(model, schedule, labels: torch.Tensor, x_T: torch.Tensor, w: float, *, steps: int,  # noqa: N803
                   eta: float, batch: int, seed: int, null: torch.Tensor) -> tuple[torch.Tensor, float]:
    """DDIM samples for `labels` from the noise x_T with guidance scale w, in batches; and the seconds taken."""
    device = next(model.parameters()).device
    out, started = [], time.perf_counter()
    for k in range(0, len(labels), batch):
        noise = x_T[k:k + batch].to(device)
        x = ddim_sample(model, schedule, tuple(noise.shape), steps=steps, eta=eta, x_T=noise,
                        cond=labels[k:k + batch].to(device), guidance=w, uncond=null,
                        generator=torch.Generator().manual_seed(seed + k), clip_x0=True, progress=False)
        out.append(x.cpu())
    return torch.cat(out), time.perf_counter() - started


def within_class_spread(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean distance between the features of two different samples of one class, averaged over the classes."""
    per_class = []
    for c in labels.unique():
        f = features[labels == c]
        per_class.append(torch.cdist(f, f).sum() / (len(f) * (len(f) - 1)))
    return torch.stack(per_class).mean().item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="mnist_cond", help="a shipped class-conditional model (diffedu/weights/NAME.pt)")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--scales", type=float, nargs="*", default=[0, 1, 2, 3, 5, 7])
    p.add_argument("--samples", type=int, default=500, help="a multiple of the class count (balanced labels)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=250, help="samples per sampling batch (the model sees twice as many)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, schedule, info = load_pretrained(args.weights, device="cpu" if args.profile != "gpu" else None)
    device = next(model.parameters()).device
    k = model.config.num_classes
    if k is None:
        raise SystemExit(f"{args.weights} is not class-conditional (num_classes=None)")
    if args.samples % k:
        raise SystemExit(f"--samples must be a multiple of {k} (balanced classes), got {args.samples}")
    null = torch.tensor(k)
    labels = torch.arange(k).repeat(args.samples // k)  # 0..K-1, 0..K-1, ...
    x_T = torch.randn(args.samples, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))  # noqa: N806
    classifier = load_classifier("mnist", device=device)
    train_record = info["record"]
    base = {"model": args.weights, "train_steps": train_record["steps"], "train_seconds": train_record["seconds"],
            "train_command": train_record["command"], "sample_count": args.samples, "steps": args.steps,
            "eta": args.eta, "sampling_batch": args.batch, "seed": args.seed, "threads": torch.get_num_threads(),
            "sampler": "ddim", "clip_x0": True}

    real = load_dataset("mnist", "test")
    real_feats, _ = extract_features(classifier, real.x)
    keep = torch.cat([torch.nonzero(real.y == c).flatten()[: args.samples // k] for c in range(k)])
    real_spread = within_class_spread(real_feats[keep], real.y[keep])
    print(f"{args.weights}: {train_record['steps']} training steps in {train_record['seconds'] / 60:.1f} min; "
          f"real test digits: within-class spread {real_spread:.3f}")

    rows, grid_rows = [], []
    for w in args.scales:
        x, seconds = guided_samples(model, schedule, labels, x_T, float(w), steps=args.steps, eta=args.eta,
                                    batch=args.batch, seed=args.seed + 1, null=null)
        feats, probs = extract_features(classifier, x)
        accuracy = (probs.argmax(1) == labels).float().mean().item()
        scores = evaluate_samples(x, "mnist")
        spread = within_class_spread(feats, labels)
        per_batch = seconds / -(-args.samples // args.batch)
        rows.append({"w": w, "accuracy": accuracy, "spread": spread, "seconds": per_batch, **scores})
        grid_rows.append(x[: 2 * k])  # two samples of each digit
        print(f"\nw = {w:g}: accuracy {accuracy:.3f}, FID_self {scores['fid_self']:.3f} "
              f"(floor {scores['fid_self_floor']:.3f}), KID {scores['kid_self']:.4f}, "
              f"confident {scores['confident_fraction']:.3f}, spread {spread:.3f}, {seconds:.0f} s")
        settings = {**base, "guidance": w}
        for metric, value, unit in (
            ("class_accuracy", accuracy, "fraction"),
            *quality_figures(scores),
            ("within_class_spread", spread, "feature distance"),
            ("real_within_class_spread", real_spread, "feature distance"),
            ("sample_seconds", per_batch, f"s per batch of {args.batch}"),
        ):
            record("guidance", metric, value, unit, profile=args.profile, device=device, settings=settings)

    fig, (ax_acc, ax_fid) = plt.subplots(1, 2, figsize=(10, 3.6))
    ws = [r["w"] for r in rows]
    ax_acc.plot(ws, [r["accuracy"] for r in rows], "o-")
    ax_acc.axhline(0.1, color="gray", ls=":", lw=1, label="chance")
    ax_acc.set(xlabel="guidance scale w", ylabel="conditional accuracy", ylim=(0, 1.02),
               title="the requested digit (classifier)")
    ax_fid.plot(ws, [r["fid_self"] for r in rows], "o-", color="C1", label="samples")
    ax_fid.axhline(rows[0]["fid_self_floor"], color="k", ls="--", lw=1, label=f"floor: real digits, N = {args.samples}")
    ax_fid.set(xlabel="guidance scale w", ylabel="FID_self", title="realism and variety (lower is better)")
    for ax in (ax_acc, ax_fid):
        ax.legend(fontsize=8)
    fig.suptitle(f"{args.weights} ({train_record['steps']} steps): N = {args.samples}, DDIM {args.steps} steps, "
                 f"eta {args.eta:g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(RESULTS / "guidance_mnist.png", dpi=110)
    plt.imsave(RESULTS / "guidance_mnist_grid.png", image_grid(torch.cat(grid_rows), nrow=2 * k))
    print(f"\nsaved {RESULTS / 'guidance_mnist.png'} and {RESULTS / 'guidance_mnist_grid.png'} "
          f"(grid rows: w = {', '.join(f'{w:g}' for w in ws)}; columns: digits 0..{k - 1}, twice)")


if __name__ == "__main__":
    main()
