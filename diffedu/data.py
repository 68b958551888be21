"""Data: the image datasets the course trains on, and toy 2-D distributions.

Images come as x = pixel / 127.5 - 1 in [-1, 1], the range diffusion models work in (or as the raw
uint8 pixels). ``load_dataset`` takes them from the first of these that has them, and never
substitutes random data:

1. torchvision's files in ``cache_dir() / "torchvision"``, downloaded there when the network is
   reachable (probed first, so that an offline machine fails in seconds); DIFFEDU_OFFLINE=1 skips it.
2. ``$DIFFEDU_DATA``: a folder of ``.npz`` files such as ``mnist_train.npz`` (``x`` uint8, ``y``); set to
   something that is not a folder, it is an error rather than a silent fall-back.
3. A small real sample bundled with the package, with a ``SampleDataWarning``.
4. Otherwise one ``DataNotFoundError`` that says what was tried and how to get the data.

``python -m diffedu.data make-sample DIR`` rebuilds the bundled samples from such a folder.
"""

from __future__ import annotations

import io
import logging
import math
import os
import socket
import ssl
import sys
import threading
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
import torchvision.datasets as tvd
from PIL import Image

log = logging.getLogger(__name__)

DATASETS = ("mnist", "fashion_mnist", "cifar10")
SPLITS = ("train", "test")
DTYPES = ("float32", "uint8")
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
FULL_SIZES = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000), "cifar10": (50000, 10000)}
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
# Images per class in the bundled samples (train, test); sized to keep all six files under ~6 MB.
SAMPLE_PER_CLASS = {"mnist": (500, 100), "fashion_mnist": (300, 60), "cifar10": (100, 20)}

SAMPLE_DIR = Path(__file__).parent / "sample_data"
_TV_FOLDERS = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py"}
_IDX_FILES = tuple(f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))
_TV_FILES = {"mnist": _IDX_FILES, "fashion_mnist": _IDX_FILES,
             "cifar10": tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")}
# (host, port) of the server torchvision downloads each dataset from; probed before downloading.
PROBE_HOSTS = {"mnist": ("ossci-datasets.s3.amazonaws.com", 443),
               "fashion_mnist": ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
               "cifar10": ("www.cs.toronto.edu", 443)}
PROBE_TIMEOUT_S = 3.0
DOWNLOAD_SOCKET_TIMEOUT_S = 20.0
_probe_results: dict[tuple[str, int], bool] = {}


class DataNotFoundError(FileNotFoundError):
    """No source could provide the dataset; the message says what was tried and how to get it."""


class SampleDataWarning(UserWarning):
    """The small sample bundled with the package is used instead of the full dataset."""


@dataclass(frozen=True, eq=False)
class ImageData:
    """An image dataset in memory: ``x`` (N, C, H, W), float32 in [-1, 1] (or raw uint8), ``y`` int64."""

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    source: str
    is_sample: bool

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.x.shape)
        return (f"ImageData({self.name}/{self.split}: x {str(self.x.dtype)[6:]} {shape}, "
                f"{len(self.classes)} classes, source={self.source!r})")


def uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels p in {0..255} to floats x = p / 127.5 - 1 in [-1, 1] (on x's device)."""
    return x.to(torch.float32, copy=True).div_(127.5).sub_(1.0)


def cache_dir() -> Path:
    """``$DIFFEDU_CACHE`` or ``~/.cache/diffedu``: downloads and decoded data live here."""
    return Path(os.environ.get("DIFFEDU_CACHE") or "~/.cache/diffedu").expanduser()


def _offline() -> bool:
    return os.environ.get("DIFFEDU_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_choice(kind: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")


def _network_reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port opens within PROBE_TIMEOUT_S (cached per process).

    On port 443 the TLS handshake must succeed too, so that a proxy that accepts any connection does
    not pass for the server. The probe runs in a daemon thread: a slow DNS lookup cannot hang it."""
    if (host, port) not in _probe_results:
        ok: list[bool] = []

        def probe() -> None:
            try:
                with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as sock:
                    if port == 443:
                        ssl.create_default_context().wrap_socket(sock, server_hostname=host).close()
                ok.append(True)
            except OSError:  # includes ssl.SSLError and socket.timeout
                pass

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(PROBE_TIMEOUT_S + 0.5)
        _probe_results[(host, port)] = bool(ok)
    return _probe_results[(host, port)]


def _tv_present(name: str) -> bool:
    folder = cache_dir() / "torchvision" / _TV_FOLDERS[name]
    return all((folder / f).is_file() for f in _TV_FILES[name])


def _tv_load(name: str, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W[, 3]) uint8 and labels through torchvision's dataset classes."""
    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S if download else previous)
    try:  # the timeout turns a stalled download into an error instead of a hang
        ds = cls(str(cache_dir() / "torchvision"), train=split == "train", download=download)
    finally:
        socket.setdefaulttimeout(previous)
    return np.asarray(ds.data), np.asarray(ds.targets)


