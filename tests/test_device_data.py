"""Data kept on the device: batches gathered by index, flipped and scaled there; train() takes them."""

import re

import pytest
import torch

from diffedu.data import ImageData, uint8_to_float
from diffedu.device_data import DeviceImages, draw_flips, draw_indices, image_batch, rank_slice
from diffedu.models.unet import UNet, UNetConfig
from diffedu.schedules import make_schedule
from diffedu.train import TrainConfig, draw_batch, train, training_batch

PIXELS = torch.randint(0, 256, (30, 3, 4, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_image_batch_gathers_flips_where_asked_and_scales_to_minus_one_one():
    idx = torch.tensor([4, 0, 4, 29])
    flip = torch.tensor([True, False, False, True])
    x0 = image_batch(PIXELS, idx, flip)
    assert x0.dtype == torch.float32 and x0.shape == (4, 3, 4, 5)
    assert torch.equal(x0[1], uint8_to_float(PIXELS[0])) and torch.equal(x0[2], uint8_to_float(PIXELS[4]))
    assert torch.equal(x0[0], uint8_to_float(PIXELS[4]).flip(-1))  # left-right: the last axis, W
    assert torch.equal(x0[3], uint8_to_float(PIXELS[29]).flip(-1))
    assert not torch.equal(x0[0], x0[2])
    assert torch.equal(image_batch(PIXELS, torch.tensor([0, 255 % 30])), uint8_to_float(PIXELS[[0, 15]]))
    ends = image_batch(torch.tensor([[0, 255]], dtype=torch.uint8), torch.tensor([0]))
    assert ends.tolist() == [[-1.0, 1.0]]
    floats = torch.rand(5, 2) * 2 - 1
    assert torch.equal(image_batch(floats, torch.tensor([3, 1])), floats[[3, 1]])  # floats as they are


def test_draws_live_on_the_generator_device_and_flip_about_half():
    g = torch.Generator().manual_seed(1)
    idx = draw_indices(30, 1000, g)
    assert idx.dtype == torch.int64 and 0 <= idx.min() and idx.max() < 30 and len(idx.unique()) == 30
    flips = draw_flips(1000, g)
    assert flips.dtype == torch.bool and 0.4 < flips.float().mean() < 0.6
    assert rank_slice(8, 1, 2) == slice(4, 8) and rank_slice(8) == slice(0, 8)
    with pytest.raises(ValueError, match="divisible"):
        rank_slice(9, 0, 2)


def test_device_images_checks_its_input_and_takes_image_data():
    data = DeviceImages(PIXELS, torch.arange(30))
    assert len(data) == 30 and data.is_image and data.example_shape == (3, 4, 5) and data.device.type == "cpu"
    assert data.value_range() == pytest.approx((PIXELS.min().item() / 127.5 - 1, PIXELS.max().item() / 127.5 - 1))
    assert "uint8 30x3x4x5" in repr(data) and data.to("cpu") is data
    image_data = ImageData("cifar10", "train", PIXELS, torch.arange(30) % 10, tuple("abcdefghij"), "test", False)
    assert DeviceImages(image_data).labels is None and torch.equal(DeviceImages(image_data, True).labels, image_data.y)
    with pytest.raises(ValueError, match="uint8 .*or float"):
        DeviceImages(PIXELS.int())
    with pytest.raises(ValueError, match="one entry per example"):
        DeviceImages(PIXELS, torch.arange(3))
    with pytest.raises(ValueError, match="flips need images"):
        DeviceImages(torch.rand(6, 2)).batch(torch.tensor([0]), torch.tensor([True]))


def test_draw_batch_keeps_the_random_stream_of_the_float_path():
    """Without flips the draws are idx, then t, then eps: uint8 pixels and their floats give the same batch."""
    s = make_schedule("linear", 20)
    a = draw_batch(DeviceImages(PIXELS), 6, s, torch.Generator().manual_seed(2))
    b = draw_batch(DeviceImages(uint8_to_float(PIXELS)), 6, s, torch.Generator().manual_seed(2))
    for u, v in zip(a, b):
        assert (u is None and v is None) or torch.equal(u, v)
    g = torch.Generator().manual_seed(4)
    idx, flips = draw_indices(30, 6, g), draw_flips(6, g)
    x0, _, t, _ = draw_batch(DeviceImages(PIXELS), 6, s, torch.Generator().manual_seed(4), flip=True)
    assert torch.equal(x0, image_batch(PIXELS, idx, flips)) and 0 < flips.sum() < 6
    assert torch.equal(t, torch.randint(0, 20, (6,), generator=g))
    x0, cond, t, eps = draw_batch(DeviceImages(PIXELS), 6, s, torch.Generator().manual_seed(2), channels_last=True)
    assert x0.is_contiguous(memory_format=torch.channels_last) and eps.is_contiguous(memory_format=torch.channels_last)
    assert cond is None and t.shape == (6,) and 0 <= t.min() and t.max() < 20 and eps.shape == (6, 3, 4, 5)


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(image_size=8, in_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                           norm_groups=4))


def test_train_takes_uint8_pixels_like_their_floats_and_flips_on_request():
    pixels = torch.randint(0, 256, (32, 3, 8, 8), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    s = make_schedule("linear", 50)
    cfg = dict(steps=4, batch_size=8, warmup_steps=2)
    kw = dict(device="cpu", progress=False)
    from_pixels = train(tiny_unet(), pixels, s, TrainConfig(**cfg), **kw)
    from_floats = train(tiny_unet(), uint8_to_float(pixels), s, TrainConfig(**cfg), **kw)
    from_object = train(tiny_unet(), DeviceImages(pixels), s, TrainConfig(**cfg), **kw)
    assert from_pixels.losses == from_floats.losses == from_object.losses
    flipped = train(tiny_unet(), pixels, s, TrainConfig(flip=True, **cfg), **kw)
    assert flipped.losses != from_pixels.losses and all(map(torch.isfinite, torch.tensor(flipped.losses)))
    with pytest.raises(ValueError, match="flip=True mirrors images"):
        train(tiny_unet(), torch.rand(16, 2), s, TrainConfig(flip=True, **cfg), **kw)
    with pytest.raises(ValueError, match="uint8 tensor of pixels"):
        train(tiny_unet(), pixels.int(), s, TrainConfig(**cfg), **kw)
    with pytest.raises(ValueError, match="own labels"):
        train(tiny_unet(), DeviceImages(pixels), s, TrainConfig(**cfg), labels=torch.zeros(32), **kw)


def lesson_training_batch(images, batch_size, T, generator, flip=False, *, order="ite", t_low=0, noise=None,  # noqa: N803
                          flips_always=False, unit=False, upside_down=False, replacement=True, overflow=False,
                          mirror="where"):
    """A learner's training_batch, right by default, with one mistake switched on."""
    drawn = {"f": None}
    for what in order:
        if what == "i":
            drawn["i"] = (torch.randint(0, len(images), (batch_size,), generator=generator, device=generator.device)
                          if replacement else torch.randperm(len(images), generator=generator)[:batch_size])
            if flip or flips_always:
                drawn["f"] = torch.rand(batch_size, generator=generator, device=generator.device) < 0.5
        elif what == "t":
            drawn["t"] = torch.randint(t_low, T + t_low, (batch_size,), generator=generator, device=generator.device)
        else:
            shape = (batch_size, *images.shape[1:])
            drawn["e"] = noise(shape) if noise else torch.randn(shape, generator=generator, device=generator.device)
    x = images[drawn["i"]]
    if flip:
        mirrored, mask = x.flip(-2 if upside_down else -1), drawn["f"][:, None, None, None]
        x = {"where": torch.where(mask, mirrored, x), "all": mirrored, "inverted": torch.where(mask, x, mirrored),
             "none": x}[mirror]
    if overflow:
        return (x * 2).float() / 255 - 1, drawn["t"], drawn["e"]
    return (x.float() / 255 if unit else x.float() / 127.5 - 1), drawn["t"], drawn["e"]


def test_training_batch_is_the_batch_train_draws(monkeypatch):
    import diffedu.train as train_module

    pixels = torch.randint(0, 256, (20, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    schedule = make_schedule("linear", 50)
    for flip in (False, True):
        drawn = []

        def spy(*args, **kwargs):
            out = draw_batch(*args, **kwargs)
            drawn.append(tuple(x.clone() for k, x in enumerate(out) if k != 1))  # (x0, t, eps); no labels here
            return out

        monkeypatch.setattr(train_module, "draw_batch", spy)
        config = TrainConfig(steps=2, batch_size=8, lr=1e-3, warmup_steps=1, flip=flip, seed=3, preview_every=1,
                             checkpoint_every=None)
        train(tiny_unet(), pixels, schedule, config, progress=False)
        monkeypatch.undo()
        generator = torch.Generator().manual_seed(3)
        ours = [training_batch(pixels, 8, 50, generator, flip=flip) for _ in range(2)]   # the two steps in a row
        learners = lesson_training_batch(pixels, 8, 50, torch.Generator().manual_seed(3), flip)
        assert len(drawn) == 2
        for step, (mine, trains) in enumerate(zip(ours, drawn)):
            assert all(torch.equal(a, b) for a, b in zip(mine, trains)), f"step {step}, flip={flip}"
        assert all(torch.equal(a, b) for a, b in zip(learners, ours[0]))
        x0, t, _ = ours[0]
        assert x0.dtype == torch.float32 and x0.shape == (8, 3, 8, 8) and 0 <= t.min() and t.max() < 50


def test_the_lesson_check_of_training_batch_names_the_common_mistakes():
    from functools import partial

    from diffedu.course.checks import ExerciseError
    from diffedu.course.checks.lesson06 import check_training_batch

    assert check_training_batch(lesson_training_batch) is lesson_training_batch
    for mistake, words in (({"noise": torch.randn}, "not drawn from `generator`"), ({"t_low": 1}, "0 to T - 1"),
                           ({"flips_always": True}, "even when flip is False"),
                           ({"order": "tie"}, "before the indices"),
                           ({"order": "iet"}, "noise is drawn before t"), ({"unit": True}, "[0, 1]"),
                           ({"upside_down": True}, "upside down"), ({"replacement": False}, "without replacement"),
                           ({"overflow": True}, "overflows"), ({"mirror": "all"}, "every image is mirrored"),
                           ({"mirror": "inverted"}, "mask is inverted"), ({"mirror": "none"}, "no image is mirrored")):
        with pytest.raises(ExerciseError, match=re.escape(words)):
            check_training_batch(partial(lesson_training_batch, **mistake))

    def blank(images, batch_size, T, generator, flip=False):  # noqa: N803
        raise NotImplementedError()

    assert check_training_batch(blank) is training_batch  # skipped: the lesson goes on with the library's function
