"""Tests of diffedu.captions: attributes measured on synthetic images, quantile levels, captions and templates."""

from __future__ import annotations

import re

import pytest
import torch

from diffedu.captions import (
    COLOUR_NAMES,
    SPECS,
    Captioner,
    bounding_box_area,
    centre_brightness,
    dominant_colour,
    fill_template,
    level_counts,
    mean_ink,
    slant,
    stroke_thickness,
    tertile_thresholds,
    to_level,
)


def blank(n: int = 1, size: int = 28) -> torch.Tensor:
    return -torch.ones(n, 1, size, size)


def vertical_bar(width: int, size: int = 28, top: int = 4, bottom: int = 24) -> torch.Tensor:
    x = blank(1, size)
    left = size // 2 - width // 2
    x[0, 0, top:bottom, left: left + width] = 1.0
    return x


def sheared_bar(shear: float, width: int = 2, size: int = 28) -> torch.Tensor:
    """A bar whose column moves right by `shear` pixels per row upwards: x = centre + shear * (centre - y)."""
    x = blank(1, size)
    for y in range(4, 24):
        c = round(size / 2 + shear * (size / 2 - y))
        x[0, 0, y, c: c + width] = 1.0
    return x


# --- attributes on synthetic images ----------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 2, 4, 6])
def test_stroke_thickness_measures_the_width_of_a_bar(width: int) -> None:
    measured = stroke_thickness(vertical_bar(width)).item()
    length = 20
    expected = 2 * width * length / (2 * (width + length))  # 2 A / P of a w x l rectangle
    assert measured == pytest.approx(expected, rel=1e-5)


def test_thick_strokes_measure_thicker_than_thin_ones() -> None:
    values = stroke_thickness(torch.cat([vertical_bar(1), vertical_bar(3), vertical_bar(5)]))
    assert values[0] < values[1] < values[2]


def test_slant_is_positive_leaning_right_negative_leaning_left_and_zero_upright() -> None:
    right, left, upright = (slant(sheared_bar(s)).item() for s in (0.4, -0.4, 0.0))
    assert right == pytest.approx(0.4, abs=0.05)
    assert left == pytest.approx(-0.4, abs=0.05)
    assert abs(upright) < 1e-5


def test_bounding_box_area_of_a_rectangle() -> None:
    x = blank()
    x[0, 0, 5:15, 8:12] = 1.0  # 10 rows x 4 columns
    assert bounding_box_area(x).item() == pytest.approx(40.0)
    assert bounding_box_area(blank()).item() == 0.0


def test_mean_ink_of_a_grey_item() -> None:
    x = blank()
    x[0, 0, 10:20, 10:20] = 0.0  # ink 0.5
    assert mean_ink(x).item() == pytest.approx(0.5)


def colour_image(rgb: tuple[float, float, float], size: int = 32) -> torch.Tensor:
    """A (1, 3, S, S) image of one colour in [0, 1], mapped to [-1, 1]."""
    return (torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, size, size) * 2 - 1).clone()


@pytest.mark.parametrize("rgb, name", [
    ((0.9, 0.1, 0.1), "red"), ((0.1, 0.8, 0.1), "green"), ((0.1, 0.2, 0.9), "blue"), ((0.9, 0.9, 0.1), "yellow"),
    ((0.95, 0.95, 0.95), "white"), ((0.5, 0.5, 0.5), "gray"), ((0.05, 0.05, 0.05), "black"),
])
def test_dominant_colour_names_the_centre(rgb: tuple[float, float, float], name: str) -> None:
    x = colour_image((0.5, 0.5, 0.5))  # a gray frame ...
    x[..., 8:24, 8:24] = colour_image(rgb)[..., 8:24, 8:24]  # ... around a coloured centre
    assert COLOUR_NAMES[int(dominant_colour(x))] == name


def test_centre_brightness_reads_the_centre() -> None:
    x = colour_image((0.0, 0.0, 0.0))
    x[..., 8:24, 8:24] = 1.0
    assert centre_brightness(x).item() == pytest.approx(1.0)


def test_attributes_are_vectorised_over_the_batch() -> None:
    batch = torch.cat([vertical_bar(2), sheared_bar(0.3), vertical_bar(5)])
    for fn in (stroke_thickness, slant, bounding_box_area, mean_ink):
        together = fn(batch)
        alone = torch.cat([fn(batch[i: i + 1]) for i in range(3)])
        assert together.shape == (3,)
        assert torch.allclose(together, alone)


def test_attributes_refuse_a_single_image_without_batch_dimension() -> None:
    with pytest.raises(ValueError, match=r"batch of images \(B, C, H, W\)"):
        stroke_thickness(torch.zeros(1, 28, 28))
    with pytest.raises(ValueError, match="colour images"):
        dominant_colour(blank())


# --- quantile levels ------------------------------------------------------------------------------------


