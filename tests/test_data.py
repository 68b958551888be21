"""Tests of diffedu.data: every source of image data, its errors, and the toy 2-D distributions.

No test uses the network or /work/shared: fake datasets are written to tmp_path, DIFFEDU_OFFLINE is set
(except where the network probe itself is tested, against an unresolvable name), and the probe hosts
are replaced by that name everywhere so that nothing can reach a real server.
"""

from __future__ import annotations

import io
import socket
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffedu import data

UNRESOLVABLE = ("nonexistent.invalid", 443)  # .invalid never resolves (RFC 6761)


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DIFFEDU_DATA", raising=False)
    monkeypatch.setenv("DIFFEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DIFFEDU_OFFLINE", "1")
    monkeypatch.setattr(data, "PROBE_HOSTS", {name: UNRESOLVABLE for name in data.DATASETS})
    monkeypatch.setattr(data, "_probe_results", {})


def fake_images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    x[0].flat[0], x[0].flat[1] = 0, 255  # both ends of the pixel range
    return x


def labels(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % 10


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A DIFFEDU_DATA folder with small MNIST and Fashion-MNIST files (30 train, 12 test images)."""
    folder = tmp_path / "npz"
    folder.mkdir()
    for name in ("mnist", "fashion_mnist"):
        for split, n in (("train", 30), ("test", 12)):
            np.savez_compressed(folder / f"{name}_{split}.npz", x=fake_images(n, (28, 28)), y=labels(n))
    monkeypatch.setenv("DIFFEDU_DATA", str(folder))
    return folder


def write_jpeg_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    blobs = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    np.savez_compressed(path, jpeg=np.concatenate(blobs), offsets=offsets, y=y)


def smooth_rgb(n: int) -> np.ndarray:
    """Smooth colour images, which JPEG keeps close to the original."""
    ramp = np.linspace(0, 255, 32)
    base = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128.0 + 0 * ramp[:, None]), -1)
    return np.stack([np.roll(base, 4 * i, axis=1) for i in range(n)]).astype(np.uint8)


def test_names_and_classes() -> None:
    assert data.DATASETS == ("mnist", "fashion_mnist", "cifar10")
    assert data.CLASS_NAMES["mnist"] == tuple("0123456789")
    fashion = data.CLASS_NAMES["fashion_mnist"]
    assert fashion[0] == "T-shirt/top" and fashion[9] == "Ankle boot"
    assert data.CLASS_NAMES["cifar10"][1] == "automobile" and len(data.CLASS_NAMES["cifar10"]) == 10


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_data_dir_grayscale(data_dir: Path, name: str) -> None:
    raw = np.load(data_dir / f"{name}_train.npz")["x"]
    ds = data.load_dataset(name)
    assert len(ds) == 30 and ds.x.shape == (30, 1, 28, 28)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.x.min() == -1.0 and ds.x.max() == 1.0
    torch.testing.assert_close(ds.x[:, 0], torch.from_numpy(raw).float() / 127.5 - 1)
    assert ds.y.tolist() == labels(30).tolist()
    assert ds.classes == data.CLASS_NAMES[name] and not ds.is_sample
    assert ds.source == f"DIFFEDU_DATA={data_dir} ({name}_train.npz, 30 of 60000 images)"
    assert data.describe_source(name) == ds.source
    assert name in repr(ds) and "30x1x28x28" in repr(ds)
    assert len(data.load_dataset(name, "test")) == 12


def test_limit_and_uint8(data_dir: Path) -> None:
    raw = np.load(data_dir / "mnist_train.npz")["x"]
    ds = data.load_dataset("mnist", limit=5, dtype="uint8")
    assert ds.x.dtype == torch.uint8 and ds.x.shape == (5, 1, 28, 28)
    assert torch.equal(ds.x[:, 0], torch.from_numpy(raw[:5])) and ds.y.tolist() == [0, 1, 2, 3, 4]
    assert len(data.load_dataset("mnist", limit=1000)) == 30
    torch.testing.assert_close(data.uint8_to_float(ds.x), data.load_dataset("mnist", limit=5).x)


def test_uint8_to_float() -> None:
    x = torch.tensor([0, 255, 51], dtype=torch.uint8)
    torch.testing.assert_close(data.uint8_to_float(x), torch.tensor([-1.0, 1.0, -0.6]))
    f = torch.tensor([0.0, 255.0])
    data.uint8_to_float(f)
    assert f.tolist() == [0.0, 255.0]  # the input is never changed in place


def test_cifar_exact_is_transposed_to_nchw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = fake_images(8, (32, 32, 3))
    np.savez_compressed(tmp_path / "cifar10_exact_test.npz", x=x, y=labels(8), idx=np.arange(8))
    monkeypatch.setenv("DIFFEDU_DATA", str(tmp_path))
    ds = data.load_dataset("cifar10", "test", dtype="uint8")
    assert ds.x.shape == (8, 3, 32, 32) and ds.x.is_contiguous()
    assert torch.equal(ds.x, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert ds.source == f"DIFFEDU_DATA={tmp_path} (cifar10_exact_test.npz, 8 of 10000 images)"
    assert ds.classes[9] == "truck"


def test_cifar_jpeg_decode_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = smooth_rgb(6)
    path = tmp_path / "cifar10_jpeg_train.npz"
    write_jpeg_npz(path, x, labels(6))
    np.savez_compressed(tmp_path / "cifar10_exact_train.npz", x=x[:2], y=labels(2))  # the JPEG set wins
    monkeypatch.setenv("DIFFEDU_DATA", str(tmp_path))
    decoded = Path(data.cache_dir()) / "decoded"

    part = data.load_dataset("cifar10", limit=3, dtype="uint8")  # a partial decode is not cached
    assert part.x.shape == (3, 3, 32, 32) and not decoded.exists()
    ds = data.load_dataset("cifar10", dtype="uint8")
    assert ds.x.shape == (6, 3, 32, 32) and ds.y.tolist() == labels(6).tolist()
    assert "cifar10_jpeg_train.npz, JPEG-compressed pixels" in ds.source
    assert np.abs(ds.x.permute(0, 2, 3, 1).numpy().astype(int) - x).mean() < 4
    assert len(list(decoded.glob("cifar10_jpeg_train-*.npy"))) == 1

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(Image, "open", no_decoding)
    again = data.load_dataset("cifar10", limit=4, dtype="uint8")
    assert torch.equal(again.x, ds.x[:4])

    monkeypatch.undo()  # the file changes: decoded again, the old cache replaced
    monkeypatch.setenv("DIFFEDU_DATA", str(tmp_path))
    monkeypatch.setenv("DIFFEDU_CACHE", str(decoded.parent))
    monkeypatch.setenv("DIFFEDU_OFFLINE", "1")
    write_jpeg_npz(path, x[::-1].copy(), labels(6)[::-1].copy())
    changed = data.load_dataset("cifar10", dtype="uint8")
    assert changed.y.tolist() == labels(6)[::-1].tolist() and torch.equal(changed.x[0], ds.x[5])
    assert len(list(decoded.glob("cifar10_jpeg_train-*.npy"))) == 1


def test_cifar_falls_back_to_exact_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez_compressed(tmp_path / "cifar10_exact_train.npz", x=fake_images(4, (32, 32, 3)), y=labels(4))
    monkeypatch.setenv("DIFFEDU_DATA", str(tmp_path))
    assert "cifar10_exact_train.npz" in data.load_dataset("cifar10").source


@pytest.mark.parametrize("name, split", [(n, s) for n in data.DATASETS for s in data.SPLITS])
def test_bundled_sample(name: str, split: str) -> None:
    per_class = data.SAMPLE_PER_CLASS[name][data.SPLITS.index(split)]
    full = data.FULL_SIZES[name][data.SPLITS.index(split)]
    with pytest.warns(data.SampleDataWarning, match=f"{10 * per_class} of {full} images.*DIFFEDU_DATA"):
        ds = data.load_dataset(name, split)
    assert ds.is_sample and ds.source == f"bundled sample: {10 * per_class} of {full} images"
    assert ds.x.shape == (10 * per_class, *data.IMAGE_SHAPES[name]) and ds.x.dtype == torch.float32
    assert -1 <= ds.x.min() < -0.99 and 0.99 < ds.x.max() <= 1 and ds.x.std() > 0.2  # real images
    assert ds.y.bincount().tolist() == [per_class] * 10
    assert data.describe_source(name, split) == ds.source


def test_bundled_samples_fit_the_budget() -> None:
    files = sorted(data.SAMPLE_DIR.iterdir())
    assert [f.name for f in files] == sorted(f"{n}_{s}.npz" for n in data.DATASETS for s in data.SPLITS)
    assert sum(f.stat().st_size for f in files) < 6.2e6


def test_nothing_found_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "SAMPLE_DIR", tmp_path / "no_samples")
    with pytest.raises(data.DataNotFoundError) as err:
        data.load_dataset("mnist")
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for part in ("'mnist'", "DIFFEDU_OFFLINE", "DIFFEDU_DATA: not set", "bundled sample",
                 "connect to the internet", "mnist_train.npz"):
        assert part in message
    monkeypatch.setenv("DIFFEDU_DATA", str(tmp_path / "missing"))
    with pytest.raises(data.DataNotFoundError,
                       match="missing does not exist: point it at the folder that holds fashion_mnist_test.npz"):
        data.load_dataset("fashion_mnist", "test")
    monkeypatch.setenv("DIFFEDU_DATA", str(tmp_path))
    with pytest.raises(data.DataNotFoundError, match="no cifar10_test.npz or cifar10_jpeg_test.npz or"):
        data.load_dataset("cifar10", "test")
    assert data.describe_source("cifar10", "test").startswith("nothing")


def test_corrupt_or_wrong_npz_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFEDU_DATA", str(tmp_path))
    (tmp_path / "mnist_train.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="mnist_train.npz"):
        data.load_dataset("mnist")
    np.savez(tmp_path / "mnist_test.npz", images=fake_images(2, (28, 28)), y=labels(2))
    with pytest.raises(ValueError, match="mnist_test.npz.*need arrays x, y"):
        data.load_dataset("mnist", "test")
    np.savez(tmp_path / "fashion_mnist_train.npz", x=fake_images(2, (32, 32)), y=labels(2))
    with pytest.raises(ValueError, match="expected uint8 images"):
        data.load_dataset("fashion_mnist")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mnist, fashion_mnist, cifar10"):
        data.load_dataset("imagenet")
    with pytest.raises(ValueError, match="train, test"):
        data.load_dataset("mnist", "valid")
    with pytest.raises(ValueError, match="float32, uint8"):
        data.load_dataset("mnist", dtype="float16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        data.load_dataset("mnist", limit=0)
    with pytest.raises(ValueError, match="valid"):
        data.describe_source("svhn")


def write_idx(path: Path, arr: np.ndarray) -> None:
    path.write_bytes(struct.pack(">I", 0x0800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def test_torchvision_cache_is_used_first(data_dir: Path) -> None:
    raw = data.cache_dir() / "torchvision" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x = fake_images(7, (28, 28), seed=1)
    for prefix, n in (("train", 7), ("t10k", 3)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:n])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels(n).astype(np.uint8))
    assert data.describe_source("mnist") == f"torchvision cache {raw.parent.parent}"
    ds = data.load_dataset("mnist", dtype="uint8")
    assert ds.source == f"torchvision cache {raw.parent.parent}" and not ds.is_sample
    assert torch.equal(ds.x[:, 0], torch.from_numpy(x)) and ds.y.tolist() == labels(7).tolist()
    assert len(data.load_dataset("mnist", "test")) == 3
    assert "DIFFEDU_DATA" in data.load_dataset("fashion_mnist").source  # only MNIST is cached


def test_dead_network_fails_fast(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFFEDU_OFFLINE")
    monkeypatch.setattr(data, "PROBE_TIMEOUT_S", 0.5)

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download although the probe failed")

    monkeypatch.setattr(data, "_tv_load", no_download)
    assert data.describe_source("mnist").startswith("torchvision download into")  # not probed yet
    start = time.perf_counter()
    ds = data.load_dataset("mnist")
    assert time.perf_counter() - start < 3 and "DIFFEDU_DATA" in ds.source
    assert data._probe_results == {UNRESOLVABLE: False}
    assert data.describe_source("mnist") == ds.source  # the probe's result is remembered


def test_a_hanging_probe_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def hang(*args: object, **kwargs: object) -> None:
        calls.append(args)
        time.sleep(3)
        raise OSError("too late")

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(data, "PROBE_TIMEOUT_S", 0.2)
    start = time.perf_counter()
    assert not data._network_reachable("example.invalid", 443)
    assert not data._network_reachable("example.invalid", 443)
    assert time.perf_counter() - start < 2 and len(calls) == 1


def test_download_uses_a_socket_timeout_and_falls_through(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    seen = []

    class FailingMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            seen.append((download, socket.getdefaulttimeout()))
            raise RuntimeError("simulated download failure")

    monkeypatch.delenv("DIFFEDU_OFFLINE")
    monkeypatch.setattr(torchvision.datasets, "MNIST", FailingMNIST)
    monkeypatch.setitem(data._probe_results, UNRESOLVABLE, True)  # pretend the network is up
    before = socket.getdefaulttimeout()
    ds = data.load_dataset("mnist")
    assert seen == [(True, data.DOWNLOAD_SOCKET_TIMEOUT_S)] and socket.getdefaulttimeout() == before
    assert "DIFFEDU_DATA" in ds.source
    monkeypatch.delenv("DIFFEDU_DATA")
    monkeypatch.setattr(data, "SAMPLE_DIR", data_dir / "none")
    with pytest.raises(data.DataNotFoundError, match="simulated download failure"):
        data.load_dataset("mnist")


def test_make_sample(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez_compressed(data_dir / "cifar10_exact_train.npz", x=fake_images(40, (32, 32, 3)), y=labels(40)[::-1])
    np.savez_compressed(data_dir / "cifar10_exact_test.npz", x=fake_images(10, (32, 32, 3)), y=labels(10))
    sizes = data.make_sample(data_dir, tmp_path / "out", {"mnist": (2, 1), "cifar10": (3, 1)})
    assert set(sizes) == {"mnist_train.npz", "mnist_test.npz", "cifar10_train.npz", "cifar10_test.npz"}
    with np.load(tmp_path / "out" / "cifar10_train.npz") as f:
        assert f["x"].shape == (30, 32, 32, 3) and np.bincount(f["y"]).tolist() == [3] * 10
    with np.load(tmp_path / "out" / "mnist_train.npz") as f:
        assert f["y"].tolist() == labels(20).tolist()  # the first images of each class, in order
    with pytest.raises(ValueError, match="fewer than 5"):
        data.make_sample(data_dir, tmp_path / "out", {"mnist": (5, 1)})
    monkeypatch.setattr(data, "SAMPLE_PER_CLASS", {"mnist": (3, 1), "fashion_mnist": (1, 1)})
    data.main(["make-sample", str(data_dir), str(tmp_path / "cli")])
    assert "total" in capsys.readouterr().out and (tmp_path / "cli" / "fashion_mnist_test.npz").is_file()
    with pytest.raises(SystemExit, match="usage"):
        data.main(["make-samples", str(data_dir)])


@pytest.mark.parametrize("name", data.TOY_DISTRIBUTIONS)
def test_toy_2d(name: str) -> None:
    pts = data.toy_2d(name, 5000, generator=torch.Generator().manual_seed(0))
    assert pts.shape == (5000, 2) and pts.dtype == torch.float32 and torch.isfinite(pts).all()
    assert pts.abs().max() <= 3.0 and pts.mean(0).abs().max() < 0.2
    assert 0.7 < pts.std() < 1.3
    again = data.toy_2d(name, 5000, generator=torch.Generator().manual_seed(0))
    other = data.toy_2d(name, 5000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pts, again) and not torch.equal(pts, other)
    assert data.toy_2d(name, 1).shape == (1, 2)


def test_toy_2d_errors() -> None:
    with pytest.raises(ValueError, match="moons, swiss_roll"):
        data.toy_2d("spiral", 10)
    with pytest.raises(ValueError, match="at least 1"):
        data.toy_2d("moons", 0)


def test_image_data_is_frozen(data_dir: Path) -> None:
    ds = data.load_dataset("mnist", limit=2)
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading from DIFFEDU_DATA warns about nothing
        data.load_dataset("mnist", limit=2)