def _read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an .npz file; any damage is a ValueError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read {path} (need arrays {', '.join(keys)}): {exc}") from exc


def _decode_jpeg_npz(path: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Decode the first ``limit`` images of an npz of JPEGs (``jpeg``, ``offsets``, ``y``); all labels.

    A full decode is cached as .npy under cache_dir(), keyed by the file's path, size and mtime,
    so that a second load is fast and a changed file is decoded again."""
    st, tag = path.stat(), f"{zlib.crc32(str(path.resolve()).encode()):08x}"
    cached = cache_dir() / "decoded" / f"{path.stem}-{tag}-{st.st_size}-{st.st_mtime_ns}.npy"
    y = _read_npz(path, ("y",))["y"]
    n = len(y) if limit is None else min(limit, len(y))
    if cached.is_file():
        try:
            return np.array(np.load(cached, mmap_mode="r")[:n]), y
        except (OSError, ValueError) as exc:
            log.info("ignoring the unreadable cache %s: %s", cached, exc)
    d = _read_npz(path, ("jpeg", "offsets"))
    buf, off = d["jpeg"], d["offsets"]
    try:
        x = np.stack([np.asarray(Image.open(io.BytesIO(buf[off[i]: off[i + 1]].tobytes())).convert("RGB"))
                      for i in range(n)])
    except (OSError, ValueError, IndexError) as exc:
        raise ValueError(f"cannot decode the JPEG images in {path}: {exc}") from exc
    if n == len(y):  # only a complete decode is worth caching
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            for old in cached.parent.glob(f"{path.stem}-{tag}-*.npy"):
                old.unlink()  # the decode of an older version of this file
            tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, x)
            os.replace(tmp, cached)
        except OSError as exc:
            log.info("could not cache the decoded %s: %s", path, exc)
    return x, y


def _sources(name: str, split: str, tried: list[str], probe: bool) -> Iterator[tuple[str, Path, str]]:
    """The sources that may hold a dataset, in order, as (kind, path, description); each one
    skipped leaves its reason in ``tried``. Without ``probe`` the network is never touched."""
    root, full = cache_dir() / "torchvision", FULL_SIZES[name][SPLITS.index(split)]
    host, port = PROBE_HOSTS[name]
    if _tv_present(name):
        yield "torchvision", root, f"torchvision cache {root}"
    elif _offline():
        tried.append(f"torchvision cache {root}: not there; download skipped (DIFFEDU_OFFLINE is set)")
    else:  # without probing, a network not yet probed in this process may or may not be there
        reachable = _network_reachable(host, port) if probe else _probe_results.get((host, port))
        if reachable is False:
            tried.append(f"torchvision cache {root}: not there; no network ({host}:{port} unreachable)")
        else:
            yield "download", root, f"torchvision download into {root}" + ("" if reachable else " if online")
    folder = os.environ.get("DIFFEDU_DATA")
    names = [f"{name}_{split}.npz"]
    if name == "cifar10":  # the full set as JPEG first, then the lossless subset
        names += [f"cifar10_jpeg_{split}.npz", f"cifar10_exact_{split}.npz"]
    if folder and not Path(folder).expanduser().is_dir():
        what = "is a file, not a folder" if Path(folder).expanduser().exists() else "does not exist"
        raise DataNotFoundError(f"DIFFEDU_DATA={folder} {what}: point it at the folder that holds {names[0]} (and "
                                f"the other .npz files), or unset it")
    if not folder:
        tried.append("DIFFEDU_DATA: not set")
    elif not (paths := [p for p in (Path(folder).expanduser() / f for f in names) if p.is_file()]):
        tried.append(f"DIFFEDU_DATA={folder}: no {' or '.join(names)} there")
    else:
        n, kind = len(_read_npz(paths[0], ("y",))["y"]), "jpeg" if "_jpeg_" in paths[0].name else "npz"
        notes = [paths[0].name] + ["JPEG-compressed pixels"] * (kind == "jpeg") + [f"{n} of {full} images"] * (n < full)
        yield kind, paths[0], f"DIFFEDU_DATA={folder} ({', '.join(notes)})"
    sample = SAMPLE_DIR / f"{name}_{split}.npz"
    if sample.is_file():
        yield "sample", sample, f"bundled sample: {len(_read_npz(sample, ('y',))['y'])} of {full} images"
    else:
        tried.append(f"bundled sample: {sample} not there")


def _to_nchw(x: np.ndarray, y: np.ndarray, name: str, origin: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check images (N, H, W) or (N, H, W, C) uint8 and labels (N,); return (N, C, H, W), int64."""
    x = x.transpose(0, 3, 1, 2) if x.ndim == 4 and x.shape[-1] in (1, 3) else x[:, None] if x.ndim == 3 else x
    c, h, w = IMAGE_SHAPES[name]
    if (x.dtype != np.uint8 or x.shape[1:] != (c, h, w) or y.shape != x.shape[:1]
            or (len(y) and not 0 <= y.min() <= y.max() < len(CLASS_NAMES[name]))):
        raise ValueError(f"{origin}: expected uint8 images (N, {h}, {w}{', 3' * (c == 3)}) and labels (N,) in "
                         f"0..9, got {x.dtype} {tuple(x.shape)} and labels {tuple(y.shape)}")
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))