def test_tertiles_split_every_class_into_equal_thirds() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(300)
    values = torch.randn(900, generator=g) + 5 * labels  # each class on its own scale
    thresholds = tertile_thresholds(values, labels, 3)
    assert thresholds.shape == (3, 2)
    levels = to_level(values, labels, thresholds)
    for k in range(3):
        counts = level_counts(levels[labels == k])
        assert all(abs(c - 100) <= 1 for c in counts), counts


# --- captions -------------------------------------------------------------------------------------------


def synthetic_digits(n: int = 90) -> tuple[torch.Tensor, torch.Tensor]:
    """Bars of varied width and shear, labelled with 3 classes: enough to fit thresholds."""
    images, labels = [], []
    for i in range(n):
        bar = sheared_bar(((i * 7) % 11 - 5) / 12, width=1 + (i * 5) % 5)
        images.append(bar)
        labels.append(i % 3)
    return torch.cat(images), torch.tensor(labels)


def test_captions_say_only_what_the_pixels_show() -> None:
    images, labels = synthetic_digits()
    captioner = Captioner.fit("mnist", images, labels)
    levels = captioner.attributes(images, labels)
    captions = captioner.caption(images, labels, seed=0, mention_prob=1.0)
    words = {a.name: a.words for a in SPECS["mnist"].attributes}
    for i, caption in enumerate(captions):
        said = set(caption.split())
        for name, options in words.items():
            for level, synonyms in enumerate(options):
                if said & set(synonyms):
                    assert int(levels[name][i]) == level, (caption, name, level)
        noun_words = set(SPECS["mnist"].nouns[int(labels[i])])
        assert said & noun_words, caption


def test_captions_are_deterministic_for_a_seed_and_vary_between_seeds() -> None:
    images, labels = synthetic_digits()
    captioner = Captioner.fit("mnist", images, labels)
    a = captioner.caption(images, labels, seed=1)
    assert a == captioner.caption(images, labels, seed=1)
    assert a != captioner.caption(images, labels, seed=2)


@pytest.mark.parametrize("dataset", list(SPECS))
def test_heldout_phrasings_are_new_sentences_made_of_known_words(dataset: str) -> None:
    spec = SPECS[dataset]
    captioner = Captioner(spec)
    assert set(captioner.vocabulary("heldout")) <= set(captioner.vocabulary("train"))
    assert not set(spec.train_templates) & set(spec.heldout_templates)
    k = len(spec.nouns)
    levels = {a.name: torch.full((k,), 0 if a.kind == "tertile" else 4) for a in spec.attributes}
    train = captioner.describe(torch.arange(k), levels, templates="train", seed=0)
    heldout = captioner.describe(torch.arange(k), levels, templates="heldout", seed=0)
    vocab = set(captioner.vocabulary("train"))
    for caption in train + heldout:
        assert set(caption.split()) <= vocab, caption


def test_without_attributes_no_dangling_description() -> None:
    captioner = Captioner(SPECS["mnist"])
    levels = {a.name: torch.ones(50, dtype=torch.long) for a in SPECS["mnist"].attributes}  # mid: unsaid
    for caption in captioner.describe(torch.arange(50) % 10, levels, templates="heldout", seed=3):
        assert "that looks" not in caption and not caption.endswith(" and"), caption
        assert "{" not in caption


def test_fill_template_articles_and_joins() -> None:
    assert fill_template("{a} {adj} {noun}", "seven", ["thick"]) == "a thick seven"
    assert fill_template("{a} {adj} {noun}", "eight", []) == "an eight"
    assert fill_template("{a} {adj} {noun}", "one", []) == "a one"
    assert fill_template("{a} {adj} {noun}", "7", ["upright", "thin"]) == "an upright thin 7"
    assert fill_template("the digit {noun} {desc}", "3", ["thick", "slanted"]) == "the digit 3 thick and slanted"


def test_captioner_state_round_trip_and_bad_inputs() -> None:
    images, labels = synthetic_digits()
    captioner = Captioner.fit("mnist", images, labels)
    again = Captioner.from_state(captioner.state())
    for name, levels in captioner.attributes(images, labels).items():
        assert torch.equal(levels, again.attributes(images, labels)[name])
    with pytest.raises(ValueError, match="no captions for dataset 'svhn'"):
        Captioner.fit("svhn", images, labels)
    with pytest.raises(ValueError, match="template set 'test'"):
        captioner.describe(labels, {}, templates="test")  # type: ignore[arg-type]


def test_cifar_captions_name_the_colour() -> None:
    images = torch.cat([colour_image((0.9, 0.1, 0.1)), colour_image((0.1, 0.2, 0.9))]).repeat(3, 1, 1, 1)
    labels = torch.tensor([9, 9, 1, 1, 9, 9])
    captioner = Captioner.fit("cifar10", images, labels)
    captions = captioner.caption(images, labels, seed=0, mention_prob=1.0)
    assert re.search(r"\bred\b", captions[0]) and re.search(r"\btruck\b", captions[0])
    assert re.search(r"\bblue\b", captions[1])
