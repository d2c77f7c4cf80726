"""Where every weight and KV byte of a device lives: a pure function of the model and `max_tp`.

A device's arena is a row of equal pages; one page holds one KV unit. The first pages hold the
replicated weights (embeddings, norms, head). Then come `max_tp` weight slabs: slab i holds the
i-th finest shard of every sharded matrix of every layer, padded to whole pages. At TP t, rank r
owns slabs [r*m, (r+1)*m) with m = max_tp // t: one contiguous page range, so a merge frees
whole pages with no copy, and a matrix's shard at any degree is m equal-stride pieces.
"""
import math
from dataclasses import dataclass
from functools import cached_property

from gyges.model.config import ModelConfig

ALIGN_ELEMS = 64  # 128+ bytes: misaligned bf16 weights slow every matmul
                  # (measured: docs/benchmarks.md, 'Measurements behind code choices')


def pad_to(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


@dataclass(frozen=True)
class Slot:
    """A tensor at `offset` elements from the start of its region."""
    offset: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class HeadPadding:
    """Head and MLP sizes padded so KV heads and the intermediate size divide by `max_tp`."""
    max_tp: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int

    @classmethod
    def of(cls, config: ModelConfig, max_tp: int) -> "HeadPadding":
        kv = pad_to(config.num_kv_heads, max_tp)
        return cls(max_tp, kv * config.group_size, kv, pad_to(config.intermediate_size, max_tp * 8))

    @property
    def q_per_shard(self) -> int:
        return self.num_heads // self.max_tp

    @property
    def kv_per_shard(self) -> int:
        return self.num_kv_heads // self.max_tp

    @property
    def inter_per_shard(self) -> int:
        return self.intermediate_size // self.max_tp


@dataclass(frozen=True)
class Run:
    """Rows [start, stop) of finest shard `piece` (0-based among a rank's pieces)."""
    piece: int
    start: int
    stop: int


def real_runs(config: ModelConfig, pad: HeadPadding, name: str, groups: range) -> list[Run]:
    """Where the real (unpadded) weights of a rank's pieces of matrix `name` ("qkv", "o", "gate_up",
    "down") lie, in the order of the unpadded matrix: rows of column-parallel ones, input columns of
    row-parallel ones. Padding sits at the end of q, k, v and the MLP, so a group that is all
    padding contributes nothing: computing only these runs costs what the unpadded model costs.
    Adjacent runs of one piece are merged."""
    d, kvf, inter = config.head_dim, pad.kv_per_shard, pad.inter_per_shard
    real_kv = [min(max(config.num_kv_heads - g * kvf, 0), kvf) for g in groups]
    real_inter = [min(max(config.intermediate_size - g * inter, 0), inter) for g in groups]
    q_rows = [k * config.group_size * d for k in real_kv]
    if name == "qkv":
        q_end, k_end = pad.q_per_shard * d, (pad.q_per_shard + kvf) * d
        parts = [(0, q_rows), (q_end, [k * d for k in real_kv]), (k_end, [k * d for k in real_kv])]
    elif name == "o":
        parts = [(0, q_rows)]
    elif name == "gate_up":
        parts = [(0, real_inter), (inter, real_inter)]
    elif name == "down":
        parts = [(0, real_inter)]
    else:
        raise ValueError(f"no sharded matrix {name!r}")
    runs = []
    for offset, sizes in parts:
        for j, n in enumerate(sizes):
            if not n:
                continue
            if runs and runs[-1].piece == j and runs[-1].stop == offset:
                runs[-1] = Run(j, runs[-1].start, offset + n)
            else:
                runs.append(Run(j, offset, offset + n))
    return runs


def run_rows(runs: list[Run]) -> int:
    return sum(r.stop - r.start for r in runs)


@dataclass(frozen=True)
class KVUnit:
    """One page: K and V of `block_tokens` tokens, one head group, every layer.

    Shape [layers, 2, heads, block_tokens, head_dim] (heads outermost inside the unit, so one KV
    head of a block is contiguous); at TP t a logical block is m = max_tp // t
    units and rank r owns the contiguous run of head groups [r*m, (r+1)*m).
    """
    num_layers: int
    block_tokens: int
    heads: int
    head_dim: int
    dtype_bytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.num_layers, 2, self.heads, self.block_tokens, self.head_dim)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype_bytes


def units_per_block(max_tp: int, tp: int) -> int:
    return max_tp // tp


def head_groups(max_tp: int, tp: int, rank: int) -> range:
    """The head groups (finest shards) rank `rank` of a TP-`tp` instance owns."""
    m = units_per_block(max_tp, tp)
    return range(rank * m, (rank + 1) * m)


