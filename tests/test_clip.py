"""The small CLIP of lesson 12: its loss, its encoders, training, shipping, zero-shot use, retrieval and CLIP score."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffedu.captions import Captioner
from diffedu.checkpoints import CheckpointError, atomic_save
from diffedu.clip import (
    CLIPTrainConfig,
    MiniCLIP,
    caption_tokens,
    class_prompts,
    clip_loss,
    export_clip,
    load_clip,
    mnist_clip,
    retrieval_recall,
    similarity,
    train_clip,
    zero_shot_classifier,
    zero_shot_scores,
)
from diffedu.data import load_dataset
from diffedu.metrics import clip_score

VOCAB = ("a", "an", "seven", "one", "thick", "thin", "the", "digit")


def tiny(**overrides) -> MiniCLIP:
    torch.manual_seed(0)
    fields = dict(embed_dim=16, dim=16, depth=1, max_length=8, widths=(8, 16), **overrides)
    return MiniCLIP(mnist_clip(VOCAB, **fields))


def test_clip_loss_matches_the_formula_written_out():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    s = torch.tensor(1.5)
    cos = F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).T
    logits = math.exp(1.5) * cos
    by_hand = 0.0
    for i in range(5):  # -log softmax of the diagonal, by rows and by columns
        by_hand -= (logits[i, i] - torch.logsumexp(logits[i], 0)) / 10
        by_hand -= (logits[i, i] - torch.logsumexp(logits[:, i], 0)) / 10
    assert torch.allclose(clip_loss(u, v, s), by_hand, atol=1e-6)
    assert torch.allclose(clip_loss(v, u, s), clip_loss(u, v, s), atol=1e-6)  # symmetric
    assert float(clip_loss(u, u, torch.tensor(math.log(100.0)))) < 0.01  # perfect pairs at the cap: nearly 0


def test_clip_loss_caps_the_scale_at_100_and_rejects_mismatched_batches():
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    assert torch.allclose(clip_loss(u, v, torch.tensor(9.0)), clip_loss(u, v, torch.tensor(math.log(100.0))))
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(u, v[:3], 1.0)


def test_the_encoders_give_unit_vectors_and_the_temperature_starts_at_0_07():
    model = tiny().eval()
    images = torch.rand(3, 1, 28, 28) * 2 - 1
    u = model.encode_image(images)
    v = model.embed_prompts(["a thick seven", "one", ""])
    assert u.shape == v.shape == (3, 16)
    assert torch.allclose(u.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(v.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert abs(model.temperature - 0.07) < 1e-6
    logits = model(images, model.tokenizer.encode(["a seven", "one", "the digit seven"]))
    assert logits.shape == (3, 3) and torch.allclose(logits, (u @ model.embed_prompts(
        ["a seven", "one", "the digit seven"]).T) / 0.07, atol=1e-4)


def test_the_text_embedding_ignores_padding():
    model = tiny().eval()
    short = model.tokenizer.encode(["a seven"])
    assert torch.equal(short[0, 3:], torch.zeros(5, dtype=torch.long))  # padded
    changed = short.clone()
    with torch.no_grad():
        a = model.encode_text(short)
        model.text_encoder.pos_embed[5:] += 10.0  # positions only PAD occupies
        b = model.encode_text(changed)
    assert torch.allclose(a, b, atol=1e-6)


def test_a_wrong_image_shape_is_one_clear_error():
    model = tiny()
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model.encode_image(torch.zeros(2, 28, 28))


def _toy_pairs(n: int = 64):
    """Two kinds of picture (a bright top half, a bright bottom half) with their own words."""
    images = -torch.ones(n, 1, 28, 28)
    images[::2, :, :14] = 1.0
    images[1::2, :, 14:] = 1.0
    tokenizer = tiny().tokenizer
    texts = ["a thick seven" if i % 2 == 0 else "a thin one" for i in range(n)]
    return images, tokenizer.encode(texts)[:, None, :]  # one caption each


def test_train_clip_learns_toy_pairs_and_writes_its_checkpoint_atomically(tmp_path):
    model = tiny()
    images, tokens = _toy_pairs()
    out = tmp_path / "clip.pt"
    result = train_clip(model, images, tokens, CLIPTrainConfig(batch_size=16, lr=3e-3, warmup_steps=5, max_steps=60,
                                                               max_shift=1), checkpoint=out, progress=False)
    assert result.steps == 60 and not result.interrupted
    assert sum(result.losses[-10:]) / 10 < sum(result.losses[:10]) / 10 - 0.3
    scores = similarity(model, images[:2], ["a thick seven", "a thin one"])
    assert scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0]
    assert out.is_file() and not list(tmp_path.glob(".*.tmp"))
    assert torch.load(out, weights_only=True)["step"] == 60


def test_train_clip_needs_a_budget_and_enough_pairs():
    with pytest.raises(ValueError, match="budget"):
        CLIPTrainConfig()
    images, tokens = _toy_pairs(8)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train_clip(tiny(), images, tokens, CLIPTrainConfig(batch_size=16, max_steps=1), progress=False)
    with pytest.raises(ValueError, match=r"tokens \(N, K, L\)"):
        train_clip(tiny(), images, tokens[:, 0], CLIPTrainConfig(batch_size=4, max_steps=1), progress=False)


def test_export_and_load_give_the_same_model(tmp_path):
    model = tiny().eval()
    data = load_dataset("mnist", "test", limit=60, dtype="uint8")
    captioner = Captioner.fit("mnist", data.x, data.y)
    path = export_clip(model, tmp_path / "mine.pt", name="mine", record={"steps": 0}, captioner=captioner)
    loaded, info = load_clip("mine", device="cpu", directory=tmp_path)
    images = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.equal(loaded.encode_image(images), model.encode_image(images))
    assert torch.equal(loaded.embed_prompts("a thin one"), model.embed_prompts("a thin one"))
    assert info["record"] == {"steps": 0} and info["captioner"].thresholds.keys() == captioner.thresholds.keys()
    assert torch.load(path, weights_only=True)["format"] == "diffedu-clip-weights"


def test_loading_a_missing_or_foreign_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmarks/clip.py"):
        load_clip("mnist_clip", directory=tmp_path)
    atomic_save({"format": "diffedu-weights"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="load_pretrained"):
        load_clip("other", directory=tmp_path)


def test_class_prompts_name_one_class_each_and_no_attribute():
    data = load_dataset("mnist", "test", limit=60, dtype="uint8")
    captioner = Captioner.fit("mnist", data.x, data.y)
    prompts = class_prompts(captioner)
    assert len(prompts) == 10
    assert "a seven" in prompts[7] and "a 7" in prompts[7]
    for k, texts in enumerate(prompts):
        assert all("{" not in t for t in texts)
        assert all(any(noun in t.split() for noun in captioner.spec.nouns[k]) for t in texts)
        assert not any(w in t.split() for t in texts for w in ("thick", "thin", "slanted", "small", "large"))


def test_zero_shot_scores_are_cosines_with_renormalised_class_means():
    model = tiny().eval()
    images = torch.rand(4, 1, 28, 28) * 2 - 1
    prompts = [["a seven", "the digit seven"], ["one", "a thin one", "an one"]]
    weights = zero_shot_classifier(model, prompts)
    assert torch.allclose(weights.norm(dim=-1), torch.ones(2), atol=1e-5)
    by_hand = F.normalize(model.embed_prompts(prompts[1]).mean(0), dim=0)
    assert torch.allclose(weights[1], by_hand, atol=1e-6)
    scores = zero_shot_scores(model, images, prompts)
    assert scores.shape == (4, 2) and bool((scores.abs() <= 1 + 1e-5).all())


def test_caption_tokens_give_several_captions_per_image():
    data = load_dataset("mnist", "test", limit=30, dtype="uint8")
    captioner = Captioner.fit("mnist", data.x, data.y)
    model = MiniCLIP(mnist_clip(captioner.vocabulary()))
    tokens = caption_tokens(model.tokenizer, captioner, data.x, data.y, per_image=3)
    assert tokens.shape == (30, 3, 16)
    assert not torch.equal(tokens[:, 0], tokens[:, 1])  # other seeds, other phrasings
    assert int((tokens == model.tokenizer.unk_id).sum()) == 0


def test_retrieval_recall_counts_equal_keys_as_matches():
    g = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(20, 8, generator=g), dim=-1)
    perfect = retrieval_recall(u, u.clone(), list(range(20)), ks=(1, 5), pool=10)
    assert perfect["recall@1"] == 1.0 and perfect["image_to_text@5"] == 1.0
    shuffled = retrieval_recall(u, u.roll(1, 0), list(range(20)), ks=(1,), pool=10)
    assert shuffled["recall@1"] < 0.5
    same_key = retrieval_recall(u, u.roll(1, 0), [0] * 20, ks=(1,), pool=10)  # every item matches every query
    assert same_key["recall@1"] == 1.0
    with pytest.raises(ValueError, match="pool of 100"):
        retrieval_recall(u, u, list(range(20)))


class _Stub(nn.Module):
    """A 'CLIP' whose image and text embeddings are fixed: image i is e_i, a prompt is e_(its number)."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def encode_image(self, images):
        return F.normalize(images.flatten(1)[:, :3], dim=-1)

    def embed_prompts(self, prompts, warn=True):
        return torch.eye(3)[[int(p) for p in prompts]]


def test_clip_score_is_100_times_the_clipped_cosine():
    images = torch.zeros(3, 1, 2, 2)
    images.flatten(1)[:, :3] = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0]])
    assert clip_score(_Stub(), images[:2], ["0", "1"]) == pytest.approx(100.0)
    per = clip_score(_Stub(), images, ["0", "0", "0"], per_pair=True)
    assert per.tolist() == pytest.approx([100.0, 0.0, 0.0])  # orthogonal: 0; opposite: clipped to 0
    with pytest.raises(ValueError, match="its own prompt"):
        clip_score(_Stub(), images, ["0"])
