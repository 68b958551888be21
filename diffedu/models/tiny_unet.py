"""A two-level U-Net small enough to read in one screen: the skip pattern of `diffedu.models.unet.UNet`.

Lesson 03's last exercise writes its `forward`. The library's `UNet` does the same thing with a configurable
number of levels, several blocks per level, attention and class or text conditioning; this one keeps only
the shape of the idea:

    stem -> [ResBlock, save skip, downsample] x 2 -> mid ResBlock -> [upsample, concat skip, ResBlock] x 2 -> out

Each skip is saved at its own resolution, before downsampling, and the up path takes them in the opposite
order (a stack: last saved, first used), concatenated after the upsampled features along the channels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffedu.models.layers import ResBlock, TimeEmbedding

__all__ = ["TinyUNet"]


class TinyUNet(nn.Module):
    """A two-level U-Net, (B, C, H, W) and t (B,) -> (B, C, H, W), with H and W divisible by 4.

    Channels `channels[0]` at full resolution and `channels[1]` at a half and a quarter; every ResBlock gets
    the time embedding. Zero-initialised like `UNet`: a fresh model outputs zeros.
    """

    def __init__(self, in_channels: int = 1, channels: tuple[int, int] = (16, 32), time_dim: int = 64,
                 norm_groups: int = 8) -> None:
        super().__init__()
        c1, c2 = channels
        self.time_embed = TimeEmbedding(c1, time_dim)
        self.stem = nn.Conv2d(in_channels, c1, kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList([ResBlock(c1, c1, time_dim, norm_groups=norm_groups),
                                          ResBlock(c2, c2, time_dim, norm_groups=norm_groups)])
        self.downsamples = nn.ModuleList([nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1),
                                          nn.Conv2d(c2, c2, kernel_size=3, stride=2, padding=1)])
        self.mid = ResBlock(c2, c2, time_dim, norm_groups=norm_groups)
        self.upsamples = nn.ModuleList([
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c2, c2, kernel_size=3, padding=1)),
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c2, c1, kernel_size=3, padding=1)),
        ])
        self.up_blocks = nn.ModuleList([ResBlock(2 * c2, c2, time_dim, norm_groups=norm_groups),
                                        ResBlock(2 * c1, c1, time_dim, norm_groups=norm_groups)])
        self.out = nn.Sequential(nn.GroupNorm(norm_groups, c1), nn.SiLU(),
                                 nn.Conv2d(c1, in_channels, kernel_size=3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_embed(t)  # (B, time_dim)
        h = self.stem(x)  # (B, c1, H, W)
        skips = []
        for block, down in zip(self.down_blocks, self.downsamples):
            h = block(h, emb)
            skips.append(h)  # saved at this resolution, before downsampling
            h = down(h)  # (B, c2, H/2, W/2), then (B, c2, H/4, W/4)
        h = self.mid(h, emb)
        for up, block in zip(self.upsamples, self.up_blocks):
            h = up(h)  # back to the resolution of the last skip saved
            h = block(torch.cat([h, skips.pop()], dim=1), emb)  # features first, then the skip
        return self.out(h)
