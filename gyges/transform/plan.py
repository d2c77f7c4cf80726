"""Merge and split plans: a pure function of layouts, instances, block tables and free pages.

A plan says which device ends in which instance at which rank, which weight pages each device
gives up or fetches, and where every KV unit goes. Units only ever land in pages that are free
before the transformation (plus, for a merge, the weight pages it frees), so executing a plan
needs no memory beyond each device's arena.
"""
from dataclasses import dataclass

import numpy as np

from gyges.memory.layout import DeviceLayout, head_groups, units_per_block


class TransformError(ValueError):
    """A transformation that cannot be done; nothing was changed."""


@dataclass(frozen=True)
class Move:
    """`count` consecutive pages from `src_page` on `src` to `dst_page` on `dst`."""
    src: int
    dst: int
    src_page: int
    dst_page: int
    count: int = 1


@dataclass(frozen=True)
class SeqKV:
    seq_id: int
    instance: int            # index into the plan's input instances
    pages: list[list[int]]   # [head group][logical block]


@dataclass
class TransformPlan:
    instances: list[list[int]]                 # resulting instances: devices in rank order
    seq_instance: dict[int, int]               # seq id -> index into `instances`
    seq_pages: dict[int, list[list[int]]]      # seq id -> its pages afterwards
    kv_moves: list[Move]
    weight_moves: list[Move]                   # slab copies between devices (split)
    free_after: dict[int, np.ndarray]          # device -> free KV pages afterwards
    kv_units_moved: int = 0


