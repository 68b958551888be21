"""Text for the diffusion model: a word-level tokenizer and a small transformer text encoder (lesson 09).

The tokenizer maps a prompt to a fixed-length row of integer ids,

    "A thick, slanted 7!"  ->  words ["a", "thick", "slanted", "7"]  ->  [BOS, a, thick, slanted, 7, PAD, ..., PAD]

lower-cased, punctuation stripped, one id per word of its vocabulary (built from the captions), UNK
for any other word (with a warning that names it), cut to ``max_length`` ids (with a warning that
says what was dropped). Every row starts with BOS, so even the empty prompt ``[BOS, PAD, ..., PAD]``
has one real token: attention over it is never over an empty set. The empty prompt is the
unconditional case of classifier-free guidance.

The text encoder turns the ids into one vector per token (Vaswani et al. 2017, pre-norm blocks):

    h_0 = E_tok[ids] + E_pos[0..L-1]                                 (B, L, D)
    h_k = TransformerEncoderLayer_k(h_{k-1}, padding mask)           k = 1..depth, PAD keys ignored
    context = LayerNorm(h_depth),  mask = ids != PAD                 (B, L, D), (B, L)

and the U-Net's cross-attention reads ``context`` where ``mask`` is true.

An optional extra, `CLIPTextEncoder`, puts a frozen pretrained CLIP text encoder (Radford et al. 2021,
through the ``transformers`` package, which the course does not need) behind the same interface.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "BOS", "CLIPTextEncoder", "PAD", "SPECIAL_TOKENS", "TextEncoder", "TextEncoderConfig", "Tokenizer", "TruncationWarning", "UNK",
    "UnknownWordWarning", "encode", "padding_mask", "words_of",
]

PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, UNK)  # ids 0, 1, 2


class UnknownWordWarning(UserWarning):
    """A prompt holds words the tokenizer does not know; they become UNK."""


class TruncationWarning(UserWarning):
    """A prompt is longer than the tokenizer's ``max_length``; its end is cut off."""


def words_of(text: str) -> list[str]:
    """A prompt as the tokenizer sees it: lower case, every character but a-z and 0-9 a space, split on spaces.

    ``"A thick, slanted 7!" -> ["a", "thick", "slanted", "7"]``.
    """
    if not isinstance(text, str):
        raise TypeError(f"a prompt must be a str, got {type(text).__name__}")
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def encode(text: str, ids: dict[str, int], max_length: int) -> Tensor:
    """One prompt as ``max_length`` token ids (int64): [BOS, id(w_1), ..., id(w_n), PAD, ..., PAD].

    The words are ``words_of(text)``; a word missing from ``ids`` becomes ``ids[UNK]``; only the first
    ``max_length - 1`` words fit after BOS (the rest are cut off); PAD fills the row to ``max_length``.
    ``ids`` maps every vocabulary entry, PAD, BOS and UNK included, to its id.
    """
    words = words_of(text)[: max_length - 1]
    row = [ids[BOS]] + [ids.get(w, ids[UNK]) for w in words]
    row += [ids[PAD]] * (max_length - len(row))
    return torch.tensor(row, dtype=torch.int64)


#: Words that carry no content of their own: left out where the vocabulary is listed for a learner.
FUNCTION_WORDS = frozenset({"a", "an", "and", "the", "of", "that", "looks", "image", "digit", "handwritten", "with",
                            "is", "in"})


