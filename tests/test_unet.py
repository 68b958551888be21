"""Tests of diffedu.models.layers and diffedu.models.unet: shapes, gradients, conditioning, config checks, parity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffedu.models.layers import ResBlock, SelfAttention, TimeEmbedding, group_norm, timestep_embedding
from diffedu.models.unet import (
    UNet,
    UNetConfig,
    cifar10_small,
    count_parameters,
    ddpm_cifar10,
    mnist_patch,
    mnist_small,
    shape_trace,
)


def tiny(**overrides: object) -> UNetConfig:
    """An 8x8 U-Net with two levels, attention at 4x4 and two heads: fast on any CPU."""
    fields = dict(
        image_size=8,
        in_channels=2,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        norm_groups=4,
        num_heads=2,
    )
    fields.update(overrides)
    return UNetConfig(**fields)  # type: ignore[arg-type]


def perturbed(model: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Add noise to every weight, so zero-initialised layers stop hiding their inputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model.eval()


# --- shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, batch",
    [
        (tiny(), 1),
        (tiny(), 3),
        (tiny(out_channels=5), 2),
        (tiny(channel_mults=(1, 2, 2), image_size=12, attention_resolutions=(12, 3)), 2),
        (tiny(num_res_blocks=2, num_classes=3), 2),
        (mnist_small(), 1),
        (tiny(patch_size=2, attention_resolutions=(2,)), 2),
        (mnist_patch(), 1),
    ],
)
def test_output_shape(config: UNetConfig, batch: int) -> None:
    torch.manual_seed(0)
    model = perturbed(UNet(config))
    x = torch.randn(batch, config.in_channels, config.image_size, config.image_size)
    t = torch.randint(0, 1000, (batch,))
    cond = None if config.num_classes is None else torch.zeros(batch, dtype=torch.int64)
    out = model(x, t, cond)
    assert out.shape == (batch, config.resolved_out_channels, config.image_size, config.image_size)
    assert torch.isfinite(out).all()


def test_fresh_net_predicts_zero() -> None:
    """The output conv starts at zero (as in DDPM), so an untrained net outputs exactly 0."""
    model = UNet(tiny()).eval()
    assert torch.equal(model(torch.randn(2, 2, 8, 8), 3), torch.zeros(2, 2, 8, 8))


def test_shape_trace() -> None:
    config = mnist_small()
    model = UNet(config)
    x = torch.randn(2, 1, 28, 28)
    trace = shape_trace(model, x, 10)
    names = [name for name, _ in trace]
    assert trace[0] == ("input", (2, 1, 28, 28))
    assert trace[-1] == ("out", (2, 1, 28, 28))
    base, mults = config.base_channels, config.channel_mults
    assert ("time_embed", (2, 4 * base)) in trace
    assert ("down.1 Downsample", (2, base * mults[0], 14, 14)) in trace  # downsampling keeps the channels
    assert ("mid_attn", (2, base * mults[-1], 7, 7)) in trace
    assert any(name.startswith("up.") and "Upsample" in name for name in names)
    smallest = min(shape[-1] for name, shape in trace if name != "time_embed")
    assert smallest == 7
    # Hooks are removed afterwards.
    assert all(not m._forward_hooks for m in model.modules())


# --- gradients and time dependence ----------------------------------------------------------------


def test_gradient_reaches_every_parameter_and_the_input() -> None:
    torch.manual_seed(0)
    model = perturbed(UNet(tiny(num_classes=3)))
    x = torch.randn(2, 2, 8, 8, requires_grad=True)
    model(x, torch.tensor([1, 700]), torch.tensor([0, 3])).square().mean().backward()
    for name, p in model.named_parameters():
        if name.startswith("label_embed"):
            continue  # only the rows of the labels used get a gradient
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_output_depends_on_t() -> None:
    torch.manual_seed(0)
    model = perturbed(UNet(tiny()))
    x = torch.randn(1, 2, 8, 8).expand(2, -1, -1, -1)  # the same image twice
    out = model(x, torch.tensor([0, 500]))
    assert (out[0] - out[1]).abs().max() > 1e-3
    # A scalar t is broadcast over the batch.
    assert torch.allclose(model(x, 7), model(x, torch.tensor([7, 7])))
    assert torch.allclose(model(x, 7.0), model(x, torch.tensor([7.0, 7.0])))


def test_training_from_zero_init_learns_t_dependence() -> None:
    """Zero-init layers must not freeze the net: a few Adam steps make the output depend on t."""
    torch.manual_seed(0)
    model = UNet(tiny())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(4, 2, 8, 8)
    t = torch.tensor([0, 250, 500, 999])
    target = (t.float() / 999)[:, None, None, None].expand_as(x)  # the answer is t itself
    for _ in range(20):
        opt.zero_grad()
        F.mse_loss(model(x, t), target).backward()
        opt.step()
    model.eval()
    same = x[:1].expand(2, -1, -1, -1)
    out = model(same, torch.tensor([0, 999]))
    assert (out[1] - out[0]).mean() > 0.2  # about 0.4 after 20 steps; 0 at init


# --- parameter counts -----------------------------------------------------------------------------


def test_patches_fold_pixels_into_channels_and_back() -> None:
    """patch_size=2 runs the levels at S/2 on 4x the channels and unfolds the output to full size again."""
    config = tiny(patch_size=2, attention_resolutions=(2,))
    assert config.resolutions == (4, 2)
    model = perturbed(UNet(config))
    trace = dict(shape_trace(model, torch.randn(2, 2, 8, 8), 5))
    assert trace["unshuffle"] == (2, 8, 4, 4) and trace["stem"] == (2, 8, 4, 4) and trace["out"] == (2, 2, 8, 8)
    # Each of the 4 pixels of a patch gets its own output: the net is not blind to positions within a patch.
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    model(x, torch.tensor([3]))[0, :, 0, 1].sum().backward()
    assert (x.grad[0, :, :2, :2].abs() > 0).all()
    # Without patches nothing changes: no unshuffle module, the same parameter names as before.
    plain = UNet(tiny())
    assert not hasattr(plain, "unshuffle") and "out.2.weight" in dict(plain.named_parameters())


def test_mnist_patch_is_mnist_small_sized_but_cheaper() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    def flops(config: UNetConfig) -> int:
        with FlopCounterMode(display=False) as counter:
            UNet(config)(torch.randn(1, 1, 28, 28), torch.tensor([10]))
        return counter.get_total_flops()

    small, patch = mnist_small(), mnist_patch()
    assert abs(count_parameters(UNet(patch)) - count_parameters(UNet(small))) < 0.05e6
    assert flops(patch) < 0.75 * flops(small)


def test_ddpm_cifar10_has_35_7m_parameters() -> None:
    n = count_parameters(UNet(ddpm_cifar10()))
    assert abs(n - 35.7e6) < 0.1e6, n
    assert n == 35_746_307


def test_small_presets_are_small() -> None:
    assert 0.5e6 <= count_parameters(UNet(mnist_small())) <= 3e6
    assert 1e6 <= count_parameters(UNet(cifar10_small())) <= 3e6


def test_class_embedding_adds_one_row_per_class_plus_null() -> None:
    base = count_parameters(UNet(tiny()))
    cond = count_parameters(UNet(tiny(num_classes=10)))
    assert cond - base == 11 * tiny().resolved_time_embed_dim


# --- config validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(image_size=10, channel_mults=(1, 2, 2)), r"image_size=10 is not divisible by .*=4"),
        (dict(base_channels=6), r"channel count 6 .* not divisible by norm_groups=4"),
        (dict(norm_groups=16), r"channel count 8 .* not divisible by norm_groups=16"),
        (dict(attention_resolutions=(5,)), r"attention resolution 5 never occurs.*\(8, 4\)"),
        (dict(channel_mults=()), r"channel_mults is empty"),
        (dict(channel_mults=(1, 0)), r"channel_mults must hold positive integers"),
        (dict(dropout=-0.1), r"dropout must lie in \[0, 1\), got dropout=-0.1"),
        (dict(dropout=1.0), r"dropout must lie in \[0, 1\)"),
        (dict(num_res_blocks=0), r"num_res_blocks must be a positive integer, got num_res_blocks=0"),
        (dict(image_size=0), r"image_size must be a positive integer"),
        (dict(num_heads=3), r"16 channels .* num_heads=3"),
        (dict(num_classes=0), r"num_classes must be a positive integer"),
        (dict(time_embed_dim=-4), r"time_embed_dim must be a positive integer"),
        (dict(patch_size=3), r"image_size=8 is not divisible by patch_size=3"),
        (dict(patch_size=8), r"image_size / patch_size = 1 is not divisible by 2\*\*\(len\(channel_mults\)-1\)=2"),
        (dict(patch_size=2, attention_resolutions=(8,)), r"attention resolution 8 never occurs.*\(4, 2\)"),
        (dict(patch_size=0), r"patch_size must be a positive integer"),
    ],
)
def test_invalid_config_raises(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)


def test_config_defaults_and_normalisation() -> None:
    config = tiny(channel_mults=[1, 2], attention_resolutions=[4])  # lists are accepted
    assert config.channel_mults == (1, 2) and config.attention_resolutions == (4,)
    assert config.resolved_out_channels == 2 and config.resolved_time_embed_dim == 32
    assert config.resolutions == (8, 4) and config.level_channels == (8, 16)
    hash(config)  # frozen and hashable


def test_context_dim_puts_cross_attention_where_self_attention_sits() -> None:
    assert tiny().resolved_cross_attention_resolutions == ()
    config = tiny(context_dim=16)
    assert config.resolved_cross_attention_resolutions == config.attention_resolutions == (4,)
    assert tiny(context_dim=16, cross_attention_resolutions=[8, 4]).resolved_cross_attention_resolutions == (8, 4)
    model = UNet(config)
    assert hasattr(model, "mid_cross") and not hasattr(UNet(tiny()), "mid_cross")


# --- input validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [(2, 1, 8, 8), (2, 2, 8, 9), (2, 2, 16, 16), (2, 8, 8)],
)
def test_wrong_input_shape_raises(shape: tuple[int, ...]) -> None:
    model = UNet(tiny())
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 2, 8, 8\)"):
        model(torch.randn(shape), 0)


def test_wrong_t_shape_raises() -> None:
    model = UNet(tiny())
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(2,\)"):
        model(torch.randn(2, 2, 8, 8), torch.tensor([1, 2, 3]))


def test_cond_checks() -> None:
    x = torch.randn(2, 2, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        UNet(tiny())(x, 0, torch.tensor([0, 1]))
    model = UNet(tiny(num_classes=3))
    with pytest.raises(ValueError, match="needs cond"):
        model(x, 0)
    with pytest.raises(ValueError, match="int64 labels of shape"):
        model(x, 0, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"got torch.int64 tensor of shape \(3,\)"):
        model(x, 0, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"outside 0..3"):
        model(x, 0, torch.tensor([0, 4]))


def test_labels_change_the_output_and_null_label_works() -> None:
    torch.manual_seed(0)
    model = perturbed(UNet(tiny(num_classes=3)))
    x = torch.randn(1, 2, 8, 8).expand(4, -1, -1, -1)
    out = model(x, 10, torch.tensor([0, 1, 2, 3]))  # 3 == num_classes == "no label"
    assert torch.isfinite(out).all()
    for i in range(4):
        for j in range(i + 1, 4):
            assert (out[i] - out[j]).abs().max() > 1e-3, (i, j)


# --- layers ---------------------------------------------------------------------------------------


def test_timestep_embedding_hand_computed() -> None:
    emb = timestep_embedding(torch.tensor([0, 1]), dim=4)
    # half = 2 frequencies: 10000**0 = 1 and 10000**(-1/2) = 0.01; layout [sin, sin, cos, cos].
    expected = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0],
            [math.sin(1.0), math.sin(0.01), math.cos(1.0), math.cos(0.01)],
        ]
    )
    assert torch.allclose(emb, expected, atol=1e-6)


def test_timestep_embedding_odd_dim_and_float_t() -> None:
    emb = timestep_embedding(torch.tensor([0.5, 3.0]), dim=5)
    assert emb.shape == (2, 5)
    assert torch.equal(emb[:, -1], torch.zeros(2))
    assert torch.allclose(emb[0, :2], torch.tensor([math.sin(0.5), math.sin(0.5 * 0.01)]))
    assert torch.allclose(emb[:, :4], timestep_embedding(torch.tensor([0.5, 3.0]), dim=4))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        timestep_embedding(torch.zeros(2, 1), dim=4)


def test_time_embedding_shape() -> None:
    assert TimeEmbedding(16, 64)(torch.tensor([0, 5, 999])).shape == (3, 64)


def test_self_attention_matches_naive_softmax() -> None:
    torch.manual_seed(0)
    B, C, H, W, nh = 2, 8, 3, 2, 2
    attn = perturbed(SelfAttention(C, num_heads=nh, norm_groups=4), scale=0.5)
    x = torch.randn(B, C, H, W)

    h = attn.norm(x).reshape(B, C, H * W)  # (B, C, N)
    w = attn.qkv.weight[:, :, 0, 0]  # (3C, C)
    qkv = torch.einsum("oc,bcn->bon", w, h) + attn.qkv.bias[None, :, None]  # (B, 3C, N)
    q, k, v = qkv[:, :C], qkv[:, C : 2 * C], qkv[:, 2 * C :]
    hd = C // nh
    heads = []
    for j in range(nh):
        qj, kj, vj = (a[:, j * hd : (j + 1) * hd].transpose(1, 2) for a in (q, k, v))  # (B, N, hd)
        weights = torch.softmax(qj @ kj.transpose(1, 2) / math.sqrt(hd), dim=-1)  # (B, N, N)
        heads.append((weights @ vj).transpose(1, 2))  # (B, hd, N)
    mixed = torch.cat(heads, dim=1).reshape(B, C, H, W)
    expected = x + attn.proj(mixed)

    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_layer_errors() -> None:
    with pytest.raises(ValueError, match="channels=12, groups=8"):
        group_norm(12, 8)
    with pytest.raises(ValueError, match="num_heads=3"):
        SelfAttention(8, num_heads=3, norm_groups=4)


def test_resblock_skip_projection() -> None:
    block = perturbed(ResBlock(8, 16, time_dim=12, norm_groups=4))
    out = block(torch.randn(2, 8, 5, 5), torch.randn(2, 12))
    assert out.shape == (2, 16, 5, 5)
    fresh = ResBlock(8, 8, time_dim=12, norm_groups=4)  # zero-init last conv: identity at start
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(fresh(x, torch.randn(2, 12)), x)
