"""Numbers that compare generated samples with real data.

For 2-D toy data (lesson 02): the energy distance (Szekely & Rizzo), a true metric between
distributions that is 0 only when they are equal, estimated from two samples X and Y:

    E(X, Y) = 2 E||x - y|| - E||x - x'|| - E||y - y'||

For images: distances between feature vectors of a network, here the penultimate layer of the small
classifier that the package ships (``diffedu.models.classifier``), hence "FID_self" (any other network can be
plugged in as a ``FeatureExtractor``; with Inception-v3 pool features this is the standard FID):

- Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017):
      FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))
- KID, the kernel inception distance (Binkowski et al. 2018): the unbiased estimate of MMD^2 with
  the kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets (mean, std).
- the confident fraction: the share of samples the classifier puts in one class with p >= 0.9.

For text-to-image: the CLIP score (Hessel et al. 2021; the scaling of torchmetrics and most text-to-image
papers), the mean over pairs of 100 max(cos(u_image, v_prompt), 0), with a CLIP model's embeddings
(`diffedu.clip`): how well each image matches its own prompt, as that model sees it.

FID is biased upwards at small sample counts (the covariance of N samples is noisy, and the noise
only adds to the distance), so every FID_self is reported beside its floor: real test images against
the same real train reference, at the same N. The floor is itself an estimate from N images: it is the
mean over FLOOR_DRAWS random sets of N test images, reported with its spread (the standard deviation
over the draws), so that a model's FID_self within about two spreads of the floor reads as "as close
as real data, at this N", and one lucky set of samples under the mean is no paradox. KID is unbiased,
so its floor is near 0 at any N.

Real images are drawn as a fixed random subset (``real_images``, seed SUBSET_SEED), not as the first N:
the canonical order is not random (MNIST's first 5000 test digits come from other writers than the
last 5000; the FID between the two halves is about 2.4, ten times the floor at N = 5000).
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import replace
from typing import Any, Callable, Protocol, Union, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffedu.data import DATASETS, IMAGE_SHAPES, ImageData, describe_source, load_dataset, uint8_to_float
from diffedu.models.classifier import Classifier, load_classifier
from diffedu.samplers import eval_mode

__all__ = [
    "ClassifierExtractor",
    "FeatureExtractor",
    "SmallSampleWarning",
    "class_histogram",
    "clip_score",
    "clear_feature_cache",
    "confident_fraction",
    "energy_distance",
    "evaluate_samples",
    "extract_features",
    "frechet_distance",
    "kid",
    "real_images",
]

Features = tuple[Tensor, Union[Tensor, None]]  # (features (N, D), probs (N, K) or None)
# What extract_features and evaluate_samples take: a Classifier, a FeatureExtractor, or a callable
# (e.g. an nn.Module) that returns the features (B, D) alone.
ExtractorLike = Any
RANGE_TOLERANCE = 1e-3  # samples may overshoot [-1, 1] by this much (rounding), no more
FID_MIN_SAMPLES = 1000  # fewer samples than this give a warning: FID is biased upwards at small N
SUBSET_SEED = 0  # picks the fixed random subsets of real images (the reference and the floor's images)
FLOOR_DRAWS = 5  # random sets of N real test images whose FID_self is averaged into the floor


class SmallSampleWarning(UserWarning):
    """Fewer samples than FID_MIN_SAMPLES (or fewer real images than asked for): FID is biased upwards."""


def energy_distance(x: Tensor, y: Tensor) -> float:
    """The (V-statistic) energy distance between samples x (N, D) and y (M, D); 0 for identical sets."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"energy_distance needs two (N, D) samples of the same D, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.double()
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).mean()
    yy = torch.cdist(y, y).mean()
    return float(2 * xy - xx - yy)


def _feature_pair(feats_a: Any, feats_b: Any, name: str, min_rows: int = 2) -> tuple[Tensor, Tensor]:
    """Both feature sets as float64 (N, D) tensors of the same D, each with at least ``min_rows`` rows."""
    a, b = torch.as_tensor(feats_a).detach().double().cpu(), torch.as_tensor(feats_b).detach().double().cpu()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"{name} needs two feature sets (N, D) and (M, D) of the same D, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(len(a), len(b)) < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} feature vectors in each set, got {len(a)} and {len(b)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError(f"{name}: the features contain NaN or inf")
    return a, b


