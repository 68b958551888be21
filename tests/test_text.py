"""Tests of text conditioning: the tokenizer, the text encoder, cross-attention in the U-Net, Text2Img, lesson 09's checks."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffedu.captions import SPECS, Captioner
from diffedu.course import checks
from diffedu.course.checks import lesson09 as checks_text
from diffedu.models.layers import CrossAttention
from diffedu.models.text import (
    PAD,
    SPECIAL_TOKENS,
    TextEncoder,
    TextEncoderConfig,
    Tokenizer,
    TruncationWarning,
    UnknownWordWarning,
    encode,
    padding_mask,
    words_of,
)
from diffedu.models.unet import UNet, UNetConfig, shape_trace
from diffedu.schedules import make_schedule
from diffedu.text2img import (
    Text2Img,
    capture_cross_attention,
    evaluate_prompts,
    export_text2img,
    generate,
    load_text2img,
    mnist_pixel_text,
    token_attention_maps,
)
from diffedu.train import TrainConfig, train

VOCAB = ["a", "thick", "thin", "seven", "7", "digit", "the", "slanted"]


def tokenizer(max_length: int = 8) -> Tokenizer:
    return Tokenizer(VOCAB, max_length)


def perturbed(model: nn.Module, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Add noise to every weight, so zero-initialised layers stop hiding their inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_unet(**overrides) -> UNetConfig:
    fields = dict(image_size=8, in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                  attention_resolutions=(4,), norm_groups=4, num_heads=2, context_dim=16)
    fields.update(overrides)
    return UNetConfig(**fields)


def tiny_text2img(vocab=tuple(VOCAB)) -> Text2Img:
    """A 28x28 model small enough for a test: two levels, cross-attention at 14x14, a one-block encoder."""
    config = mnist_pixel_text(vocab, dim=16, depth=1, base_channels=8, channel_mults=(1, 2),
                              attention_resolutions=(14,), cross_attention_resolutions=(14,), norm_groups=4)
    torch.manual_seed(0)
    return Text2Img(config)


# --- tokenizer ---------------------------------------------------------------------------------------------


def test_words_of_lower_cases_and_strips_punctuation() -> None:
    assert words_of("A thick, slanted 7!") == ["a", "thick", "slanted", "7"]
    assert words_of("   ") == []
    with pytest.raises(TypeError, match="must be a str"):
        words_of(7)  # type: ignore[arg-type]


def test_tokenizer_round_trip() -> None:
    tok = tokenizer()
    ids = tok.encode("The THICK seven, slanted.")
    assert ids.dtype == torch.int64 and ids.shape == (8,)
    assert ids[0] == tok.bos_id and (ids[5:] == tok.pad_id).all()
    assert tok.decode(ids) == "the thick seven slanted"
    batch = tok.encode(["a 7", "thin seven"])
    assert batch.shape == (2, 8)
    assert tok.decode(batch) == ["a 7", "thin seven"]
    assert tok.vocab[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS and tok.vocab_size == len(VOCAB) + 3


def test_unknown_words_become_unk_and_are_named() -> None:
    tok = tokenizer()
    assert tok.unknown_words("a purple seven on fire") == ["purple", "on", "fire"]
    with pytest.warns(UnknownWordWarning, match="'purple'"):
        ids = tok.encode("a purple seven")
    assert ids[:4].tolist() == [tok.bos_id, tok.ids["a"], tok.unk_id, tok.ids["seven"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.encode("a purple seven", warn=False)  # no warning when asked for none


def test_long_prompts_are_truncated_with_a_notice() -> None:
    tok = tokenizer(max_length=4)
    with pytest.warns(TruncationWarning, match="dropped: 'seven'"):
        ids = tok.encode("a thick thin seven")  # 4 words, 3 fit after BOS
    assert ids.tolist() == [tok.bos_id, tok.ids["a"], tok.ids["thick"], tok.ids["thin"]]


def test_empty_prompt_is_bos_then_padding() -> None:
    tok = tokenizer()
    assert tok.empty().tolist() == [tok.bos_id] + [tok.pad_id] * 7
    assert torch.equal(tok.encode(""), tok.empty())
    assert padding_mask(tok.empty()[None]).tolist() == [[True] + [False] * 7]


def test_encode_function_matches_the_tokenizer() -> None:
    tok = tokenizer(6)
    for text in ["a thick seven", "the purple 7", "", "a thick thin seven 7 digit the"]:
        assert torch.equal(encode(text, tok.ids, 6), tok.encode(text, warn=False))


def test_tokenizer_refuses_bad_vocabularies_and_lengths() -> None:
    with pytest.raises(ValueError, match="single lower-case words"):
        Tokenizer(["Thick"])
    with pytest.raises(ValueError, match="single lower-case words"):
        Tokenizer(["two words"])
    with pytest.raises(ValueError, match="max_length must be an integer >= 2"):
        Tokenizer(VOCAB, 1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer().decode([0, 99])
    assert Tokenizer.from_texts(["A thick 7", "thin seven"]).words == ("7", "a", "seven", "thick", "thin")


# --- text encoder ------------------------------------------------------------------------------------------


def test_text_encoder_shapes_and_padding_is_ignored() -> None:
    tok = tokenizer()
    torch.manual_seed(0)
    encoder = TextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, max_length=8, dim=16, depth=2, num_heads=2)).eval()
    tokens = tok.encode(["a thick seven", "7", ""])
    context, mask = encoder(tokens)
    assert context.shape == (3, 8, 16) and torch.equal(mask, tokens != 0)
    assert torch.isfinite(context).all()
    with torch.no_grad():  # a different embedding for PAD must not change any real token's vector
        encoder.token_embed.weight[tok.pad_id] += 5.0
    again, _ = encoder(tokens)
    assert torch.allclose(again[mask], context[mask], atol=1e-5)
    assert not torch.allclose(again[~mask], context[~mask])  # (PAD outputs did change: the test can fail)


def test_text_encoder_refuses_bad_tokens() -> None:
    encoder = TextEncoder(TextEncoderConfig(vocab_size=11, max_length=8, dim=16, num_heads=2))
    with pytest.raises(ValueError, match="int64 tensor"):
        encoder(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="more than max_length=8"):
        encoder(torch.ones(2, 9, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"lie in 0\.\.10"):
        encoder(torch.full((1, 4), 11, dtype=torch.int64))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TextEncoderConfig(vocab_size=11, dim=10, num_heads=4)


# --- cross-attention ---------------------------------------------------------------------------------------


def test_cross_attention_shapes_weights_and_mask() -> None:
    torch.manual_seed(0)
    block = perturbed(CrossAttention(8, 6, num_heads=2, norm_groups=2))
    x, context = torch.randn(2, 8, 3, 5), torch.randn(2, 4, 6)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    out = block(x, context, mask)
    assert out.shape == x.shape
    weights = block.attention_weights(x, context, mask)
    assert weights.shape == (2, 2, 15, 4)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 15))
    assert (weights[0, :, :, 2:] == 0).all() and (weights[1, :, :, 1:] == 0).all()
    # forward is x + proj(weights @ v), with the same weights
    _, _, v = block.qkv(x, context)
    explicit = x + block.proj((weights @ v).transpose(-1, -2).reshape(2, 8, 3, 5))
    assert torch.allclose(out, explicit, atol=1e-5)


def test_fresh_cross_attention_is_the_identity() -> None:
    block = CrossAttention(4, 3, norm_groups=2)
    x = torch.randn(1, 4, 2, 2)
    assert torch.equal(block(x, torch.randn(1, 5, 3)), x)


def test_unet_padding_mask_really_masks() -> None:
    torch.manual_seed(0)
    model = perturbed(UNet(tiny_unet()))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    context = torch.randn(2, 5, 16)
    mask = torch.tensor([[True, True, True, False, False], [True, False, False, False, False]])
    out = model(x, t, context=context, context_mask=mask)
    changed = context.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 16) * 10  # garbage at the padded positions
    assert torch.allclose(model(x, t, context=changed, context_mask=mask), out, atol=1e-5)
    assert not torch.allclose(model(x, t, context=changed), out, atol=1e-3)  # unmasked, the garbage shows
    changed_real = context.clone()
    changed_real[0, 1] += 1.0  # a real token changes the output
    assert not torch.allclose(model(x, t, context=changed_real, context_mask=mask), out, atol=1e-5)


def test_unet_cross_attention_layout_and_shapes() -> None:
    config = tiny_unet(cross_attention_resolutions=(8, 4))
    model = UNet(config)
    x, context = torch.randn(2, 1, 8, 8), torch.randn(2, 3, 16)
    trace = shape_trace(model, x, 5, context=context, context_mask=torch.ones(2, 3, dtype=torch.bool))
    names = [name for name, _ in trace]
    assert "mid_cross" in names and trace[-1] == ("out", (2, 1, 8, 8))
    assert sum("+Cross" in name for name in names) == 2 + 4  # one down block per level, two up blocks per level
    crosses = [m for m in model.modules() if isinstance(m, CrossAttention)]
    assert len(crosses) == 7
    # the default: cross-attention where self-attention sits, and in the middle
    default = UNet(tiny_unet())
    assert sum(isinstance(m, CrossAttention) for m in default.modules()) == 1 + 2 + 1
    # without context_dim, no cross-attention and the same parameters as before
    plain = UNet(tiny_unet(context_dim=None))
    assert not any(isinstance(m, CrossAttention) for m in plain.modules())
    assert not any("cross" in k for k in plain.state_dict())


def test_unet_context_is_checked() -> None:
    model = UNet(tiny_unet())
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="needs context="):
        model(x, 3)
    with pytest.raises(ValueError, match=r"context must have shape \(2, L, 16\)"):
        model(x, 3, context=torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="context_mask must be a bool tensor"):
        model(x, 3, context=torch.randn(2, 3, 16), context_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="no cross-attention"):
        UNet(tiny_unet(context_dim=None))(x, 3, context=torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="needs text: set context_dim"):
        tiny_unet(context_dim=None, cross_attention_resolutions=(4,))
    with pytest.raises(ValueError, match="cross-attention resolution 5 never occurs"):
        tiny_unet(cross_attention_resolutions=(5,))


# --- the text-to-image model -----------------------------------------------------------------------------


def test_text2img_forward_empty_prompt_and_gradients() -> None:
    model = perturbed(tiny_text2img())
    tokens = model.encode(["a thick seven", "", "7"])
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 400, 999])
    out = model(x, t, tokens)
    assert out.shape == x.shape and torch.isfinite(out).all()
    empty = model.empty_prompt().expand(3, -1)
    assert torch.isfinite(model(x, t, empty)).all()  # BOS is always there: attention never over an empty set
    assert not torch.allclose(model(x, t, empty), out)  # the text matters
    model.train()
    model(x, t, tokens).square().mean().backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(name.startswith("text_encoder.blocks") for name in grads)
    assert any(".cross.kv." in name for name in grads)


def test_text2img_config_checks() -> None:
    config = tiny_text2img().config
    with pytest.raises(ValueError, match="context_dim .* must equal the text encoder's width"):
        type(config)(config.unet, TextEncoderConfig(vocab_size=len(VOCAB) + 3, dim=32, num_heads=2), config.vocab)
    with pytest.raises(ValueError, match=r"len\(vocab\) \+ 3"):
        type(config)(config.unet, config.text, config.vocab[:-1])


def test_capture_cross_attention_gives_one_map_per_token() -> None:
    model = perturbed(tiny_text2img())
    tokens = model.encode(["a thick seven", "7"])
    with capture_cross_attention(model, resolution=14) as records:
        model(torch.randn(2, 1, 28, 28), 500, tokens)
    assert len(records) == 4  # 14x14 is the lowest level here: the down block, the middle, two up blocks
    maps = token_attention_maps(records, batch=2, resolution=14)
    assert maps.shape == (2, 16, 14, 14)  # max_length 16
    assert torch.allclose(maps.sum(dim=1), torch.ones(2, 14, 14), atol=1e-5)  # weights over tokens sum to 1
    assert (maps[1, 2:] == 0).all()  # "7" has BOS and one word: the rest is padding
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="no attention weights were recorded"):
        token_attention_maps([], 2, 14)


def test_a_tiny_training_run_export_load_and_generate(tmp_path) -> None:
    captioner = Captioner(SPECS["mnist"])
    model = tiny_text2img(tuple(captioner.vocabulary()))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 28, 28, generator=g) * 2 - 1
    labels = torch.arange(16) % 10
    captions = captioner.describe(labels, {}, seed=0)
    tokens = model.tokenizer.encode(captions)
    config = TrainConfig(steps=3, batch_size=4, warmup_steps=1, cond_drop_prob=0.5,
                         null_label=tuple(model.tokenizer.empty().tolist()), checkpoint_every=None)
    schedule = make_schedule("linear", T=50)
    result = train(model, images, schedule, config, labels=tokens, checkpoint=tmp_path / "run.pt", device="cpu",
                   progress=False)
    assert result.step == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    path = export_text2img(tmp_path / "run.pt", tmp_path / "tiny_text.pt", name="tiny_text", record={"steps": 3},
                           captioner=Captioner.fit("mnist", images, labels))
    assert torch.load(path, weights_only=True)["format"] == "diffedu-text2img-weights"
    loaded, loaded_schedule, info = load_text2img("tiny_text", device="cpu", directory=tmp_path)
    assert info["step"] == 3 and info["captioner"] is not None and loaded_schedule.T == 50
    x, t, cond = torch.randn(2, 1, 28, 28), torch.tensor([3, 30]), tokens[:2]
    assert torch.allclose(loaded(x, t, cond), result.ema.eval()(x, t, cond), atol=1e-6)
    a = generate(loaded, loaded_schedule, ["a thick seven", "two"], n_per_prompt=2, steps=3, seed=1)
    b = generate(loaded, loaded_schedule, ["a thick seven", "two"], n_per_prompt=2, steps=3, seed=1)
    assert a.shape == (4, 1, 28, 28) and torch.equal(a, b) and a.abs().max() <= 1
    with pytest.raises(FileNotFoundError, match="no text-to-image weights 'missing'"):
        load_text2img("missing", directory=tmp_path)


def test_evaluate_prompts_reports_accuracies_in_range() -> None:
    from diffedu.models.classifier import load_classifier

    images = torch.rand(60, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    captioner = Captioner.fit("mnist", images, torch.arange(60) % 10)
    model = perturbed(tiny_text2img(tuple(captioner.vocabulary())), scale=0.02)
    result = evaluate_prompts(model, make_schedule("linear", T=20), captioner, load_classifier("mnist"), n=60,
                              steps=2, templates="heldout")
    assert 0 <= result["class_accuracy"] <= 1 and 0 <= result["attribute_accuracy"] <= 1
    assert set(result["per_attribute"]) == {"thickness", "slant", "size"}
    asked = sum(int((v >= 0).sum()) for v in result["asked"].values())
    assert asked == 60  # every prompt names exactly one attribute
    assert len(result["prompts"]) == 60 and result["images"].shape == (60, 1, 28, 28)


# --- lesson 09's checks ------------------------------------------------------------------------------------


def test_checks_accept_the_library_answers(capsys) -> None:
    from diffedu.models.text import encode as library_encode

    assert checks_text.check_encode(library_encode) is library_encode
    assert checks_text.check_text_encoder(TextEncoder) is TextEncoder
    assert checks_text.check_cross_attention(CrossAttention) is CrossAttention
    assert capsys.readouterr().out.count("✓") == 3


def test_encode_check_names_mistakes() -> None:
    def no_bos(text, ids, max_length):
        row = [ids.get(w, ids["<unk>"]) for w in words_of(text)][:max_length]
        return torch.tensor(row + [ids[PAD]] * (max_length - len(row)))

    with pytest.raises(checks.ExerciseError, match="must start with the BOS id"):
        checks_text.check_encode(no_bos)

    def raw_split(text, ids, max_length):
        row = [ids["<bos>"]] + [ids.get(w, ids["<unk>"]) for w in text.split()][: max_length - 1]
        return torch.tensor(row + [ids[PAD]] * (max_length - len(row)))

    with pytest.raises(checks.ExerciseError, match="use words_of"):
        checks_text.check_encode(raw_split)


class LearnerCrossAttention(nn.Module):
    """The lesson's skeleton with a forward written out (differently from the library)."""

    def __init__(self, channels, context_dim, *, num_heads=1, norm_groups=32):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x, context, context_mask=None):
        B, C, H, W = x.shape
        nh, L = self.num_heads, context.shape[1]
        q = self.q(self.norm(x)).reshape(B, nh, C // nh, H * W).transpose(-1, -2)
        k, v = self.kv(context).chunk(2, dim=-1)
        k, v = (z.reshape(B, L, nh, C // nh).transpose(1, 2) for z in (k, v))
        mask = None if context_mask is None else context_mask[:, None, None, :]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask_for(mask))
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))

    def mask_for(self, mask):
        return mask


