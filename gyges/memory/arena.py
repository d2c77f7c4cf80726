"""A device's memory budget as one tensor of equal pages; weights and KV units are views into it."""
import mmap
from collections.abc import Mapping

import torch

from gyges.heap import trim_heap
from gyges.kernels import packed as packed_kernel
from gyges.memory.layout import DeviceLayout, Slot, head_groups
from gyges.memory.weights import layer_names, layer_shards


# Every byte of a fresh arena: a masked read of a never-written page must be finite (0.0115 in bf16
# and fp32, 1.06 in fp16), and not zero: VM hosts reclaim zero pages left idle, and the first write
# to each 4 KiB then faults, which slowed the KV moves of merges into never-used pages
# (measured: docs/benchmarks.md, 'Measurements behind code choices').
FILL_BYTE = 0x3C

HUGE_PAGE = 2 << 20


def host_bytes(nbytes: int) -> torch.Tensor:
    """`nbytes` of fresh CPU memory (uint8, 2 MiB aligned, a storage of its own that keeps the
    mapping alive) that Linux is asked to back with 2 MiB pages before anything is written to it
    (4 KiB pages where transparent huge pages are off). A move pins every page it reads and decode
    streams every weight each step; with 4 KiB pages both walk the page tables all the way, which
    slows KV moves and steps (measured: docs/benchmarks.md, 'Measurements behind code choices').
    A private mapping of its own: memory malloc recycles is already in 4 KiB pages, and shared
    mappings get none here."""
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        region.madvise(mmap.MADV_HUGEPAGE)
    start = -torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr() % HUGE_PAGE
    return torch.frombuffer(region, dtype=torch.uint8, count=nbytes, offset=start)


class Arena:
    def __init__(self, layout: DeviceLayout, dtype: torch.dtype, device: torch.device, packed: bool = False):
        """`packed`: store every weight matrix in the kernel's packed order (gyges/kernels/packed.py),
        if every one of them has a shape it can pack and its real (unpadded) rows are whole 16-row
        tiles (the kernel skips padding a tile at a time)."""
        self.layout = layout
        shape = (layout.num_pages, layout.page_elems)
        if device.type == "cpu":
            self.pages = host_bytes(layout.num_pages * layout.page_bytes).view(dtype).view(shape)
        else:
            self.pages = torch.empty(shape, dtype=dtype, device=device)
        self.pages.view(torch.uint8).fill_(FILL_BYTE)
        self.flat = self.pages.view(-1)
        slots = [*layout.replicated.values(), *layout.shard.values()]
        cfg, pad = layout.config, layout.padding
        tiles = cfg.head_dim % 16 == 0 and cfg.intermediate_size % 16 == 0 and pad.inter_per_shard % 16 == 0
        self.packed = packed and tiles and all(packed_kernel.packable(s.shape) for s in slots if len(s.shape) == 2)

    def _stored_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """A matrix [N, K] is stored as [N/16, K/2, 16, 2] when packed; everything else as it is."""
        if self.packed and len(shape) == 2:
            return (shape[0] // 16, shape[1] // 2, 16, 2)
        return shape

    def _stored(self, value: torch.Tensor) -> torch.Tensor:
        return packed_kernel.pack(value) if self.packed and value.dim() == 2 else value

    def kv(self) -> torch.Tensor:
        """Every page seen as a KV unit: [pages, layers, 2, heads, block_tokens, head_dim]."""
        return self.pages.view(self.layout.num_pages, *self.layout.unit.shape)

    def replicated(self, name: str) -> torch.Tensor:
        slot = self.layout.replicated[name]
        return self.flat[slot.offset:slot.offset + slot.numel].view(self._stored_shape(slot.shape))

    def _slab_base(self, slab: int) -> int:
        return self.layout.slab_pages_of(slab).start * self.layout.page_elems

    def shard(self, name: str, tp: int, rank: int) -> torch.Tensor:
        """Rank's part of a sharded matrix: [m, *stored shape], one finest shard per owned slab, no copy."""
        slot: Slot = self.layout.shard[name]
        groups = head_groups(self.layout.max_tp, tp, rank)
        stride = self.layout.slab_pages * self.layout.page_elems
        shape = self._stored_shape(slot.shape)
        inner = torch.empty(shape, device="meta").stride()
        return self.flat.as_strided((len(groups), *shape), (stride, *inner),
                                    self.flat.storage_offset() + self._slab_base(groups.start) + slot.offset)

    def write_slab(self, slab: int, name: str, value: torch.Tensor):
        slot = self.layout.shard[name]
        base = self._slab_base(slab) + slot.offset
        self.flat[base:base + slot.numel].view(self._stored_shape(slot.shape)).copy_(self._stored(value))

    def load(self, weights: Mapping[str, torch.Tensor], slabs: range):
        """Write replicated weights and the finest shards of `slabs` from full HF tensors, looked up
        one layer at a time (a lazy mapping then holds one layer in memory, not the model), then hand
        the heap the reads freed back to the OS."""
        cfg, pad = self.layout.config, self.layout.padding
        layers = layer_names(weights.keys())
        if len(layers) != cfg.num_layers:
            raise ValueError(f"weights have {len(layers)} layers, config says {cfg.num_layers}")
        self.replicated("embed").copy_(self._stored(weights["model.embed_tokens.weight"]))
        self.replicated("norm").copy_(weights["model.norm.weight"])
        if not cfg.tie_word_embeddings:
            self.replicated("lm_head").copy_(self._stored(weights["lm_head.weight"]))
        for i, names in enumerate(layers):
            w = {short: weights[name] for short, name in names.items()}
            self.replicated(f"{i}.input_norm").copy_(w["input_layernorm.weight"])
            self.replicated(f"{i}.post_norm").copy_(w["post_attention_layernorm.weight"])
            for part, shards in layer_shards(cfg, pad, w).items():
                for s in slabs:
                    self.write_slab(s, f"{i}.{part}", shards[s])
        trim_heap()
