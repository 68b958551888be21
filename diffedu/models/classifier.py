"""A small CNN classifier: the yardstick that ``diffedu.metrics`` measures samples with.

The network is a stack of conv blocks, each ``convs_per_block`` x (3x3 conv, BatchNorm, ReLU); the
first block keeps the full resolution, every later one halves it. Plain blocks (MNIST, Fashion-MNIST)
halve with a stride-2 conv (cheaper than a conv plus max-pool, which matters on a laptop CPU).
Residual blocks (``residual=True``, CIFAR-10: a ResNet-9-like net) are conv, 2x2 max-pool, then the
remaining convs as a residual branch, h <- h + convs(h). A linear "feature" layer follows:

    x                         (B, C, S, S)   images in [-1, 1]
    block 0                   (B, widths[0], S, S)
    block l = 1 .. L-1        (B, widths[l], S_l, S_l)   with S_l = ceil(S / 2**l)
    flatten (or, with global_pool, average over the S_L x S_L positions)
                              (B, widths[-1] * S_L**2)   (or (B, widths[-1]))
    features(x)               (B, feature_dim)   Linear + BatchNorm + ReLU: the penultimate embedding
    forward(x)                (B, num_classes)   logits = Linear(dropout(features(x)))

``features`` is what the Frechet distance ("FID_self") is computed on, ``softmax(forward)`` what the
confident fraction and the class histogram come from. The package ships weights for MNIST and
Fashion-MNIST in ``diffedu/weights/{dataset}_classifier.pt``; rebuild one (or train the CIFAR-10 one) with

    python -m diffedu.models.classifier --dataset mnist --out diffedu/weights/mnist_classifier.pt
    python -m diffedu.models.classifier --dataset cifar10     # a GPU: >= 90 % in a few minutes (30 epochs)

Training keeps the whole set on the device as uint8 (``diffedu.device_data``) and makes each batch
there: random shifts (crops of the padded image), flips where mirror images are the same class,
label smoothing, a one-cycle learning rate, and bf16 autocast with channels_last on a CUDA GPU.
On a CPU shared with other work, ``--threads 1`` can be several times faster than the default.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffedu.checkpoints import atomic_save, check_fits, read_file, weights_dir
from diffedu.data import DATASETS, IMAGE_SHAPES, load_dataset, uint8_to_float
from diffedu.device_data import DeviceImages, image_batch
from diffedu.devices import device_name

__all__ = [
    "Classifier",
    "ClassifierConfig",
    "TrainSettings",
    "WEIGHTS_DIR",
    "default_config",
    "evaluate_accuracy",
    "load_classifier",
    "random_shift",
    "save_classifier",
    "train_classifier",
    "weights_path",
]

WEIGHTS_DIR = weights_dir()  # diffedu/weights, beside the diffusion models
# Test accuracy a shipped classifier must reach (the yardstick requirement).
TARGET_ACCURACY = {"mnist": 0.99, "fashion_mnist": 0.91, "cifar10": 0.90}


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that fixes the classifier's architecture; checked when the model is built.

    ``widths[l]`` is the channel count of block l; block 0 works at full resolution, each later block
    halves it. ``global_pool`` averages the last feature map instead of flattening it (fewer weights
    for wide, larger images). ``residual``: later blocks are conv, max-pool, and their other
    ``convs_per_block - 1`` convs as a residual branch (ResNet-style) instead of a stride-2 stack."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    widths: tuple[int, ...] = (16, 32, 64, 128)
    convs_per_block: int = 1
    feature_dim: int = 128
    global_pool: bool = False
    dropout: float = 0.2
    residual: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))  # a list from a saved file
        if self.in_channels < 1 or self.num_classes < 2 or self.feature_dim < 1 or self.convs_per_block < 1:
            raise ValueError(f"in_channels, feature_dim, convs_per_block must be >= 1 and num_classes >= 2: {self}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be a non-empty tuple of positive channel counts, got {self.widths}")
        if self.image_size < 2 ** (len(self.widths) - 1):
            raise ValueError(f"image_size {self.image_size} is too small for {len(self.widths) - 1} halvings")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @property
    def final_size(self) -> int:
        """S_L, the side of the last feature map: S halved (rounding up) once per block after the first."""
        size = self.image_size
        for _ in self.widths[1:]:
            size = (size + 1) // 2
        return size


def default_config(dataset: str) -> ClassifierConfig:
    """The architecture used for ``dataset``: small for the 28x28 sets; for CIFAR-10 a ResNet-9-like net
    (64 -> 128 -> 256 -> 512 channels, 32 -> 16 -> 8 -> 4 pixels, a residual pair of convs at each of the
    last three resolutions; 10 convs, 8.0M parameters, 1.1 GFLOP per image)."""
    _check_dataset(dataset)
    c, s, _ = IMAGE_SHAPES[dataset]
    if dataset == "cifar10":
        return ClassifierConfig(c, s, 10, widths=(64, 128, 256, 512), convs_per_block=3, feature_dim=256,
                                global_pool=True, dropout=0.1, residual=True)
    return ClassifierConfig(c, s, 10)


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class Residual(nn.Module):
    """h + f(h): a branch f that keeps the shape, added to its input. The branch's last BatchNorm starts
    with scale 0, so a fresh block is the identity (the "zero-init residual" of Goyal et al. 2017)."""

    def __init__(self, *branch: nn.Module) -> None:
        super().__init__()
        self.branch = nn.Sequential(*branch)
        norms = [m for m in branch if isinstance(m, nn.BatchNorm2d)]
        if norms:
            nn.init.zeros_(norms[-1].weight)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.branch(h)


class Classifier(nn.Module):
    """A CNN classifier of images in [-1, 1]: ``features(x)`` (B, feature_dim), ``forward(x)`` logits (B, K)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = config.in_channels
        for i, width in enumerate(config.widths):
            if config.residual and i > 0:  # conv, pool (ceil: odd sizes halve like a stride-2 conv), residual
                layers += [*_conv_bn_relu(c_in, width, stride=1), nn.MaxPool2d(2, ceil_mode=True)]
                if config.convs_per_block > 1:
                    layers.append(Residual(*[m for _ in range(config.convs_per_block - 1)
                                             for m in _conv_bn_relu(width, width, stride=1)]))
            else:
                layers += _conv_bn_relu(c_in, width, stride=1 if i == 0 else 2)
                for _ in range(config.convs_per_block - 1):
                    layers += _conv_bn_relu(width, width, stride=1)
            c_in = width
        self.blocks = nn.Sequential(*layers)
        flat = c_in if config.global_pool else c_in * config.final_size ** 2
        self.embed = nn.Sequential(nn.Linear(flat, config.feature_dim, bias=False),
                                   nn.BatchNorm1d(config.feature_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)
        # Set by load_classifier: the record saved with the weights (test accuracy, training run).
        self.metadata: dict[str, Any] = {}

    def _check_input(self, x: Tensor) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"Classifier expects images (B, {cfg.in_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}) in [-1, 1], got shape {tuple(x.shape)}")

    def features(self, x: Tensor) -> Tensor:
        """The penultimate embedding (B, feature_dim) of images x (B, C, S, S) in [-1, 1]."""
        self._check_input(x)
        h = self.blocks(x)                                                # (B, widths[-1], S_L, S_L)
        h = h.mean(dim=(2, 3)) if self.config.global_pool else h.flatten(1)  # (B, widths[-1] [* S_L**2])
        return self.embed(h)                                              # (B, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, num_classes); ``softmax`` of them gives p(class | x)."""
        return self.head(self.dropout(self.features(x)))


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")


