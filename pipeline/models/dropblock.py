"""DropBlock (Ghiasi, Lin, Le, "DropBlock: A regularization method for convolutional networks",
NeurIPS 2018), as the paper's Algorithm 1 states it: block seeds M ~ Bernoulli(gamma) drawn only
where a whole block_size x block_size block fits in the map, every position of a seeded block set
to zero (the same mask for all channels of a sample), the rest scaled by count(M) / count_ones(M),
with

    gamma = drop_rate / block_size**2 * H*W / ((H - block_size + 1) * (W - block_size + 1))

so that about ``drop_rate`` of the positions are dropped (a little less where blocks overlap).

Why not timm's DropBlock2d: since timm 1.0.23 it draws seeds at every position (blocks clipped
at the border) with the same gamma, which drops far more than the rate on small maps: about 60%
of an 8x8 map (PyramidNet's last stage on CIFAR) for drop_rate 0.1 and block size 7.

``drop_block`` is the functional core with the seeds given; ``DropBlock`` draws them from torch's
generator of the input's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def seed_rate(drop_rate: float, *, block_size: int, height: int, width: int) -> float:
    """The paper's gamma: the seed probability at each valid position."""
    valid = (height - block_size + 1) * (width - block_size + 1)
    return drop_rate / block_size**2 * height * width / valid


def drop_block(x: Tensor, *, seeds: Tensor, block_size: int) -> Tensor:
    """``x`` (N, C, H, W) with the blocks of ``seeds`` (N, 1, H-k+1, W-k+1; 1 = a block whose
    top-left corner is there) zeroed and the rest scaled by all / kept positions (over the batch)."""
    height, width = x.shape[-2:]
    if seeds.shape != (x.shape[0], 1, height - block_size + 1, width - block_size + 1):
        raise ValueError(f"drop_block: seeds must have shape (N, 1, H-k+1, W-k+1) = "
                         f"({x.shape[0]}, 1, {height - block_size + 1}, {width - block_size + 1}), "
                         f"got {tuple(seeds.shape)}")
    reach = block_size - 1  # a seed at (a, b) covers rows a..a+k-1 and columns b..b+k-1
    dropped = F.max_pool2d(F.pad(seeds.to(x.dtype), (reach, reach, reach, reach)), block_size, stride=1)
    keep = 1.0 - dropped
    scale = keep.numel() / keep.sum().clamp_min(1.0)  # a tensor: no host sync
    return x * (keep * scale)


class DropBlock(nn.Module):
    """DropBlock with rate ``drop_rate`` and blocks of ``block_size`` (clipped to the map); the
    identity in evaluation."""

    def __init__(self, drop_rate: float, block_size: int = 7):
        super().__init__()
        if not 0.0 <= drop_rate < 1.0 or block_size < 1:
            raise ValueError(f"DropBlock: needs 0 <= drop_rate < 1 and block_size >= 1, got {drop_rate}, {block_size}")
        self.drop_rate, self.block_size = drop_rate, block_size

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_rate == 0:
            return x
        height, width = x.shape[-2:]
        block = min(self.block_size, height, width)
        gamma = seed_rate(self.drop_rate, block_size=block, height=height, width=width)
        seeds = torch.rand((x.shape[0], 1, height - block + 1, width - block + 1), device=x.device) < gamma
        return drop_block(x, seeds=seeds, block_size=block)

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, block_size={self.block_size}"