def _sqrtm_psd(s: Tensor) -> Tensor:
    """The symmetric square root V diag(sqrt(lambda)) V^T of a symmetric PSD matrix (negative rounding -> 0)."""
    lam, v = torch.linalg.eigh(s)
    return (v * lam.clamp(min=0).sqrt()) @ v.T


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """The Frechet distance between Gaussians fitted to feats_a (N, D) and feats_b (M, D):

        FD = ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2))

    in float64. S_a S_b is not symmetric, but it has the eigenvalues of the symmetric PSD matrix
    S_a^(1/2) S_b S_a^(1/2), so Tr((S_a S_b)^(1/2)) = sum_i sqrt(lambda_i) with ``eigh``: no scipy, no
    complex parts. Covariances are unbiased (divided by N - 1). Rounding below 0 is returned as 0."""
    a, b = _feature_pair(feats_a, feats_b, "frechet_distance")
    mu_a, mu_b = a.mean(0), b.mean(0)                       # (D,)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)           # (D, D)
    if cov_a.ndim == 0:                                     # D = 1: torch.cov gives a scalar
        cov_a, cov_b = cov_a.reshape(1, 1), cov_b.reshape(1, 1)
    root_a = _sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    middle = (middle + middle.T) / 2                        # symmetric up to rounding; make it exact
    tr_covmean = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * tr_covmean
    return max(float(fd), 0.0)