def load_dataset(name: str, split: str = "train", *, limit: int | None = None,
                 dtype: Literal["float32", "uint8"] = "float32") -> ImageData:
    """Load an image dataset: torchvision cache or download, $DIFFEDU_DATA, or the bundled sample.

    ``limit`` keeps the first ``limit`` images (in the dataset's canonical order). ``dtype="float32"``
    gives x = pixel / 127.5 - 1 in [-1, 1]; ``dtype="uint8"`` keeps the raw pixels (4x less memory;
    convert batches with ``uint8_to_float``). Raises DataNotFoundError when no source has the data."""
    _check_choice("dataset", name, DATASETS)
    _check_choice("split", split, SPLITS)
    _check_choice("dtype", dtype, DTYPES)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images or None, got {limit}")
    tried: list[str] = []
    for kind, path, source in _sources(name, split, tried, probe=True):
        if kind in ("torchvision", "download"):
            try:
                x, y = _tv_load(name, split, download=kind == "download")
                break
            except Exception as exc:  # a broken cache or a failed download: try the next source
                tried.append(f"{source}: failed ({type(exc).__name__}: {exc})")
                continue
        x, y = _decode_jpeg_npz(path, limit) if kind == "jpeg" else _read_npz(path, ("x", "y")).values()
        break
    else:
        raise DataNotFoundError(
            f"Dataset {name!r} ({split} split) not found. Tried:\n" + "".join(f"  - {t}\n" for t in tried)
            + f"To get it: connect to the internet and run again (torchvision downloads it into "
            f"{cache_dir() / 'torchvision'}), or set DIFFEDU_DATA to a folder holding {name}_{split}.npz "
            f"(arrays x: uint8 images (N, H, W) or (N, H, W, 3), y: (N,) integer labels).")
    log.info("%s (%s) from %s; skipped: %s", name, split, source, "; ".join(tried) or "nothing")
    if kind == "sample":
        unusable = [t for t in tried if t.startswith("DIFFEDU_DATA=")]
        warnings.warn(
            f"{name} ({split}): a small sample bundled with diffedu, {len(y)} of "
            f"{FULL_SIZES[name][SPLITS.index(split)]} images, not the full dataset"
            + (f" ({unusable[0]})" if unusable else "") + ". For the full set connect "
            f"to the internet and run again (torchvision downloads it), or, offline, set DIFFEDU_DATA to a "
            f"folder of .npz files such as {name}_{split}.npz.", SampleDataWarning, stacklevel=2)
    if len(y) == 0:
        raise ValueError(f"{source} holds no images ({name}, {split} split): replace the file, or unset DIFFEDU_DATA")
    xt, yt = _to_nchw(np.asarray(x)[:limit], np.asarray(y)[:limit], name, source)
    xt = uint8_to_float(xt) if dtype == "float32" else xt
    return ImageData(name, split, xt, yt, CLASS_NAMES[name], source, kind == "sample")


