"""Lesson 03's checks: the time embedding, the ResBlock, the attention block, and 'the output depends on t'.

The library's answers pass; known wrong answers are named; a skipped exercise falls back to the library
(or fails in grading mode).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffedu.course import checks
from diffedu.models.layers import ResBlock, SelfAttention, timestep_embedding
from diffedu.models.unet import UNet, UNetConfig

# --- learner-style answers: the skeletons of the lesson with a forward to fill in ---------------------------


class LearnerResBlock(nn.Module):
    """The lesson's skeleton; `step` computes forward from (self, x, emb)."""

    def __init__(self, in_channels, out_channels, time_dim, *, dropout=0.0, norm_groups=32):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_proj = nn.Linear(time_dim, out_channels)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


def res_block_with(forward):
    return type("WrongResBlock", (LearnerResBlock,), {"forward": forward})


class LearnerSelfAttention(nn.Module):
    def __init__(self, channels, *, num_heads=1, norm_groups=32):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x):  # written differently from the library: chunk, then per-tensor reshapes
        B, C, H, W = x.shape
        nh = self.num_heads
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        q, k, v = (z.reshape(B, nh, C // nh, H * W).transpose(-1, -2) for z in (q, k, v))
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


def attention_with(forward):
    return type("WrongSelfAttention", (LearnerSelfAttention,), {"forward": forward})


def manual_attention(m, x, *, scale=True, residual=True, split_by_reshape=False):
    B, C, H, W = x.shape
    nh, hd = m.num_heads, C // m.num_heads
    qkv = m.qkv(m.norm(x))
    if split_by_reshape:
        q, k, v = qkv.reshape(B, 3, nh, H * W, hd).unbind(1)
    else:
        q, k, v = qkv.reshape(B, 3, nh, hd, H * W).transpose(-1, -2).unbind(1)
    scores = q @ k.transpose(-1, -2) / (math.sqrt(hd) if scale else 1.0)
    h = (scores.softmax(-1) @ v).transpose(-1, -2).reshape(B, C, H, W)
    return x + m.proj(h) if residual else m.proj(h)


def skipped_function(t, dim):
    # YOUR CODE HERE
    raise NotImplementedError()


class SkippedResBlock(LearnerResBlock):
    def forward(self, x, emb):
        # YOUR CODE HERE
        raise NotImplementedError()


class SkippedSelfAttention(LearnerSelfAttention):
    def forward(self, x):
        B, C, H, W = x.shape
        # YOUR CODE HERE
        raise NotImplementedError()


# --- the reference and right answers pass ---------------------------------------------------------------------


def test_the_library_passes_its_own_checks(capsys):
    assert checks.check_timestep_embedding(timestep_embedding) is timestep_embedding
    assert checks.check_res_block(ResBlock) is ResBlock
    assert checks.check_self_attention(SelfAttention) is SelfAttention
    assert capsys.readouterr().out.count("✓") == 3


def test_learner_versions_written_differently_pass():
    def in_float64(t, dim):
        half = dim // 2
        freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
        angles = t.double()[:, None] * freqs
        return F.pad(torch.cat([angles.sin(), angles.cos()], 1), (0, dim % 2)).float()

    assert checks.check_timestep_embedding(in_float64) is in_float64
    assert checks.check_res_block(LearnerResBlock) is LearnerResBlock
    assert checks.check_self_attention(LearnerSelfAttention) is LearnerSelfAttention
    manual = attention_with(lambda self, x: manual_attention(self, x))
    assert checks.check_self_attention(manual) is manual


# --- wrong answers are explained ------------------------------------------------------------------------------


def embedding(t, dim, *, order="sin-cos", denominator=None, base=10000.0, pad=True):
    half = dim // 2
    freqs = torch.exp(-math.log(base) * torch.arange(half, dtype=torch.float32) / (denominator or half))
    angles = t.float()[:, None] * freqs
    parts = [angles.sin(), angles.cos()] if order == "sin-cos" else [angles.cos(), angles.sin()]
    emb = torch.cat(parts, 1)
    return F.pad(emb, (0, 1)) if pad and dim % 2 else emb


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda t, dim: embedding(t, dim, order="cos-sin"), "sin and cos halves are swapped"),
        (lambda t, dim: embedding(t, dim, denominator=dim // 2 - 1), "divide the exponent by half - 1"),
        (lambda t, dim: embedding(t, dim, denominator=dim), "divide the exponent by dim"),
        (lambda t, dim: embedding(t, dim, base=1000.0), "wrong base"),
        (lambda t, dim: embedding(t, dim, pad=False), "odd dim"),
    ],
)
def test_timestep_embedding_mistakes_are_named(wrong, hint):
    with pytest.raises(checks.ExerciseError) as info:
        checks.check_timestep_embedding(wrong)
    message = str(info.value)
    assert "timestep_embedding gives the wrong answer" in message
    assert hint in message, message


def test_an_odd_dim_without_padding_reports_the_shape():
    with pytest.raises(checks.ExerciseError, match=r"expected shape \(3, 7\), got shape \(3, 6\)"):
        checks.check_timestep_embedding(lambda t, dim: embedding(t, dim, pad=False))


@pytest.mark.parametrize(
    "forward, hint",
    [
        (lambda self, x, emb: self.skip(x) + self.conv2(self.dropout(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))),
         "time embedding is never added"),
        (lambda self, x, emb: self.skip(x) + self.conv2(self.dropout(F.silu(self.norm2(
            self.conv1(F.silu(self.norm1(x))) + self.time_proj(emb)[:, :, None, None])))),
         "without a SiLU first"),
        (lambda self, x, emb: self.skip(x) + self.conv2(self.dropout(self.norm2(F.silu(
            self.conv1(self.norm1(F.silu(x))) + self.time_proj(F.silu(emb))[:, :, None, None])))),
         "wrong order: GroupNorm first, then SiLU"),
        (lambda self, x, emb: self.conv2(self.dropout(F.silu(self.norm2(
            self.conv1(F.silu(self.norm1(x))) + self.time_proj(F.silu(emb))[:, :, None, None])))),
         "residual connection is missing"),
        (lambda self, x, emb: self.skip(x) + self.conv2(F.silu(self.norm2(
            self.conv1(F.silu(self.norm1(x))) + self.time_proj(F.silu(emb))[:, :, None, None]))),
         "dropout is missing"),
    ],
)
def test_res_block_mistakes_are_named(forward, hint):
    with pytest.raises(checks.ExerciseError) as info:
        checks.check_res_block(res_block_with(forward))
    message = str(info.value)
    assert "ResBlock gives the wrong answer" in message and "expected" in message
    assert hint in message, message


