"""A joint text-image transformer in miniature: the MMDiT of Stable Diffusion 3 (lesson 11).

Esser et al. (2024), "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis", section 4: the
text tokens and the image patches form two streams of one sequence. Each stream has its own weights (adaLN
modulation, q/k/v and output projections, MLP), because text and images are different things; the two meet in
ONE attention over the concatenated sequence, so the image reads the text and the text reads the image in the
same operation (the U-Net of lesson 09 only lets the pixels read the words, through cross-attention).

    text stream   context (B, L, D) from a text encoder -> Linear -> (B, L, d)
    image stream  patchify(x_t) -> Linear -> + 2-D position embedding -> (B, N, d)
    c             embed(t) + MLP(pooled text), pooled = the mean of the real tokens' vectors      (B, d)
    depth x JointBlock:
        for each stream s: h_s = modulate(LN(x_s), shift_s, scale_s), q_s, k_s, v_s = own projections
        [o_txt | o_img] = Attention([q_txt | q_img], [k_txt | k_img], [v_txt | v_img])   (padding masked)
        x_s = x_s + gate_s * proj_s(o_s);  x_s = x_s + gate'_s * MLP_s(modulate(LN(x_s), shift'_s, scale'_s))
    final layer on the image stream only, then unpatchify

adaLN-Zero as in `diffedu.models.dit`: a fresh MMDiT predicts 0 and every block starts as the identity. The last
block only reads the text (SD3's "context pre-only" block): nothing would read the text it wrote.
Called as the lesson 09 U-Net is, ``MMDiT(x, t, context=c, context_mask=m)``, so `diffedu.text2img.Text2Img`
holds either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffedu.models.dit import DiTConfig, modulate, patchify, sincos_position_embedding, unpatchify
from diffedu.models.inputs import batch_timesteps, check_images
from diffedu.models.layers import TimeEmbedding

__all__ = ["JointAttention", "JointBlock", "MMDiT", "MMDiTConfig", "joint_attention", "mnist_latent_mmdit"]


@dataclass(frozen=True)
class MMDiTConfig(DiTConfig):
    """A `DiTConfig` (image size, patches, width, depth, heads) plus ``context_dim``, the text encoder's width.
    An MMDiT reads text, not class labels: ``num_classes`` must stay None."""

    context_dim: int = 64

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.context_dim, int) or isinstance(self.context_dim, bool) or self.context_dim < 1:
            raise ValueError(f"MMDiTConfig.context_dim must be a positive integer, got {self.context_dim!r}")
        if self.num_classes is not None:
            raise ValueError("an MMDiT reads text (context=...), not class labels: leave num_classes None, or use "
                             "diffedu.models.dit.DiT(DiTConfig(num_classes=...))")


def joint_attention(q_txt: Tensor, k_txt: Tensor, v_txt: Tensor, q_img: Tensor, k_img: Tensor, v_img: Tensor,
                    txt_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One attention over the text and image tokens together: each input (B, nh, L or N, hd); returns the
    text part (B, nh, L, hd) and the image part (B, nh, N, hd). ``txt_mask`` (B, L), True at real tokens: no
    token attends to padding."""
    L = q_txt.shape[2]
    q, k, v = (torch.cat(pair, dim=2) for pair in ((q_txt, q_img), (k_txt, k_img), (v_txt, v_img)))
    mask = None
    if txt_mask is not None:
        keep = torch.ones(k.shape[0], k.shape[2], dtype=torch.bool, device=k.device)
        keep[:, :L] = txt_mask
        mask = keep[:, None, None, :]  # (B, 1, 1, L + N): every query may look at these keys
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out[:, :, :L], out[:, :, L:]