def owner_of(devices: list[int], max_tp: int, group: int) -> int:
    return devices[group // units_per_block(max_tp, len(devices))]


def groups_of(devices: list[int], max_tp: int, device: int) -> range:
    return head_groups(max_tp, len(devices), devices.index(device))


def coalesce(moves: list[Move]) -> list[Move]:
    """Join single-page moves whose source and destination pages both run on consecutively."""
    out: list[Move] = []
    for mv in moves:
        last = out[-1] if out else None
        if (last and last.src == mv.src and last.dst == mv.dst and last.src_page + last.count == mv.src_page
                and last.dst_page + last.count == mv.dst_page):
            out[-1] = Move(last.src, last.dst, last.src_page, last.dst_page, last.count + 1)
        else:
            out.append(mv)
    return out


def pages_array(pages) -> np.ndarray:
    """Page ids as an int64 array. Plans work on whole free lists (tens of thousands of pages per
    device), so set-like work on them is done in numpy: per-page Python loops cost tens of ms."""
    if isinstance(pages, range):
        return np.arange(pages.start, pages.stop, pages.step, dtype=np.int64)
    return np.asarray(pages, dtype=np.int64).reshape(-1)


def kv_page_order(layout: DeviceLayout, pages) -> np.ndarray:
    """Pages in the order KV should take them: outside the weight slabs first (a later split needs
    those back, and a merge's freed slabs cannot be pre-copied into), lowest first so runs coalesce."""
    lo, hi = layout.replicated_pages, layout.min_pages(1)  # the weight slabs
    ordered = np.sort(pages_array(pages))
    in_slabs = (ordered >= lo) & (ordered < hi)
    return np.concatenate([ordered[~in_slabs], ordered[in_slabs]])


def distinct_pages(pages: np.ndarray, num_pages: int) -> np.ndarray:
    """The distinct pages, ascending (a mask over the device's pages: np.unique hashes, ten times slower)."""
    mask = np.zeros(num_pages, dtype=bool)
    mask[pages] = True
    return np.flatnonzero(mask)


class _Pools:
    """Destination pages per device, handed out in the order given: the device's free list in the
    order it hands pages out (already `kv_page_order`), then any weight slabs a merge releases.
    Nothing here walks the whole free list: a plan costs what it moves, not what is free."""

    def __init__(self, pages: dict[int, np.ndarray]):
        self.pages = pages
        self.pos = {d: 0 for d in pages}

    def take(self, device: int) -> int:
        i = self.pos[device]
        if i >= len(self.pages[device]):
            raise TransformError(f"device {device} has no free page left for the KV units it must receive")
        self.pos[device] = i + 1
        return int(self.pages[device][i])

    def left(self, device: int) -> np.ndarray:
        return self.pages[device][self.pos[device]:]


def _outside(pages: np.ndarray, span: range) -> np.ndarray:
    return pages[(pages < span.start) | (pages >= span.stop)]


# (seq, group, block) -> (source page, destination device, destination page): a pre-copied unit. A
# split places requests again at the switch, so a unit may now belong on another device than the one
# it was copied to, or stay where it is: the copy counts only where both ends still match.
Placed = dict[tuple[int, int, int], tuple[int, int, int]]


def _relocate(seqs: list[SeqKV], old: list[list[int]], new: list[list[int]], seq_instance: dict[int, int],
              max_tp: int, pools: _Pools, pinned: dict[int, range], placed: Placed):
    """Move every unit whose head group changes device, or whose page the new weights need.

    A unit in `placed` was pre-copied from that same source page: it is already in place.
    """
    moves, seq_pages, freed = [], {}, {d: [] for d in pools.pages}
    for s in seqs:
        src_devs, dst_devs = old[s.instance], new[seq_instance[s.seq_id]]
        pages = []
        for g, blocks in enumerate(s.pages):
            src, dst = owner_of(src_devs, max_tp, g), owner_of(dst_devs, max_tp, g)
            row = []
            for b, p in enumerate(blocks):
                if src == dst and p not in pinned.get(src, ()):
                    row.append(p)
                    continue
                pre = placed.get((s.seq_id, g, b))
                if pre is not None and pre[:2] == (p, dst):
                    freed[src].append(p)
                    row.append(pre[2])
                    continue
                q = pools.take(dst)
                moves.append(Move(src, dst, p, q))
                freed[src].append(p)
                row.append(q)
            pages.append(row)
        seq_pages[s.seq_id] = pages
    return moves, seq_pages, freed


def _check_room(seqs: list[SeqKV], old: list[list[int]], merged: list[int], max_tp: int,
                pools: dict[int, np.ndarray], placed: Placed):
    """Refuse at once, before any page is taken, when a device must receive more units than it has
    free pages (at GPU page counts, finding out by allocating costs about a second)."""
    need = dict.fromkeys(pools, 0)
    for s in seqs:
        for g, blocks in enumerate(s.pages):
            src, dst = owner_of(old[s.instance], max_tp, g), owner_of(merged, max_tp, g)
            if src != dst:
                need[dst] += len(blocks) - sum(placed.get((s.seq_id, g, b), (None, None))[:2] == (p, dst)
                                               for b, p in enumerate(blocks)) if placed else len(blocks)
    for d, n in need.items():
        if n > len(pools[d]):
            raise TransformError(f"device {d} has {len(pools[d])} free pages for the {n} KV units it must receive")


def plan_merge(layout: DeviceLayout, instances: list[list[int]], seqs: list[SeqKV],
               free: dict[int, np.ndarray], placed: Placed | None = None) -> TransformPlan:
    """k aligned instances of TP t (devices in rank order) become one instance of TP k*t.
    `free`: each device's free pages in the order it hands them out."""
    k, t, max_tp = len(instances), len(instances[0]), layout.max_tp
    devices = sorted(d for inst in instances for d in inst)
    if k < 2 or k & (k - 1) or any(len(i) != t for i in instances):
        raise TransformError(f"a merge takes 2, 4, ... instances of one TP degree, got sizes {[len(i) for i in instances]}")
    if k * t > max_tp:
        raise TransformError(f"merging to TP {k * t} exceeds --max-tp {max_tp}")
    if devices != list(range(devices[0], devices[0] + k * t)) or devices[0] % (k * t):
        raise TransformError(f"devices {devices} are not an aligned group of {k * t}")
    # the i-th instance's rank r takes rank r*k + i: its new head groups lie inside its old ones
    merged = [instances[i][r] for r in range(t) for i in range(k)]
    pools_init = {}
    for d in devices:
        old_inst = next(inst for inst in instances if d in inst)
        old_g, new_g = groups_of(old_inst, max_tp, d), groups_of(merged, max_tp, d)
        kept = layout.weight_pages(len(merged), merged.index(d))
        released = [pages_array(layout.slab_pages_of(g)) for g in old_g if g not in new_g]
        old_kept = layout.weight_pages(len(old_inst), old_inst.index(d))
        assert old_kept.start <= kept.start and kept.stop <= old_kept.stop
        pools_init[d] = np.concatenate([pages_array(free[d]), *released])
    _check_room(seqs, instances, merged, max_tp, pools_init, placed or {})
    seq_instance = {s.seq_id: 0 for s in seqs}
    pools = _Pools(pools_init)
    moves, seq_pages, freed = _relocate(seqs, instances, [merged], seq_instance, max_tp, pools, {}, placed or {})
    return TransformPlan([merged], seq_instance, seq_pages, coalesce(moves), [],
                         {d: np.concatenate([pools.left(d), pages_array(freed[d])]) for d in devices}, len(moves))


def plan_split(layout: DeviceLayout, devices: list[int], k: int, seqs: list[SeqKV],
               free: dict[int, np.ndarray], placed: Placed | None = None,
               fetched: set[tuple[int, int]] = frozenset()) -> TransformPlan:
    """One instance of TP T (devices in rank order) becomes k instances of TP T/k.

    `fetched`: (device, slab) weight copies already done during pre-copy.
    """
    T, max_tp = len(devices), layout.max_tp
    if k < 2 or k & (k - 1) or T % k:
        raise TransformError(f"cannot split a TP {T} instance into {k} parts")
    t = T // k
    blocks = sorted(devices)
    parts = []
    for j in range(k):
        members = blocks[j * t:(j + 1) * t]
        ranks: list[int | None] = [None] * t
        m_new = units_per_block(max_tp, t)
        # keep each device at the rank whose head groups contain the ones it already holds
        for d in members:
            r = groups_of(devices, max_tp, d).start // m_new
            if ranks[r] is None:
                ranks[r] = d
        rest = iter(d for d in members if d not in ranks)
        parts.append([r if r is not None else next(rest) for r in ranks])
    # weights each device must fetch, and the pages they land in
    weight_moves, pinned = [], {}
    for part in parts:
        for d in part:
            have = groups_of(devices, max_tp, d)
            need = groups_of(part, max_tp, d)
            pinned[d] = layout.weight_pages(len(part), part.index(d))
            for g in need:
                if g not in have and (d, g) not in fetched:
                    src = owner_of(devices, max_tp, g)
                    pages = layout.slab_pages_of(g)
                    weight_moves.append(Move(src, d, pages.start, pages.start, len(pages)))
    # balance requests by KV size: biggest first, onto the part with the most room left
    kv_pages = {d: layout.num_pages - layout.replicated_pages - len(pinned[d]) for d in devices}
    room = {j: min(kv_pages[d] for d in part) // units_per_block(max_tp, t) for j, part in enumerate(parts)}
    seq_instance = {}
    for s in sorted(seqs, key=lambda s: -len(s.pages[0])):
        j = max(room, key=lambda j: room[j])
        seq_instance[s.seq_id] = j
        room[j] -= len(s.pages[0])
    if min(room.values(), default=0) < 0:
        need = sum(len(s.pages[0]) for s in seqs)
        raise TransformError(f"split refused: the running requests need {need} KV blocks and the "
                             f"{k} resulting instances cannot hold them once the full weights are back")
    pools = _Pools({d: _outside(pages_array(free[d]), pinned[d]) for d in devices})
    moves, seq_pages, freed = _relocate(seqs, [devices], parts, seq_instance, max_tp, pools, pinned, placed or {})
    free_after = {}
    for part in parts:
        for d in part:
            kept_before = pages_array(layout.weight_pages(T, devices.index(d)))
            pages = np.concatenate([pools.left(d), pages_array(freed[d]), kept_before])
            free_after[d] = distinct_pages(_outside(pages, pinned[d]), layout.num_pages)
    return TransformPlan(parts, seq_instance, seq_pages, coalesce(moves), weight_moves, free_after, len(moves))
