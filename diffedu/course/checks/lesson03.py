"""Checks for the exercises of lesson 03 (the U-Net): the time embedding, the residual block, self-attention, a
two-level U-Net's forward, and a check that a network's output depends on t.

Module exercises are checked by loading the same (randomised) weights into the library's block and the
learner's, then comparing outputs (`diffedu.course.checks.core.check_module`). The learner's class must keep
the skeleton's submodule names.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise, check_module
from diffedu.models.layers import ResBlock, SelfAttention, timestep_embedding
from diffedu.models.tiny_unet import TinyUNet

__all__ = ["ExerciseError", "check_depends_on_t", "check_res_block", "check_self_attention", "check_timestep_embedding",
           "check_tiny_unet"]


def check_timestep_embedding(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 03: emb(t) = [sin(t w_0) .. sin(t w_{h-1}), cos(t w_0) .. cos(t w_{h-1})], w_i = 10000^(-i/h)."""
    def variant(*, order="sin-cos", denominator="half", base=10000.0, sign=-1.0, pad=True):
        def compute(t, dim):
            half = dim // 2
            i = torch.arange(half, dtype=torch.float32)
            denom = {"half": half, "half-1": max(half - 1, 1), "dim": dim}[denominator]
            freqs = torch.exp(sign * math.log(base) * i / denom)  # (half,)
            angles = t.float()[:, None] * freqs[None, :]  # (B, half)
            sin, cos = torch.sin(angles), torch.cos(angles)
            if order == "sin-cos":
                emb = torch.cat([sin, cos], dim=1)
            elif order == "cos-sin":
                emb = torch.cat([cos, sin], dim=1)
            else:  # interleaved: sin(t w_0), cos(t w_0), sin(t w_1), ...
                emb = torch.stack([sin, cos], dim=2).flatten(1)
            return F.pad(emb, (0, 1)) if pad and dim % 2 else emb

        return compute

    cases = [
        Case((torch.tensor([0, 1, 7, 50, 300]), 8), {}, "t = [0, 1, 7, 50, 300], dim = 8"),
        Case((torch.tensor([0, 3, 999]), 7), {}, "t = [0, 3, 999], an odd dim = 7 (the last column stays 0)"),
    ]
    mistakes = [
        Mistake("the sin and cos halves are swapped: the first half is sin(t * w_i), the second cos(t * w_i) "
                "(so t = 0 gives half zeros, then half ones).", variant(order="cos-sin")),
        Mistake("sin and cos are interleaved (sin, cos, sin, cos, ...): put all the sines first, then all the "
                "cosines, with torch.cat([sin, cos], dim=1).", variant(order="interleaved")),
        Mistake("the frequencies divide the exponent by half - 1. That is a convention, not an error (the original DDPM "
                "code's, and diffusers' downscale_freq_shift=1), but this course uses w_i = 10000 ** (-i / half), "
                "i = 0 .. half-1, and so do its shipped models.",
                variant(denominator="half-1")),
        Mistake("the frequencies divide the exponent by dim; use half = dim // 2: w_i = 10000 ** (-i / half).",
                variant(denominator="dim")),
        Mistake("the frequencies grow instead of shrink: the exponent is negative, w_i = 10000 ** (-i / half).",
                variant(sign=1.0)),
        Mistake("the frequencies have the wrong base: w_i = 10000 ** (-i / half) (max_period 10000, "
                "e.g. torch.exp(-math.log(10000) * i / half)).", variant(base=math.e)),
        Mistake("the frequencies have the wrong base: w_i = 10000 ** (-i / half), not 1000 ** (-i / half).",
                variant(base=1000.0)),
        Mistake("for an odd dim, append one column of zeros (F.pad(emb, (0, 1))) so the result has dim columns.",
                variant(pad=False)),
    ]
    return check_exercise("timestep_embedding", learner, timestep_embedding, cases, mistakes=mistakes)


