"""Editing with a trained model (lesson 12): inpainting keeps what is known, SDEdit's strength, inversion edits,
and guidance by a CLIP's gradient."""

from __future__ import annotations

import pytest
import torch

from diffedu.clip import MiniCLIP, clip_guided_sample, mnist_clip
from diffedu.editing import half_mask, inpaint, invert_edit, noised_to, sdedit, start_step
from diffedu.models.unet import UNet, UNetConfig
from diffedu.samplers import ddim_invert, ddim_sample
from diffedu.schedules import make_schedule

SCHEDULE = make_schedule("linear", T=100)


class Counting(torch.nn.Module):
    """A small fixed 'noise predictor' that mixes pixels and counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(0.5))
        self.calls = 0

    def forward(self, x, t, cond=None):
        self.calls += 1
        shift = 0.0 if cond is None else 0.05 * cond.float().reshape(-1, 1, 1, 1)
        return self.weight * x + 0.3 * torch.roll(x, 1, dims=-2) + shift


def images(n: int = 3, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_half_masks_keep_the_named_half_and_reject_other_names():
    bottom = half_mask((2, 1, 6, 4), "bottom")
    assert bottom.shape == (1, 1, 6, 4) and bottom[..., :3, :].eq(1).all() and bottom[..., 3:, :].eq(0).all()
    right = half_mask((1, 1, 4, 6), "right")
    assert right[..., :3].eq(1).all() and right[..., 3:].eq(0).all()
    with pytest.raises(ValueError, match="which half"):
        half_mask((1, 1, 4, 4), "middle")


@pytest.mark.parametrize("resample", [1, 3])
def test_inpaint_keeps_the_known_pixels_exactly_and_calls_the_model_steps_times_resample(resample):
    model, x = Counting(), images()
    mask = half_mask(x.shape, "bottom")
    out = inpaint(model, SCHEDULE, x, mask, steps=5, resample=resample, generator=torch.Generator().manual_seed(1),
                  progress=False)
    assert torch.equal(out * mask, x * mask)
    assert model.calls == 4 * resample + 1  # the last step, to x_0, is not resampled
    assert not torch.allclose(out * (1 - mask), x * (1 - mask))  # the hole was filled, not copied


def test_resampling_changes_the_filled_region_and_guidance_doubles_the_batch():
    model, x = Counting(), images()
    mask = half_mask(x.shape, "right")
    plain = inpaint(model, SCHEDULE, x, mask, steps=4, generator=torch.Generator().manual_seed(2), progress=False)
    again = inpaint(model, SCHEDULE, x, mask, steps=4, resample=2, generator=torch.Generator().manual_seed(2),
                    progress=False)
    assert not torch.allclose(plain, again)
    model.calls = 0
    inpaint(model, SCHEDULE, x, mask, steps=4, cond=torch.tensor([1, 2, 3]), guidance=2.0, uncond=torch.tensor(0),
            generator=torch.Generator().manual_seed(2), progress=False)
    assert model.calls == 4  # one batched call per step for both halves of guidance


def test_inpaint_refuses_a_soft_or_misshapen_mask():
    x = images()
    with pytest.raises(ValueError, match="only 0 .fill. and 1 .keep."):
        inpaint(Counting(), SCHEDULE, x, torch.full((1, 1, 8, 8), 0.5), steps=2, progress=False)
    with pytest.raises(ValueError, match="does not broadcast"):
        inpaint(Counting(), SCHEDULE, x, torch.ones(1, 1, 4, 4), steps=2, progress=False)
    with pytest.raises(ValueError, match="resample must be >= 1"):
        inpaint(Counting(), SCHEDULE, x, half_mask(x.shape, "top"), steps=2, resample=0, progress=False)


def test_sdedit_starts_at_the_strength_and_a_low_strength_stays_close():
    assert start_step(SCHEDULE, 1.0) == 99 and start_step(SCHEDULE, 0.3) == 29 and start_step(SCHEDULE, 0.001) == 0
    with pytest.raises(ValueError, match="strength must lie in"):
        start_step(SCHEDULE, 0.0)
    model, x = Counting(), images()
    near = sdedit(model, SCHEDULE, x, 0.05, steps=10, generator=torch.Generator().manual_seed(3), progress=False)
    far = sdedit(model, SCHEDULE, x, 1.0, steps=10, generator=torch.Generator().manual_seed(3), progress=False)
    assert (near - x).abs().mean() < (far - x).abs().mean()
    model.calls = 0
    sdedit(model, SCHEDULE, x, 0.05, steps=10, generator=torch.Generator().manual_seed(3), progress=False)
    assert model.calls == 5  # only the levels below t0 = 4 are visited: 4, 3, 2, 1, 0


def test_noised_to_is_the_closed_form_and_minus_one_is_the_image():
    x, z = images(), torch.randn(3, 1, 8, 8)
    abar = SCHEDULE.alphas_cumprod[40]
    assert torch.allclose(noised_to(x, 40, SCHEDULE, z), abar.sqrt() * x + (1 - abar).sqrt() * z)
    assert torch.equal(noised_to(x, -1, SCHEDULE, z), x)


def test_invert_edit_at_full_strength_under_the_same_condition_is_lesson_05s_round_trip():
    torch.manual_seed(0)
    model = UNet(UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                            attention_resolutions=(), norm_groups=4, num_classes=3)).eval()
    with torch.no_grad():  # the zero-initialised output layers would make every condition predict the same
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    x, labels = images(2), torch.tensor([0, 1])
    edited = invert_edit(model, SCHEDULE, x, labels, labels, strength=1.0, steps=20, progress=False)
    x_T = ddim_invert(model, SCHEDULE, x, steps=20, cond=labels, progress=False)  # noqa: N806
    again = ddim_sample(model, SCHEDULE, x.shape, steps=20, x_T=x_T, cond=labels, clip_x0=False, progress=False)
    assert torch.allclose(edited, again, atol=1e-5)
    other = invert_edit(model, SCHEDULE, x, labels, torch.tensor([2, 2]), strength=1.0, steps=20, progress=False)
    assert not torch.allclose(other, edited, atol=1e-3)


def tiny_clip(size: int = 8) -> MiniCLIP:
    torch.manual_seed(0)
    return MiniCLIP(mnist_clip(("a", "seven", "one"), embed_dim=8, dim=16, depth=1, max_length=6, widths=(8,),
                               image_size=size)).eval()


def test_clip_guidance_at_scale_0_is_ddim_and_a_positive_scale_moves_towards_the_prompt():
    model, clip = Counting(), tiny_clip()
    plain = clip_guided_sample(model, SCHEDULE, clip, ["a seven", "one"], scale=0.0, steps=6,
                               generator=torch.Generator().manual_seed(4), progress=False)
    ddim = ddim_sample(model, SCHEDULE, (2, 1, 8, 8), steps=6, eta=1.0, generator=torch.Generator().manual_seed(4),
                       progress=False)
    assert torch.allclose(plain, ddim, atol=1e-6)
    guided = clip_guided_sample(model, SCHEDULE, clip, ["a seven", "one"], scale=300.0, steps=6,
                                generator=torch.Generator().manual_seed(4), progress=False)
    text = clip.embed_prompts(["a seven", "one"])
    with torch.no_grad():
        before = (clip.encode_image(plain.clamp(-1, 1)) * text).sum(1)
        after = (clip.encode_image(guided.clamp(-1, 1)) * text).sum(1)
    assert bool((after > before).all())
