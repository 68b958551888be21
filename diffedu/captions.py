"""Captions that say more than the class: text for the image datasets, measured from the pixels (lesson 09).

A caption names the class and some **attributes** of the image, each measured from its pixels by a
deterministic function that works on a whole batch at once:

    digits (MNIST)         stroke thickness   2 A / P: the ink area over half its perimeter      "a thick seven"
                           slant              -cov(x, y) / var(y): how far the strokes lean right  "a slanted 3"
                           size               the bounding box's area (soft)           "a small two"
    clothes (Fashion)      brightness         the mean ink of the item                             "a dark coat"
                           size               the bounding box's area                              "a large bag"
    CIFAR-10               colour             the dominant hue of the centre region                "a red truck"
                           brightness         the mean value (HSV) of the centre region            "a dark cat"

A measured attribute becomes a word by its **tertile within its class**: the lowest third of (say)
sevens by thickness are "thin", the highest third "thick", the middle third goes unsaid. The
thresholds come from the data (`Captioner.fit`), so every (class, word) pair is equally common and a
word carries information the class does not. Colour is the exception: its words name hue ranges
fixed by physics (red is red), not quantiles.

A caption is a **template** filled with a noun for the class and words for some of the attributes
(each extreme attribute is mentioned with probability ``mention_prob``). Some templates are held out
of training (``templates="heldout"``): they use only words of the training templates, in new
orders, so prompts written with them test whether the model learned the words or the sentences.
The same functions that write the captions also judge generated images (`Captioner.attributes`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

__all__ = [
    "ATTRIBUTE_LEVELS", "Attribute", "CaptionSpec", "Captioner", "SPECS", "bounding_box_area", "centre_brightness",
    "dominant_colour", "fill_template", "level_counts", "mean_ink", "slant", "stroke_thickness", "tertile_thresholds",
    "to_level",
]

ATTRIBUTE_LEVELS = ("low", "mid", "high")
TemplateSet = Literal["train", "heldout"]


# --------------------------------------------------------------------------- attributes measured from pixels


def _ink(images: Tensor) -> Tensor:
    """Grey images (B, 1, H, W) in [-1, 1] as ink (B, H, W) in [0, 1]; colour images are averaged over channels."""
    if images.ndim != 4:
        raise ValueError(f"attributes are measured on a batch of images (B, C, H, W) in [-1, 1], "
                         f"got shape {tuple(images.shape)}")
    return ((images.float().mean(dim=1) + 1) / 2).clamp(0, 1)


def stroke_thickness(images: Tensor) -> Tensor:
    """Mean stroke width in pixels, (B, C, H, W) -> (B,): 2 A / P.

    With ink m in [0, 1], the area A = sum m and the perimeter P = sum |m_(i,j+1) - m_(i,j)| + sum
    |m_(i+1,j) - m_(i,j)| (the total variation, with a frame of zeros around the image). A stroke of
    width w and length l >> w has A = w l and P ~ 2 l, so 2 A / P ~ w.
    """
    m = torch.nn.functional.pad(_ink(images), (1, 1, 1, 1))  # (B, H + 2, W + 2)
    area = m.sum(dim=(1, 2))
    perimeter = (m[:, :, 1:] - m[:, :, :-1]).abs().sum(dim=(1, 2)) + (m[:, 1:, :] - m[:, :-1, :]).abs().sum(dim=(1, 2))
    return 2 * area / perimeter.clamp_min(1e-6)


def slant(images: Tensor) -> Tensor:
    """How far the ink leans to the right, (B, C, H, W) -> (B,): the shear -cov(x, y) / var(y).

    Second moments of the ink m, with x the column and y the row (rows grow downwards):
    cov(x, y) = sum m (x - x_bar)(y - y_bar) / sum m, var(y) = sum m (y - y_bar)^2 / sum m. A stroke
    leaning right has its top to the right (x grows as y shrinks), so -cov / var > 0; upright gives 0.
    It is the slope dx/dy of the least-squares line x = x_bar + s (y_bar - y) through the ink.
    """
    m = _ink(images)  # (B, H, W)
    B, H, W = m.shape  # noqa: N806
    y = torch.arange(H, dtype=m.dtype, device=m.device)[None, :, None]
    x = torch.arange(W, dtype=m.dtype, device=m.device)[None, None, :]
    mass = m.sum(dim=(1, 2)).clamp_min(1e-6)  # (B,)
    y_bar = (m * y).sum(dim=(1, 2)) / mass
    x_bar = (m * x).sum(dim=(1, 2)) / mass
    dy, dx = y - y_bar[:, None, None], x - x_bar[:, None, None]  # (B, H, 1), (B, 1, W)
    cov = (m * dx * dy).sum(dim=(1, 2)) / mass
    var_y = (m * dy**2).sum(dim=(1, 2)) / mass
    return -cov / var_y.clamp_min(1e-6)


def bounding_box_area(images: Tensor) -> Tensor:
    """Area in pixels of the box around the ink, (B, C, H, W) -> (B,): height x width, 0 without ink.

    Soft, so that it varies smoothly (and splits into balanced tertiles): the height counts each row by
    its strongest ink, h = sum_rows max_cols m, and the width likewise, w = sum_cols max_rows m. For a
    black-and-white image whose ink spans rows r0..r1 and columns c0..c1 this is the bounding box,
    (r1 - r0 + 1)(c1 - c0 + 1).
    """
    m = _ink(images)  # (B, H, W)
    height = m.amax(dim=2).sum(dim=1)
    width = m.amax(dim=1).sum(dim=1)
    return height * width


def mean_ink(images: Tensor) -> Tensor:
    """Mean brightness of the inked pixels (ink > 0.1), (B, C, H, W) -> (B,): how light or dark an item is drawn."""
    m = _ink(images)
    on = (m > 0.1).float()
    return (m * on).sum(dim=(1, 2)) / on.sum(dim=(1, 2)).clamp_min(1.0)


def _centre(images: Tensor, fraction: float = 0.5) -> Tensor:
    """The central ``fraction`` x ``fraction`` of each image, (B, C, H, W) -> (B, C, h, w), as [0, 1] colours."""
    H, W = images.shape[-2:]  # noqa: N806
    h, w = max(1, round(H * fraction)), max(1, round(W * fraction))
    top, left = (H - h) // 2, (W - w) // 2
    return ((images[..., top: top + h, left: left + w].float() + 1) / 2).clamp(0, 1)


def _rgb_to_hsv(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B, 3, ...) in [0, 1] -> hue in degrees [0, 360), saturation and value in [0, 1], each (B, ...)."""
    r, g, b = rgb.unbind(dim=1)
    value, argmax = rgb.max(dim=1)
    chroma = value - rgb.min(dim=1).values
    safe = chroma.clamp_min(1e-6)
    hue = torch.where(argmax == 0, ((g - b) / safe) % 6, torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(chroma > 1e-6, hue * 60.0, torch.zeros_like(hue))
    saturation = torch.where(value > 1e-6, chroma / value.clamp_min(1e-6), torch.zeros_like(value))
    return hue % 360.0, saturation, value


# Hue ranges in degrees (start of each range; red wraps around 360).
HUES = (("red", 345.0), ("orange", 15.0), ("yellow", 45.0), ("green", 70.0), ("blue", 165.0), ("purple", 260.0))
COLOUR_NAMES = tuple(name for name, _ in HUES) + ("white", "gray", "black")


def dominant_colour(images: Tensor, *, min_saturation: float = 0.3, min_chromatic: float = 0.25) -> Tensor:
    """The dominant colour of the centre region, (B, 3, H, W) -> (B,) indices into ``COLOUR_NAMES``.

    Each pixel of the central half (where CIFAR-10's object mostly is) with saturation >= 0.3 and value
    >= 0.2 votes for its hue range, weighted by saturation x value. If those pixels carry at least
    ``min_chromatic`` of the region's total weight, the winning hue names the colour; otherwise the
    region is achromatic and its mean value decides: white (> 0.7), black (< 0.3), else gray.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"dominant_colour needs colour images (B, 3, H, W), got shape {tuple(images.shape)}")
    hue, sat, val = _rgb_to_hsv(_centre(images))  # each (B, h, w)
    chromatic = (sat >= min_saturation) & (val >= 0.2)
    weight = sat * val * chromatic  # (B, h, w)
    starts = torch.tensor([s for _, s in HUES], device=hue.device)
    shifted = (hue[..., None] - starts[0]) % 360.0  # degrees past red's start
    bin_index = (shifted >= (starts - starts[0]) % 360.0).sum(dim=-1) - 1  # (B, h, w) in 0..5
    votes = torch.zeros(hue.shape[0], len(HUES), device=hue.device)
    votes.scatter_add_(1, bin_index.flatten(1), weight.flatten(1))
    share = chromatic.float().mean(dim=(1, 2))
    mean_value = val.mean(dim=(1, 2))
    achromatic = torch.where(mean_value > 0.7, 6, torch.where(mean_value < 0.3, 8, 7))
    return torch.where(share >= min_chromatic, votes.argmax(dim=1), achromatic)


def centre_brightness(images: Tensor) -> Tensor:
    """Mean value (HSV's max over R, G, B) of the centre region, (B, 3, H, W) -> (B,) in [0, 1]."""
    return _rgb_to_hsv(_centre(images))[2].mean(dim=(1, 2))


# --------------------------------------------------------------------------- quantile thresholds


def tertile_thresholds(values: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class 1/3 and 2/3 quantiles of ``values`` (N,), (num_classes, 2); all data for a class with none."""
    q = torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)
    everyone = torch.quantile(values.double(), q)
    rows = [torch.quantile(values[labels == k].double(), q) if bool((labels == k).any()) else everyone
            for k in range(num_classes)]
    return torch.stack(rows).float()


def to_level(values: Tensor, labels: Tensor, thresholds: Tensor) -> Tensor:
    """0 (low), 1 (mid) or 2 (high): where each value falls among its class's two thresholds, (B,) -> (B,)."""
    t = thresholds.to(values.device)[labels]  # (B, 2)
    return (values >= t[:, 0]).long() + (values >= t[:, 1]).long()


# --------------------------------------------------------------------------- what to say, per dataset


@dataclass(frozen=True)
class Attribute:
    """One attribute of an image: how to measure it and the words for its levels.

    ``kind="tertile"``: ``measure`` gives a number per image, cut at per-class tertiles into low, mid and
    high, with ``words[level]`` the synonyms for each (an empty tuple: that level goes unsaid).
    ``kind="category"``: ``measure`` gives a category index per image, ``words[index]`` its words.
    """

    name: str
    measure: Callable[[Tensor], Tensor]
    words: tuple[tuple[str, ...], ...]
    kind: Literal["tertile", "category"] = "tertile"


@dataclass(frozen=True)
class CaptionSpec:
    """What the captions of one dataset say: nouns per class, attributes, and the two template sets.

    A template holds ``{noun}`` and either ``{adj}`` (the attribute words before the noun, e.g. "thick
    slanted") or ``{desc}`` (after it, e.g. "thick and slanted"); a ``{desc}`` template is used only
    when some attribute is mentioned. ``{a}`` is the article a/an fitted to the next word.
    """

    dataset: str
    nouns: tuple[tuple[str, ...], ...]
    attributes: tuple[Attribute, ...]
    train_templates: tuple[str, ...]
    heldout_templates: tuple[str, ...]


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

SPECS: dict[str, CaptionSpec] = {
    "mnist": CaptionSpec(
        dataset="mnist",
        nouns=tuple((word, str(k)) for k, word in enumerate(DIGIT_WORDS)),
        attributes=(
            Attribute("thickness", stroke_thickness, (("thin", "skinny"), (), ("thick", "bold"))),
            Attribute("slant", slant, (("upright", "straight"), (), ("slanted", "italic"))),
            Attribute("size", bounding_box_area, (("small", "little"), (), ("large", "big"))),
        ),
        train_templates=(
            "{adj} {noun}",
            "{a} {adj} {noun}",
            "{a} handwritten {adj} {noun}",
            "the digit {noun} {desc}",
            "{a} {noun} that looks {desc}",
            "an image of {a} {adj} {noun}",
        ),
        heldout_templates=(
            "{noun} {desc}",
            "the {adj} digit {noun}",
            "an image of the digit {noun} that looks {desc}",
        ),
    ),
    "fashion_mnist": CaptionSpec(
        dataset="fashion_mnist",
        nouns=(("tshirt", "top"), ("trousers", "pants"), ("pullover", "sweater"), ("dress",), ("coat", "jacket"),
               ("sandal",), ("shirt",), ("sneaker", "trainer"), ("bag", "handbag"), ("boot", "ankle boot")),
        attributes=(
            Attribute("brightness", mean_ink, (("dark",), (), ("light", "pale"))),
            Attribute("size", bounding_box_area, (("small", "narrow"), (), ("large", "wide"))),
        ),
        train_templates=("{adj} {noun}", "{a} {adj} {noun}", "a photo of {a} {adj} {noun}", "{a} {noun} that looks {desc}"),
        heldout_templates=("{noun} {desc}", "a photo of {a} {noun} that looks {desc}"),
    ),
    "cifar10": CaptionSpec(
        dataset="cifar10",
        nouns=(("airplane", "plane"), ("car", "automobile"), ("bird",), ("cat",), ("deer",), ("dog",), ("frog",),
               ("horse",), ("ship", "boat"), ("truck",)),
        attributes=(
            Attribute("colour", dominant_colour, tuple((name,) for name in COLOUR_NAMES), kind="category"),
            Attribute("brightness", centre_brightness, (("dark",), (), ("bright",))),
        ),
        train_templates=("{adj} {noun}", "{a} {adj} {noun}", "a photo of {a} {adj} {noun}", "{a} {noun} that looks {desc}"),
        heldout_templates=("{noun} {desc}", "a photo of {a} {noun} that looks {desc}"),
    ),
}


def _article(next_word: str) -> str:
    if next_word in ("one", "1"):
        return "a"  # "a one": the sound, not the letter, decides
    return "an" if next_word[:1] in "aeiou8" or next_word in ("11", "18") else "a"


def fill_template(template: str, noun: str, words: Sequence[str]) -> str:
    """One caption: the template with the noun and the attribute words (before the noun, or after it joined by 'and')."""
    adj = " ".join(words)
    desc = " and ".join(words)
    text = template.replace("{adj}", adj).replace("{desc}", desc).replace("{noun}", noun)
    text = " ".join(text.split())  # an empty {adj} leaves two spaces
    parts = text.split(" ")
    parts = [(_article(parts[i + 1]) if p == "{a}" else p) for i, p in enumerate(parts)]
    return " ".join(parts)


# --------------------------------------------------------------------------- the captioner


@dataclass
class Captioner:
    """Measures attributes and writes captions for one dataset; its thresholds come from the data (`fit`).

        captioner = Captioner.fit("mnist", images, labels)            # per-class tertiles of each attribute
        levels = captioner.attributes(images, labels)                 # {"thickness": (B,) in {0, 1, 2}, ...}
        texts = captioner.caption(images, labels, seed=0)             # ["a thick slanted seven", ...]
    """

    spec: CaptionSpec
    thresholds: dict[str, Tensor] = field(default_factory=dict)  # tertile attributes: (num_classes, 2)

    @classmethod
    def fit(cls, dataset: str, images: Tensor, labels: Tensor, *, batch_size: int = 5000) -> Captioner:
        """Measure every tertile attribute on ``images`` (N, C, H, W) in [-1, 1] and keep its per-class tertiles."""
        spec = _spec(dataset)
        values = _measure_all(spec, images, batch_size)
        labels = labels.cpu()
        k = len(spec.nouns)
        thresholds = {a.name: tertile_thresholds(values[a.name], labels, k) for a in spec.attributes if a.kind == "tertile"}
        return cls(spec, thresholds)

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.spec.attributes)

    def attributes(self, images: Tensor, labels: Tensor, *, batch_size: int = 5000) -> dict[str, Tensor]:
        """The level of each attribute for each image: (B,) tensors, 0/1/2 for tertiles, a category index otherwise.

        ``labels`` picks the thresholds: the class the image shows, or for generated images the class asked for.
        """
        values = _measure_all(self.spec, images, batch_size)
        labels = labels.cpu()
        return {a.name: to_level(values[a.name], labels, self.thresholds[a.name]) if a.kind == "tertile"
                else values[a.name].long() for a in self.spec.attributes}

    def describe(self, labels: Tensor, levels: dict[str, Tensor], *, templates: TemplateSet = "train",
                 seed: int = 0, mention_prob: float = 1.0) -> list[str]:
        """Captions for classes ``labels`` (B,) with the attribute ``levels`` (each (B,)); unsaid levels are left out.

        Each sayable attribute is mentioned with probability ``mention_prob``; synonyms, the template and the
        order of the attribute words are drawn from Python's ``random.Random(seed)``: the same seed, the same
        captions.
        """
        names = self._templates(templates)
        if not 0.0 <= mention_prob <= 1.0:
            raise ValueError(f"mention_prob must lie in [0, 1], got {mention_prob}")
        rng = random.Random(seed)
        columns = {a.name: levels[a.name].tolist() for a in self.spec.attributes if a.name in levels}
        captions = []
        for i, label in enumerate(labels.tolist()):
            words = []
            for a in self.spec.attributes:
                if a.name not in columns:
                    continue
                options = a.words[columns[a.name][i]]
                if options and rng.random() < mention_prob:
                    words.append(rng.choice(options))
            rng.shuffle(words)
            usable = [t for t in names if words or "{desc}" not in t]
            captions.append(fill_template(rng.choice(usable), rng.choice(self.spec.nouns[label]), words))
        return captions

    def caption(self, images: Tensor, labels: Tensor, *, templates: TemplateSet = "train",
                seed: int = 0, mention_prob: float = 0.7) -> list[str]:
        """A caption for each image: its class and, with probability ``mention_prob`` each, its sayable attributes."""
        return self.describe(labels, self.attributes(images, labels), templates=templates, seed=seed,
                             mention_prob=mention_prob)

    def vocabulary(self, templates: TemplateSet | Literal["all"] = "train") -> list[str]:
        """Every word the templates can write, sorted (the tokenizer is built from the training set's)."""
        names = self.spec.train_templates + self.spec.heldout_templates if templates == "all" else self._templates(templates)
        words = {w for t in names for w in re.sub(r"\{\w+\}", " ", t).split()}
        words |= {"a", "an"} if any("{a}" in t for t in names) else set()
        words |= {"and"} if any("{desc}" in t for t in names) else set()
        words |= {w for nouns in self.spec.nouns for noun in nouns for w in noun.split()}
        words |= {w for a in self.spec.attributes for options in a.words for phrase in options for w in phrase.split()}
        return sorted(words)

    def _templates(self, templates: str) -> tuple[str, ...]:
        if templates == "train":
            return self.spec.train_templates
        if templates == "heldout":
            return self.spec.heldout_templates
        raise ValueError(f"unknown template set {templates!r}; choose 'train' or 'heldout'")

    def state(self) -> dict[str, object]:
        """The thresholds as plain lists (JSON-able): store them with a model, rebuild with `from_state`."""
        return {"dataset": self.spec.dataset, "thresholds": {k: v.tolist() for k, v in self.thresholds.items()}}

    @classmethod
    def from_state(cls, state: dict[str, object]) -> Captioner:
        thresholds = {k: torch.tensor(v, dtype=torch.float32) for k, v in state["thresholds"].items()}  # type: ignore[union-attr]
        return cls(_spec(str(state["dataset"])), thresholds)


def _spec(dataset: str) -> CaptionSpec:
    if dataset not in SPECS:
        raise ValueError(f"no captions for dataset {dataset!r}; choose one of {', '.join(map(repr, SPECS))}")
    return SPECS[dataset]


def _measure_all(spec: CaptionSpec, images: Tensor, batch_size: int) -> dict[str, Tensor]:
    """Every attribute's raw value (or category) for every image, computed in batches, on the CPU."""
    if images.ndim != 4:
        raise ValueError(f"images must be a batch (N, C, H, W), got shape {tuple(images.shape)}")
    out: dict[str, list[Tensor]] = {a.name: [] for a in spec.attributes}
    for start in range(0, len(images), batch_size):
        batch = images[start: start + batch_size]
        batch = batch.float() / 127.5 - 1 if batch.dtype == torch.uint8 else batch.float()
        for a in spec.attributes:
            out[a.name].append(a.measure(batch).cpu())
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}


def level_counts(levels: Tensor) -> list[int]:
    """How many images fall in each of the three levels (a balance check)."""
    return [int((levels == k).sum()) for k in range(len(ATTRIBUTE_LEVELS))]