def check_res_block(learner_cls: type) -> type:
    """Lesson 03: h = conv1(SiLU(norm1(x))) + time_proj(SiLU(emb)); out = skip(x) + conv2(dropout(SiLU(norm2(h))))."""
    def variant(*, time="after conv1", time_silu=True, order="norm-silu", dropout="before conv2", residual=True):
        def compute(m, x, emb):
            def act(norm, h):
                if order == "silu-norm":
                    return norm(F.silu(h))
                return norm(h) if order == "no silu" else F.silu(norm(h))

            shift = m.time_proj(F.silu(emb) if time_silu else emb)[:, :, None, None]  # (B, C_out, 1, 1)
            h = m.conv1(act(m.norm1, x))
            if time == "after conv1":
                h = h + shift
            h = act(m.norm2, h)
            if dropout == "before conv2":
                h = m.dropout(h)
            h = m.conv2(h)
            if dropout == "after conv2":
                h = m.dropout(h)
            if time == "after conv2":
                h = h + shift
            return m.skip(x) + h if residual else h

        return compute

    g = torch.Generator().manual_seed(30)
    x8, x4 = torch.randn(2, 8, 5, 5, generator=g), torch.randn(2, 4, 5, 5, generator=g)
    emb = torch.randn(2, 6, generator=g)
    setups = [
        ((8, 8, 6), {"norm_groups": 2}, (x8, emb), False,
         "ResBlock(8, 8, time_dim=6, norm_groups=2) in eval mode, x of shape (2, 8, 5, 5), emb of shape (2, 6)"),
        ((4, 8, 6), {"norm_groups": 2}, (x4, emb), False,
         "ResBlock(4, 8, time_dim=6, norm_groups=2) in eval mode, x of shape (2, 4, 5, 5): in_channels != "
         "out_channels, so the residual path is the 1x1 conv self.skip(x)"),
        ((8, 8, 6), {"norm_groups": 2, "dropout": 0.5}, (x8, emb), True,
         "ResBlock(8, 8, time_dim=6, norm_groups=2, dropout=0.5) in training mode (dropout on; both blocks "
         "draw the same random mask)"),
    ]
    wrong = [
        ("the time embedding is never added: after conv1 add self.time_proj(F.silu(emb))[:, :, None, None], "
         "one shift per channel.", variant(time="none")),
        ("the time embedding goes into self.time_proj without a SiLU first: use self.time_proj(F.silu(emb)).",
         variant(time_silu=False)),
        ("the time embedding is added after the second conv; add it right after conv1, before norm2.",
         variant(time="after conv2")),
        ("the norm and the activation are in the wrong order: GroupNorm first, then SiLU, then the conv.",
         variant(order="silu-norm")),
        ("the SiLU after each GroupNorm is missing: conv(SiLU(GroupNorm(h))).", variant(order="no silu")),
        ("the residual connection is missing: return self.skip(x) + h, not h alone.", variant(residual=False)),
        ("the dropout is missing: apply self.dropout after the second SiLU, right before conv2.",
         variant(dropout="none")),
        ("the dropout is after conv2; apply it before, to SiLU(norm2(h)).", variant(dropout="after conv2")),
    ]
    return check_module("ResBlock", learner_cls, ResBlock, setups, wrong)