def test_a_res_block_that_adds_x_instead_of_skip_x_is_told_about_the_skip_conv():
    def adds_x(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.time_proj(F.silu(emb))[:, :, None, None]
        return x + self.conv2(self.dropout(F.silu(self.norm2(h))))

    with pytest.raises(checks.ExerciseError, match="(?s)raised RuntimeError.*self.skip"):
        checks.check_res_block(res_block_with(adds_x))


def test_renamed_submodules_are_explained():
    class Renamed(LearnerResBlock):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.emb_layer = self.time_proj
            del self.time_proj

    with pytest.raises(checks.ExerciseError, match="(?s)Keep the skeleton's __init__.*emb_layer"):
        checks.check_res_block(Renamed)


@pytest.mark.parametrize(
    "forward, hint",
    [
        (lambda self, x: manual_attention(self, x, scale=False), "scores are not scaled"),
        (lambda self, x: manual_attention(self, x, residual=False), "residual is missing"),
        (lambda self, x: manual_attention(self, x, split_by_reshape=True), "a reshape where a transpose is needed"),
        (lambda self, x: x + self.proj(F.scaled_dot_product_attention(
            *(z.reshape(x.shape[0], 1, x.shape[1], -1).transpose(-1, -2)
              for z in self.qkv(self.norm(x)).chunk(3, dim=1))).transpose(-1, -2).reshape(x.shape)),
         "heads are ignored"),
    ],
)
def test_self_attention_mistakes_are_named(forward, hint):
    with pytest.raises(checks.ExerciseError) as info:
        checks.check_self_attention(attention_with(forward))
    assert hint in str(info.value), str(info.value)


# --- skipped exercises -------------------------------------------------------------------------------------------


def test_skipped_exercises_fall_back_to_the_library(capsys):
    assert checks.check_timestep_embedding(skipped_function) is timestep_embedding
    assert checks.check_res_block(SkippedResBlock) is ResBlock
    assert checks.check_self_attention(SkippedSelfAttention) is SelfAttention
    out = capsys.readouterr().out
    assert out.count("skipped this exercise") == 3
    assert "diffedu.models.layers.ResBlock" in out and "diffedu.models.layers.SelfAttention" in out


def test_grading_mode_fails_skipped_exercises(monkeypatch):
    monkeypatch.setenv("DIFFEDU_GRADING", "1")
    for check, blank in [(checks.check_timestep_embedding, skipped_function),
                         (checks.check_res_block, SkippedResBlock),
                         (checks.check_self_attention, SkippedSelfAttention)]:
        with pytest.raises(checks.ExerciseSkipped, match="not implemented"):
            check(blank)
    assert checks.check_res_block(LearnerResBlock) is LearnerResBlock  # right answers still pass


# --- the output depends on t -------------------------------------------------------------------------------------


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    config = UNetConfig(image_size=8, in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=(4,), norm_groups=4)
    return UNet(config)


def test_a_fresh_unet_outputs_zero_and_the_check_says_why():
    model, x = tiny_unet(), torch.randn(2, 1, 8, 8)
    with pytest.raises(checks.ExerciseError, match="exactly 0 for every t.*output conv"):
        checks.check_depends_on_t(model, x)


def test_a_perturbed_unet_depends_on_t(capsys):
    model, x = tiny_unet(), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.train()
    changes = checks.check_depends_on_t(model, x, ts=(0, 10, 900))
    assert len(changes) == 2 and min(changes) > 1e-3
    assert model.training, "the check must restore the model's mode"
    assert "✓ the output depends on t" in capsys.readouterr().out


def test_a_net_that_ignores_t_is_caught():
    model, x = tiny_unet(), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ignores_t = lambda x, t: model(x, 0)  # noqa: E731
    with pytest.raises(checks.ExerciseError, match="same for every t.*time_proj"):
        checks.check_depends_on_t(ignores_t, x)


def test_tiny_unet_check_names_the_skip_mistakes(capsys):
    from diffedu.models.tiny_unet import TinyUNet

    def variant(*, pop_first=False, save_after=False, skip_first=False):
        class Learner(TinyUNet):
            def forward(self, x, t):
                emb = self.time_embed(t)
                h, skips = self.stem(x), []
                for block, down in zip(self.down_blocks, self.downsamples):
                    h = block(h, emb)
                    if not save_after:
                        skips.append(h)
                    h = down(h)
                    if save_after:
                        skips.append(h)
                h = self.mid(h, emb)
                for up, block in zip(self.upsamples, self.up_blocks):
                    h = up(h)
                    skip = skips.pop(0) if pop_first else skips.pop()
                    h = block(torch.cat([skip, h] if skip_first else [h, skip], dim=1), emb)
                return self.out(h)
        return Learner

    right = variant()
    assert checks.check_tiny_unet(right) is right
    for wrong, named in [(variant(pop_first=True), "last saved, first used"),
                         (variant(save_after=True), "BEFORE its downsampling"),
                         (variant(skip_first=True), "features first, then the skip")]:
        with pytest.raises(checks.ExerciseError, match=named):
            checks.check_tiny_unet(wrong)

    class Blank(TinyUNet):
        def forward(self, x, t):
            raise NotImplementedError

    assert checks.check_tiny_unet(Blank) is TinyUNet
    x = torch.randn(2, 1, 28, 28)
    assert TinyUNet()(x, torch.tensor([1, 999])).shape == x.shape
