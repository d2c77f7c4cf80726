"""Decode attention over header-centric KV pages by the C kernel (decode_attention_bf16.c).

The PyTorch path gathers every sequence's pages into a temporary, then runs a masked batched
matmul, a softmax and another matmul: five passes and as many allocations per layer. The kernel
reads each K and V row once, where it lies in its page.
"""
import torch

from gyges.kernels.build import library

MAX_ACC, MAX_GROUP = 4096, 64  # as in the C source


def usable(cache: torch.Tensor, q_heads: int) -> bool:
    """cache: one layer's [pages, 2, heads, block_tokens, head_dim]."""
    heads, d = cache.shape[2], cache.shape[4]
    group = q_heads // heads if heads else 0
    return (cache.dtype == torch.bfloat16 and cache.device.type == "cpu" and d % 32 == 0
            and group <= MAX_GROUP and group * d <= MAX_ACC and library() is not None)


def decode_attention(cache: torch.Tensor, q: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor,
                     window: int | None, scale: float, kv_heads: int | None = None) -> torch.Tensor:
    """q: [nd, Hq, d] -> [nd, Hq, d]; tables: [nd, m, max_blocks]; lens: [nd] context lengths;
    kv_heads: the first KV heads of the m head groups (default all), the rest being padding."""
    nd, hq, d = q.shape
    heads, block = cache.shape[2], cache.shape[3]
    m = tables.shape[1]
    kv_heads = m * heads if kv_heads is None else kv_heads
    if q.stride(2) != 1 or q.stride(1) != d:
        q = q.contiguous()
    tables, lens = tables.contiguous(), lens.contiguous()
    out = torch.empty(nd, hq, d, dtype=q.dtype, device=q.device)
    if nd:
        library().decode_attention_bf16(q.data_ptr(), q.stride(0), cache.data_ptr(), cache.stride(0), heads, block, d,
                                        tables.data_ptr(), m, tables.shape[2], lens.data_ptr(), window or 0, kv_heads,
                                        hq // kv_heads, scale, out.data_ptr(), nd)
    return out