def check_prompts(prompts: object) -> list[str]:
    """``prompts`` as a list of strings (one string: a list of one); anything else is a TypeError naming it."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (bytes, Tensor)) or not isinstance(prompts, Iterable):
        raise TypeError(f"prompts must be a string or a list of strings, got {type(prompts).__name__} {prompts!r}; "
                        f"for example 'a thick seven'")
    prompts = list(prompts)
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {i} is {type(prompt).__name__} {prompt!r}, not a string; every prompt must be "
                            f"text, e.g. 'a thick seven' ('' for no prompt)")
    return [str(p) for p in prompts]  # numpy's str_ becomes a plain str


class Tokenizer:
    """Word-level tokenizer with a fixed vocabulary: ids 0, 1, 2 are PAD, BOS, UNK, then the words in order.

    ``encode(prompt)`` gives (max_length,) int64 ids, ``encode([p1, p2, ...])`` gives (B, max_length);
    ``decode(ids)`` gives the words back (without BOS and PAD). ``unknown_words(prompt)`` lists what would
    become UNK, and ``encode`` warns about those (`UnknownWordWarning`) and about truncation
    (`TruncationWarning`), unless ``warn=False``.
    """

    def __init__(self, words: Iterable[str], max_length: int = 16) -> None:
        vocab = list(SPECIAL_TOKENS)
        for word in words:
            if not isinstance(word, str) or words_of(word) != [word]:
                raise ValueError(f"vocabulary entries must be single lower-case words of a-z and 0-9 "
                                 f"(as words_of gives them), got {word!r}")
            if word not in vocab:
                vocab.append(word)
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2 (BOS and at least one word), got {max_length!r}")
        self.vocab: tuple[str, ...] = tuple(vocab)
        self.ids = {word: i for i, word in enumerate(self.vocab)}
        self.max_length = max_length

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_length: int = 16) -> Tokenizer:
        """A tokenizer whose vocabulary is every word of ``texts``, sorted."""
        return cls(sorted({w for text in texts for w in words_of(text)}), max_length)

    pad_id, bos_id, unk_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def words(self) -> tuple[str, ...]:
        """The vocabulary without the special tokens."""
        return self.vocab[len(SPECIAL_TOKENS):]

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` that are not in the vocabulary (they would become UNK), in order."""
        return [w for w in words_of(text) if w not in self.ids]

    def encode(self, text: str | Sequence[str], *, warn: bool = True) -> Tensor:
        """Ids of one prompt, (max_length,), or of a list of prompts, (B, max_length): [BOS, words..., PAD...]."""
        if isinstance(text, str):
            return self._encode_one(text, warn)
        text = check_prompts(text)
        if len(text) == 0:
            return torch.zeros(0, self.max_length, dtype=torch.int64)
        return torch.stack([self._encode_one(t, warn) for t in text])

    def _encode_one(self, text: str, warn: bool) -> Tensor:
        words = words_of(text)
        room = self.max_length - 1  # one place is BOS
        if warn:
            unknown = self.unknown_words(text)
            if unknown:
                known = [w for w in self.words if w not in FUNCTION_WORDS]
                warnings.warn(f"unknown words in {text!r}: {', '.join(map(repr, unknown))} became {UNK} (the model "
                              f"never saw them). The words it knows: {', '.join(known)} (and a, the, of, ...)",
                              UnknownWordWarning, stacklevel=3)
            if len(words) > room:
                warnings.warn(f"the prompt {text!r} has {len(words)} words, more than the {room} that fit "
                              f"(max_length={self.max_length} with BOS); dropped: {' '.join(words[room:])!r}",
                              TruncationWarning, stacklevel=3)
        return encode(text, self.ids, self.max_length)

    def decode(self, ids: Tensor | Sequence[int]) -> str | list[str]:
        """Words back from ids (max_length,) -> str, or (B, max_length) -> list of str; BOS and PAD are dropped."""
        ids = torch.as_tensor(ids)
        if ids.ndim == 2:
            return [self.decode(row) for row in ids]  # type: ignore[misc]
        out = []
        for i in ids.tolist():
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary 0..{self.vocab_size - 1}")
            if i not in (self.pad_id, self.bos_id):
                out.append(self.vocab[i])
        return " ".join(out)

    def empty(self) -> Tensor:
        """The empty prompt's ids, [BOS, PAD, ..., PAD]: the unconditional case."""
        return self.encode("", warn=False)

    def __repr__(self) -> str:
        return f"Tokenizer({self.vocab_size} tokens incl. {', '.join(SPECIAL_TOKENS)}; max_length={self.max_length})"


def padding_mask(tokens: Tensor, pad_id: int = 0) -> Tensor:
    """True where a token is real (not PAD), (B, L) int64 -> (B, L) bool: the keys attention may look at."""
    return tokens != pad_id


@dataclass(frozen=True)
class TextEncoderConfig:
    """A small transformer encoder: ``depth`` pre-norm blocks of width ``dim`` with ``num_heads`` heads."""

    vocab_size: int
    max_length: int = 16
    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_length", "dim", "depth", "num_heads", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
        if self.dim % self.num_heads != 0:
            raise ValueError(f"dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")


