"""Text to image: a text encoder and a U-Net with cross-attention, trained together (lesson 09).

    tokens = tokenizer.encode(prompts)                       (B, L) int64: [BOS, words..., PAD...]
    context, mask = text_encoder(tokens)                     (B, L, D), (B, L) True at real tokens
    eps_hat = unet(x_t, t, context=context, context_mask=mask)

`Text2Img` is that model, called like every diffedu model, ``model(x_t, t, tokens)``, so the course's
training loop (``train(model, images, schedule, config, labels=tokens)``, with the empty prompt as
the null row of classifier-free guidance) and samplers (``cond=tokens, guidance=w,
uncond=empty``) work on it unchanged. `generate` turns prompts into images, `capture_cross_attention`
records where each word is looked at, `evaluate_prompts` measures how well images follow their
prompts, and `load_text2img` loads the shipped ``mnist_text`` weights ("load if it exists, else train"), a
latent model (below).

The denoiser may instead be a joint text-image transformer (lesson 11; Esser et al. 2024, Stable Diffusion 3's
MMDiT): ``Text2ImgConfig(None, text, vocab, mmdit=MMDiTConfig(...))``, trained with flow matching
(``TrainConfig(objective="flow")``, no schedule); `generate` and `evaluate_prompts` then integrate its ODE
(``schedule=None``, ``sampler="heun"``), and `capture_joint_attention` records where each word is looked at.

The same model works in a VAE's latent space (lesson 07; Rombach et al. 2022, i.e. Stable Diffusion's layout):
``Text2ImgConfig(vae="mnist_vae")`` names the VAE, the U-Net is sized for its latents (`mnist_latent_text`),
training runs on ``vae.encode(images)``, and `generate` / `evaluate_prompts` take ``vae=`` to decode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from diffedu.captions import Captioner
from diffedu.checkpoints import atomic_save, check_fits, load_checkpoint, read_file, weights_dir, weights_payload
from diffedu.devices import default_device
from diffedu.flow import flow_sample
from diffedu.latent import load_vae
from diffedu.models.layers import CrossAttention
from diffedu.models.mmdit import JointBlock, MMDiT, MMDiTConfig, mnist_latent_mmdit
from diffedu.models.text import TextEncoder, TextEncoderConfig, Tokenizer, check_prompts
from diffedu.models.unet import UNet, UNetConfig, mnist_small
from diffedu.provenance import Provenance, attach
from diffedu.samplers import ddim_sample
from diffedu.schedules import make_schedule

__all__ = [
    "Text2Img", "Text2ImgConfig", "capture_cross_attention", "capture_joint_attention", "evaluate_prompts",
    "export_text2img", "generate", "joint_token_maps", "load_text2img", "mnist_latent_mmdit_text", "mnist_latent_text",
    "mnist_pixel_text", "token_attention_maps",
]

FORMAT = "diffedu-text2img-weights"
MAX_FP32_BYTES = 3 * 2**20  # above this the weights are stored in float16
RECIPES = {"mnist_text": "python benchmarks/text2img.py --space latent --train-minutes 15 --export",
           "mnist_mmdit_text": "python benchmarks/text2img.py --backbone mmdit --name mnist_mmdit_text --threads 2 "
                               "--out runs/mnist_mmdit_text.pt --train-minutes 15 --export"}


@dataclass(frozen=True)
class Text2ImgConfig:
    """The denoiser (a U-Net, or an MMDiT), the text encoder and the tokenizer's words: all that fixes a `Text2Img`.

    Exactly one of ``unet`` and ``mmdit`` is given (``Text2ImgConfig(None, text, vocab, mmdit=...)`` for an MMDiT).
    """

    unet: UNetConfig | None
    text: TextEncoderConfig
    vocab: tuple[str, ...]  # the tokenizer's words, without PAD, BOS, UNK
    vae: str | None = None  # the shipped VAE whose latents the denoiser works on (None: pixels)
    mmdit: MMDiTConfig | None = None  # a joint text-image transformer instead of the U-Net (lesson 11)

    def __post_init__(self) -> None:
        if isinstance(self.unet, dict):
            object.__setattr__(self, "unet", UNetConfig(**self.unet))
        if isinstance(self.mmdit, dict):
            object.__setattr__(self, "mmdit", MMDiTConfig(**self.mmdit))
        if isinstance(self.text, dict):
            object.__setattr__(self, "text", TextEncoderConfig(**self.text))
        object.__setattr__(self, "vocab", tuple(self.vocab))
        if (self.unet is None) == (self.mmdit is None):
            raise ValueError("give the denoiser's config as exactly one of unet= (a UNetConfig) and mmdit= (an "
                             "MMDiTConfig)")
        width = self.denoiser.context_dim
        if width != self.text.dim:
            raise ValueError(f"the {self.backbone}'s context_dim ({width}) must equal the text encoder's width "
                             f"dim ({self.text.dim}): its attention reads the encoder's vectors")
        if self.text.vocab_size != len(self.vocab) + 3:
            raise ValueError(f"text.vocab_size={self.text.vocab_size} must be len(vocab) + 3 (PAD, BOS, UNK) = "
                             f"{len(self.vocab) + 3}")

    @property
    def denoiser(self) -> UNetConfig | MMDiTConfig:
        """The denoiser's config, whichever it is."""
        return self.unet if self.unet is not None else self.mmdit

    @property
    def backbone(self) -> str:
        """ "unet" or "mmdit"."""
        return "unet" if self.unet is not None else "mmdit"