@dataclass(frozen=True)
class DeviceLayout:
    config: ModelConfig
    padding: HeadPadding
    unit: KVUnit
    replicated: dict[str, Slot]
    shard: dict[str, Slot]
    replicated_pages: int
    slab_pages: int
    num_pages: int
    # every device keeps the whole model at every degree (sequence parallelism, modelled by the simulator):
    # a merge frees no weight pages and a split fetches none
    whole_weights: bool = False

    @property
    def max_tp(self) -> int:
        return self.padding.max_tp

    @property
    def page_bytes(self) -> int:
        return self.unit.nbytes

    @property
    def page_elems(self) -> int:
        return self.unit.nbytes // self.unit.dtype_bytes

    @cached_property
    def slots(self) -> int:
        """Weight slabs a device has room for: as many as it holds at the smallest degree whose shard fits
        beside the replicated weights (max_tp when the whole model fits one device). Head group g's
        slab lives in slot g mod `slots` on every device, so a merge keeps each device's weights where
        they are and a split fetches into the slots of its new groups; a model that does not fit one
        device is still addressed within the device's pages."""
        if self.whole_weights:
            return self.max_tp
        tp = 1
        while tp < self.max_tp and self.replicated_pages + self.slab_pages * units_per_block(self.max_tp, tp) > self.num_pages:
            tp *= 2
        return units_per_block(self.max_tp, tp)

    def rank_order(self, devices: list[int]) -> list[int]:
        """The rank order of a new instance on aligned `devices`: as a merge of instances of the smallest
        degree that holds the weights would order them, so that splitting it back finds every device's
        weights in their slots (device order when the whole model fits one device)."""
        smallest = self.max_tp // self.slots
        if self.slots == self.max_tp or len(devices) <= smallest:
            return list(devices)
        half = len(devices) // 2
        return [d for pair in zip(self.rank_order(devices[:half]), self.rank_order(devices[half:])) for d in pair]

    def slot_of(self, group: int) -> int:
        return group % self.slots

    def slab_pages_of(self, group: int) -> range:
        """The pages of head group `group`'s weight slab (on any device that holds it)."""
        start = self.replicated_pages + self.slot_of(group) * self.slab_pages
        return range(start, start + self.slab_pages)

    def slab_region(self) -> range:
        """Every device's pages that weight slabs can take."""
        return range(self.replicated_pages, self.replicated_pages + self.slots * self.slab_pages)

    def weight_pages(self, tp: int, rank: int) -> range:
        """The one contiguous page range of rank `rank`'s shard at TP `tp`."""
        groups = head_groups(self.max_tp, 1 if self.whole_weights else tp, 0 if self.whole_weights else rank)
        return range(self.slab_pages_of(groups.start).start, self.slab_pages_of(groups.stop - 1).stop)

    def free_pages(self, tp: int, rank: int) -> list[int]:
        """Pages not holding this rank's weights: the KV pool."""
        owned = self.weight_pages(tp, rank)
        return [*range(self.replicated_pages, owned.start), *range(owned.stop, self.num_pages)]

    def kv_capacity(self, tp: int) -> int:
        """How many pages `free_pages` gives any rank at TP `tp`."""
        return self.num_pages - self.min_pages(tp)

    def kv_tokens(self, tp: int) -> int:
        """KV tokens one TP-`tp` instance holds: its devices' free pages in whole blocks (a block is
        one page per head group, `units_per_block` of them on each device)."""
        return self.kv_capacity(tp) // units_per_block(self.max_tp, tp) * self.unit.block_tokens

    def min_pages(self, tp: int) -> int:
        return self.replicated_pages + self.slab_pages * units_per_block(self.max_tp, 1 if self.whole_weights else tp)


def _place(entries: list[tuple[str, tuple[int, ...]]]) -> tuple[dict[str, Slot], int]:
    slots, offset = {}, 0
    for name, shape in entries:
        slots[name] = Slot(offset, shape)
        offset = pad_to(offset + math.prod(shape), ALIGN_ELEMS)
    return slots, offset


def device_layout(config: ModelConfig, max_tp: int, block_tokens: int, dtype_bytes: int,
                  memory_bytes: int, whole_weights: bool = False) -> DeviceLayout:
    if max_tp < 1 or max_tp & (max_tp - 1):
        raise ValueError(f"max_tp must be a power of two, got {max_tp}")
    pad = HeadPadding.of(config, max_tp)
    h, d = config.hidden_size, config.head_dim
    unit = KVUnit(config.num_layers, block_tokens, pad.kv_per_shard, d, dtype_bytes)
    page_elems = unit.nbytes // dtype_bytes
    replicated = [("embed", (config.vocab_size, h)), ("norm", (h,))]
    if not config.tie_word_embeddings:
        replicated.append(("lm_head", (config.vocab_size, h)))
    shard = []
    qkv_rows = (pad.q_per_shard + 2 * pad.kv_per_shard) * d
    for i in range(config.num_layers):
        replicated += [(f"{i}.input_norm", (h,)), (f"{i}.post_norm", (h,))]
        shard.append((f"{i}.qkv", (qkv_rows, h)))
        if config.qkv_bias:
            shard.append((f"{i}.qkv_bias", (qkv_rows,)))
        shard += [(f"{i}.o", (h, pad.q_per_shard * d)), (f"{i}.gate_up", (2 * pad.inter_per_shard, h)),
                  (f"{i}.down", (h, pad.inter_per_shard))]
    rep_slots, rep_elems = _place(replicated)
    shard_slots, shard_elems = _place(shard)
    return DeviceLayout(config, pad, unit, rep_slots, shard_slots, -(-rep_elems // page_elems),
                        -(-shard_elems // page_elems), memory_bytes // unit.nbytes, whole_weights)
