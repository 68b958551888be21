"""Tests of diffedu.models.mmdit: joint attention, the two streams, padding, zero init, conditioning on the text."""

from __future__ import annotations

import math

import pytest
import torch

from diffedu.models.mmdit import JointBlock, MMDiT, MMDiTConfig, joint_attention, mnist_latent_mmdit


def tiny(**overrides: object) -> MMDiTConfig:
    fields = dict(image_size=4, in_channels=2, patch_size=2, hidden_size=16, depth=2, num_heads=2, context_dim=8)
    fields.update(overrides)
    return MMDiTConfig(**fields)  # type: ignore[arg-type]


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def test_joint_attention_is_one_softmax_over_text_and_image_with_padding_masked():
    g = torch.Generator().manual_seed(0)
    qt, kt, vt = (torch.randn(2, 2, 3, 4, generator=g) for _ in range(3))
    qi, ki, vi = (torch.randn(2, 2, 5, 4, generator=g) for _ in range(3))
    mask = torch.tensor([[True, True, False], [True, True, True]])
    o_txt, o_img = joint_attention(qt, kt, vt, qi, ki, vi, mask)
    q, k, v = torch.cat([qt, qi], 2), torch.cat([kt, ki], 2), torch.cat([vt, vi], 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(4)
    keep = torch.cat([mask, torch.ones(2, 5, dtype=torch.bool)], 1)
    manual = scores.masked_fill(~keep[:, None, None], float("-inf")).softmax(-1) @ v
    assert torch.allclose(torch.cat([o_txt, o_img], 2), manual, atol=1e-6)
    assert o_txt.shape == (2, 2, 3, 4) and o_img.shape == (2, 2, 5, 4)


def test_a_fresh_mmdit_predicts_zero_and_a_fresh_block_changes_nothing():
    model = MMDiT(tiny())
    x, ctx = torch.randn(3, 2, 4, 4), torch.randn(3, 5, 8)
    assert torch.equal(model(x, torch.tensor([1, 50, 999]), context=ctx), torch.zeros_like(x))
    block = JointBlock(16, 2, 4.0)
    txt, img, c = torch.randn(3, 5, 16), torch.randn(3, 4, 16), torch.randn(3, 16)
    out_txt, out_img = block(txt, img, c)
    assert torch.equal(out_txt, txt) and torch.equal(out_img, img)
    last = JointBlock(16, 2, 4.0, text_out=False)  # the last block reads the text and writes only the image
    none, out_img = last(txt, img, c)
    assert none is None and torch.equal(out_img, img) and last.mlp_txt is None and last.attn.proj_txt is None


def test_the_image_reads_the_text_and_padding_is_ignored():
    model = perturbed(MMDiT(tiny()))
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    t = torch.tensor([100, 700])
    with torch.no_grad():
        out = model(x, t, context=ctx, context_mask=mask)
        other_words = ctx.clone()
        other_words[0, 1] += 1.0  # a real token changed
        assert not torch.allclose(out[0], model(x, t, context=other_words, context_mask=mask)[0])
        padding = ctx.clone()
        padding[0, 3:] = torch.randn(2, 8, generator=g) * 10  # only padding changed
        assert torch.allclose(out, model(x, t, context=padding, context_mask=mask), atol=1e-5)
    model(x, t, context=ctx, context_mask=mask).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())  # every weight matters (no dead text tail)


def test_bad_inputs_get_one_clear_error():
    model = MMDiT(tiny())
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"needs context=\(B, L, 8\)"):
        model(x, 0)
    with pytest.raises(ValueError, match="context_mask must be a bool tensor"):
        model(x, 0, context=torch.zeros(1, 3, 8), context_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="reads text"):
        model(x, 0, torch.tensor([1]), context=torch.zeros(1, 3, 8))
    with pytest.raises(ValueError, match="must divide image_size"):
        tiny(patch_size=3)
    with pytest.raises(ValueError, match="not class labels"):
        tiny(num_classes=10)
    with pytest.raises(ValueError, match="context_dim must be a positive integer"):
        tiny(context_dim=0)
    assert mnist_latent_mmdit().image_size == 8