def check_self_attention(learner_cls: type) -> type:
    """Lesson 03: out = x + proj(concat_j softmax(q_j k_j^T / sqrt(hd)) v_j), with q, k, v from qkv(norm(x))."""
    def variant(*, norm=True, residual=True, scale="once", swap_qk=False, split="ok", merge="ok",
                heads=None, softmax_dim=-1):
        def compute(m, x):
            B, C, H, W = x.shape
            nh = heads or m.num_heads
            N, hd = H * W, C // nh
            qkv = m.qkv(m.norm(x) if norm else x)  # (B, 3C, H, W)
            if split == "reshape only":  # (hd, N) read as if it were (N, hd)
                q, k, v = qkv.reshape(B, 3, nh, N, hd).unbind(1)
            elif split == "interleaved":  # heads taken as the fast-moving channel index
                q, k, v = qkv.reshape(B, 3, hd, nh, N).permute(0, 1, 3, 4, 2).unbind(1)
            else:
                q, k, v = qkv.reshape(B, 3, nh, hd, N).transpose(-1, -2).unbind(1)  # (B, nh, N, hd)
            if swap_qk:
                q, k = k, q
            scores = q @ k.transpose(-1, -2)  # (B, nh, N, N)
            scores = scores / {"once": math.sqrt(hd), "none": 1.0, "twice": hd}[scale]
            h = scores.softmax(dim=softmax_dim) @ v  # (B, nh, N, hd)
            h = h.reshape(B, C, H, W) if merge == "reshape only" else h.transpose(-1, -2).reshape(B, C, H, W)
            out = m.proj(h)
            return x + out if residual else out

        return compute


    g = torch.Generator().manual_seed(31)
    x1, x2 = torch.randn(2, 4, 3, 4, generator=g), torch.randn(2, 8, 3, 4, generator=g)
    setups = [
        ((4,), {"num_heads": 1, "norm_groups": 2}, (x1,), False,
         "SelfAttention(4, num_heads=1, norm_groups=2), x of shape (2, 4, 3, 4): one head, 12 pixels"),
        ((8,), {"num_heads": 2, "norm_groups": 2}, (x2,), False,
         "SelfAttention(8, num_heads=2, norm_groups=2), x of shape (2, 8, 3, 4): two heads of 4 channels"),
    ]
    wrong = [
        ("the residual is missing: return x + self.proj(h), not self.proj(h).", variant(residual=False)),
        ("q, k and v must come from the normalised input: self.qkv(self.norm(x)).", variant(norm=False)),
        ("the scores are not scaled: softmax(q k^T / sqrt(hd)) with hd channels per head "
         "(F.scaled_dot_product_attention does this for you).", variant(scale="none")),
        ("the scores are scaled twice: F.scaled_dot_product_attention already divides by sqrt(hd), so do not "
         "scale q or k yourself.", variant(scale="twice")),
        ("the softmax runs over the queries; it must run over the keys, the last dimension of q k^T.",
         variant(softmax_dim=-2)),
        ("q and k are swapped: the channels of qkv are ordered [q | k | v].", variant(swap_qk=True)),
        ("the heads are ignored: split the C channels into num_heads heads of C // num_heads, shape "
         "(B, nh, H*W, hd).", variant(heads=1)),
        ("a reshape where a transpose is needed when splitting q, k, v: reshape qkv to (B, 3, nh, hd, H*W) and "
         "then transpose the last two dimensions to get (B, nh, H*W, hd).", variant(split="reshape only")),
        ("the heads are split the wrong way: head j owns the channels j*hd .. (j+1)*hd - 1 of q, k and v, "
         "so reshape to (B, 3, nh, hd, H*W), not (B, 3, hd, nh, H*W).", variant(split="interleaved")),
        ("a reshape where a transpose is needed when merging the heads: (B, nh, H*W, hd) -> transpose to "
         "(B, nh, hd, H*W) -> reshape to (B, C, H, W).", variant(merge="reshape only")),
    ]
    return check_module("SelfAttention", learner_cls, SelfAttention, setups, wrong)


