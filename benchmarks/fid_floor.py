"""The real-vs-real floor of FID_self and KID: how far real images are from real images at N samples.

For each dataset and sample count N, N TEST images are compared with a fixed reference of ``n_real``
TRAIN images (both fixed random subsets, ``diffedu.metrics.real_images``), through the shipped classifier's
penultimate features: one draw of the floor (``diffedu.metrics.evaluate_samples`` reports the mean of
``FLOOR_DRAWS`` such draws as ``fid_self_floor``, its first draw being this one). Both sets are real, so any
distance above 0 is estimation error (plus the small train/test difference). FID's floor falls as N
grows: the covariance fitted to N samples is noisy and that noise only adds to the distance, which is
why an FID means something only beside the floor at the same N. KID is unbiased: its floor stays
near 0 at every N, with a spread that shrinks.

    DIFFEDU_DATA=/path/to/npz python benchmarks/fid_floor.py [--counts 500 1000 5000 10000] [--no-record]

Prints a table and appends one JSON line per figure to benchmarks/results/fid_floor.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import record  # noqa: E402

from diffedu.course.profiles import get_profile
from diffedu.data import SampleDataWarning
from diffedu.metrics import SUBSET_SEED, extract_features, frechet_distance, kid, real_images
from diffedu.models.classifier import load_classifier


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
    profile = get_profile().name
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
            if not args.no_record:
                for metric, value in (("fid_self_floor", fid), ("kid_self_floor", kid_mean)):
                    record("fid_floor", metric, round(value, 6), "dimensionless", profile=profile, device=device,
                           settings=settings)
        print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
