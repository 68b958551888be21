"""Tests of diffedu.models.mmdit: joint attention, the two streams, padding, zero init, conditioning on the text."""

from __future__ import annotations

import math

import pytest
import torch

from diffedu.captions import SPECS, Captioner
from diffedu.models.mmdit import JointBlock, MMDiT, MMDiTConfig, joint_attention, mnist_latent_mmdit
from diffedu.models.text import TextEncoderConfig
from diffedu.text2img import (
    Text2Img,
    Text2ImgConfig,
    capture_joint_attention,
    export_text2img,
    generate,
    joint_token_maps,
    load_text2img,
    mnist_latent_mmdit_text,
)
from diffedu.train import TrainConfig, train


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


# --- the MMDiT as a text-to-image model (Text2Img with mmdit=, flow matching) -------------------------------


def _tiny_mmdit_text(vocab):
    text = TextEncoderConfig(vocab_size=len(vocab) + 3, max_length=8, dim=16, depth=1, num_heads=2, mlp_ratio=2)
    mmdit = mnist_latent_mmdit(hidden_size=16, depth=2, num_heads=2, context_dim=16)
    return Text2Img(Text2ImgConfig(None, text, tuple(vocab), mmdit=mmdit))


def test_the_lesson_model_is_an_mmdit_on_latents():
    config = mnist_latent_mmdit_text(tuple(Captioner(SPECS["mnist"]).vocabulary()))
    assert config.backbone == "mmdit" and config.vae == "mnist_vae" and config.mmdit.context_dim == config.text.dim


def test_text2img_holds_an_mmdit_trains_with_flow_exports_loads_and_generates(tmp_path):
    captioner = Captioner(SPECS["mnist"])
    model = _tiny_mmdit_text(tuple(captioner.vocabulary()))
    assert model.config.backbone == "mmdit" and not hasattr(model, "unet") and model.image_shape == (4, 8, 8)
    latents = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    tokens = model.tokenizer.encode(captioner.describe(torch.arange(16) % 10, {}, seed=0))
    config = TrainConfig(steps=3, batch_size=4, warmup_steps=1, cond_drop_prob=0.5, objective="flow",
                         null_label=tuple(model.tokenizer.empty().tolist()), checkpoint_every=None)
    result = train(model, latents, None, config, labels=tokens, checkpoint=tmp_path / "run.pt", device="cpu",
                   progress=False)
    assert result.step == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    path = export_text2img(tmp_path / "run.pt", tmp_path / "tiny_mmdit.pt", name="tiny_mmdit", record={"steps": 3})
    payload = torch.load(path, weights_only=True)
    assert payload["prediction"] == "flow" and payload["schedule"] is None
    loaded, schedule, info = load_text2img("tiny_mmdit", device="cpu", directory=tmp_path)
    assert schedule is None and isinstance(loaded.denoiser, MMDiT) and loaded.config == model.config
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([300.0, 900.0])
    assert torch.allclose(loaded(x, t, tokens[:2]), result.ema.eval()(x, t, tokens[:2]), atol=1e-6)
    a = generate(loaded, None, ["a thick seven", "two"], n_per_prompt=2, steps=3, seed=1)
    b = generate(loaded, None, ["a thick seven", "two"], n_per_prompt=2, steps=3, seed=1, guidance=None)
    assert a.shape == b.shape == (4, 4, 8, 8) and torch.isfinite(a).all() and not torch.equal(a, b)
    assert torch.equal(a, generate(loaded, None, ["a thick seven", "two"], n_per_prompt=2, steps=3, seed=1))
    with pytest.raises(ValueError, match="exactly one of unet="):
        Text2ImgConfig(None, model.config.text, model.config.vocab)


def test_joint_token_maps_show_where_each_patch_reads_the_words():
    captioner = Captioner(SPECS["mnist"])
    model = _tiny_mmdit_text(tuple(captioner.vocabulary()))
    perturbed(model)  # make the zero-initialised modulations speak
    tokens = model.encode(["a thick seven", "7"])
    with capture_joint_attention(model) as records:
        model(torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0]), tokens)
    assert len(records) == 2 and records[0].shape == (2, 2, 8 + 64, 8 + 64)
    maps = joint_token_maps(records, batch=2, length=8, grid=8)
    assert maps.shape == (2, 8, 8, 8)
    assert torch.allclose(maps.sum(1), torch.ones(2, 8, 8), atol=1e-5)  # a patch's share of the text, split
    assert (maps[1, 2:] == 0).all()  # "7" is BOS and one word: no weight on padding
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="not an MMDiT"):
        with capture_joint_attention(torch.nn.Linear(2, 2)):
            pass


def test_the_prompt_box_draws_from_an_mmdit_without_a_browser():
    from diffedu.course.widgets import prompt_explorer

    vocab = tuple(Captioner(SPECS["mnist"]).vocabulary())
    text = TextEncoderConfig(vocab_size=len(vocab) + 3, max_length=8, dim=16, depth=1, num_heads=2, mlp_ratio=2)
    mmdit = mnist_latent_mmdit(in_channels=1, hidden_size=16, depth=2, num_heads=2, context_dim=16)
    model = perturbed(Text2Img(Text2ImgConfig(None, text, vocab, mmdit=mmdit))).eval()  # pixels: 1 x 8 x 8
    box = prompt_explorer(model, None, prompt="a thick seven", n=4, steps=2)
    images = box.draw()
    assert images.shape == (4, 1, 8, 8) and torch.equal(box.last_images, images)
    box.children[0].children[1].value = 0.0  # the guidance slider redraws
    assert not torch.equal(box.last_images, images)
