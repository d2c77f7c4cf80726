"""Llama-family forward pass of one tensor-parallel rank, on weights that live in the arena."""
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gyges.kernels import fused, packed, paged_decode
from gyges.memory.arena import Arena
from gyges.memory.layout import head_groups, real_runs, run_rows
from gyges.layers.attention import AttentionMeta, paged_attention, write_kv
from gyges.layers.rope import Rotary, apply_rotary
from gyges.layers.sharded import ColumnShard, RowShard


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor   # [T]
    positions: torch.Tensor   # [T]
    attention: AttentionMeta
    logit_rows: torch.Tensor  # [n]: rows whose next-token logits are wanted


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's order: normalize in fp32, cast back, then scale."""
    return weight * F.rms_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


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
        self.fused = kernels and fused.usable(self.config.hidden_size, self.pad.inter_per_shard,
                                             self.config.intermediate_size)  # any rank's real MLP width
        self.group = None

    def bind(self, tp: int, rank: int, group, comm=None):
        """Point at the shards rank `rank` owns at TP `tp`; views only, no copy. `comm`: a
        shared-memory all-reduce for the group (used where it can), else the process group's."""
        a, c = self.arena, self.config
        self.tp, self.rank, self.group, self.comm = tp, rank, group, comm
        groups = head_groups(a.layout.max_tp, tp, rank)
        runs = {name: real_runs(c, self.pad, name, groups) for name in ("qkv", "o", "gate_up", "down")}
        self.kv_heads = run_rows(runs["qkv"]) // ((c.group_size + 2) * c.head_dim)  # real ones, padding skipped
        self.q_heads = self.kv_heads * c.group_size
        self.layers = []
        for i in range(c.num_layers):
            bias = a.shard(f"{i}.qkv_bias", tp, rank) if c.qkv_bias else None
            self.layers.append(dict(
                input_norm=a.replicated(f"{i}.input_norm"), post_norm=a.replicated(f"{i}.post_norm"),
                qkv=ColumnShard(a.shard(f"{i}.qkv", tp, rank), runs["qkv"], bias),
                o=RowShard(a.shard(f"{i}.o", tp, rank), runs["o"]),
                gate_up=ColumnShard(a.shard(f"{i}.gate_up", tp, rank), runs["gate_up"]),
                down=RowShard(a.shard(f"{i}.down", tp, rank), runs["down"])))
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
        c, d = self.config, self.config.head_dim
        qh, kvh = self.q_heads, self.kv_heads
        T = batch.input_ids.shape[0]
        ids = batch.input_ids
        x = packed.rows(self.embed, ids) if self.arena.packed else self.embed.index_select(0, ids)
        cos, sin = self.rotary.cos_sin(batch.positions, x.dtype)
        scale = d ** -0.5
        slot_rows = batch.attention.slot_rows(self.kv.shape[1:], kvh)  # where this step's K and V go
        delta = None  # what the last block adds to the residual stream x, added by the next norm
        for i, w in enumerate(self.layers):
            h = self._residual_norm(x, delta, w["input_norm"])
            qkv = w["qkv"](h).view(T, qh + 2 * kvh, d)  # the real heads: q, then k, then v
            if self.decode_kernel and not batch.attention.prefills:  # prefill attends to this step's k, v
                q, k, v = fused.rope_write_kv(qkv[None], cos, sin, slot_rows[i], self.kv_rows, qh), None, None
            else:
                qk = apply_rotary(qkv[:, :qh + kvh], cos, sin)
                q, k, v = qk[:, :qh], qk[:, qh:], qkv[:, qh + kvh:]
                write_kv(self.kv_rows, slot_rows[i], k, v)
            attn = paged_attention(self.kv[:, i], batch.attention, q, k, v, scale, kvh, self.decode_kernel)
            h = self._residual_norm(x, self._all_reduce(w["o"](attn)), w["post_norm"])
            act = self._silu_mul(w["gate_up"](h))
            delta = self._all_reduce(w["down"](act))
        if not want_logits:
            return None
        rows = batch.logit_rows
        h = self._residual_norm(x[rows], delta[rows], self.norm)
        if self.arena.packed:
            return packed.linear(h, self.lm_head).float()
        # [V, n] seen as [n, V]: on CPU the big matrix on the left multiplies faster
        # (measured: docs/benchmarks.md, 'Measurements behind code choices')
        return torch.mm(self.lm_head, h.t()).float().t()
