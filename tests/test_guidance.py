"""Classifier-free guidance: the combination, the batched model call, the samplers with cond, drop_labels."""

import pytest
import torch

from diffedu.course.checks import ExerciseError
from diffedu.course.checks.lesson08 import check_cfg_combine
from diffedu.guidance import cfg_combine, expand_uncond
from diffedu.models.unet import UNet, UNetConfig
from diffedu.predictions import to_x0_and_eps
from diffedu.samplers import ddim_invert, ddim_sample, ddpm_sample, predict
from diffedu.schedules import make_schedule
from diffedu.train import drop_labels

S = make_schedule("linear", 40)
K = 4  # classes 0..3, label 4 = "no label"


class CountingModel(torch.nn.Module):
    """A fixed stand-in for a conditional network, nonlinear in x and depending on t and each cond row.

    cond may be (B,) labels or (B, L) token ids; it records every call's batch size.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x, t, cond):
        self.calls.append(x.shape[0])
        c = cond.float().reshape(cond.shape[0], -1)  # (B, L) or (B, 1)
        code = (c * torch.arange(1, c.shape[1] + 1)).sum(1)  # (B,) one number per condition row
        shape = (-1, *([1] * (x.ndim - 1)))
        return torch.tanh(x * (1 + 0.1 * code.view(shape))) + 0.01 * t.float().view(shape) - 0.05 * code.view(shape)


def tiny_cond_unet(seed: int = 0) -> UNet:
    """A tiny class-conditional UNet with random weights everywhere (the output layer starts at zero)."""
    torch.manual_seed(seed)
    config = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4,
                        num_classes=K)
    model = UNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_cfg_combine_endpoints_and_linearity():
    g = torch.Generator().manual_seed(0)
    c, u = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    assert torch.equal(cfg_combine(c, u, 0.0), u)
    assert torch.allclose(cfg_combine(c, u, 1.0), c)
    assert torch.allclose(cfg_combine(c, u, 3.0), u + 3 * (c - u))
    # w = 2 lies as far beyond cond as uncond lies before it
    assert torch.allclose(cfg_combine(c, u, 2.0) - c, c - u, atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        cfg_combine(c, u[:2], 2.0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_guidance_zero_is_unconditional_and_one_is_conditional(prediction):
    model = CountingModel()
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2, 3])
    null = torch.full((3,), K)
    t = 17
    cond_only = predict(model, x, t, S, cond=y, prediction=prediction)
    uncond_only = predict(model, x, t, S, cond=null, prediction=prediction)
    for got, want in ((predict(model, x, t, S, cond=y, guidance=0.0, uncond=null, prediction=prediction), uncond_only),
                      (predict(model, x, t, S, cond=y, guidance=1.0, uncond=null, prediction=prediction), cond_only)):
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-5)
    assert not torch.allclose(cond_only[1], uncond_only[1])  # the stand-in does depend on the label


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_batched_call_equals_two_separate_calls(prediction):
    model = CountingModel()
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 3, 1])
    t, w = 25, 3.0
    pred_x0, eps = predict(model, x, t, S, cond=y, guidance=w, uncond=torch.tensor(K), prediction=prediction)
    assert model.calls == [10]  # ONE call on the doubled batch
    t_batch = torch.full((5,), t)
    out = cfg_combine(model(x, t_batch, y), model(x, t_batch, torch.full((5,), K)), w)
    assert model.calls == [10, 5, 5]
    want_x0, want_eps = to_x0_and_eps(out, x, t_batch, S, prediction)
    assert torch.allclose(pred_x0, want_x0, atol=1e-5) and torch.allclose(eps, want_eps, atol=1e-5)
    # the predicted eps is the same combination of each half's eps: the conversion is linear
    eps_c = to_x0_and_eps(model(x, t_batch, y), x, t_batch, S, prediction)[1]
    eps_u = to_x0_and_eps(model(x, t_batch, torch.full((5,), K)), x, t_batch, S, prediction)[1]
    assert torch.allclose(eps, cfg_combine(eps_c, eps_u, w), atol=1e-4)


def test_uncond_broadcasts_from_one_row():
    labels = torch.tensor([0, 3, 1])
    for null in (torch.tensor(K), torch.tensor([K]), K):
        assert torch.equal(expand_uncond(null, labels), torch.full((3,), K))
    tokens = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])  # (B, L) token ids
    empty = torch.tensor([1, 2, 0, 0])  # one (L,) row
    for null in (empty, empty[None]):
        assert torch.equal(expand_uncond(null, tokens), empty.expand(2, 4))
    assert torch.equal(expand_uncond(tokens.flip(0), tokens), tokens.flip(0))  # a full batch is kept
    assert expand_uncond(torch.tensor(K, dtype=torch.int32), labels).dtype == labels.dtype

    model = CountingModel()
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(3))
    one_row = predict(model, x, 5, S, cond=tokens, guidance=2.0, uncond=empty)
    full = predict(model, x, 5, S, cond=tokens, guidance=2.0, uncond=empty.expand(2, 4).clone())
    assert torch.allclose(one_row[1], full[1]) and model.calls == [4, 4]


def test_clear_errors():
    model = CountingModel()
    x = torch.randn(3, 1, 3, 3)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="uncond is missing"):
        predict(model, x, 5, S, cond=y, guidance=2.0)
    with pytest.raises(ValueError, match="cond and uncond is missing"):
        predict(model, x, 5, S, guidance=2.0)
    with pytest.raises(ValueError, match="uncond has shape"):
        predict(model, x, 5, S, cond=y, guidance=2.0, uncond=torch.full((2,), K))
    with pytest.raises(ValueError, match="uncond has shape"):
        predict(model, x, 5, S, cond=torch.zeros(3, 4, dtype=torch.long), guidance=2.0, uncond=torch.zeros(5))
    with pytest.raises(ValueError, match="cond has a batch of 2"):
        predict(model, x, 5, S, cond=y[:2], guidance=2.0, uncond=torch.tensor(K))
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        predict(model, x, 5, S, cond=y, guidance=float("nan"), uncond=torch.tensor(K))
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        ddim_sample(model, S, (3, 1, 3, 3), steps=2, cond=y, guidance="3", uncond=torch.tensor(K), progress=False)
    assert model.calls == []  # every error comes before the model is called
    predict(model, x, 5, S, cond=y, uncond=torch.tensor(K))  # guidance None: uncond unused, one plain call
    assert model.calls == [3]


def test_conditional_samplers_run_end_to_end():
    model = tiny_cond_unet()
    y = torch.arange(K)
    shape = (K, 1, 8, 8)
    kwargs = dict(cond=y, uncond=torch.tensor(K), progress=False)
    calls = []
    runs = {
        w: ddim_sample(model, S, shape, steps=5, guidance=w, generator=torch.Generator().manual_seed(0),
                       callback=calls.append, **kwargs)
        for w in (0.0, 1.0, 4.0)
    }
    assert len(calls) == 15 and all(torch.isfinite(x).all() for x in runs.values())
    assert all(x.shape == shape for x in runs.values())
    # the same noise: w = 1 is plain conditional sampling, w = 0 sampling with the null label
    plain = ddim_sample(model, S, shape, steps=5, cond=y, generator=torch.Generator().manual_seed(0), progress=False)
    null = ddim_sample(model, S, shape, steps=5, cond=torch.full((K,), K), generator=torch.Generator().manual_seed(0),
                       progress=False)
    assert torch.allclose(runs[1.0], plain, atol=1e-4) and torch.allclose(runs[0.0], null, atol=1e-4)
    assert not torch.allclose(runs[4.0], runs[1.0], atol=1e-4)

    small = make_schedule("linear", 12)
    x = ddpm_sample(model, small, shape, guidance=2.0, generator=torch.Generator().manual_seed(1), **kwargs)
    assert x.shape == shape and torch.isfinite(x).all()
    noise = ddim_invert(model, small, x, steps=4, guidance=2.0, cond=y, uncond=torch.tensor(K), progress=False)
    assert noise.shape == shape and torch.isfinite(noise).all()


def test_drop_labels_on_labels_and_on_token_rows():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, K, (400,), generator=g)
    dropped = drop_labels(labels, 0.1, K, torch.Generator().manual_seed(1))
    is_null = dropped == K
    assert 0.04 < is_null.float().mean().item() < 0.18  # about 10 %, 400 draws
    assert torch.equal(dropped[~is_null], labels[~is_null])  # the others untouched
    assert torch.equal(drop_labels(labels, 0.0, K), labels)

    tokens = torch.randint(3, 50, (300, 6), generator=g)  # (N, L) token ids, none equal to the null row's
    empty = torch.tensor([1, 2, 0, 0, 0, 0])  # the empty prompt's tokens
    out = drop_labels(tokens, 0.3, empty, torch.Generator().manual_seed(2))
    is_null_row = (out == empty).all(1)
    kept = (out == tokens).all(1)
    assert torch.equal(is_null_row | kept, torch.ones(300, dtype=torch.bool))  # whole rows: never half of one
    assert not (is_null_row & kept).any() and 0.2 < is_null_row.float().mean().item() < 0.4
    assert torch.equal(drop_labels(tokens, 0.3, 0, torch.Generator().manual_seed(2)) == 0,
                       is_null_row[:, None].expand(-1, 6) | (tokens == 0))  # an int null fills the whole row too


def test_check_cfg_combine_names_the_swap():
    check_cfg_combine(lambda c, u, w: u + w * (c - u))
    with pytest.raises(ExerciseError, match="swapped"):
        check_cfg_combine(lambda c, u, w: c + w * (u - c))
    with pytest.raises(ExerciseError, match="base is missing"):
        check_cfg_combine(lambda c, u, w: w * (c - u))