def describe_source(name: str, split: str = "train") -> str:
    """Where ``load_dataset(name, split)`` would take the data from; loads no images, no network."""
    _check_choice("dataset", name, DATASETS)
    _check_choice("split", split, SPLITS)
    tried: list[str] = []
    found: list[str] = []
    for _, _, source in _sources(name, split, tried, probe=False):
        found.append(source)
        if not source.endswith(" if online"):  # a download that may fail: say what comes next
            return ", else ".join(found)
    return ", else ".join(found + [f"nothing: load_dataset raises DataNotFoundError ({'; '.join(tried)})"])


TOY_DISTRIBUTIONS = ("moons", "swiss_roll", "ring", "checkerboard", "eight_gaussians")


def toy_2d(name: str, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points (n, 2) float32 from a toy 2-D distribution, centred, std about 1 per axis (like the
    noise it is mixed with), within [-3, 3]. The same ``generator`` state gives the same points."""
    _check_choice("toy distribution", name, TOY_DISTRIBUTIONS)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    u = torch.rand(n, generator=generator)
    pick = torch.randint(0, 8, (n,), generator=generator)
    noise = torch.randn(n, 2, generator=generator)
    if name == "moons":  # two interleaved half circles
        t, upper = math.pi * u, pick < 4
        pts = torch.stack([torch.where(upper, t.cos(), 1 - t.cos()), torch.where(upper, t.sin(), 0.5 - t.sin())], 1)
        pts = 0.57 * (pts - torch.tensor([0.5, 0.25])) + 0.03 * noise
    elif name == "swiss_roll":  # a spiral whose radius grows with the angle t
        t = 1.5 * math.pi * (1 + 2 * u)
        pts = (torch.stack([t * t.cos(), t * t.sin()], 1) - torch.tensor([2.0, 0.2])) / 13.5 + 0.02 * noise
    elif name == "ring":
        pts = 0.7 * torch.stack([(2 * math.pi * u).cos(), (2 * math.pi * u).sin()], 1) + 0.03 * noise
    elif name == "checkerboard":  # uniform on the 8 dark squares of a 4x4 board
        col, row = pick % 4, 2 * (pick // 4) + pick % 2
        pts = 0.87 * (torch.stack([col + u, row + torch.rand(n, generator=generator)], 1) / 2 - 1)
    else:  # eight Gaussians on a circle
        angle = pick * (math.pi / 4)
        pts = 0.68 * torch.stack([angle.cos(), angle.sin()], 1) + 0.05 * noise
    return (2.0 * pts).float().clamp_(-3.0, 3.0)


def make_sample(src: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                per_class: dict[str, tuple[int, int]] | None = None) -> dict[str, int]:
    """Write the bundled samples ``{name}_{split}.npz`` from a folder laid out like $DIFFEDU_DATA.

    Each keeps the first ``per_class`` (default SAMPLE_PER_CLASS) images of every class, in canonical
    order (CIFAR-10 from the lossless ``cifar10_exact_*`` files). Returns each file's size in bytes."""
    out = Path(out or SAMPLE_DIR)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, counts in (per_class or SAMPLE_PER_CLASS).items():
        for split, k in zip(SPLITS, counts):
            path = Path(src) / (f"cifar10_exact_{split}.npz" if name == "cifar10" else f"{name}_{split}.npz")
            d = _read_npz(path, ("x", "y"))
            by_class = [np.flatnonzero(d["y"] == c)[:k] for c in range(len(CLASS_NAMES[name]))]
            if min(map(len, by_class)) < k:
                raise ValueError(f"{path} has fewer than {k} images of some class")
            keep = np.sort(np.concatenate(by_class))
            target = out / f"{name}_{split}.npz"
            np.savez_compressed(target, x=d["x"][keep], y=d["y"][keep].astype(np.int64))
            sizes[target.name] = target.stat().st_size
    return sizes


def main(argv: list[str] | None = None) -> None:
    """``python -m diffedu.data make-sample SRC_DIR [OUT_DIR]``: rebuild the bundled samples."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or args[0] != "make-sample":
        raise SystemExit(f"usage: python -m diffedu.data make-sample SRC_DIR [OUT_DIR]\n{__doc__}")
    sizes = make_sample(*args[1:])
    for file_name, size in {**sizes, "total": sum(sizes.values())}.items():
        print(f"{file_name:28s} {size:10,d} bytes")

if __name__ == "__main__":
    main()