def test_cross_attention_check_passes_a_learner_and_names_mistakes() -> None:
    assert checks_text.check_cross_attention(LearnerCrossAttention) is LearnerCrossAttention
    no_mask = type("NoMask", (LearnerCrossAttention,), {"mask_for": lambda self, mask: None})
    with pytest.raises(checks.ExerciseError, match="attends to the padding"):
        checks_text.check_cross_attention(no_mask)
    inverted = type("Inverted", (LearnerCrossAttention,), {"mask_for": lambda self, m: None if m is None else ~m})
    with pytest.raises(checks.ExerciseError, match="mask is the wrong way round"):
        checks_text.check_cross_attention(inverted)

    def keys_from_image(self, x, context, context_mask=None):
        B, C, H, W = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(B, 1, C, H * W).transpose(-1, -2)
        k, v = self.kv(h.flatten(2).transpose(1, 2)).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, k[:, None], v[:, None])
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))

    with pytest.raises(checks.ExerciseError, match="keys and values come from the image"):
        checks_text.check_cross_attention(type("FromImage", (LearnerCrossAttention,), {"forward": keys_from_image}))


class LearnerTextEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        reference = TextEncoder(config)
        self.token_embed, self.pos_embed, self.blocks, self.norm = (
            reference.token_embed, reference.pos_embed, reference.blocks, reference.norm)

    def forward(self, tokens):
        mask = tokens != 0
        h = self.token_embed(tokens) + self.pos_embed[: tokens.shape[1]]
        for block in self.blocks:
            h = block(h, src_key_padding_mask=self.padding(mask))
        return self.norm(h), mask

    def padding(self, mask):
        return ~mask


