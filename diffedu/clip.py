"""A small CLIP: an image encoder and a text encoder trained so that matching pairs agree (lesson 12).

Contrastive language-image pre-training (Radford et al. 2021) embeds a batch of B images and their B
captions on the unit sphere and asks every image to pick its own caption out of the batch, and every caption
its own image:

    u_i = f(image_i) / |f(image_i)|,    v_j = g(caption_j) / |g(caption_j)|            (B, E) each
    logits_ij = exp(s) u_i . v_j        s = log(1 / temperature), learned, capped at log 100
    loss = ( CE(logits, diagonal) + CE(logits^T, diagonal) ) / 2                      (InfoNCE both ways)

CLIP starts the temperature at 0.07 and caps exp(s) at 100; so does `MiniCLIP`. Nothing in the loss names a
class: the captions carry the words, and the model learns which pictures the words go with. That is what
makes it a **zero-shot** classifier (`zero_shot_classifier`: a class is the mean embedding of prompts that
name it) and a judge of text-to-image models (`diffedu.metrics.clip_score`).

Here: `f` is a small convolutional network on 28x28 digits, `g` lesson 09's transformer text encoder with a
masked mean over its tokens, both followed by a linear map to the shared width E. `train_clip` trains the
pair on lesson 09's captioned MNIST (each image with several captions written from its pixels, one drawn per
step); `export_clip` / `load_clip` ship it ("load if it exists, else train").
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffedu.captions import Captioner, fill_template
from diffedu.checkpoints import atomic_save, check_fits, read_file, weights_dir
from diffedu.devices import default_device
from diffedu.models.classifier import random_shift
from diffedu.models.text import TextEncoder, TextEncoderConfig, Tokenizer, check_prompts
from diffedu.provenance import resolve
from diffedu.samplers import Callback, ddim_step, ddim_timesteps, eval_mode, model_device, predict, progress_bar, randn
from diffedu.schedules import NoiseSchedule

__all__ = [
    "CLIPConfig", "CLIPTrainConfig", "CLIPTrainResult", "ImageEncoder", "MiniCLIP", "caption_tokens", "class_prompts",
    "clip_guided_sample", "clip_loss",
    "export_clip", "load_clip", "mnist_clip", "retrieval_recall", "similarity", "train_clip", "zero_shot_classifier",
    "zero_shot_scores",
]

FORMAT = "diffedu-clip-weights"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips exp(s) at 100
RECIPES = {"mnist_clip": "python benchmarks/clip.py --train-minutes 10 --threads 2 --export"}


# --------------------------------------------------------------------------- the loss


def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE of B matching pairs: image i belongs with caption i, (B, E), (B, E) -> a scalar.

        u = image_emb / |image_emb|,  v = text_emb / |text_emb|   (rows on the unit sphere)
        logits = exp(logit_scale) u v^T                            (B, B): every image against every caption
        loss = (cross_entropy(logits, arange(B)) + cross_entropy(logits^T, arange(B))) / 2

    ``logit_scale`` is log(1 / temperature) (a tensor, so it can be learned); it is capped at log 100.
    """
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"clip_loss takes two (B, E) embeddings of the same shape, got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    u = F.normalize(image_emb, dim=-1)
    v = F.normalize(text_emb, dim=-1)
    scale = torch.as_tensor(logit_scale, dtype=u.dtype, device=u.device).clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * u @ v.T  # (B, B): row i is image i against every caption
    target = torch.arange(len(u), device=u.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class CLIPConfig:
    """Both encoders and the shared embedding width ``embed_dim``; ``vocab`` is the tokenizer's words."""

    text: TextEncoderConfig
    vocab: tuple[str, ...]
    embed_dim: int = 64
    widths: tuple[int, ...] = (32, 64, 128)
    image_channels: int = 1
    image_size: int = 28
    norm_groups: int = 8
    init_temperature: float = 0.07

    def __post_init__(self) -> None:
        if isinstance(self.text, dict):
            object.__setattr__(self, "text", TextEncoderConfig(**self.text))
        object.__setattr__(self, "vocab", tuple(self.vocab))
        object.__setattr__(self, "widths", tuple(self.widths))
        if self.text.vocab_size != len(self.vocab) + 3:
            raise ValueError(f"text.vocab_size={self.text.vocab_size} must be len(vocab) + 3 (PAD, BOS, UNK) = "
                             f"{len(self.vocab) + 3}")
        if not self.widths or any(w < 1 or w % self.norm_groups for w in self.widths):
            raise ValueError(f"widths must be positive multiples of norm_groups={self.norm_groups}, got {self.widths}")
        if not 0.0 < self.init_temperature <= 1.0:
            raise ValueError(f"init_temperature must lie in (0, 1], got {self.init_temperature}")


def mnist_clip(vocab: Sequence[str], *, embed_dim: int = 64, dim: int = 64, depth: int = 2, max_length: int = 16,
               **overrides: Any) -> CLIPConfig:
    """The course's CLIP for captioned MNIST: a 3-stage CNN (32, 64, 128 channels at 14, 7 and 4 pixels) and lesson
    09's text encoder (two transformer blocks of width 64), both mapped to 64 numbers."""
    text = TextEncoderConfig(vocab_size=len(vocab) + 3, max_length=max_length, dim=dim, depth=depth, num_heads=4,
                             mlp_ratio=2)
    return CLIPConfig(text, tuple(vocab), embed_dim=embed_dim, **overrides)


class ImageEncoder(nn.Module):
    """Images (B, C, S, S) in [-1, 1] -> (B, E): a stride-2 conv stage per width (conv, GroupNorm, SiLU, twice), then
    the last feature map flattened and mapped to E (flattening keeps where the ink is: size and slant are in it)."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        c = config
        layers: list[nn.Module] = []
        channels, size = c.image_channels, c.image_size
        for width in c.widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.GroupNorm(c.norm_groups, width),
                       nn.SiLU(), nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(c.norm_groups, width), nn.SiLU()]
            channels, size = width, (size + 1) // 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels * size * size, c.embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.body(images).flatten(1))


class MiniCLIP(nn.Module):
    """An image encoder and a text encoder that embed into the same space, and the learned temperature.

        clip.encode_image(images)   (B, C, S, S) in [-1, 1]  -> (B, E), unit length
        clip.encode_text(tokens)    (B, L) token ids          -> (B, E), unit length
        clip.embed_prompts(texts)   a list of strings         -> (B, E), unit length (tokenized here)
        clip(images, tokens)        -> logits (B, B) = exp(s) u v^T, capped at 100
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = Tokenizer(config.vocab, config.text.max_length)
        self.image_encoder = ImageEncoder(config)
        self.text_encoder = TextEncoder(config.text)
        self.text_proj = nn.Linear(config.text.dim, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

    def _check_images(self, images: Tensor) -> None:
        c = self.config
        want = (c.image_channels, c.image_size, c.image_size)
        if not isinstance(images, Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != want:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"this CLIP reads images of shape (B, {', '.join(map(str, want))}) in [-1, 1], got {got}")

    def image_features(self, images: Tensor) -> Tensor:
        """The image encoder's output before normalisation, (B, E)."""
        self._check_images(images)
        if images.dtype == torch.uint8:
            raise ValueError("this CLIP reads images as floats in [-1, 1], got uint8 pixels; convert them with "
                             "diffedu.data.uint8_to_float(images)")
        return self.image_encoder(images.float())

    def text_features(self, tokens: Tensor) -> Tensor:
        """The text encoder's tokens, averaged over the real ones (mask), then mapped to E: (B, E), not normalised."""
        context, mask = self.text_encoder(tokens)  # (B, L, D), (B, L)
        m = mask.unsqueeze(-1).to(context.dtype)
        pooled = (context * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        return self.text_proj(pooled)

    def encode_image(self, images: Tensor) -> Tensor:
        return F.normalize(self.image_features(images), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.text_features(tokens), dim=-1)

    def embed_prompts(self, prompts: str | Sequence[str], *, warn: bool = True) -> Tensor:
        """Unit text embeddings (B, E) of prompts (tokenized with this model's vocabulary)."""
        tokens = self.tokenizer.encode(check_prompts(prompts), warn=warn).to(self.logit_scale.device)
        return self.encode_text(tokens)

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach().clamp(max=MAX_LOGIT_SCALE).exp())

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        u, v = self.encode_image(images), self.encode_text(tokens)
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * u @ v.T


@torch.no_grad()
def similarity(model: MiniCLIP, images: Tensor, prompts: str | Sequence[str], *, batch_size: int = 1000,
               warn: bool = True) -> Tensor:
    """Cosine similarity of every image with every prompt, (N, P) in [-1, 1] (eval mode; images in [-1, 1]).
    Words the model does not know are named in a warning (``warn=False``: silently)."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    text = model.embed_prompts(prompts, warn=warn)
    rows = [model.encode_image(images[i: i + batch_size].to(device)) @ text.T
            for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(rows).cpu() if rows else torch.zeros(0, len(text))


# --------------------------------------------------------------------------- zero-shot classification and retrieval


def class_prompts(captioner: Captioner, templates: str = "train") -> list[list[str]]:
    """For each class, every prompt that names it and nothing else: each template without attribute words, filled
    with each of the class's nouns (``"a seven"``, ``"an image of a 7"``, ``"the digit seven"`` is not among them:
    that template needs an attribute)."""
    names = captioner.spec.train_templates if templates == "train" else captioner.spec.heldout_templates
    usable = [t for t in names if "{desc}" not in t]
    return [[fill_template(t, noun, []) for t in usable for noun in nouns] for nouns in captioner.spec.nouns]


@torch.no_grad()
def zero_shot_classifier(model: MiniCLIP, prompts: Sequence[Sequence[str]]) -> Tensor:
    """One unit vector per class, (K, E): the mean of the unit embeddings of that class's prompts, normalised again.

    A test image's class is then ``argmax_k u . w_k`` (the prompts ensembled, as CLIP does for ImageNet)."""
    was_training = model.training
    model.eval()
    weights = torch.stack([model.embed_prompts(list(p), warn=False).mean(dim=0) for p in prompts])
    model.train(was_training)
    return F.normalize(weights, dim=-1)


@torch.no_grad()
def zero_shot_scores(model: MiniCLIP, images: Tensor, prompts: Sequence[Sequence[str]]) -> Tensor:
    """(N, K): the cosine of each image with each class vector of `zero_shot_classifier`; its argmax is the class."""
    weights = zero_shot_classifier(model, prompts)
    with torch.no_grad():
        was_training = model.training
        model.eval()
        u = model.encode_image(images.to(weights.device))
        model.train(was_training)
    return u @ weights.T


@torch.no_grad()
def retrieval_recall(image_emb: Tensor, text_emb: Tensor, keys: Sequence[Any], *, ks: Sequence[int] = (1, 5),
                     pool: int = 100) -> dict[str, float]:
    """Recall@k both ways, in pools of ``pool`` pairs: the share of queries whose match is among the k nearest.

    ``keys[i]`` says what pair i shows (e.g. its class and attribute levels): a retrieved item counts as a match
    when its key equals the query's, so two images that the same caption describes equally well are both right.
    The N pairs are cut into consecutive pools (the last partial one dropped); image i is a query over the pool's
    captions, caption i over its images. Returns {"image_to_text@k", "text_to_image@k", "recall@k" (their mean)}.
    """
    if not len(image_emb) == len(text_emb) == len(keys):
        raise ValueError(f"retrieval pairs image i with caption i and key i: got {len(image_emb)} images, "
                         f"{len(text_emb)} captions and {len(keys)} keys")
    if pool < 1:
        raise ValueError(f"pool must be a positive number of pairs, got {pool}")
    n = (len(image_emb) // pool) * pool
    if n == 0:
        raise ValueError(f"retrieval needs at least one pool of {pool} pairs, got {len(image_emb)}")
    hits = {(d, k): 0 for d in ("image_to_text", "text_to_image") for k in ks}
    for start in range(0, n, pool):
        u = F.normalize(image_emb[start: start + pool].float(), dim=-1)
        v = F.normalize(text_emb[start: start + pool].float(), dim=-1)
        same = torch.tensor([[keys[start + i] == keys[start + j] for j in range(pool)] for i in range(pool)])
        sims = u @ v.T  # (pool, pool)
        for direction, s, match in (("image_to_text", sims, same), ("text_to_image", sims.T, same.T)):
            order = s.argsort(dim=1, descending=True)
            for k in ks:
                top = order[:, :k]
                hits[(direction, k)] += int(match.gather(1, top).any(dim=1).sum())
    out = {f"{d}@{k}": h / n for (d, k), h in hits.items()}
    for k in ks:
        out[f"recall@{k}"] = (out[f"image_to_text@{k}"] + out[f"text_to_image@{k}"]) / 2
    return out


# --------------------------------------------------------------------------- guidance by CLIP


def clip_guided_sample(model: Callable[..., Tensor], schedule: NoiseSchedule, clip: MiniCLIP,
                       prompts: str | Sequence[str], *, scale: float, steps: int = 50, eta: float = 1.0,
                       cond: Tensor | None = None, generator: torch.Generator | None = None,
                       callback: Callback | None = None, progress: bool = True) -> Tensor:
    """Sample a diffusion model steered towards ``prompts`` (one image per prompt) by the gradient of a CLIP.

    At each DDIM step the model predicts x0 as usual; the prediction is then moved up the gradient of its cosine
    with the prompt's embedding, and the step continues from the moved prediction:

        x0' = x0_hat + scale * grad_x0 cos(f(x0_hat), g(prompt))         (clamped to [-1, 1] for images)
        eps' = (x_t - sqrt(abar_t) x0') / sqrt(1 - abar_t)              (the noise that agrees with x0')
        x_prev = ddim_step(x_t, t, t_prev, eps', x0')

    This is guidance by a differentiable model, as classifier guidance is (Dhariwal & Nichol 2021), with the
    gradient taken on the clean prediction, where a CLIP trained on clean images can read it. One model call per
    step (classifier-free guidance takes two), plus a forward and backward pass of the CLIP's image encoder.
    ``cond`` goes to the model as is (e.g. the null label of a class-conditional model, to use it unconditionally).
    """
    prompts = check_prompts(prompts)
    if not prompts:
        raise ValueError("clip_guided_sample needs at least one prompt (one image is drawn per prompt)")
    prediction, clip_x0 = resolve(model, schedule, None, None, "clip_guided_sample")
    device, clip_device = model_device(model), model_device(clip)
    clip_was_training = clip.training
    clip.eval()
    with torch.no_grad():
        text = clip.embed_prompts(prompts, warn=False)  # (B, E), on the CLIP's device
    c = clip.config
    shape = (len(prompts), c.image_channels, c.image_size, c.image_size)
    timesteps = ddim_timesteps(schedule.T, steps)
    x = randn(shape, generator, device)
    with eval_mode(model):
        for i, t in enumerate(progress_bar(timesteps, progress, "CLIP-guided DDIM")):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            with torch.no_grad():
                pred_x0, eps = predict(model, x, t, schedule, cond=cond, prediction=prediction, clip_x0=clip_x0)
            if scale:
                with torch.enable_grad():
                    x0 = pred_x0.detach().to(clip_device).requires_grad_(True)
                    agreement = (clip.encode_image(x0) * text).sum()
                    (grad,) = torch.autograd.grad(agreement, x0)
                pred_x0 = pred_x0 + scale * grad.to(device)
                pred_x0 = pred_x0.clamp(-1, 1) if clip_x0 else pred_x0
                abar = schedule.alphas_cumprod[t].item()
                eps = (x - abar**0.5 * pred_x0) / (1 - abar) ** 0.5
            noise = randn(shape, generator, device) if eta > 0 and t_prev >= 0 else None
            with torch.no_grad():
                x = ddim_step(x, t, t_prev, eps, schedule, eta, noise, pred_x0=pred_x0)
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "pred_x0": pred_x0})
    clip.train(clip_was_training)
    return x.detach()