class JointAttention(nn.Module):
    """The text and image streams' own q/k/v and output projections around one `joint_attention`. With
    ``text_out=False`` (the last block) the text only supplies keys and values: it has no output projection."""

    def __init__(self, dim: int, num_heads: int, text_out: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv_txt, self.qkv_img = nn.Linear(dim, 3 * dim), nn.Linear(dim, 3 * dim)
        self.proj_txt = nn.Linear(dim, dim) if text_out else None
        self.proj_img = nn.Linear(dim, dim)

    def _heads(self, layer: nn.Linear, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, n, d = x.shape
        q, k, v = layer(x).reshape(B, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, txt: Tensor, img: Tensor, txt_mask: Tensor | None = None) -> tuple[Tensor | None, Tensor]:
        o_txt, o_img = joint_attention(*self._heads(self.qkv_txt, txt), *self._heads(self.qkv_img, img), txt_mask)
        merge = lambda o: o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)  # noqa: E731 (B, n, d)
        return (self.proj_txt(merge(o_txt)) if self.proj_txt is not None else None), self.proj_img(merge(o_img))

    def attention_weights(self, txt: Tensor, img: Tensor, txt_mask: Tensor | None = None) -> Tensor:
        """softmax(q k^T / sqrt(hd)) over the joint sequence [text | image], (B, nh, L + N, L + N)."""
        q_t, k_t, _ = self._heads(self.qkv_txt, txt)
        q_i, k_i, _ = self._heads(self.qkv_img, img)
        q, k = torch.cat([q_t, q_i], dim=2), torch.cat([k_t, k_i], dim=2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if txt_mask is not None:
            keep = torch.cat([txt_mask, txt_mask.new_ones(txt_mask.shape[0], img.shape[1])], dim=1)
            scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        return scores.softmax(-1)


def _mlp(dim: int, ratio: float) -> nn.Sequential:
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


def _zero_modulation(dim: int, chunks: int) -> nn.Sequential:
    layer = nn.Linear(dim, chunks * dim)
    nn.init.zeros_(layer.weight)  # adaLN-Zero
    nn.init.zeros_(layer.bias)
    return nn.Sequential(nn.SiLU(), layer)


class JointBlock(nn.Module):
    """One MMDiT block: two streams, their own weights, one joint attention. (txt, img, c) -> (txt, img).

    ``text_out=False`` makes the last block of a stack (SD3's "context pre-only" block): the text is read (keys and
    values) but not updated, since nothing reads it afterwards; it returns (None, img).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, text_out: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)  # no weights: shared harmlessly
        self.mod_txt = _zero_modulation(dim, 6 if text_out else 2)
        self.mod_img = _zero_modulation(dim, 6)
        self.attn = JointAttention(dim, num_heads, text_out)
        self.mlp_txt = _mlp(dim, mlp_ratio) if text_out else None
        self.mlp_img = _mlp(dim, mlp_ratio)

    def forward(self, txt: Tensor, img: Tensor, c: Tensor, txt_mask: Tensor | None = None
                ) -> tuple[Tensor | None, Tensor]:
        mt = self.mod_txt(c).chunk(6 if self.mlp_txt is not None else 2, dim=1)  # (shift, scale, gate) x 2
        mi = self.mod_img(c).chunk(6, dim=1)
        a_txt, a_img = self.attn(modulate(self.norm(txt), mt[0], mt[1]), modulate(self.norm(img), mi[0], mi[1]),
                                 txt_mask)
        img = img + mi[2][:, None] * a_img
        img = img + mi[5][:, None] * self.mlp_img(modulate(self.norm(img), mi[3], mi[4]))
        if self.mlp_txt is None:
            return None, img
        txt = txt + mt[2][:, None] * a_txt
        txt = txt + mt[5][:, None] * self.mlp_txt(modulate(self.norm(txt), mt[3], mt[4]))
        return txt, img

    def attention_weights(self, txt: Tensor, img: Tensor, c: Tensor, txt_mask: Tensor | None = None) -> Tensor:
        """The joint attention's weights for these inputs, (B, nh, L + N, L + N)."""
        mt = self.mod_txt(c).chunk(6 if self.mlp_txt is not None else 2, dim=1)
        mi = self.mod_img(c).chunk(6, dim=1)
        return self.attn.attention_weights(modulate(self.norm(txt), mt[0], mt[1]),
                                           modulate(self.norm(img), mi[0], mi[1]), txt_mask)


class MMDiT(nn.Module):
    """``output = MMDiT(x_t, t, context=c, context_mask=m)``: a DiT whose text tokens share its attention."""

    def __init__(self, config: MMDiTConfig) -> None:
        super().__init__()
        self.config = c = config
        d, p = c.hidden_size, c.patch_size
        self.patch_embed = nn.Linear(c.in_channels * p * p, d)
        self.register_buffer("pos_embed", sincos_position_embedding(c.grid_size, d)[None], persistent=False)
        self.context_embed = nn.Linear(c.context_dim, d)
        self.time_embed = TimeEmbedding(d, d)
        self.pooled_embed = nn.Sequential(nn.Linear(c.context_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(JointBlock(d, c.num_heads, c.mlp_ratio, text_out=i < c.depth - 1)
                                    for i in range(c.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_modulation = _zero_modulation(d, 2)
        self.final = nn.Linear(d, c.resolved_out_channels * p * p)
        nn.init.zeros_(self.final.weight)  # a fresh MMDiT predicts zero everywhere
        nn.init.zeros_(self.final.bias)

    def embed(self, x: Tensor, t: Tensor | int | float, context: Tensor, context_mask: Tensor | None
              ) -> tuple[Tensor, Tensor, Tensor]:
        """The two streams' first tokens and the conditioning vector: (txt (B, L, d), img (B, N, d), c (B, d))."""
        cfg = self.config
        check_images(x, "MMDiT", cfg.in_channels, cfg.image_size, self.patch_embed.weight)
        B = x.shape[0]
        if context is None or context.ndim != 3 or context.shape[0] != B or context.shape[2] != cfg.context_dim:
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"MMDiT needs context=(B, L, {cfg.context_dim}) token vectors from a text encoder "
                             f"(B = {B}), with context_mask=(B, L); got {got}")
        if context_mask is not None and (context_mask.dtype != torch.bool
                                         or tuple(context_mask.shape) != tuple(context.shape[:2])):
            raise ValueError(f"context_mask must be a bool tensor of shape {tuple(context.shape[:2])} (True = a real "
                             f"token), got {context_mask.dtype} of shape {tuple(context_mask.shape)}")
        weights = (torch.ones(context.shape[:2], device=context.device) if context_mask is None
                   else context_mask.to(context.dtype))
        pooled = (context * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)  # (B, D)
        c = self.time_embed(batch_timesteps(t, B, x.device)) + self.pooled_embed(pooled)
        img = self.patch_embed(patchify(x, cfg.patch_size)) + self.pos_embed
        return self.context_embed(context), img, c

    def forward(self, x: Tensor, t: Tensor | int | float, cond: Tensor | None = None, *,
                context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        """x (B, C_in, S, S), t ((B,) or a scalar), context (B, L, D), context_mask (B, L) -> (B, C_out, S, S)."""
        if cond is not None:
            raise ValueError("MMDiT reads text (context=...), not class labels; pass the labels through a text "
                             "encoder, or use diffedu.models.dit.DiT(num_classes=...)")
        txt, img, c = self.embed(x, t, context, context_mask)
        for block in self.blocks:
            txt, img = block(txt, img, c, context_mask)  # the last block returns txt = None
        shift, scale = self.final_modulation(c).chunk(2, dim=1)
        out = self.final(modulate(self.final_norm(img), shift, scale))
        return unpatchify(out, self.config.patch_size, self.config.resolved_out_channels)


def mnist_latent_mmdit(**overrides: Any) -> MMDiTConfig:
    """An MMDiT for lesson 07's MNIST latents (4x8x8): 1x1 patches (64 image tokens), width 64, 4 heads, depth 4,
    reading a text encoder of width 64. Keyword arguments override fields."""
    return replace(MMDiTConfig(image_size=8, in_channels=4, patch_size=1, hidden_size=64, depth=4, num_heads=4,
                               context_dim=64), **overrides)