def weights_path(dataset: str) -> Path:
    """Where the shipped weights of ``dataset``'s classifier live: ``diffedu/weights/{dataset}_classifier.pt``."""
    _check_dataset(dataset)
    return WEIGHTS_DIR / f"{dataset}_classifier.pt"


def random_shift(x: Tensor, max_shift: int, *, fill: float = -1.0, generator: torch.Generator | None = None) -> Tensor:
    """Shift every image of x (B, C, H, W) by its own random integer offset in [-max_shift, max_shift]
    along each axis; the pixels shifted in are ``fill`` (-1 is black in [-1, 1])."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=fill)                              # (B, C, H + 2s, W + 2s)
    where = generator.device if generator is not None else torch.device("cpu")  # draw where the generator is
    dy, dx = torch.randint(0, 2 * s + 1, (2, b, 1), generator=generator, device=where).to(x.device)
    rows = dy + torch.arange(h, device=x.device)                             # (B, H)
    cols = dx + torch.arange(w, device=x.device)                             # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def evaluate_accuracy(model: Classifier, x: Tensor, y: Tensor, *, batch_size: int = 1000) -> float:
    """The fraction of images x (N, C, H, W) (float in [-1, 1] or uint8) whose predicted class is y."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(y), batch_size):
        xb = x[i: i + batch_size].to(device)
        xb = uint8_to_float(xb) if xb.dtype == torch.uint8 else xb.float()
        correct += int((model(xb).argmax(1).cpu() == y[i: i + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(y), 1)


OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainSettings:
    """How a classifier is trained: AdamW (or SGD with Nesterov momentum) with a one-cycle learning rate,
    random shifts (and flips), optional label smoothing."""

    epochs: int = 5
    batch_size: int = 256
    lr: float = 3e-3  # the one-cycle peak
    weight_decay: float = 1e-4
    max_shift: int = 2
    flip: bool = False
    seed: int = 0
    limit: int | None = None  # train on the first `limit` images only (for quick trials)
    optimizer: str = "adamw"  # "adamw", or "sgd" (momentum 0.9, Nesterov)
    label_smoothing: float = 0.0
    test_limit: int | None = None  # measure accuracy on the first `test_limit` test images only (quick trials)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_shift < 0 or self.lr <= 0:
            raise ValueError(f"need epochs >= 1, batch_size >= 1, max_shift >= 0 and lr > 0, got {self}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(map(repr, OPTIMIZERS))}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")


def default_settings(dataset: str) -> TrainSettings:
    """Training settings that reach the target accuracy: flips only where mirror images are the same class."""
    _check_dataset(dataset)
    return {"mnist": TrainSettings(epochs=4),
            "fashion_mnist": TrainSettings(epochs=8, flip=True),
            "cifar10": TrainSettings(epochs=30, batch_size=512, lr=0.2, optimizer="sgd", weight_decay=5e-4,
                                     max_shift=4, flip=True, label_smoothing=0.1)}[dataset]


def train_classifier(dataset: str = "mnist", *, config: ClassifierConfig | None = None,
                     settings: TrainSettings | None = None, device: str | torch.device | None = None,
                     progress: bool = True, **overrides: Any) -> tuple[Classifier, dict[str, Any]]:
    """Train ``dataset``'s classifier on its train split; return (model in eval mode, record).

    ``overrides`` replace fields of the settings, e.g. ``train_classifier("mnist", epochs=2)``. The
    record holds the test accuracy (full test split, unless ``test_limit``), the settings, seconds,
    device and versions. The training images stay on the device as uint8; each batch is made there:

        x = shift(image_batch(images, idx)),  x <- flip_W(x) with probability 1/2 (if flip)
        loss = cross-entropy(logits, y) with label smoothing s: targets (1 - s) one_hot + s / K
    """
    _check_dataset(dataset)
    config = config or default_config(dataset)
    settings = replace(settings or default_settings(dataset), **overrides)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    torch.manual_seed(settings.seed)
    gen = torch.Generator(device).manual_seed(settings.seed)
    train = load_dataset(dataset, "train", limit=settings.limit, dtype="uint8")
    test = load_dataset(dataset, "test", limit=settings.test_limit, dtype="uint8")
    if train.x.shape[1:] != (config.in_channels, config.image_size, config.image_size):
        raise ValueError(f"config {config} does not fit {dataset} images {tuple(train.x.shape[1:])}")
    data = DeviceImages(train, labels=True, device=device)  # uint8 on the device: 154 MB for CIFAR-10
    model = Classifier(config).to(device)
    if cuda:  # NHWC convolutions with bf16 autocast: the fast path of cuDNN's kernels
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    if settings.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, nesterov=True,
                                                     weight_decay=settings.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, epochs=settings.epochs,
                                                steps_per_epoch=steps_per_epoch)
    history = []
    start = time.perf_counter()
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen, device=device)
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)  # summed on the device: no per-step sync
        batches = range(steps_per_epoch)
        if progress:
            batches = tqdm(batches, desc=f"epoch {epoch + 1}/{settings.epochs}", leave=False)
        for i in batches:
            idx = order[i * settings.batch_size: (i + 1) * settings.batch_size]
            x, y = image_batch(data.x, idx), data.labels[idx]                 # (B, C, S, S) in [-1, 1], (B,)
            x = random_shift(x, settings.max_shift, generator=gen)
            if settings.flip:
                mirror = torch.rand(len(idx), generator=gen, device=device) < 0.5
                x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=settings.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.detach() * len(idx)
            correct += (logits.argmax(1) == y).sum()
        acc = evaluate_accuracy(model, test.x, test.y)
        history.append({"epoch": epoch + 1, "loss": total_loss.item() / len(train),
                        "train_accuracy": correct.item() / len(train), "test_accuracy": acc,
                        "seconds": time.perf_counter() - start})
        if progress:
            print(f"epoch {epoch + 1}/{settings.epochs}: loss {history[-1]['loss']:.4f}, "
                  f"train acc {history[-1]['train_accuracy']:.4f}, test acc {acc:.4f}, "
                  f"{history[-1]['seconds']:.0f} s", flush=True)
    model.eval()
    model.to(memory_format=torch.contiguous_format)
    record = {
        "dataset": dataset,
        "test_accuracy": history[-1]["test_accuracy"],
        "test_images": len(test),
        "train_images": len(train),
        "data_source": train.source,
        "training": {**asdict(settings), "seconds": round(time.perf_counter() - start, 1), "device": device_name(device),
                     "threads": torch.get_num_threads(), "torch": str(torch.__version__),
                     "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "history": history},
    }
    return model, record


def _plain(value: Any) -> Any:
    """``value`` with only the types ``torch.load(weights_only=True)`` accepts (others become strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or type(value) in (bool, int, float, str):
        return value
    return str(value)  # e.g. torch.__version__, a TorchVersion


def save_classifier(model: Classifier, record: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a weights-only file {state_dict, config, test_accuracy, record} atomically (temp + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {**asdict(model.config), "widths": list(model.config.widths)}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"state_dict": state, "config": config, "test_accuracy": float(record["test_accuracy"]),
               "record": _plain(record)}
    atomic_save(payload, path)
    return path


def load_classifier(dataset: str = "mnist", device: str | torch.device | None = None, *,
                    path: str | os.PathLike[str] | None = None) -> Classifier:
    """The shipped classifier of ``dataset`` (or the file at ``path``), in eval mode, loaded with
    ``torch.load(weights_only=True)``; ``model.metadata`` holds its test accuracy and training record."""
    file = Path(path) if path is not None else weights_path(dataset)
    if not file.is_file():
        raise FileNotFoundError(
            f"no classifier weights for {dataset!r} at {file}. Train them (full data via DIFFEDU_DATA or "
            f"torchvision) with:\n  python -m diffedu.models.classifier --dataset {dataset} --out {file}")
    payload = read_file(file, "classifier", f"Delete it and train it again (python -m diffedu.models.classifier "
                                             f"--dataset {dataset} --out {file})")
    model = Classifier(ClassifierConfig(**payload["config"]))
    check_fits(model, payload["state_dict"], file, "Classifier", payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.metadata = {"test_accuracy": payload["test_accuracy"], **payload.get("record", {}), "path": str(file)}
    return model.to(device if device is not None else "cpu").eval()


def main(argv: list[str] | None = None) -> None:
    """``python -m diffedu.models.classifier --dataset mnist --out diffedu/weights/mnist_classifier.pt``."""
    p = argparse.ArgumentParser(prog="python -m diffedu.models.classifier", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=DATASETS)
    p.add_argument("--out", default=None, help="weights file (default: the shipped path in diffedu/weights)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="train on the first LIMIT images only")
    p.add_argument("--test-limit", type=int, default=None, help="measure on the first TEST_LIMIT test images only")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                   "seed": args.seed, "limit": args.limit, "test_limit": args.test_limit}.items()
                 if v is not None}
    model, record = train_classifier(args.dataset, device=args.device, progress=not args.no_progress, **overrides)
    out = save_classifier(model, record, args.out or weights_path(args.dataset))
    acc, target = record["test_accuracy"], TARGET_ACCURACY[args.dataset]
    print(f"{args.dataset}: test accuracy {acc:.4f} on {record['test_images']} images "
          f"(target {target:.2f}{'' if acc >= target else ', NOT reached'}), "
          f"{record['training']['seconds']:.0f} s on {record['training']['device']}; "
          f"saved {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