# --------------------------------------------------------------------------- training


def caption_tokens(tokenizer: Tokenizer, captioner: Captioner, images: Tensor, labels: Tensor, *,
                   per_image: int = 4, mention_prob: float = 0.7, seed: int = 0) -> Tensor:
    """``per_image`` captions of each image, written from its pixels (lesson 09's captioner, training templates,
    seeds ``seed``, ``seed + 1``, ...), as token ids (N, per_image, L): what `train_clip` draws from."""
    levels = captioner.attributes(images, labels)
    rows = [tokenizer.encode(captioner.describe(labels, levels, seed=seed + k, mention_prob=mention_prob), warn=False)
            for k in range(per_image)]
    return torch.stack(rows, dim=1)



@dataclass(frozen=True)
class CLIPTrainConfig:
    """How `train_clip` trains: AdamW, linear warm-up then cosine decay over ``max_steps`` (or flat with only a
    time budget), random shifts of up to ``max_shift`` pixels (they change no caption: thickness, slant and size do
    not depend on where the digit sits)."""

    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int | None = None
    max_seconds: float | None = None
    max_shift: int = 2
    seed: int = 0
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("give train_clip a budget: max_steps, max_seconds, or both")
        if self.batch_size < 2:
            raise ValueError(f"a contrastive batch needs at least 2 pairs, got batch_size={self.batch_size}")


