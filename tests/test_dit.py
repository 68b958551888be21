"""Tests of diffedu.models.dit: patches, position embedding, adaLN-Zero, conditioning, and the DiT in the course's
training loop, samplers, guidance, weights files and command line."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffedu import pretrained, train_cli
from diffedu.flow import flow_sample
from diffedu.models.dit import (
    DiT,
    DiTBlock,
    DiTConfig,
    mnist_dit,
    mnist_dit_p2,
    modulate,
    patchify,
    sincos_position_embedding,
    unpatchify,
)
from diffedu.models.flops import attention_flops, count_flops
from diffedu.models.unet import UNet, mnist_patch
from diffedu.samplers import ddim_sample
from diffedu.schedules import make_schedule
from diffedu.train import TrainConfig, train


def tiny(**overrides: object) -> DiTConfig:
    fields = dict(image_size=8, in_channels=2, patch_size=2, hidden_size=16, depth=2, num_heads=2)
    fields.update(overrides)
    return DiTConfig(**fields)  # type: ignore[arg-type]


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The model with every weight moved off its (zero) initialisation, so that outputs depend on the inputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def test_patchify_orders_patches_row_major_and_unpatchify_inverts_it():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 6, 12)  # (4 / 2) * (6 / 2) patches of 3 * 2 * 2 numbers
    assert torch.equal(tokens[0, 1], x[0, :, 0:2, 2:4].reshape(-1))  # the second patch: first row, second column
    assert torch.equal(tokens[1, 3], x[1, :, 2:4, 0:2].reshape(-1))  # the fourth: second row, first column
    square = torch.randn(2, 3, 8, 8)
    assert torch.equal(unpatchify(patchify(square, 4), 4, 3), square)
    with pytest.raises(ValueError, match="must divide"):
        patchify(torch.zeros(1, 1, 5, 5), 2)
    with pytest.raises(ValueError, match="C p\\^2"):
        unpatchify(torch.zeros(1, 4, 5), 2, 1)


def test_the_position_embedding_tells_every_patch_apart_and_shares_rows_and_columns():
    pe = sincos_position_embedding(4, 16)
    assert pe.shape == (16, 16) and torch.isfinite(pe).all()
    assert torch.cdist(pe, pe).add(torch.eye(16)).min() > 0.1  # no two patches get the same vector
    assert torch.equal(pe[1, 8:], pe[13, 8:])  # patches 1 and 13 (row 0 and row 3) share column 1
    rows = pe.reshape(4, 4, 16)
    assert torch.equal(rows[2, 0, :8], rows[2, 3, :8])  # the first half encodes the row
    assert torch.equal(rows[0, 1, 8:], rows[3, 1, 8:])  # the second half the column
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_position_embedding(4, 6)


def test_a_fresh_dit_predicts_zero_and_every_block_starts_as_the_identity():
    model = DiT(tiny(num_classes=3))
    x = torch.randn(4, 2, 8, 8)
    assert torch.equal(model(x, torch.tensor([0, 5, 10, 999]), torch.tensor([0, 1, 2, 3])), torch.zeros_like(x))
    block = DiTBlock(16, 2, 4.0)
    h, c = torch.randn(3, 5, 16), torch.randn(3, 16)
    assert torch.equal(block(h, c), h)  # adaLN-Zero: the gates are 0 until training moves them
    assert torch.allclose(modulate(h, torch.ones(3, 16), torch.zeros(3, 16)), h + 1)


def test_the_output_depends_on_x_t_and_the_label_and_gradients_reach_every_weight():
    model = perturbed(DiT(tiny(num_classes=3)))
    x = torch.randn(2, 2, 8, 8)
    t = torch.tensor([10, 500])
    out = model(x, t, torch.tensor([0, 1]))
    assert out.shape == x.shape
    assert not torch.allclose(out, model(x, t, torch.tensor([2, 1])))
    assert not torch.allclose(out, model(x, torch.tensor([11, 500]), torch.tensor([0, 1])))
    assert not torch.allclose(out[1], model(x.flip(0), t.flip(0), torch.tensor([1, 0]))[1])  # the pixels matter
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_configs_and_inputs_get_one_clear_error():
    with pytest.raises(ValueError, match="must divide image_size"):
        DiTConfig(image_size=28, patch_size=3)
    with pytest.raises(ValueError, match="num_heads 3 must divide hidden_size 16"):
        tiny(num_heads=3)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        tiny(hidden_size=0)
    model = DiT(tiny())
    with pytest.raises(ValueError, match=r"DiT expects x of shape \(B, 2, 8, 8\)"):
        model(torch.zeros(1, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.zeros(1, 2, 8, 8), 0, torch.tensor([1]))
    with pytest.raises(ValueError, match="negative timesteps"):
        model(torch.zeros(1, 2, 8, 8), -1)
    with pytest.raises(ValueError, match="needs cond"):
        DiT(tiny(num_classes=3))(torch.zeros(1, 2, 8, 8), 0)
    with pytest.raises(ValueError, match="outside 0..3"):
        DiT(tiny(num_classes=3))(torch.zeros(1, 2, 8, 8), 0, torch.tensor([4]))


def test_mnist_dit_costs_about_the_flops_of_the_patch_unet():
    def flops(model: torch.nn.Module) -> int:
        return count_flops(model, torch.zeros(1, 1, 28, 28), torch.tensor([5]))

    unet = flops(UNet(mnist_patch()))
    assert 0.9 < flops(DiT(mnist_dit())) / unet < 1.1
    assert 1.3 < flops(DiT(mnist_dit_p2())) / unet < 1.6  # its attention over 196 tokens, counted


def test_the_course_trains_samples_and_guides_a_dit_like_the_unet():
    torch.manual_seed(0)
    schedule = make_schedule("linear", 50)
    data = torch.rand(64, 2, 8, 8) * 2 - 1
    labels = torch.randint(0, 3, (64,))
    model = DiT(tiny(num_classes=3))
    result = train(model, data, schedule, TrainConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=0,
                                                      cond_drop_prob=0.1), labels=labels, device="cpu",
                   progress=False)
    assert sum(result.losses[-5:]) < sum(result.losses[:5])  # it learns
    x = ddim_sample(result.ema, schedule, (4, 2, 8, 8), steps=5, cond=torch.tensor([0, 1, 2, 0]), guidance=2.0,
                    uncond=torch.full((4,), 3), generator=torch.Generator().manual_seed(0), progress=False)
    assert x.shape == (4, 2, 8, 8) and torch.isfinite(x).all()
    flow_model = DiT(tiny())
    train(flow_model, data, None, TrainConfig(steps=3, batch_size=16, objective="flow", warmup_steps=0),
          device="cpu", progress=False)
    assert torch.isfinite(flow_sample(flow_model, (2, 2, 8, 8), steps=3, progress=False)).all()


def test_a_dit_trains_from_the_command_line_and_loads_as_a_shipped_model(tmp_path, monkeypatch):
    monkeypatch.setattr(train_cli, "weights_dir", lambda: tmp_path / "weights")
    out = tmp_path / "dit.pt"
    argv = ["--dataset", "mnist", "--preset", "mnist_dit", "--limit", "64", "--steps", "2", "--batch-size", "4",
            "--T", "50", "--out", str(out), "--export", "dit_test"]
    with pytest.warns(UserWarning, match="sample"):
        train_cli.main(argv)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["model_class"] == "DiT" and record["model_config"]["hidden_size"] == 128
    model, schedule, info = pretrained.load_pretrained("dit_test", "cpu", directory=tmp_path / "weights")
    assert isinstance(model, DiT) and info["model_class"] == "DiT" and schedule.T == 50 and not model.training
    again, _, _ = pretrained.model_from_checkpoint(out, "cpu")
    assert isinstance(again, DiT)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not one of diffedu's denoisers"):
        pretrained.build_denoiser("ViT", {})


def test_count_flops_counts_the_attention_torchs_counter_misses_on_a_cpu():
    class Attend(torch.nn.Module):
        def forward(self, q, k, v, mask=None):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    q, k, v = torch.randn(2, 4, 10, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 6)
    expected = 2 * 2 * 4 * 10 * 7 * (8 + 6)
    assert attention_flops(q.shape, k.shape, v.shape) == expected
    assert count_flops(Attend(), q, k, v) == expected
    assert count_flops(Attend(), q, k, v, torch.ones(2, 1, 1, 7, dtype=torch.bool)) == expected
    linear = torch.nn.Linear(8, 3)
    with FlopCounterMode(display=False) as counter:
        linear(torch.randn(5, 8))
    assert count_flops(linear, torch.randn(5, 8)) == counter.get_total_flops() == 2 * 5 * 8 * 3
