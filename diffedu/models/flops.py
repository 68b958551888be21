"""FLOPs of one forward pass, attention included.

torch's `FlopCounterMode` counts matrix products and convolutions, but on a CPU `F.scaled_dot_product_attention`
runs as the fused kernel ``aten._scaled_dot_product_flash_attention_for_cpu``, which it does not count: the two
products q k^T and (weights) v went missing. `count_flops` adds them, 2 B h L S (d_k + d_v) for queries (B, h, L,
d_k), keys (B, h, S, d_k) and values (B, h, S, d_v); a multiply-add counts 2, as in torch's counter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["attention_flops", "count_flops"]


def attention_flops(query_shape: tuple[int, ...], key_shape: tuple[int, ...], value_shape: tuple[int, ...],
                    *args: Any, **kwargs: Any) -> int:
    """FLOPs of softmax(q k^T) v for these shapes, (..., L, d_k), (..., S, d_k), (..., S, d_v): the two products."""
    *batch, L, d_k = query_shape
    S, d_v = key_shape[-2], value_shape[-1]
    n = 1
    for size in batch:
        n *= size
    return 2 * n * L * S * (d_k + d_v)


_FUSED_ATTENTION = [getattr(torch.ops.aten, name)  # the op packets, as torch's registry keys them
                    for name in ("_scaled_dot_product_flash_attention_for_cpu",) if hasattr(torch.ops.aten, name)]


def count_flops(model: nn.Module, *args: Any, **kwargs: Any) -> int:
    """FLOPs of ``model(*args, **kwargs)`` (no gradients), attention included; see the module's docstring."""
    with FlopCounterMode(display=False, custom_mapping={op: attention_flops for op in _FUSED_ATTENTION}) as counter:
        with torch.no_grad():
            model(*args, **kwargs)
    return int(counter.get_total_flops())
