"""The Diffusion Transformer: a denoiser ``DiT(x, t, cond=None) -> Tensor`` built from patches (lesson 11).

Peebles & Xie (2023), "Scalable Diffusion Models with Transformers", replace the U-Net by a plain
Vision-Transformer stack over patches of the (latent) image:

    patchify                 (B, C, S, S) -> (B, N, C p^2), N = (S / p)^2 tokens, one per p x p patch
    patch embedding          a linear map C p^2 -> d, plus a fixed 2-D sine-cosine position embedding
    depth x DiTBlock         x = x + g1 * Attn(modulate(LN(x), b1, s1));  x = x + g2 * MLP(modulate(LN(x), b2, s2))
                             with (b1, s1, g1, b2, s2, g2) = Linear(SiLU(c)), c = embed(t) + embed(class)
    final layer              modulate(LN(x), b, s), then a linear map d -> C_out p^2
    unpatchify               (B, N, C_out p^2) -> (B, C_out, S, S)

``modulate(h, b, s) = h (1 + s) + b`` is adaptive layer norm (adaLN): the layer norm has no weights of its
own, the conditioning sets its scale and shift per example. "adaLN-Zero" initialises the linear map that
produces (b, s, g) to zero, so every gate g starts at 0 and every block starts as the identity; with the
final linear map also zero, a fresh DiT predicts 0 everywhere, like the U-Net's zero output conv (lesson 03).
The conditioning vector c is shared by all blocks, so class labels (row K of the label table means "no
label", for classifier-free guidance) cost nothing per block beyond the modulation.

The model knows nothing about diffusion: the samplers, the training loop and guidance call it exactly as
they call the U-Net, with integer timesteps (DDPM) or t * 1000 (flow matching, `diffedu.flow`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffedu.models.inputs import batch_timesteps, check_images, check_labels
from diffedu.models.layers import TimeEmbedding

__all__ = ["Attention", "DiT", "DiTBlock", "DiTConfig", "mnist_dit", "mnist_dit_p2", "modulate", "patchify",
           "sincos_position_embedding", "unpatchify"]


@dataclass(frozen=True)
class DiTConfig:
    """Everything that fixes a DiT's architecture; checked when built (``ValueError`` if invalid).

    ``hidden_size`` d is the width of every token; ``num_heads`` must divide it. ``out_channels=None`` means
    ``in_channels``. ``num_classes=K`` adds a label embedding (labels 0..K-1, K = "no label").
    """

    image_size: int
    in_channels: int = 1
    out_channels: int | None = None
    patch_size: int = 2
    hidden_size: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def resolved_out_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def grid_size(self) -> int:
        """Patches per side: image_size / patch_size."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def validate(self) -> None:
        """Raise a ``ValueError`` that names the bad value and the fix."""
        for name in ("image_size", "in_channels", "patch_size", "hidden_size", "depth", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive integer, got {value!r}")
        if self.out_channels is not None and (not isinstance(self.out_channels, int) or self.out_channels < 1):
            raise ValueError(f"{type(self).__name__}.out_channels must be a positive integer or None, "
                             f"got {self.out_channels!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must divide image_size {self.image_size}; "
                             f"e.g. patch_size={math.gcd(self.image_size, self.patch_size)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide hidden_size {self.hidden_size}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size must be a multiple of 4 (the 2-D sine-cosine position embedding splits "
                             f"it into rows and columns, each into sines and cosines), got {self.hidden_size}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {self.num_classes!r}")


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, N, C p^2): one token per p x p patch, patches in row-major order, each token's
    features in (channel, row, column) order. N = (H / p)(W / p)."""
    B, C, H, W = x.shape
    if H % p or W % p:
        raise ValueError(f"patch size {p} must divide the image's height and width, got {H}x{W}")
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, gh, p, gw, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(tokens: Tensor, p: int, channels: int) -> Tensor:
    """The inverse of `patchify` for a square image: (B, N, C p^2) -> (B, C, H, W), H = W = p sqrt(N)."""
    B, N, D = tokens.shape
    g = math.isqrt(N)
    if g * g != N or D != channels * p * p:
        raise ValueError(f"unpatchify needs N a square and features C p^2 = {channels * p * p}, "
                         f"got tokens of shape {tuple(tokens.shape)}")
    x = tokens.reshape(B, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, p, gw, p)
    return x.reshape(B, channels, g * p, g * p)


def sincos_position_embedding(grid_size: int, dim: int) -> Tensor:
    """A fixed 2-D position embedding (grid_size^2, dim): the first half of the features encode the patch's
    row, the second half its column, each as in `timestep_embedding` (sines then cosines, dim / 4 frequencies
    1 / 10000^(i / (dim / 4)))."""
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    pos = torch.arange(grid_size, dtype=torch.float64)
    angles = pos[:, None] * freqs[None, :]  # (g, dim/4)
    one_axis = torch.cat([angles.sin(), angles.cos()], dim=1)  # (g, dim/2)
    rows = one_axis[:, None, :].expand(grid_size, grid_size, dim // 2)  # the row of each patch
    cols = one_axis[None, :, :].expand(grid_size, grid_size, dim // 2)  # its column
    return torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, dim).float()


def modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: h (B, N, d) scaled by (1 + scale) and shifted by shift, both (B, d), per example."""
    return h * (1 + scale[:, None, :]) + shift[:, None, :]


