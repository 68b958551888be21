"""Tests of diffedu.metrics (Frechet distance, KID, confident fraction, evaluate_samples) and of the
classifier it measures with (diffedu.models.classifier, the shipped weights).

Closed forms come from feature sets built to have an exact empirical mean and covariance. Real images
come from the bundled sample only: DIFFEDU_DATA is unset and the cache points to an empty folder.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from diffedu import metrics
from diffedu.data import SampleDataWarning, load_dataset
from diffedu.metrics import (
    SmallSampleWarning,
    class_histogram,
    confident_fraction,
    evaluate_samples,
    extract_features,
    frechet_distance,
    kid,
)
from diffedu.models.classifier import (
    Classifier,
    ClassifierConfig,
    default_config,
    evaluate_accuracy,
    load_classifier,
    random_shift,
    save_classifier,
    weights_path,
)
from diffedu.models.classifier import main as classifier_main


@pytest.fixture(autouse=True)
def bundled_data_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DIFFEDU_DATA", raising=False)
    monkeypatch.setenv("DIFFEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DIFFEDU_OFFLINE", "1")
    warnings.simplefilter("ignore", SampleDataWarning)


def bundled(dataset: str, split: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleDataWarning)
        return load_dataset(dataset, split)


def exact_gaussian(n: int, mean: torch.Tensor, cov_root: torch.Tensor, seed: int) -> torch.Tensor:
    """n points (n, D) whose empirical mean is exactly ``mean`` and unbiased covariance ``cov_root @ cov_root.T``."""
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    white = torch.linalg.cholesky(torch.cov(z.T))          # z's covariance is white @ white.T
    z = torch.linalg.solve_triangular(white, z.T, upper=False).T  # now exactly identity covariance
    return z @ cov_root.T + mean


# --- frechet_distance -------------------------------------------------------------------------------

def test_frechet_distance_is_zero_for_identical_sets() -> None:
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(x.numpy(), x.clone()) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("rotate", [False, True])
def test_frechet_distance_matches_the_closed_form_for_gaussians(rotate: bool) -> None:
    d = 6
    mu_a, mu_b = torch.zeros(d, dtype=torch.float64), torch.linspace(-1, 2, d, dtype=torch.float64)
    var_a, var_b = torch.linspace(0.5, 3, d, dtype=torch.float64), torch.linspace(2, 0.1, d, dtype=torch.float64)
    rot = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    rot = rot if rotate else torch.eye(d, dtype=torch.float64)  # commuting covariances R diag(v) R^T
    a = exact_gaussian(400, mu_a, rot @ torch.diag(var_a.sqrt()), seed=2)
    b = exact_gaussian(300, mu_b, rot @ torch.diag(var_b.sqrt()), seed=3)
    expected = float((mu_a - mu_b).square().sum() + (var_a.sqrt() - var_b.sqrt()).square().sum())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_an_eigenvalue_reference_for_general_covariances() -> None:
    g = torch.Generator().manual_seed(4)
    a = torch.randn(300, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    b = torch.randn(200, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64) + 0.3
    sa, sb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    tr_covmean = np.sqrt(np.linalg.eigvals(sa @ sb).real.clip(0)).sum()  # eigenvalues of S_a S_b are real, >= 0
    ref = ((a.mean(0) - b.mean(0)).square().sum().item() + np.trace(sa) + np.trace(sb) - 2 * tr_covmean)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)


def test_frechet_distance_is_symmetric_and_grows_with_a_mean_shift() -> None:
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(400, 8, generator=g), torch.randn(300, 8, generator=g) * 1.5
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    direction = torch.ones(8) / math.sqrt(8)
    shifted = [frechet_distance(a, a + s * direction) for s in (0.0, 0.5, 1.0, 2.0)]
    assert shifted == pytest.approx([0.0, 0.25, 1.0, 4.0], abs=1e-6)  # same covariance: FD = ||shift||^2


def test_frechet_distance_rejects_bad_features() -> None:
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(10, 3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(torch.full((4, 3), float("nan")), torch.randn(10, 3))


# --- kid ----------------------------------------------------------------------------------------------

def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift() -> None:
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(1000, 16, generator=g), torch.randn(1000, 16, generator=g)
    same, same_std = kid(a, b, subsets=20, subset_size=500, seed=0)
    shifted, shifted_std = kid(a, b + 0.5, subsets=20, subset_size=500, seed=0)
    assert abs(same) < 0.01 and same_std > 0
    assert shifted > 0.1 and shifted > 10 * shifted_std
    assert kid(a, b, subsets=5, seed=3) == kid(a, b, subsets=5, seed=3)  # the seed fixes the subsets
    with pytest.raises(ValueError, match="subsets"):
        kid(a, b, subsets=0)


# --- confident_fraction, class_histogram ---------------------------------------------------------------

def test_confident_fraction_and_class_histogram_on_hand_made_probs() -> None:
    probs = torch.tensor([[0.95, 0.05, 0.0], [0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.0, 0.05, 0.95]])
    assert confident_fraction(probs) == 0.75            # 0.95, 0.9 (>= counts) and 0.95
    assert confident_fraction(probs, threshold=0.92) == 0.5
    assert confident_fraction(probs, threshold=0.5) == 1.0
    assert class_histogram(probs) == [3, 0, 1]
    with pytest.raises(ValueError, match="softmax"):
        confident_fraction(torch.tensor([[2.0, -1.0]]))
    with pytest.raises(ValueError, match="threshold"):
        confident_fraction(probs, threshold=0.0)


# --- the classifier ------------------------------------------------------------------------------------

def test_classifier_shapes_and_input_check() -> None:
    for cfg in (ClassifierConfig(), default_config("cifar10")):
        model = Classifier(cfg).eval()
        x = torch.rand(3, cfg.in_channels, cfg.image_size, cfg.image_size) * 2 - 1
        assert model.features(x).shape == (3, cfg.feature_dim)
        assert model(x).shape == (3, cfg.num_classes)
    with pytest.raises(ValueError, match="expects images"):
        Classifier(ClassifierConfig())(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="widths"):
        ClassifierConfig(widths=())


def test_random_shift_moves_each_image_and_fills_with_black() -> None:
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    assert torch.equal(random_shift(x, 0), x)
    y = random_shift(x, 2, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    for xi, yi in zip(x, y):  # each output is some shift of its input, padded with -1
        padded = torch.nn.functional.pad(xi, (2, 2, 2, 2), value=-1.0)
        assert any(torch.equal(yi, padded[:, r: r + 8, c: c + 8]) for r in range(5) for c in range(5))


@pytest.mark.parametrize("dataset, shipped_min, sample_min", [("mnist", 0.99, 0.97), ("fashion_mnist", 0.91, 0.85)])
def test_shipped_classifier_loads_weights_only_and_classifies_the_bundled_sample(
        dataset: str, shipped_min: float, sample_min: float) -> None:
    path = weights_path(dataset)
    assert path.stat().st_size < 2_000_000
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert {"state_dict", "config", "test_accuracy", "record"} <= payload.keys()
    assert payload["test_accuracy"] >= shipped_min and payload["record"]["test_images"] == 10_000
    model = load_classifier(dataset)
    assert not model.training and model.metadata["test_accuracy"] == payload["test_accuracy"]
    test = bundled(dataset, "test")
    assert evaluate_accuracy(model, test.x, test.y) >= sample_min


def test_missing_weights_name_the_command_that_trains_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="python -m diffedu.models.classifier --dataset cifar10"):
        load_classifier("cifar10", path=tmp_path / "none.pt")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_classifier("svhn")


def test_training_command_saves_a_file_that_loads_back(tmp_path: Path) -> None:
    out = tmp_path / "tiny_classifier.pt"
    classifier_main(["--dataset", "mnist", "--epochs", "1", "--limit", "256", "--batch-size", "64",
                     "--no-progress", "--out", str(out)])
    model = load_classifier("mnist", path=out)
    record = model.metadata
    assert record["train_images"] == 256 and record["training"]["epochs"] == 1
    assert {"seconds", "device", "torch", "date"} <= record["training"].keys()
    assert 0.0 <= record["test_accuracy"] <= 1.0
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file is gone

    again = tmp_path / "again.pt"
    save_classifier(model, record, again)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert torch.equal(load_classifier("mnist", path=again)(x), model(x))


# --- real_images, extract_features, evaluate_samples ---------------------------------------------------------------

def test_real_images_are_a_fixed_nested_random_subset() -> None:
    small, large = metrics.real_images("mnist", "test", 50), metrics.real_images("mnist", "test", 200)
    assert small.x.shape == (50, 1, 28, 28) and small.x.dtype == torch.float32
    assert torch.equal(small.x, large.x[:50]) and torch.equal(small.y, large.y[:50])
    assert small.x.min() >= -1 and small.x.max() <= 1
    assert len(set(small.y.tolist())) > 5  # a random subset, not the first images of one class


def test_extract_features_with_a_classifier_batches_and_restores_mode() -> None:
    model = Classifier(ClassifierConfig()).train()
    x = torch.rand(7, 1, 28, 28) * 2 - 1
    feats, probs = extract_features(model, x, batch_size=3)
    assert feats.shape == (7, 128) and probs.shape == (7, 10)
    assert torch.allclose(probs.sum(1), torch.ones(7))
    assert model.training  # features were computed in eval mode, then the mode was restored
    assert torch.allclose(feats, model.eval().features(x), atol=1e-5)
    with pytest.raises(TypeError, match="callable"):
        extract_features(42, x)


def test_evaluate_samples_real_images_sit_near_the_floor_and_noise_far_above() -> None:
    test = bundled("mnist", "test")                     # 1000 images in the bundled sample
    real = test.x[500:]                                  # real digits; about half of them in the floor's 500
    with pytest.warns(SmallSampleWarning):
        good = evaluate_samples(real, "mnist", n_real=2000, kid_subsets=20)
    noise = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with pytest.warns(SmallSampleWarning):
        bad = evaluate_samples(noise, "mnist", n_real=2000, kid_subsets=20)
    assert {"fid_self", "fid_self_floor", "kid_self", "kid_self_std", "confident_fraction", "class_histogram",
            "n_samples", "n_real"} <= good.keys()
    assert good["n_samples"] == 500 and good["n_real"] == 2000
    assert bad["fid_self_floor"] == good["fid_self_floor"]  # the same real reference and test images
    assert good["fid_self"] < 2 * good["fid_self_floor"] + 1
    assert bad["fid_self"] > 20 * good["fid_self"]
    assert bad["kid_self"] > 20 * max(good["kid_self"], 1e-3)
    assert good["confident_fraction"] > 0.9
    assert sum(good["class_histogram"]) == 500 and min(good["class_histogram"]) > 20


def test_evaluate_samples_uses_a_plugged_in_extractor() -> None:
    calls = []

    def pixels_7x7(images: torch.Tensor) -> torch.Tensor:  # a feature-only extractor: (B, 49)
        calls.append(len(images))
        return torch.nn.functional.avg_pool2d(images, 4).flatten(1)

    samples = metrics.real_images("fashion_mnist", "test", 300).x
    with pytest.warns(SmallSampleWarning):
        out = evaluate_samples(samples, "fashion_mnist", n_real=400, extractor=pixels_7x7, batch_size=200)
    pool = len(metrics.real_images("fashion_mnist", "test", 300 * metrics.FLOOR_DRAWS))
    assert sum(calls) == 300 + 400 + pool   # samples, train reference, the test images the floor draws from
    assert out["confident_fraction"] is None and out["class_histogram"] is None
    draws = out["fid_self_floor_draws"]
    assert out["fid_self"] == pytest.approx(draws[0], rel=1e-9)  # the samples are the floor's first draw
    assert len(draws) == metrics.FLOOR_DRAWS and len(set(draws)) == len(draws)  # other sets of real images
    assert out["fid_self_floor"] == pytest.approx(sum(draws) / len(draws))
    assert out["fid_self_floor_std"] == pytest.approx(torch.tensor(draws, dtype=torch.float64).std().item())
    with pytest.warns(SmallSampleWarning):
        evaluate_samples(samples, "fashion_mnist", n_real=400, extractor=pixels_7x7, batch_size=200)
    assert sum(calls) == 2 * 300 + 400 + pool  # the real features came from the cache


@pytest.mark.parametrize("samples, match", [
    (torch.zeros(4, 1, 32, 32), r"shape \(N, 1, 28, 28\)"),
    (torch.zeros(4, 28, 28), "shape"),
    (torch.full((4, 1, 28, 28), 2.0), r"\[-1, 1\]"),
    (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), "float tensor"),
    (torch.zeros(1, 1, 28, 28), "at least 2"),
    (torch.full((4, 1, 28, 28), float("nan")), "NaN"),
])
def test_evaluate_samples_rejects_bad_inputs(samples: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate_samples(samples, "mnist")


def test_evaluate_samples_rejects_unknown_datasets_and_counts() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        evaluate_samples(torch.zeros(4, 1, 28, 28), "svhn")
    with pytest.raises(ValueError, match="n_real"):
        evaluate_samples(torch.zeros(4, 1, 28, 28), "mnist", n_real=1)