class TextEncoder(nn.Module):
    """Token ids (B, L) -> (context (B, L, D), mask (B, L)): embeddings, pre-norm transformer blocks, LayerNorm.

        h = token_embed(ids) + pos_embed[:L]
        h = block_k(h, src_key_padding_mask = ~mask)     k = 1..depth (PAD is never attended to)
        context = norm(h)

    The outputs at PAD positions are computed but meaningless; everything downstream masks them.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.token_embed = nn.Embedding(c.vocab_size, c.dim)
        self.pos_embed = nn.Parameter(torch.zeros(c.max_length, c.dim))
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(c.dim, c.num_heads, dim_feedforward=c.mlp_ratio * c.dim, dropout=c.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(c.depth)
        ])
        self.norm = nn.LayerNorm(c.dim)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        self._check(tokens)
        mask = padding_mask(tokens)  # (B, L), True = a real token
        h = self.token_embed(tokens) + self.pos_embed[: tokens.shape[1]]  # (B, L, D)
        for block in self.blocks:
            h = block(h, src_key_padding_mask=~mask)  # PyTorch's convention: True = ignore
        return self.norm(h), mask

    def _check(self, tokens: Tensor) -> None:
        c = self.config
        if not isinstance(tokens, Tensor) or tokens.dtype != torch.int64 or tokens.ndim != 2:
            got = f"{tokens.dtype} tensor of shape {tuple(tokens.shape)}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"the text encoder takes token ids, an int64 tensor (B, L); got {got}. "
                             f"Make them with Tokenizer.encode(prompts)")
        if tokens.shape[1] > c.max_length:
            raise ValueError(f"{tokens.shape[1]} tokens per prompt, more than max_length={c.max_length}")
        if tokens.numel() and not torch.compiler.is_compiling() and (tokens.min() < 0 or tokens.max() >= c.vocab_size):
            raise ValueError(f"token ids must lie in 0..{c.vocab_size - 1} (the vocabulary), got "
                             f"{int(tokens.min())}..{int(tokens.max())}")


# --------------------------------------------------------------------------- an optional extra: CLIP's text encoder


class CLIPTextEncoder(nn.Module):
    """A frozen CLIP text encoder behind `TextEncoder`'s interface: ids (B, L) -> (context (B, L, D), mask (B, L)).

    CLIP's text transformer (Radford et al. 2021) was trained on 400 million captioned images, so it knows
    words no MNIST caption holds; Stable Diffusion 1.x reads its prompts with it. Its weights stay frozen
    (``requires_grad=False``, always in eval mode): only the U-Net learns to read its vectors. Its tokens are
    byte-pair pieces, ``[BOS, pieces..., EOS, pad...]``; the mask is True up to and including the first EOS.
    Needs the optional ``transformers`` package (``pip install transformers``); build it with
    `CLIPTextEncoder.from_pretrained` (downloads the weights once) or from a ``CLIPTextConfig`` (random weights,
    offline: for tests).
    """

    def __init__(self, model: nn.Module, tokenizer: object | None = None, max_length: int = 16) -> None:
        super().__init__()
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)
        self.eos_id = int(model.config.eos_token_id)

    @classmethod
    def from_pretrained(cls, name: str = "openai/clip-vit-base-patch32", max_length: int = 16) -> CLIPTextEncoder:
        """CLIP's text encoder and tokenizer from the Hugging Face hub (downloaded once, then cached)."""
        transformers = _transformers()
        model = transformers.CLIPTextModel.from_pretrained(name)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(name)
        return cls(model, tokenizer, max_length)

    @classmethod
    def from_config(cls, config: object, max_length: int = 16) -> CLIPTextEncoder:
        """A randomly initialised encoder of ``config`` (a ``transformers.CLIPTextConfig``), without a tokenizer."""
        return cls(_transformers().CLIPTextModel(config), None, max_length)

    def train(self, mode: bool = True) -> CLIPTextEncoder:
        super().train(mode)
        self.model.eval()  # frozen: no dropout, whatever the surrounding model does
        return self

    def encode(self, prompts: str | Sequence[str]) -> Tensor:
        """CLIP token ids (B, max_length) of the prompts (padded and truncated by CLIP's tokenizer)."""
        if self.tokenizer is None:
            raise ValueError("this CLIPTextEncoder has no tokenizer (built from a config); use from_pretrained")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        return out["input_ids"].to(torch.int64)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        is_eos = (tokens == self.eos_id).long()
        mask = (is_eos.cumsum(dim=1) - is_eos) == 0  # True up to and including the first EOS
        with torch.no_grad():
            context = self.model(input_ids=tokens, attention_mask=mask.long()).last_hidden_state  # (B, L, D)
        return context, mask


def _transformers():  # type: ignore[no-untyped-def]
    try:
        import transformers
    except ImportError:
        raise ImportError("CLIPTextEncoder needs the optional package transformers: pip install transformers") from None
    return transformers
