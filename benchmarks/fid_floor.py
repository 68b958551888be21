"""The real-vs-real floor of FID_self and KID: how far real images are from real images at N samples.

For each dataset and sample count N, N TEST images are compared with a fixed reference of ``n_real``
TRAIN images (both fixed random subsets, ``diffedu.metrics.real_images``), through the shipped classifier's penultimate features (exactly what
``diffedu.metrics.evaluate_samples`` reports as ``fid_self_floor``). Both sets are real, so any
distance above 0 is estimation error (plus the small train/test difference). FID's floor falls as N
grows: the covariance fitted to N samples is noisy and that noise only adds to the distance, which is
why an FID means something only beside the floor at the same N. KID is unbiased: its floor stays
near 0 at every N, with a spread that shrinks.

    DIFFEDU_DATA=/path/to/npz python benchmarks/fid_floor.py [--counts 500 1000 5000 10000] [--no-record]

Prints a table and appends one JSON line per figure to benchmarks/results/fid_floor.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import time
import warnings
from pathlib import Path

import torch

from diffedu.classifier import load_classifier
from diffedu.data import SampleDataWarning
from diffedu.metrics import SUBSET_SEED, extract_features, frechet_distance, kid, real_images
from diffedu.profiles import device_name, get_profile

RESULTS = Path(__file__).parent / "results" / "fid_floor.jsonl"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    p.add_argument("--counts", nargs="+", type=int, default=[500, 1000, 5000, 10000])
    p.add_argument("--n-real", type=int, default=10_000, help="train images in the reference (fixed)")
    p.add_argument("--seed", type=int, default=0, help="KID's subset seed")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--no-record", action="store_true", help="print only, append nothing")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    common = {"profile": get_profile().name, "device": device_name(device), "torch": torch.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": _commit()}
    rows = []
    for dataset in args.datasets:
        start = time.perf_counter()
        model = load_classifier(dataset, device=device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SampleDataWarning)
            train = real_images(dataset, "train", args.n_real)
            test = real_images(dataset, "test", max(args.counts))  # the first n of these = real_images(.., n)
        is_sample = train.is_sample or test.is_sample or bool(caught)
        ref, _ = extract_features(model, train.x)             # (n_real, D)
        test_feats, _ = extract_features(model, test.x)       # (max N, D)
        print(f"\n{dataset}: reference = {len(ref)} train images, features {ref.shape[1]}-d "
              f"({train.source}{'; BUNDLED SAMPLE, not comparable' if is_sample else ''})")
        print(f"{'N':>7} {'FID_self floor':>15} {'KID floor':>12} {'KID std':>10}")
        for n in args.counts:
            if n > len(test_feats):
                print(f"{n:>7}  skipped: only {len(test_feats)} test images")
                continue
            fid = frechet_distance(test_feats[:n], ref)
            kid_mean, kid_std = kid(test_feats[:n], ref, subsets=args.kid_subsets, subset_size=min(n, 1000),
                                    seed=args.seed)
            print(f"{n:>7} {fid:>15.4f} {kid_mean:>12.5f} {kid_std:>10.5f}")
            settings = {"dataset": dataset, "model": f"{dataset}_classifier", "sample_count": n, "n_real": len(ref),
                        "feature_dim": int(ref.shape[1]), "seed": args.seed, "kid_subsets": args.kid_subsets,
                        "kid_subset_size": min(n, 1000), "kid_std": kid_std, "data_source": train.source,
                        "bundled_sample": is_sample, "subset_seed": SUBSET_SEED,
                        "samples": "N random test images vs n_real random train images (fixed subsets)"}
            for metric, value in (("fid_self_floor", fid), ("kid_self_floor", kid_mean)):
                rows.append({"benchmark": "fid_floor", "metric": metric, "value": round(value, 6),
                             "unit": "dimensionless", **common, "settings": settings})
        print(f"({time.perf_counter() - start:.1f} s)")
    if not args.no_record and rows:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"\nappended {len(rows)} lines to {RESULTS}")


if __name__ == "__main__":
    main()