@dataclass
class CLIPTrainResult:
    losses: list[float]
    steps: int
    seconds: float
    images_per_s: float
    interrupted: bool = False


def _lr_at(step: int, config: CLIPTrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.max_steps is None:
        return config.lr
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_clip(model: MiniCLIP, images: Tensor, tokens: Tensor, config: CLIPTrainConfig, *,
               checkpoint: str | os.PathLike[str] | None = None, progress: bool = True,
               loss: Callable[[Tensor, Tensor, Tensor], Tensor] = clip_loss) -> CLIPTrainResult:
    """Train ``model`` on pairs: ``images`` (N, C, S, S) in [-1, 1] and ``tokens`` (N, K, L), K captions per image.

    Each step draws ``batch_size`` images, one of each image's K captions, shifts the images at random and takes
    one AdamW step on ``loss`` (`clip_loss`, or the learner's own, with the same signature). Stops at
    ``max_steps`` or ``max_seconds``, whichever comes first, or at Ctrl-C (keeping what was learned:
    ``interrupted=True``). With ``checkpoint``, the weights, config and step are
    written there atomically at the end.
    """
    if images.ndim != 4 or tokens.ndim != 3 or len(images) != len(tokens):
        raise ValueError(f"train_clip takes images (N, C, S, S) and tokens (N, K, L) with the same N; got "
                         f"{tuple(images.shape)} and {tuple(tokens.shape)} (one caption each: tokens[:, None])")
    if images.dtype == torch.uint8:
        raise ValueError("train_clip takes images as floats in [-1, 1], got uint8 pixels; convert them with "
                         "diffedu.data.uint8_to_float(images)")
    if len(images) < config.batch_size:
        raise ValueError(f"{len(images)} pairs are fewer than batch_size={config.batch_size}; lower the batch size")
    device = model_device(model)
    generator = torch.Generator().manual_seed(config.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.lr)
    bar = None
    if progress:
        bar = tqdm(total=config.max_steps, desc="CLIP", leave=False)
    model.train()
    losses: list[float] = []
    step, start, interrupted = 0, time.perf_counter(), False
    try:
        while not ((config.max_steps is not None and step >= config.max_steps)
                   or (config.max_seconds is not None and time.perf_counter() - start >= config.max_seconds)):
            index = torch.randint(len(images), (config.batch_size,), generator=generator)
            which = torch.randint(tokens.shape[1], (config.batch_size,), generator=generator)
            x = random_shift(images[index].float(), config.max_shift, generator=generator).to(device)
            t = tokens[index, which].to(device)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, config)
            value = loss(model.image_features(x), model.text_features(t), model.logit_scale)
            if not torch.isfinite(value):
                raise FloatingPointError(f"the CLIP loss became {float(value)} at step {step}; lower the learning "
                                         f"rate (lr={config.lr})")
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(max=MAX_LOGIT_SCALE)
            losses.append(float(value.detach()))
            step += 1
            if bar is not None and step % config.log_every == 0:
                bar.update(config.log_every)
                bar.set_postfix(loss=f"{sum(losses[-config.log_every:]) / config.log_every:.3f}",
                                T=f"{model.temperature:.3f}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    if checkpoint is not None:
        atomic_save({"format": "diffedu-clip-checkpoint", "model": model.state_dict(),
                     "config": dataclasses.asdict(model.config), "step": step, "seconds": seconds,
                     "train_config": dataclasses.asdict(config)}, checkpoint)
    return CLIPTrainResult(losses, step, seconds, step * config.batch_size / max(seconds, 1e-9), interrupted)


# --------------------------------------------------------------------------- shipped weights


def export_clip(model: MiniCLIP, out_path: str | os.PathLike[str], *, name: str, record: dict[str, Any],
                captioner: Captioner | None = None) -> Path:
    """Write the model's weights (float32), config, training ``record`` and the captioner's thresholds, atomically.
    The file loads with ``torch.load(weights_only=True)``."""
    payload = {"format": FORMAT, "format_version": 1, "name": name,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "model_config": dataclasses.asdict(model.config), "record": record,
               "captioner": captioner.state() if captioner is not None else None}
    return atomic_save(payload, out_path)


def load_clip(name: str = "mnist_clip", device: torch.device | str | None = None, *,
              directory: str | os.PathLike[str] | None = None) -> tuple[MiniCLIP, dict[str, Any]]:
    """The shipped CLIP ``name`` (eval mode) and an info dict (name, record, captioner, path). FileNotFoundError,
    with the command that makes it, when the file is missing."""
    path = Path(directory or weights_dir()) / f"{name}.pt"
    if not path.is_file():
        recipe = RECIPES.get(name)
        raise FileNotFoundError(f"no CLIP weights {name!r} at {path}" + (f"; make them with:\n    {recipe}" if recipe
                                                                          else ""))
    fix = "Delete it and export it again" + (f" ({RECIPES[name]})" if name in RECIPES else "")
    payload = read_file(path, FORMAT, fix)
    model = MiniCLIP(CLIPConfig(**payload["model_config"]))
    check_fits(model, payload["state_dict"], path, "MiniCLIP", payload["model_config"])
    model.load_state_dict(payload["state_dict"])
    device = torch.device(device) if device is not None else default_device()
    info = {"name": payload["name"], "record": payload["record"], "path": path,
            "captioner": Captioner.from_state(payload["captioner"]) if payload.get("captioner") else None}
    return model.to(device).eval(), info