def test_text_encoder_check_names_mistakes() -> None:
    assert checks_text.check_text_encoder(LearnerTextEncoder) is LearnerTextEncoder
    with pytest.raises(checks.ExerciseError, match="padding mask is the wrong way round"):
        checks_text.check_text_encoder(type("Inv", (LearnerTextEncoder,), {"padding": lambda self, m: m}))
    with pytest.raises(checks.ExerciseError, match="attend to the padding"):
        checks_text.check_text_encoder(type("NoMask", (LearnerTextEncoder,), {"padding": lambda self, m: None}))


def test_skipped_exercises_fall_back_and_fail_in_grading_mode(capsys) -> None:
    def blank(*args, **kwargs):
        raise NotImplementedError()

    class BlankCross(LearnerCrossAttention):
        def forward(self, x, context, context_mask=None):
            raise NotImplementedError()

    from diffedu.models.text import encode as library_encode

    assert checks_text.check_encode(blank) is library_encode
    assert checks_text.check_cross_attention(BlankCross) is CrossAttention
    assert "skipped this exercise" in capsys.readouterr().out
    checks.set_grading(True)
    try:
        with pytest.raises(checks.ExerciseSkipped):
            checks_text.check_cross_attention(BlankCross)
    finally:
        checks.set_grading(None)


