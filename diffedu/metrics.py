"""Numbers that compare generated samples with real data.

For 2-D toy data (lesson 02): the energy distance (Szekely & Rizzo), a true metric between
distributions that is 0 only when they are equal, estimated from two samples X and Y:

    E(X, Y) = 2 E||x - y|| - E||x - x'|| - E||y - y'||
"""

from __future__ import annotations

import torch
from torch import Tensor


def energy_distance(x: Tensor, y: Tensor) -> float:
    """The (V-statistic) energy distance between samples x (N, D) and y (M, D); 0 for identical sets."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"energy_distance needs two (N, D) samples of the same D, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.double()
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).mean()
    yy = torch.cdist(y, y).mean()
    return float(2 * xy - xx - yy)