def mnist_pixel_text(vocab: Sequence[str], *, dim: int = 64, depth: int = 2, max_length: int = 16,
                     **unet_overrides: Any) -> Text2ImgConfig:
    """A text-to-image model on 28x28 pixels that trains on a laptop CPU: 0.28M parameters.

    The U-Net is lesson 04's ``mnist_small`` layout at half its width, 8 -> 16 -> 32 channels at 28, 14 and 7
    pixels (2.4x the images per CPU-second: in a 15-minute budget more images beat more width), with two-head
    cross-attention at 14x14, at 7x7 and in the middle. The text encoder has two transformer blocks of width
    64. Keyword arguments override U-Net fields, e.g. ``mnist_pixel_text(vocab, base_channels=16, norm_groups=8)``.
    Trained for 15 minutes on one CPU thread (1,920 steps of 32) it draws the digit asked for 42 % of the time at
    guidance 3; `mnist_latent_text`, in the same 15 minutes, 96 % (benchmarks/results/text2img.jsonl).
    """
    fields = {"base_channels": 8, "norm_groups": 4, "context_dim": dim, "cross_attention_resolutions": (14, 7),
              "num_heads": 2, **unet_overrides}
    unet = mnist_small(**fields)
    text = TextEncoderConfig(vocab_size=len(vocab) + 3, max_length=max_length, dim=dim, depth=depth,
                             num_heads=4, mlp_ratio=2)
    return Text2ImgConfig(unet, text, tuple(vocab))