# --- the optional CLIP text encoder (offline: a tiny random config) ---------------------------------------------


def test_clip_text_encoder_from_a_tiny_config(monkeypatch) -> None:
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may download here
    from diffedu.models.text import CLIPTextEncoder

    config = transformers.CLIPTextConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=48,
                                         eos_token_id=49, pad_token_id=49)
    torch.manual_seed(0)
    encoder = CLIPTextEncoder.from_config(config, max_length=8)
    tokens = torch.tensor([[48, 5, 6, 49, 49, 49, 49, 49], [48, 49, 49, 49, 49, 49, 49, 49]])
    context, mask = encoder(tokens)
    assert context.shape == (2, 8, 32) and torch.isfinite(context).all()
    assert mask.tolist() == [[True] * 4 + [False] * 4, [True, True] + [False] * 6]
    assert not any(p.requires_grad for p in encoder.parameters())  # frozen
    encoder.train()
    assert not encoder.model.training
    unet = perturbed(UNet(tiny_unet(context_dim=32)))  # the U-Net reads CLIP's vectors like ours
    out = unet(torch.randn(2, 1, 8, 8), 5, context=context, context_mask=mask)
    assert out.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="no tokenizer"):
        encoder.encode("a thick seven")


def test_a_latent_model_decodes_its_samples_with_the_vae() -> None:
    from diffedu.models.vae import VAE, mnist_vae
    from diffedu.text2img import mnist_latent_text

    torch.manual_seed(0)
    vae = VAE(mnist_vae()).eval()
    config = mnist_latent_text(VOCAB, dim=16, depth=1, base_channels=8, norm_groups=4, num_res_blocks=1)
    model = perturbed(Text2Img(config), scale=0.02)
    assert config.vae == "mnist_vae" and config.unet.in_channels == vae.config.latent_shape[0]
    schedule = make_schedule("linear", T=20)
    images = generate(model, schedule, ["a thick seven"], n_per_prompt=2, steps=2, vae=vae)
    assert images.shape == (2, 1, 28, 28) and images.abs().max() <= 1
    with pytest.raises(ValueError, match="pass vae="):
        generate(model, schedule, "a thick seven", steps=2)
    with pytest.raises(ValueError, match="do not pass vae="):
        generate(tiny_text2img(), schedule, "a thick seven", steps=2, vae=vae)
