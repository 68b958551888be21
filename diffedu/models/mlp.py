"""A small MLP denoiser for 2-D toy data (lesson 02): eps_theta(x_t, t) for points in the plane."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffedu.models.layers import timestep_embedding


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t): the point x_t and a sinusoidal embedding of t, through a few SiLU layers.

    Like every model in the course it knows nothing about diffusion: it maps (x_t, t) to a vector the
    size of x_t, and the loss decides what that vector means.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 32) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1 or time_dim < 2:
            raise ValueError(f"dim, hidden and depth must be >= 1 and time_dim >= 2; got {dim}, {hidden}, {depth}, {time_dim}")
        self.dim, self.time_dim = dim, time_dim
        layers: list[nn.Module] = [nn.Linear(dim + time_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPDenoiser expects points of shape (B, {self.dim}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        emb = timestep_embedding(t, self.time_dim)  # (B, time_dim)
        return self.net(torch.cat([x, emb.to(x.dtype)], dim=1))
