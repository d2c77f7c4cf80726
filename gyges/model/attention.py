"""Paged attention that reads header-centric KV units in place.

A sequence's page table on a rank is [m, blocks]: for each of the rank's m head groups, the
page (unit) holding each logical block. Gathering pages of one head group yields that group's
heads as [heads, blocks, block_tokens, head_dim], so the common case of one KV head per group
needs no reordering before the attention kernel.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class PrefillSeq:
    start: int
    q_len: int
    ctx_len: int
    table: torch.Tensor  # [m, blocks]


@dataclass
class AttentionMeta:
    slot_pages: torch.Tensor      # [T, m]: page of each new token for each head group
    slot_offsets: torch.Tensor    # [T]: offset inside the block
    decode_rows: torch.Tensor     # [nd]: rows of decode tokens in the batch
    decode_tables: torch.Tensor   # [nd, m, max_blocks]
    decode_lens: torch.Tensor     # [nd]: context length including the new token
    prefills: list[PrefillSeq]
    block_tokens: int
    sliding_window: int | None = None
    decode_hidden: torch.Tensor = field(init=False)  # [nd, 1, 1, S]: positions a decode query must not see

    def __post_init__(self):
        """The decode mask is the same for every layer: build it once per step."""
        pos = torch.arange(self.decode_tables.shape[-1] * self.block_tokens, device=self.decode_lens.device)
        visible = _window_mask((self.decode_lens - 1)[:, None], pos[None, :], self.sliding_window)
        self.decode_hidden = ~visible[:, None, None, :]


def write_kv(cache: torch.Tensor, meta: AttentionMeta, k: torch.Tensor, v: torch.Tensor):
    """cache: one layer's [pages, 2, heads, block_tokens, head_dim]; k, v: [T, m * heads, head_dim]."""
    T, m = meta.slot_pages.shape
    heads = cache.shape[2]
    idx_h = torch.arange(heads, device=k.device)
    pages = meta.slot_pages[:, :, None]
    offs = meta.slot_offsets[:, None, None]
    cache[pages, 0, idx_h, offs] = k.view(T, m, heads, -1)
    cache[pages, 1, idx_h, offs] = v.view(T, m, heads, -1)


def _gather(cache: torch.Tensor, table: torch.Tensor, which: int) -> torch.Tensor:
    """[..., m, blocks] page table -> [..., m * heads, blocks * block_tokens, head_dim]."""
    pages = cache[:, which]  # [P, heads, B, d], pages strided by the whole unit
    g = pages.flatten(1).index_select(0, table.flatten()).view(*table.shape, *pages.shape[1:])
    *lead, m, nb, h, b, d = g.shape
    if h == 1:
        return g.view(*lead, m, nb * b, d)
    return g.transpose(-3, -4).reshape(*lead, m * h, nb * b, d)


def _window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    mask = k_pos <= q_pos
    if window is not None:
        mask &= k_pos > q_pos - window
    return mask


def _decode(cache: torch.Tensor, meta: AttentionMeta, q: torch.Tensor, scale: float) -> torch.Tensor:
    """One query per sequence, batched; the query heads of a KV head attend as one matrix.

    Written out rather than through SDPA: for one query row, two matmuls and a softmax in fp32 beat
    the fused CPU kernel with a mask (benchmarks/attention.py).
    """
    k = _gather(cache, meta.decode_tables, 0)  # [nd, Hkv, S, d]
    v = _gather(cache, meta.decode_tables, 1)
    nd, hkv, S, d = k.shape
    scores = torch.matmul(q.view(nd, hkv, -1, d), k.transpose(-1, -2)).float() * scale  # [nd, Hkv, g, S]
    scores.masked_fill_(meta.decode_hidden, float("-inf"))
    return torch.matmul(scores.softmax(-1).to(v.dtype), v).view(nd, -1, d)


def paged_attention(cache: torch.Tensor, meta: AttentionMeta, q: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, scale: float) -> torch.Tensor:
    """q: [T, Hq, d]; k, v: this step's [T, Hkv, d] (already written to the cache). Returns [T, Hq * d]."""
    T, hq, d = q.shape
    out = torch.empty_like(q)
    if len(meta.decode_rows):
        out[meta.decode_rows] = _decode(cache, meta, q[meta.decode_rows], scale)
    for p in meta.prefills:
        qp = q[p.start:p.start + p.q_len].transpose(0, 1)  # [Hq, q_len, d]
        if p.ctx_len == p.q_len and meta.sliding_window is None:
            kp = k[p.start:p.start + p.q_len].transpose(0, 1)
            vp = v[p.start:p.start + p.q_len].transpose(0, 1)
            o = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale, enable_gqa=True)
        else:
            kp = _gather(cache, p.table, 0)[:, :p.ctx_len]
            vp = _gather(cache, p.table, 1)[:, :p.ctx_len]
            q_pos = torch.arange(p.ctx_len - p.q_len, p.ctx_len, device=q.device)[:, None]
            mask = _window_mask(q_pos, torch.arange(p.ctx_len, device=q.device)[None, :], meta.sliding_window)
            o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=scale, enable_gqa=True)
        out[p.start:p.start + p.q_len] = o.transpose(0, 1)
    return out.view(T, hq * d)
