"""Llama-family forward pass of one tensor-parallel rank, on weights that live in the arena."""
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gyges.kernels import fused, packed, paged_decode
from gyges.memory.arena import Arena
from gyges.model.attention import AttentionMeta, paged_attention, write_kv
from gyges.model.rope import Rotary, apply_rotary


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor   # [T]
    positions: torch.Tensor   # [T]
    attention: AttentionMeta
    logit_rows: torch.Tensor  # [n]: rows whose next-token logits are wanted


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's order: normalize in fp32, cast back, then scale."""
    return weight * F.rms_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


def heads_major(x: torch.Tensor) -> torch.Tensor:
    """[m, T, heads, d] (one block per finest shard) -> [T, m * heads, d]; a view when m == 1."""
    if x.shape[0] == 1:
        return x[0]
    return x.transpose(0, 1).reshape(x.shape[1], -1, x.shape[3])


def column_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x: [T, in]; w: [m, out, in] (m finest shards), or [m, out/16, in/2, 16, 2] packed -> [m, T, out]."""
    if w.dim() == 5:
        out = x.new_empty(w.shape[0], x.shape[0], w.shape[1] * 16)
        for j in range(w.shape[0]):
            packed.linear(x, w[j], None if bias is None else bias[j], out=out[j])
        return out
    if w.shape[0] == 1:
        y = F.linear(x, w[0], None if bias is None else bias[0])
        return y.unsqueeze(0)
    y = torch.matmul(x, w.transpose(1, 2))
    return y if bias is None else y + bias[:, None, :]


def row_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x: [m, T, in]; w: [m, out, in] (one input slice per finest shard), or packed -> partial sums [T, out]."""
    if w.dim() == 5:
        return sum(packed.linear(x[j], w[j]) for j in range(w.shape[0]))
    if w.shape[0] == 1:
        return F.linear(x[0], w[0])
    return torch.bmm(x, w.transpose(1, 2)).sum(0)


class LlamaShard:
    def __init__(self, arena: Arena, kernels: bool = False):
        """`kernels`: use the C decode and fused kernels where the shapes allow (bf16 on a CPU with
        AVX512-BF16); matmuls use the packed kernel when the arena could pack every matrix."""
        self.arena = arena
        self.config = arena.layout.config
        self.pad = arena.layout.padding
        self.rotary = Rotary(self.config, arena.pages.device)
        self.kv = arena.kv()
        self.kv_rows = self.kv.view(-1, self.config.head_dim)
        self.decode_kernel = kernels and paged_decode.usable(self.kv[:, 0], self.pad.num_heads // self.pad.max_tp)
        self.fused = kernels and fused.usable(self.config.hidden_size, self.pad.inter_per_shard)
        self.group = None

    def bind(self, tp: int, rank: int, group, comm=None):
        """Point at the shards rank `rank` owns at TP `tp`; views only, no copy. `comm`: a
        shared-memory all-reduce for the group (used where it can), else the process group's."""
        a, c = self.arena, self.config
        self.tp, self.rank, self.group, self.comm = tp, rank, group, comm
        self.m = a.layout.max_tp // tp
        self.layers = []
        for i in range(c.num_layers):
            self.layers.append(dict(
                input_norm=a.replicated(f"{i}.input_norm"), post_norm=a.replicated(f"{i}.post_norm"),
                qkv=a.shard(f"{i}.qkv", tp, rank), o=a.shard(f"{i}.o", tp, rank),
                qkv_bias=a.shard(f"{i}.qkv_bias", tp, rank) if c.qkv_bias else None,
                gate_up=a.shard(f"{i}.gate_up", tp, rank), down=a.shard(f"{i}.down", tp, rank)))
        self.embed = a.replicated("embed")
        self.norm = a.replicated("norm")
        self.lm_head = self.embed if c.tie_word_embeddings else a.replicated("lm_head")

    def _all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp > 1:
            if self.comm is not None and self.comm.handles(x):
                self.comm.all_reduce(x)
            else:
                dist.all_reduce(x, group=self.group)
        return x

    def _residual_norm(self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
        """x += delta in place (the residual stream), then RMSNorm(x) * weight."""
        if self.fused:
            return fused.residual_rms_norm(x, delta, weight, self.config.rms_norm_eps)
        if delta is not None:
            x.add_(delta)
        return rms_norm(x, weight, self.config.rms_norm_eps)

    def _silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return fused.silu_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, want_logits: bool = True) -> torch.Tensor | None:
        c, m, d = self.config, self.m, self.config.head_dim
        qf, kvf = self.pad.q_per_shard, self.pad.kv_per_shard
        T = batch.input_ids.shape[0]
        ids = batch.input_ids
        x = packed.rows(self.embed, ids) if self.arena.packed else self.embed.index_select(0, ids)
        cos, sin = self.rotary.cos_sin(batch.positions, x.dtype)
        scale = d ** -0.5
        slot_rows = batch.attention.slot_rows(self.kv.shape[1:])  # where this step's K and V go
        delta = None  # what the last block adds to the residual stream x, added by the next norm
        for i, w in enumerate(self.layers):
            h = self._residual_norm(x, delta, w["input_norm"])
            qkv = column_linear(h, w["qkv"], w["qkv_bias"]).view(m, T, qf + 2 * kvf, d)
            if self.decode_kernel and not batch.attention.prefills:  # prefill attends to this step's k, v
                q, k, v = fused.rope_write_kv(qkv, cos, sin, slot_rows[i], self.kv_rows, qf), None, None
            else:
                qk = apply_rotary(qkv[:, :, :qf + kvf], cos, sin)
                q, k, v = heads_major(qk[:, :, :qf]), heads_major(qk[:, :, qf:]), heads_major(qkv[:, :, qf + kvf:])
                write_kv(self.kv_rows, slot_rows[i], k, v)
            attn = paged_attention(self.kv[:, i], batch.attention, q, k, v, scale, self.decode_kernel)
            attn = attn.view(T, m, qf * d).transpose(0, 1)
            h = self._residual_norm(x, self._all_reduce(row_linear(attn, w["o"])), w["post_norm"])
            act = self._silu_mul(column_linear(h, w["gate_up"]))
            delta = self._all_reduce(row_linear(act, w["down"]))
        if not want_logits:
            return None
        rows = batch.logit_rows
        h = self._residual_norm(x[rows], delta[rows], self.norm)
        if self.arena.packed:
            return packed.linear(h, self.lm_head).float()
        # [V, n] seen as [n, V]: on CPU the big matrix on the left multiplies about 1.7x faster
        return torch.mm(self.lm_head, h.t()).float().t()