def mnist_latent_text(vocab: Sequence[str], *, vae: str = "mnist_vae", latent_channels: int = 4,
                      latent_size: int = 8, dim: int = 64, depth: int = 2, max_length: int = 16,
                      **unet_overrides: Any) -> Text2ImgConfig:
    """A text-to-latent model for lesson 07's MNIST VAE (latents 4x8x8): lesson 07's latent U-Net (``mnist_small``'s
    16 -> 32 -> 64 channels at 8, 4 and 2 pixels, self-attention at 2x2) with two-head cross-attention at every level
    and in the middle, and the same text encoder as `mnist_pixel_text`. An 8x8 latent costs a fraction of a 28x28
    image: about 3x the examples per CPU-second of `mnist_pixel_text`. The shipped ``mnist_text`` weights are this model."""
    lowest = latent_size // 4
    fields = {"image_size": latent_size, "in_channels": latent_channels, "base_channels": 16,
              "channel_mults": (1, 2, 4), "num_res_blocks": 1, "attention_resolutions": (lowest,), "norm_groups": 8,
              "num_heads": 2, "context_dim": dim,
              "cross_attention_resolutions": (latent_size, latent_size // 2, lowest), **unet_overrides}
    text = TextEncoderConfig(vocab_size=len(vocab) + 3, max_length=max_length, dim=dim, depth=depth,
                             num_heads=4, mlp_ratio=2)
    return Text2ImgConfig(UNetConfig(**fields), text, tuple(vocab), vae=vae)


def mnist_latent_mmdit_text(vocab: Sequence[str], *, vae: str = "mnist_vae", dim: int = 64, depth: int = 2,
                            max_length: int = 16, **mmdit_overrides: Any) -> Text2ImgConfig:
    """A joint text-image transformer for lesson 07's MNIST latents (4x8x8), lesson 11: `mnist_latent_mmdit`
    (1x1 patches, so 64 image tokens, width 64, depth 4) reading the same text encoder as `mnist_latent_text`
    (``dim``, ``depth`` and ``max_length`` are the text encoder's, as there). Other keyword arguments override MMDiT
    fields, e.g. ``hidden_size=96``. The shipped ``mnist_mmdit_text`` weights are this model, trained with
    flow matching as SD3 is."""
    from_mmdit = {"context_dim": dim, **mmdit_overrides}
    text = TextEncoderConfig(vocab_size=len(vocab) + 3, max_length=max_length, dim=dim, depth=depth,
                             num_heads=4, mlp_ratio=2)
    return Text2ImgConfig(None, text, tuple(vocab), vae=vae, mmdit=mnist_latent_mmdit(**from_mmdit))


class Text2Img(nn.Module):
    """``output = Text2Img(x_t, t, tokens)``: the text encoder reads the tokens; the denoiser reads its vectors,
    by cross-attention (a U-Net, lesson 09) or in one joint attention with the image patches (an MMDiT, lesson 11).

    ``tokens`` (B, L) int64 from ``model.tokenizer.encode(prompts)``; the padding mask comes from them. The
    tokenizer travels with the model (its words are in the config).
    """

    def __init__(self, config: Text2ImgConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = Tokenizer(config.vocab, config.text.max_length)
        self.text_encoder = TextEncoder(config.text)
        if config.unet is not None:
            self.unet = UNet(config.unet)
        else:
            self.mmdit = MMDiT(config.mmdit)

    @property
    def denoiser(self) -> nn.Module:
        """The U-Net or the MMDiT."""
        return self.unet if self.config.unet is not None else self.mmdit

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the denoiser works on: pixels, or a VAE's latents."""
        c = self.config.denoiser
        return (c.in_channels, c.image_size, c.image_size)

    def forward(self, x: Tensor, t: Tensor | int | float, tokens: Tensor) -> Tensor:
        context, mask = self.text_encoder(tokens)  # (B, L, D), (B, L)
        return self.denoiser(x, t, context=context, context_mask=mask)

    def encode(self, prompts: str | Sequence[str], *, warn: bool = True) -> Tensor:
        """Token ids (B, L) of the prompts, on the model's device (a single prompt gives B = 1)."""
        tokens = self.tokenizer.encode(check_prompts(prompts), warn=warn)
        return tokens.to(_device(self))

    def empty_prompt(self) -> Tensor:
        """The empty prompt's tokens (L,), [BOS, PAD, ...]: the unconditional case of guidance."""
        return self.tokenizer.empty().to(_device(self))

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> Text2Img:
        """Rebuild from ``dataclasses.asdict(config)`` (what checkpoints and weights files store)."""
        return cls(Text2ImgConfig(**config))


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# --------------------------------------------------------------------------- prompts to images


@torch.no_grad()
def generate(model: Text2Img, schedule: Any, prompts: str | Sequence[str], *, n_per_prompt: int = 1,
             guidance: float | None = 3.0, steps: int = 50, eta: float = 1.0, seed: int = 0,
             batch_size: int = 250, clip_x0: bool | None = None, progress: bool = False, warn: bool = True,
             vae: nn.Module | None = None, sampler: str = "heun", shift: float = 1.0) -> Tensor:
    """Images for prompts, (len(prompts) * n_per_prompt, C, H, W) in [-1, 1], prompt-major, on the CPU.

    A diffusion model (``schedule`` given): DDIM sampling (``steps`` steps, noise scale ``eta``). A flow-matching
    model (``schedule=None``): its ODE integrated by `diffedu.flow.flow_sample` (``sampler``, ``steps``,
    ``shift``; ``eta`` and ``clip_x0`` do not apply). Either with classifier-free guidance of scale ``guidance``
    against the empty prompt (None: the conditional model alone, one model call a step). The same seed gives
    the same starting noise for the same number of images. A latent model (``config.vae`` set) needs ``vae``,
    which decodes its samples. ``clip_x0`` (clamp the predicted x_0 to [-1, 1]) defaults to True for pixels and
    False for latents, which are not confined to [-1, 1].
    """
    prompts = check_prompts(prompts)
    if not prompts or n_per_prompt < 1:
        raise ValueError("give at least one prompt and n_per_prompt >= 1")
    _check_vae(model, vae)
    clip_x0 = vae is None if clip_x0 is None else clip_x0
    tokens = model.encode(prompts, warn=warn).repeat_interleave(n_per_prompt, dim=0)  # (B, L)
    shape = (len(tokens), *model.image_shape)
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn(shape, generator=generator)  # noqa: N806
    uncond = model.empty_prompt() if guidance is not None else None
    out = []
    for start in range(0, len(tokens), batch_size):
        part = slice(start, start + batch_size)
        if schedule is None:
            out.append(flow_sample(model, tuple(x_T[part].shape), steps=steps, sampler=sampler, shift=shift,
                                   x_T=x_T[part], cond=tokens[part], guidance=guidance, uncond=uncond,
                                   progress=progress, device=_device(model)))
            continue
        out.append(ddim_sample(model, schedule, tuple(x_T[part].shape), steps=steps, eta=eta, x_T=x_T[part],
                               cond=tokens[part], guidance=guidance, uncond=uncond,
                               generator=generator, clip_x0=clip_x0, progress=progress,
                               device=_device(model)))
    samples = torch.cat(out)
    if vae is None:
        return samples.cpu()
    with torch.no_grad():
        vae_device = next(vae.parameters()).device
        return torch.cat([vae.decode(samples[i: i + batch_size].to(vae_device)).cpu()
                          for i in range(0, len(samples), batch_size)])


def _check_vae(model: Text2Img, vae: nn.Module | None) -> None:
    name = model.config.vae
    if name is not None and vae is None:
        raise ValueError(f"this model denoises the latents of the VAE {name!r}: pass vae= (load it with "
                         f"diffedu.latent.load_vae({name!r}); load_text2img returns it in info['vae'])")
    if name is None and vae is not None:
        raise ValueError("this model works on pixels (config.vae is None): do not pass vae=")


# --------------------------------------------------------------------------- where each word is looked at


@contextlib.contextmanager
def capture_cross_attention(model: nn.Module, resolution: int) -> Iterator[list[Tensor]]:
    """Record the cross-attention weights of every block working at ``resolution`` x ``resolution``.

    Yields a list that fills with one (B, nh, resolution**2, L) tensor per call of such a block (on the
    CPU), in call order; the hooks are removed on exit. The weights are recomputed from the block's inputs
    with `CrossAttention.attention_weights`, so the model runs its fast path unchanged.
    """
    records: list[Tensor] = []

    def hook(module: CrossAttention, args: tuple[Any, ...], output: Tensor) -> None:
        x = args[0]
        if x.shape[-1] == resolution:
            records.append(module.attention_weights(*args).detach().float().cpu())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, CrossAttention)]
    if not handles:
        raise ValueError("this model has no CrossAttention blocks to record (build its U-Net with context_dim)")
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture_joint_attention(model: nn.Module) -> Iterator[list[Tensor]]:
    """Record the joint attention weights of every MMDiT block (`diffedu.models.mmdit.JointBlock`).

    Yields a list that fills with one (B, nh, L + N, L + N) tensor per block call (on the CPU; the sequence is
    [text tokens | image patches]), in call order; the hooks are removed on exit. The weights are recomputed from
    the block's inputs, so the model runs its fast path unchanged.
    """
    records: list[Tensor] = []

    def hook(module: JointBlock, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        records.append(module.attention_weights(*args, **kwargs).detach().float().cpu())

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules() if isinstance(m, JointBlock)]
    if not handles:
        raise ValueError("this model has no joint attention blocks to record (it is not an MMDiT): for a U-Net use "
                         "capture_cross_attention")
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def joint_token_maps(records: Sequence[Tensor], batch: int, length: int, grid: int) -> Tensor:
    """Where each image patch looks among the words: (B, L, grid, grid), averaged over calls and heads.

    The rows of the image queries, the columns of the ``length`` text keys, renormalised so that a patch's
    weights over the words sum to 1 (in joint attention a patch also attends to other patches; this keeps the
    share it gives the text and splits it the way cross-attention's maps do, `token_attention_maps`). With
    guidance only the first ``batch`` rows (the conditional half) are kept.
    """
    if not records:
        raise ValueError("no attention weights were recorded: run the model inside capture_joint_attention")
    mean = torch.stack([r[:batch].mean(dim=1) for r in records]).mean(dim=0)  # (B, L + N, L + N)
    image_to_text = mean[:, length:, :length]  # (B, N, L)
    image_to_text = image_to_text / image_to_text.sum(-1, keepdim=True).clamp(min=1e-12)
    return image_to_text.transpose(1, 2).reshape(batch, length, grid, grid)


def token_attention_maps(records: Sequence[Tensor], batch: int, resolution: int) -> Tensor:
    """Average recorded weights over calls and heads: (B, L, resolution, resolution), one map per token.

    With guidance every call sees a doubled batch [cond | uncond]; only the first ``batch`` rows (the
    conditional half) are kept. A pixel's weights over the tokens sum to 1, so map l shows where token l
    is read (how much of each pixel's update it supplies).
    """
    if not records:
        raise ValueError("no attention weights were recorded: run the model inside capture_cross_attention, "
                         "at a resolution where the U-Net has cross-attention")
    mean = torch.stack([r[:batch].mean(dim=1) for r in records]).mean(dim=0)  # (B, N, L)
    return mean.transpose(1, 2).reshape(batch, -1, resolution, resolution)


# --------------------------------------------------------------------------- does the image follow the prompt?


@torch.no_grad()
def evaluate_prompts(model: Text2Img, schedule: Any, captioner: Any, classifier: nn.Module, *, n: int,
                     templates: str = "train", guidance: float | None = 3.0, steps: int = 50, eta: float = 1.0,
                     seed: int = 0, batch_size: int = 250, with_attribute: bool = True,
                     vae: nn.Module | None = None, sampler: str = "heun", shift: float = 1.0) -> dict[str, Any]:
    """Sample ``n`` images from prompts with a known class and (optionally) one known attribute; judge them.

    Sample i asks for class i mod K and, with ``with_attribute``, for attribute i mod A at its low or high
    level by turns (so N a multiple of 2 K A = 60 balances every triple), written with the ``templates``
    ("train" or "heldout") by `Captioner.describe`. Then:

    - class accuracy: the share the yardstick ``classifier`` reads as the class asked for;
    - attribute accuracy: the share whose attribute, measured by the captioner's own functions and
      thresholds (of the class asked for), falls at the level asked for (chance: about 1/3).

    Returns {"class_accuracy", "attribute_accuracy", "per_attribute": {name: accuracy}, "prompts", "images",
    "labels", "asked": {name: (n,) levels or -1}, "measured": {name: (n,) levels}}. A latent model needs ``vae``;
    a flow-matching model takes ``schedule=None`` and ``sampler`` / ``shift`` (see `generate`).
    """
    K = len(captioner.spec.nouns)  # noqa: N806
    labels = torch.arange(n) % K
    names = [a.name for a in captioner.spec.attributes if a.kind == "tertile"]
    asked = {name: torch.full((n,), -1, dtype=torch.long) for name in names}
    if with_attribute and names:
        for i in range(n):  # sample i: class i mod K, attribute i mod A, low or high by turns
            asked[names[i % len(names)]][i] = 0 if (i // len(names)) % 2 == 0 else 2
    levels = {name: torch.where(v < 0, 1, v) for name, v in asked.items()}  # not asked (-1) -> mid: unsaid
    prompts = captioner.describe(labels, levels, templates=templates, seed=seed)
    images = generate(model, schedule, prompts, guidance=guidance, steps=steps, eta=eta, seed=seed,
                      batch_size=batch_size, warn=False, vae=vae, sampler=sampler, shift=shift)
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    predicted = torch.cat([classifier(images[i: i + 500].to(device)).argmax(1).cpu() for i in range(0, n, 500)])
    classifier.train(was_training)
    measured = captioner.attributes(images, labels)
    per_attribute, hits, total = {}, 0, 0
    for name in names:
        sel = asked[name] >= 0
        if bool(sel.any()):
            right = int((measured[name][sel] == asked[name][sel]).sum())
            per_attribute[name] = right / int(sel.sum())
            hits, total = hits + right, total + int(sel.sum())
    return {
        "class_accuracy": float((predicted == labels).float().mean()),
        "attribute_accuracy": hits / total if total else None,
        "per_attribute": per_attribute,
        "prompts": prompts, "images": images, "labels": labels, "predicted": predicted,
        "asked": asked, "measured": measured,
    }


# --------------------------------------------------------------------------- shipped weights


def export_text2img(checkpoint: str | os.PathLike[str] | dict[str, Any], out_path: str | os.PathLike[str], *,
                    name: str, record: dict[str, Any], captioner: Any | None = None) -> Path:
    """Write the EMA weights of a `Text2Img` training checkpoint, its config, schedule and record to ``out_path``.

    float32 when the weights take at most 3 MB, float16 above. ``captioner`` (a `diffedu.captions.Captioner`)
    stores the attribute thresholds the captions were written with, so the same ones judge samples later.
    The file loads with ``torch.load(weights_only=True)``.
    """
    state = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    if state.get("model_class") != "Text2Img" or state.get("model_config") is None:
        raise ValueError(f"export_text2img needs a checkpoint of a Text2Img, got a {state.get('model_class')}")
    payload = weights_payload(state, file_format=FORMAT, name=name, record=record, max_fp32_bytes=MAX_FP32_BYTES)
    payload["captioner"] = captioner.state() if captioner is not None else None
    return atomic_save(payload, out_path)


def load_text2img(name: str = "mnist_text", device: torch.device | str | None = None, *,
                  directory: str | os.PathLike[str] | None = None) -> tuple[Text2Img, Any, dict[str, Any]]:
    """The shipped text-to-image model ``name`` (eval mode, float32), its noise schedule (None for a flow-matching
    model, e.g. ``mnist_mmdit_text``), and an info dict.

    ``info`` holds name, prediction, step, the training record, ``captioner`` (a `Captioner` with the
    thresholds its training captions were written with, or None) and ``vae`` (for a latent model, the VAE
    that decodes its samples, on the same device; else None). Raises FileNotFoundError (with the command that
    makes the file) when it is missing.
    """
    path = Path(directory or weights_dir()) / f"{name}.pt"
    if not path.is_file():
        recipe = RECIPES.get(name)
        raise FileNotFoundError(f"no text-to-image weights {name!r} at {path}"
                                + (f"; make them with:\n    {recipe}" if recipe else ""))
    payload = read_file(path, FORMAT, "Delete it and export it again" + (f" ({RECIPES[name]})" if name in RECIPES else ""))
    model = Text2Img.from_config_dict(payload["model_config"])
    check_fits(model, payload["state_dict"], path, payload.get("model_class"), None)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    schedule = (None if payload["schedule"] is None
                else make_schedule(payload["schedule"]["name"], payload["schedule"]["T"]))
    device = torch.device(device) if device is not None else default_device()
    info = {k: payload[k] for k in ("name", "prediction", "step", "record", "dtype")}
    attach(model, Provenance.of(payload["prediction"], schedule, images=model.config.vae is None,
                                source=f"the text-to-image weights {name!r}"))
    info["captioner"] = Captioner.from_state(payload["captioner"]) if payload.get("captioner") else None
    info["path"] = path
    info["vae"] = None
    if model.config.vae is not None:
        info["vae"], _ = load_vae(model.config.vae, device=device)
    return model.to(device).eval(), None if schedule is None else schedule.to(device), info


def config_of(model: Text2Img) -> dict[str, Any]:
    """The model's config as plain data (what checkpoints store)."""
    return dataclasses.asdict(model.config)


def with_unet(config: Text2ImgConfig, **overrides: Any) -> Text2ImgConfig:
    """The config with some U-Net fields replaced (e.g. a tiny U-Net for quick runs)."""
    return replace(config, unet=replace(config.unet, **overrides))
