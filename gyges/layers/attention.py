"""Paged attention that reads header-centric KV units in place.

A sequence's page table on a rank is [m, blocks]: for each of the rank's m head groups, the
page (unit) holding each logical block. Gathering pages of one head group yields that group's
heads as [heads, blocks, block_tokens, head_dim], so the common case of one KV head per group
needs no reordering before the attention kernel.
"""
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F

from gyges.kernels.paged_decode import decode_attention


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
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    @cached_property
    def decode_hidden(self) -> torch.Tensor:
        """[nd, 1, 1, S]: positions a decode query must not see. The same for every layer, so built
        once per step, and only by the PyTorch path (the C kernel reads the lengths)."""
        pos = torch.arange(self.decode_tables.shape[-1] * self.block_tokens, device=self.decode_lens.device)
        visible = _window_mask((self.decode_lens - 1)[:, None], pos[None, :], self.sliding_window)
        return ~visible[:, None, None, :]

    def decode_bias(self, kv_heads: int, dtype: torch.dtype) -> torch.Tensor:
        """[nd * kv_heads, 1, S]: 0 where a decode query may look, -inf elsewhere; added to the scores."""
        key = ("bias", kv_heads, dtype)
        if key not in self._cache:
            nd, S = self.decode_hidden.shape[0], self.decode_hidden.shape[-1]
            bias = torch.zeros(nd, kv_heads, 1, S, dtype=dtype, device=self.decode_hidden.device)
            self._cache[key] = bias.masked_fill_(self.decode_hidden, float("-inf")).view(nd * kv_heads, 1, S)
        return self._cache[key]

    def slot_rows(self, unit_shape: tuple[int, ...], kv_heads: int) -> torch.Tensor:
        """[layers, 2, T * kv_heads]: for every layer, the head_dim-long row of the whole KV tensor
        (seen as [pages * layers * 2 * heads * block_tokens, head_dim]) each new K and V row of the
        first `kv_heads` heads of the rank's head groups goes to (the others are padding)."""
        if "rows" not in self._cache:
            layers, _, heads, block, _ = unit_shape
            dev = self.slot_pages.device
            head_rows = torch.arange(heads, device=dev) * block
            base = self.slot_pages[:, :, None] * (layers * 2 * heads * block) + head_rows + self.slot_offsets[:, None, None]
            base = base.flatten(1)[:, :kv_heads]
            layer_rows = torch.arange(layers * 2, device=dev) * (heads * block)
            self._cache["rows"] = (layer_rows[:, None] + base.flatten()[None, :]).view(layers, 2, -1)
        return self._cache["rows"]


def write_kv(kv_rows: torch.Tensor, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """kv_rows: the whole KV tensor as [rows, head_dim]; rows: one layer's [2, T * kv_heads] from
    `AttentionMeta.slot_rows`; k, v: [T, kv_heads, head_dim]."""
    d = k.shape[-1]
    kv_rows.index_copy_(0, rows[0], k.reshape(-1, d))
    kv_rows.index_copy_(0, rows[1], v.reshape(-1, d))


def _gather(cache: torch.Tensor, table: torch.Tensor, which: int, kv_heads: int) -> torch.Tensor:
    """[..., m, blocks] page table -> [..., kv_heads, blocks * block_tokens, head_dim]: the first
    kv_heads heads of the m head groups; groups past them (padding) are not read."""
    pages = cache[:, which]  # [P, heads, B, d], pages strided by the whole unit
    h = pages.shape[1]
    table = table[..., :-(-kv_heads // h), :]
    g = pages.flatten(1).index_select(0, table.flatten()).view(*table.shape, *pages.shape[1:])
    *lead, m, nb, h, b, d = g.shape
    if h == 1:
        return g.view(*lead, m, nb * b, d)
    return g.transpose(-3, -4).reshape(*lead, m * h, nb * b, d)[..., :kv_heads, :, :]


def _window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    mask = k_pos <= q_pos
    if window is not None:
        mask &= k_pos > q_pos - window
    return mask


def _decode(cache: torch.Tensor, meta: AttentionMeta, q: torch.Tensor, scale: float, kv_heads: int) -> torch.Tensor:
    """One query per sequence, batched; the query heads of a KV head attend as one matrix.

    Written out rather than through SDPA: for one query row, a masked batched matmul and a softmax
    in fp32 beat the fused CPU kernel with a mask (benchmarks/attention.py).
    """
    k = _gather(cache, meta.decode_tables, 0, kv_heads)  # [nd, Hkv, S, d]
    v = _gather(cache, meta.decode_tables, 1, kv_heads)
    nd, hkv, S, d = k.shape
    q = q.reshape(nd * hkv, -1, d)
    scores = torch.baddbmm(meta.decode_bias(hkv, q.dtype), q, k.reshape(nd * hkv, S, d).transpose(1, 2), alpha=scale)
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(v.dtype)
    return torch.bmm(probs, v.reshape(nd * hkv, S, d)).view(nd, -1, d)


def paged_attention(cache: torch.Tensor, meta: AttentionMeta, q: torch.Tensor, k: torch.Tensor | None,
                    v: torch.Tensor | None, scale: float, kv_heads: int, kernel: bool = False) -> torch.Tensor:
    """q: [T, Hq, d]; k, v: this step's [T, Hkv, d] (already written to the cache; None when the C
    kernel wrote them), Hkv = kv_heads, the rank's real heads: the first of its head groups, the
    rest being padding that is neither read nor computed. Returns [T, Hq * d].
    `kernel`: decode rows go to the C kernel (gyges/kernels/paged_decode.py)."""
    T, hq, d = q.shape
    hkv = kv_heads
    if hkv == 0:  # a rank whose head groups are all padding
        return q.new_empty(T, 0)

    def decode(qd: torch.Tensor) -> torch.Tensor:
        if kernel:
            tables = meta.decode_tables[:, :-(-hkv // cache.shape[2])]
            return decode_attention(cache, qd, tables, meta.decode_lens, meta.sliding_window, scale, hkv)
        return _decode(cache, meta, qd, scale, hkv)

    if not meta.prefills:
        return decode(q).view(T, hq * d)
    out = q.new_empty(q.shape)  # contiguous: q may be a strided view (one query head per group)
    if len(meta.decode_rows):
        out[meta.decode_rows] = decode(q[meta.decode_rows])
    for p in meta.prefills:
        # 4-D inputs ([1, heads, len, d]): with 3-D ones the CPU falls back to the slower math kernel
        qp = q[p.start:p.start + p.q_len].transpose(0, 1)[None]
        if p.ctx_len == p.q_len and meta.sliding_window is None:
            kp = k[p.start:p.start + p.q_len].transpose(0, 1)[None]
            vp = v[p.start:p.start + p.q_len].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale, enable_gqa=True)
        else:
            kp = _gather(cache, p.table, 0, hkv)[None, :, :p.ctx_len]
            vp = _gather(cache, p.table, 1, hkv)[None, :, :p.ctx_len]
            q_pos = torch.arange(p.ctx_len - p.q_len, p.ctx_len, device=q.device)[:, None]
            mask = _window_mask(q_pos, torch.arange(p.ctx_len, device=q.device)[None, :], meta.sliding_window)
            o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=scale, enable_gqa=True)
        out[p.start:p.start + p.q_len] = o[0].transpose(0, 1)
    return out.view(T, hq * d)