def _polynomial_mmd2(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 of x (m, d) and y (m, d) with k(u, v) = (u.v / d + 1)^3."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1) ** 3                           # (m, m)
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    off_diagonal = m * (m - 1)                              # the terms k(x_i, x_i) are left out
    return ((k_xx.sum() - k_xx.diagonal().sum()) / off_diagonal + (k_yy.sum() - k_yy.diagonal().sum()) / off_diagonal
            - 2 * k_xy.mean())


def kid(feats_a: Any, feats_b: Any, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: the unbiased MMD^2 between feats_a (N, D) and feats_b (M, D) with the cubic polynomial kernel
    k(x, y) = (x.y / D + 1)^3, averaged over ``subsets`` random subsets of min(subset_size, N, M)
    vectors from each set (drawn with ``seed``). Returns (mean, std over subsets); the mean can be
    slightly negative when the two sets come from one distribution."""
    a, b = _feature_pair(feats_a, feats_b, "kid")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"kid needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    m = min(subset_size, len(a), len(b))
    gen = torch.Generator().manual_seed(seed)
    values = torch.stack([_polynomial_mmd2(a[torch.randperm(len(a), generator=gen)[:m]],
                                           b[torch.randperm(len(b), generator=gen)[:m]]) for _ in range(subsets)])
    return float(values.mean()), float(values.std()) if subsets > 1 else 0.0


def _check_probs(probs: Any) -> Tensor:
    """probs as a CPU float tensor in its own precision (0.9 stored as float32 still counts as >= 0.9)."""
    p = torch.as_tensor(probs).detach().cpu()
    p = p if p.is_floating_point() else p.double()
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"probs must be class probabilities (N, K) with N >= 1, got shape {tuple(p.shape)}")
    if not torch.isfinite(p).all() or p.min() < -1e-6 or p.max() > 1 + 1e-6 or (p.sum(1) - 1).abs().max() > 1e-3:
        raise ValueError("probs must lie in [0, 1] with rows summing to 1 (apply softmax to logits first)")
    return p


def confident_fraction(probs: Any, threshold: float = 0.9) -> float:
    """The share of rows of probs (N, K) whose largest class probability is >= threshold."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    p = _check_probs(probs)
    return float((p.max(1).values >= threshold).double().mean())  # compared in p's dtype


def class_histogram(probs: Any) -> list[int]:
    """How many rows of probs (N, K) fall in each predicted class (argmax): a list of K counts."""
    p = _check_probs(probs)
    return torch.bincount(p.argmax(1), minlength=p.shape[1]).tolist()


@torch.no_grad()
def clip_score(model: nn.Module, images: Tensor, prompts: Any, *, batch_size: int = 500,
               per_pair: bool = False) -> float | Tensor:
    """The CLIP score of images (N, C, H, W) in [-1, 1] against their prompts (N strings): mean of 100 max(cos, 0).

    ``model`` is a CLIP with ``encode_image`` and ``embed_prompts`` (unit vectors), e.g. `diffedu.clip.load_clip`.
    ``per_pair=True`` gives the N scores instead of their mean. The score is only comparable between images scored
    by the same CLIP: it measures agreement as that model sees it.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if images.ndim != 4 or len(images) != len(prompts):
        raise ValueError(f"clip_score pairs each image with its own prompt: got {len(prompts)} prompts for images "
                         f"of shape {tuple(images.shape)}")
    device = next(model.parameters()).device
    scores = []
    with eval_mode(model):
        for i in range(0, len(images), batch_size):
            u = model.encode_image(images[i: i + batch_size].to(device))
            v = model.embed_prompts(prompts[i: i + batch_size], warn=False)
            scores.append((100 * (u * v).sum(dim=-1)).clamp_min(0).cpu())
    out = torch.cat(scores) if scores else torch.zeros(0)
    return out if per_pair else float(out.mean())


@runtime_checkable
class FeatureExtractor(Protocol):
    """Anything that maps images (B, C, H, W) in [-1, 1] to (features (B, D), probs (B, K) or None).

    ``extract_features`` also accepts a callable (e.g. an ``nn.Module``) that returns only the
    features (B, D). To get standard FID, wrap an Inception-v3 (resize to 299x299, repeat grey
    channels to 3, take the 2048-d pool features) in such a callable."""

    def __call__(self, images: Tensor) -> Features: ...


class ClassifierExtractor:
    """A ``diffedu.models.classifier.Classifier`` as a FeatureExtractor: features(x) and softmax(logits), computed
    in eval mode (the model's mode is restored afterwards), returned on the CPU."""

    def __init__(self, model: Classifier) -> None:
        if not isinstance(model, Classifier):
            raise TypeError(f"ClassifierExtractor needs a diffedu Classifier, got {type(model).__name__}")
        self.model = model

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Features:
        device = next(self.model.parameters()).device
        with eval_mode(self.model):
            h = self.model.features(images.to(device))          # (B, D)
            probs = F.softmax(self.model.head(h).float(), dim=1)  # (B, K); no dropout in eval mode
        return h.float().cpu(), probs.cpu()


def _as_extractor(model_or_extractor: ExtractorLike) -> Callable[[Tensor], Any]:
    if isinstance(model_or_extractor, Classifier):
        return ClassifierExtractor(model_or_extractor)
    if not callable(model_or_extractor):
        raise TypeError(f"need a Classifier or a callable FeatureExtractor, got {type(model_or_extractor).__name__}")
    return model_or_extractor


@torch.no_grad()
def extract_features(model_or_extractor: ExtractorLike, images: Tensor, *, batch_size: int = 500) -> Features:
    """Run a Classifier or a FeatureExtractor over images (N, C, H, W) in batches.

    Returns (features (N, D) float32, probs (N, K) or None) on the CPU. An ``nn.Module`` extractor
    runs in eval mode (its mode is restored afterwards) and gets each batch on its parameters' device."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("extract_features needs at least one image, got none")
    extractor = _as_extractor(model_or_extractor)
    params = list(extractor.parameters()) if isinstance(extractor, nn.Module) else []
    feats, probs = [], []
    with eval_mode(extractor):
        for i in range(0, len(images), batch_size):
            batch = images[i: i + batch_size]
            batch = batch.to(params[0].device) if params else batch
            out = extractor(batch)
            f, p = (out, None) if isinstance(out, Tensor) else out
            if f.ndim != 2 or len(f) != len(batch) or (p is not None and (p.ndim != 2 or len(p) != len(batch))):
                raise ValueError(f"the feature extractor must return features (B, D) and probs (B, K) or None for "
                                 f"B = {len(batch)} images, got {tuple(f.shape)} and "
                                 f"{None if p is None else tuple(p.shape)}")
            feats.append(f.detach().float().cpu())
            probs.append(None if p is None else p.detach().float().cpu())
    has_probs = all(p is not None for p in probs)
    return torch.cat(feats), (torch.cat(probs) if has_probs and probs else None)


# Features of real images per extractor: {extractor: {(dataset, split, n, source): (feats, probs)}}. Weak
# keys: an extractor that is garbage-collected takes its cached features with it.
_FEATURE_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, int, str], Features]] = weakref.WeakKeyDictionary()
_DEFAULT_EXTRACTORS: dict[tuple[str, str], ClassifierExtractor] = {}


def clear_feature_cache() -> None:
    """Forget the cached features of real images and the loaded default classifiers."""
    _FEATURE_CACHE.clear()
    _DEFAULT_EXTRACTORS.clear()


def _default_extractor(dataset: str, device: torch.device) -> ClassifierExtractor:
    key = (dataset, str(device))
    if key not in _DEFAULT_EXTRACTORS:
        _DEFAULT_EXTRACTORS[key] = ClassifierExtractor(load_classifier(dataset, device=device))
    return _DEFAULT_EXTRACTORS[key]


def real_images(dataset: str, split: str, n: int) -> ImageData:
    """A fixed random subset of n images of a split (all of them if it has fewer), x float in [-1, 1].

    The subset is the first n of one seeded permutation (SUBSET_SEED), so a smaller subset lies inside
    a larger one and every call, run and machine with the same data gets the same images."""
    data = load_dataset(dataset, split, dtype="uint8")
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(SUBSET_SEED))[:n]
    return replace(data, x=uint8_to_float(data.x[pick]), y=data.y[pick])


def _floor_draws(pool: Tensor, ref_feats: Tensor, n: int) -> Tensor:
    """FID_self of FLOOR_DRAWS random sets of n real images from `pool` (features) against the reference."""
    generator = torch.Generator().manual_seed(SUBSET_SEED + 1)
    draws = [pool[:n]] + [pool[torch.randperm(len(pool), generator=generator)[:n]] for _ in range(FLOOR_DRAWS - 1)]
    return torch.tensor([frechet_distance(d, ref_feats) for d in draws], dtype=torch.float64)


def _real_features(extractor: ExtractorLike, dataset: str, split: str, n: int, batch_size: int) -> Features:
    """Features of ``real_images(dataset, split, n)``, cached per extractor and data source."""
    key = (dataset, split, n, describe_source(dataset, split))
    try:
        cache = _FEATURE_CACHE.setdefault(extractor, {})
    except TypeError:  # not weak-referenceable: no caching
        cache = {}
    if key not in cache:
        cache[key] = extract_features(extractor, real_images(dataset, split, n).x, batch_size=batch_size)
    return cache[key]


def _check_samples(samples: Any, dataset: str) -> Tensor:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    c, h, w = IMAGE_SHAPES[dataset]
    if not isinstance(samples, Tensor) or not samples.is_floating_point():
        raise ValueError(f"samples must be a float tensor (N, {c}, {h}, {w}) in [-1, 1], got {type(samples).__name__}"
                         + (f" of {samples.dtype}" if isinstance(samples, Tensor) else ""))
    if samples.ndim != 4 or tuple(samples.shape[1:]) != (c, h, w):
        raise ValueError(f"samples must have shape (N, {c}, {h}, {w}) for {dataset}, got {tuple(samples.shape)}")
    if len(samples) < 2:
        raise ValueError(f"need at least 2 samples to fit a covariance, got {len(samples)}")
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or inf")
    lo, hi = float(samples.min()), float(samples.max())
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(f"samples must lie in [-1, 1] (the range diffedu's data and samplers use), got values in "
                         f"[{lo:.3g}, {hi:.3g}]; map [0, 1] images with 2 * x - 1, or clamp with samples.clamp(-1, 1)")
    return samples.clamp(-1, 1)


def evaluate_samples(samples: Tensor, dataset: str = "mnist", *, n_real: int = 10_000, extractor: ExtractorLike | None = None,
                     seed: int = 0, batch_size: int = 500, kid_subsets: int = 100,
                     kid_subset_size: int = 1000) -> dict[str, Any]:
    """Judge generated images (N, C, H, W) in [-1, 1] against real ``dataset`` images.

    The reference is a fixed random subset of ``n_real`` TRAIN images (``real_images``). The floor is
    the same measure for a fixed random subset of N TEST images against that reference: real against
    real at the same sample count, so ``fid_self - fid_self_floor`` is what the samples lose to real data.
    ``extractor`` (default: the shipped classifier of ``dataset``) gives the features; with one that
    returns no probabilities, ``confident_fraction`` and ``class_histogram`` are None. ``seed`` fixes
    KID's subsets. Features of real images are cached per (extractor, dataset, split, count).

    The FID floor is the mean over ``FLOOR_DRAWS`` random sets of N test images (from the first
    ``FLOOR_DRAWS * N`` of the fixed permutation, or all the test images if there are fewer), with its
    standard deviation over the draws in ``fid_self_floor_std`` (None when there are fewer than 2N test images,
    so that the draws cannot differ enough to estimate it; draws from 5N images overlap by a fifth on
    average, which makes the spread a slight underestimate) and the draws themselves in
    ``fid_self_floor_draws`` (the first is the first N test images of the permutation).

    Returns {"fid_self", "fid_self_floor", "fid_self_floor_std", "fid_self_floor_draws", "kid_self", "kid_self_std",
    "kid_self_floor", "confident_fraction", "class_histogram", "n_samples", "n_real", "n_floor"}."""
    samples = _check_samples(samples, dataset)
    if n_real < 2:
        raise ValueError(f"n_real must be at least 2, got {n_real}")
    n = len(samples)
    if n < FID_MIN_SAMPLES:
        warnings.warn(f"{n} samples: FID is biased upwards at small sample counts; compare fid_self only with "
                      f"fid_self_floor at the same count (or use >= {FID_MIN_SAMPLES} samples)",
                      SmallSampleWarning, stacklevel=2)
    if extractor is None:
        extractor = _default_extractor(dataset, samples.device)
    ref_feats, _ = _real_features(extractor, dataset, "train", n_real, batch_size)
    pool, _ = _real_features(extractor, dataset, "test", n * FLOOR_DRAWS, batch_size)
    test_feats = pool[:n]
    if len(ref_feats) < n_real or len(test_feats) < n:
        warnings.warn(f"{dataset} has only {len(ref_feats)} train / {len(test_feats)} test images here, fewer than "
                      f"the {n_real} / {n} asked for: the figures use those and are not comparable with full-size "
                      f"ones", SmallSampleWarning, stacklevel=2)
    feats, probs = extract_features(extractor, samples, batch_size=batch_size)
    kid_mean, kid_std = kid(feats, ref_feats, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    kid_floor, _ = kid(test_feats, ref_feats, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    floor_draws = _floor_draws(pool, ref_feats, min(n, len(pool)))
    return {
        "fid_self": frechet_distance(feats, ref_feats),
        "fid_self_floor": float(floor_draws.mean()),
        # The draws differ only when there are more test images than N; with fewer than 2N they overlap too much
        # for their spread to mean anything: None then (all draws are then nearly or exactly the same images).
        "fid_self_floor_std": float(floor_draws.std()) if len(pool) >= 2 * n else None,
        "fid_self_floor_draws": floor_draws.tolist(),
        "kid_self": kid_mean,
        "kid_self_std": kid_std,
        "kid_self_floor": kid_floor,
        "confident_fraction": None if probs is None else confident_fraction(probs),
        "class_histogram": None if probs is None else class_histogram(probs),
        "n_samples": n,
        "n_real": len(ref_feats),
        "n_floor": len(test_feats),
    }