def check_depends_on_t(model: Callable[..., Tensor], x: Tensor, ts: Sequence[int] = (0, 100, 500, 999),
                       cond: Tensor | None = None, *, rtol: float = 1e-4) -> list[float]:
    """Check that model(x, t) changes with t; return the relative change ||f(x, t) - f(x, ts[0])|| / ||f(x, ts[0])||.

    Raises ExerciseError with the likely cause when the output is the same for every t.
    """
    module = model if isinstance(model, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()  # no dropout: any change must come from t
    try:
        with torch.no_grad():
            outs = [model(x, t) if cond is None else model(x, t, cond) for t in ts]
    finally:
        if module is not None:
            module.train(was_training)
    base = outs[0]
    scale = base.norm().item()
    changes = [(out - base).norm().item() / max(scale, 1e-12) for out in outs[1:]]
    if all(out.abs().max().item() == 0 for out in outs):
        raise ExerciseError(
            f"the output is exactly 0 for every t in {list(ts)}, so it cannot depend on t yet. A fresh diffedu "
            "UNet starts with its output conv (and the last conv of every block) at zero. Train it for a few "
            "steps, or perturb its weights, and check again."
        )
    if max(changes) <= rtol:
        raise ExerciseError(
            f"the output is the same for every t in {list(ts)} (largest relative change {max(changes):.2g}): the "
            "timestep does not reach the output. Check that forward passes t to the time embedding and that "
            "every ResBlock adds time_proj(SiLU(emb)). (Right after the first training step this is expected: "
            "only the output conv has moved from zero so far.)"
        )
    listed = ", ".join(f"t={t}: {c:.3g}" for t, c in zip(ts[1:], changes))
    print(f"✓ the output depends on t (relative change from t={ts[0]}: {listed}).")
    return changes


def check_tiny_unet(learner_cls: type) -> type:
    """Lesson 03: TinyUNet.forward, the down path saving skips, the middle, and the up path concatenating them."""
    g = torch.Generator().manual_seed(33)
    x = torch.randn(2, 1, 8, 8, generator=g)
    t = torch.tensor([3, 700])
    setups = [((), {"channels": (8, 16), "time_dim": 8, "norm_groups": 4}, (x, t), False,
               "TinyUNet(channels=(8, 16), time_dim=8, norm_groups=4), x (2, 1, 8, 8), t = [3, 700], random weights"),
              ((2,), {"channels": (4, 8), "time_dim": 8, "norm_groups": 2},
               (torch.randn(1, 2, 4, 12, generator=g), torch.tensor([42])), False,
               "TinyUNet(2, channels=(4, 8), time_dim=8, norm_groups=2), x (1, 2, 4, 12), t = [42], random weights")]

    def variant(*, emb: str = "mlp", order: str = "h first", out: bool = True, mid: bool = True):
        def compute(m, x_, t_):
            e = m.time_embed(t_) if emb == "mlp" else timestep_embedding(t_, m.time_embed.sinusoidal_dim)
            h = m.stem(x_)
            skips = []
            for block, down in zip(m.down_blocks, m.downsamples):
                h = block(h, e)
                skips.append(h)
                h = down(h)
            h = m.mid(h, e) if mid else h
            for up, block in zip(m.upsamples, m.up_blocks):
                h = up(h)
                s = skips.pop()
                h = block(torch.cat([h, s] if order == "h first" else [s, h], dim=1), e)
            return m.out(h) if out else h
        return compute

    wrong = [
        ("concatenate the upsampled features first, then the skip: torch.cat([h, skip], dim=1). The up blocks' "
         "weights (loaded from the library) expect that order.", variant(order="skip first")),
        ("the middle block is skipped: after the down path, h = self.mid(h, emb).", variant(mid=False)),
        ("the time embedding is self.time_embed(t) (the sinusoids AND the MLP), computed once and given to every "
         "ResBlock.", variant(emb="raw")),
    ]
    crash_hints = [
        ("Sizes of tensors must match",  # torch.cat of two resolutions: the wrong skip
         "a skip met features of another resolution. Save each skip BEFORE its downsampling, and take them back "
         "last saved, first used (skips.pop(), not skips.pop(0))."),
        ("number of channels in input",  # GroupNorm of an up block: a channel count that does not fit
         "the up blocks take the features and the skip side by side along the channels, torch.cat([h, skip], dim=1) "
         "(twice the channels), not their sum."),
    ]
    return check_module("TinyUNet", learner_cls, TinyUNet, setups, wrong, crash_hints=crash_hints)