class Attention(nn.Module):
    """Multi-head self-attention over the tokens: (B, N, d) -> (B, N, d)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v, each (B, nh, N, hd)."""
        B, N, d = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x: Tensor) -> Tensor:
        B, N, d = x.shape
        q, k, v = self.heads(x)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hd)
        return self.proj(out.transpose(1, 2).reshape(B, N, d))

    def attention_weights(self, x: Tensor) -> Tensor:
        """softmax(q k^T / sqrt(hd)), (B, nh, N, N): where each token looks."""
        q, k, _ = self.heads(x)
        return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning: (B, N, d), c (B, d) -> (B, N, d)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.modulation[1].weight)  # adaLN-Zero: every gate starts at 0, the block at the identity
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=1)  # each (B, d)
        x = x + gate1[:, None, :] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None, :] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """The Diffusion Transformer (Peebles & Xie 2023): ``output = DiT(x_t, t, cond)``, same shape as x_t."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = c = config
        d, p = c.hidden_size, c.patch_size
        self.patch_embed = nn.Linear(c.in_channels * p * p, d)  # a p x p convolution with stride p, as a matrix
        self.register_buffer("pos_embed", sincos_position_embedding(c.grid_size, d)[None], persistent=False)
        self.time_embed = TimeEmbedding(d, d)
        # Label embedding: rows 0 .. K-1 for the classes, row K for "no label".
        self.label_embed = nn.Embedding(c.num_classes + 1, d) if c.num_classes is not None else None
        self.blocks = nn.ModuleList(DiTBlock(d, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final = nn.Linear(d, c.resolved_out_channels * p * p)
        for layer in (self.final_modulation[1], self.final):  # a fresh DiT predicts zero everywhere
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor | int | float, cond: Tensor | None = None) -> Tensor:
        """Map x (B, C_in, S, S), timesteps t ((B,) or a scalar) and labels cond (B,) to (B, C_out, S, S)."""
        c = self.config
        check_images(x, "DiT", c.in_channels, c.image_size, self.patch_embed.weight)
        B = x.shape[0]
        emb = self.time_embed(batch_timesteps(t, B, x.device))  # (B, d)
        if self.label_embed is not None:
            emb = emb + self.label_embed(check_labels(cond, c.num_classes, B, "DiT"))
        elif cond is not None:
            raise ValueError("cond was given but this DiT is unconditional (num_classes=None); "
                             "build it with DiTConfig(num_classes=...) to condition on class labels")
        h = self.patch_embed(patchify(x, c.patch_size)) + self.pos_embed  # (B, N, d)
        for block in self.blocks:
            h = block(h, emb)
        shift, scale = self.final_modulation(emb).chunk(2, dim=1)
        out = self.final(modulate(self.final_norm(h), shift, scale))  # (B, N, C_out p^2)
        return unpatchify(out, c.patch_size, c.resolved_out_channels)  # (B, C_out, S, S)


def mnist_dit(**overrides: Any) -> DiTConfig:
    """A DiT for 28x28 MNIST at about the FLOPs of `diffedu.models.unet.mnist_patch` (0.10 GFLOP per image): 4x4
    patches (49 tokens), width 128, 4 heads, depth 5 (0.104 GFLOP with its attention, `diffedu.models.flops`; 1.55M
    parameters). With 2x2 patches (196 tokens) the same linear layers leave room for width 64 only (`mnist_dit_p2`),
    whose attention over 4x the tokens brings it to 0.146 GFLOP; on a CPU it trains at half the images per second.
    Keyword arguments override fields."""
    return replace(DiTConfig(image_size=28, in_channels=1, patch_size=4, hidden_size=128, depth=5, num_heads=4),
                   **overrides)


def mnist_dit_p2(**overrides: Any) -> DiTConfig:
    """`mnist_dit` on 2x2 patches (196 tokens) with linear layers of about the same FLOPs: width 64, depth 5 (0.146
    GFLOP with the attention over 196 tokens, 0.39M parameters)."""
    return mnist_dit(**{"patch_size": 2, "hidden_size": 64, **overrides})
