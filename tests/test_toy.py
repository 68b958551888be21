"""Lesson 02's pieces: the MLP denoiser and the energy distance."""

import pytest
import torch

from diffedu.losses import ddpm_loss
from diffedu.metrics import energy_distance
from diffedu.models.mlp import MLPDenoiser
from diffedu.schedules import make_schedule


def test_mlp_shapes_and_time_dependence():
    model = MLPDenoiser(dim=2, hidden=32, depth=2)
    x = torch.randn(5, 2)
    out1 = model(x, torch.full((5,), 3))
    out2 = model(x, torch.full((5,), 700))
    assert out1.shape == (5, 2)
    assert not torch.allclose(out1, out2), "the output must depend on t"
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        model(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))


def test_mlp_learns_to_lower_the_loss():
    torch.manual_seed(0)
    s = make_schedule("linear", 100)
    data = torch.randn(2048, 2) * 0.2 + 0.5
    model = MLPDenoiser(dim=2, hidden=64, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    t_eval = torch.randint(0, 100, (2048,), generator=g)
    eps_eval = torch.randn(2048, 2, generator=g)
    before = ddpm_loss(model, data, s, t_eval, eps_eval).item()
    for _ in range(200):
        loss = ddpm_loss(model, data[torch.randint(0, 2048, (256,))], s)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = ddpm_loss(model, data, s, t_eval, eps_eval).item()
    assert after < 0.7 * before


def test_energy_distance():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 2, generator=g)
    b = torch.randn(2000, 2, generator=g)
    c = torch.randn(2000, 2, generator=g) + 1.0
    assert energy_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert energy_distance(a, b) < 0.01
    assert energy_distance(a, c) > 10 * energy_distance(a, b)
    assert energy_distance(a, c) == pytest.approx(energy_distance(c, a))
    with pytest.raises(ValueError, match="same D"):
        energy_distance(a, torch.randn(10, 3))
