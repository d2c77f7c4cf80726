"""Merge and split plans: a pure function of layouts, instances, block tables and free pages.

A plan says which device ends in which instance at which rank, which weight pages each device
gives up or fetches, and where every KV unit goes. Units only ever land in pages that are free
before the transformation (plus, for a merge, the weight pages it frees), so executing a plan
needs no memory beyond each device's arena.
"""
from dataclasses import dataclass

import numpy as np

from gyges.memory.layout import DeviceLayout, head_groups, units_per_block
from gyges.protocol.commands import Move


class TransformError(ValueError):
    """A transformation that cannot be done; nothing was changed."""


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


def coalesce(src: np.ndarray, dst: np.ndarray, src_pages: np.ndarray, dst_pages: np.ndarray) -> list[Move]:
    """Single-page copies, in order, as moves of runs whose source and destination pages both run on
    consecutively (one Move per run: a plan handles thousands of units, a Python object each costs)."""
    if not len(src_pages):
        return []
    start = np.ones(len(src_pages), dtype=bool)
    start[1:] = ((src[1:] != src[:-1]) | (dst[1:] != dst[:-1]) | (src_pages[1:] != src_pages[:-1] + 1)
                 | (dst_pages[1:] != dst_pages[:-1] + 1))
    first = np.flatnonzero(start)
    counts = np.diff(np.append(first, len(src_pages)))
    return [Move(int(a), int(b), int(p), int(q), int(n))
            for a, b, p, q, n in zip(src[first], dst[first], src_pages[first], dst_pages[first], counts)]


class Units:
    """Single-page KV copies gathered row by row, coalesced at the end."""

    def __init__(self):
        self.rows: list[tuple[int, int, np.ndarray, np.ndarray]] = []

    def add(self, src: int, dst: int, src_pages: np.ndarray, dst_pages: np.ndarray):
        if len(src_pages):
            self.rows.append((src, dst, src_pages, dst_pages))

    def __len__(self) -> int:
        return sum(len(r[2]) for r in self.rows)

    def moves(self) -> list[Move]:
        if not self.rows:
            return []
        n = [len(r[2]) for r in self.rows]
        return coalesce(np.repeat([r[0] for r in self.rows], n), np.repeat([r[1] for r in self.rows], n),
                        np.concatenate([r[2] for r in self.rows]), np.concatenate([r[3] for r in self.rows]))


def pages_array(pages) -> np.ndarray:
    """Page ids as an int64 array. Plans work on whole free lists (tens of thousands of pages per
    device), so set-like work on them is done in numpy: per-page Python loops cost tens of ms."""
    if isinstance(pages, range):
        return np.arange(pages.start, pages.stop, pages.step, dtype=np.int64)
    return np.asarray(pages, dtype=np.int64).reshape(-1)


def kv_page_order(layout: DeviceLayout, pages) -> np.ndarray:
    """Pages in the order KV should take them: outside the weight slabs first (a later split needs
    those back, and a merge's freed slabs cannot be pre-copied into), lowest first so runs coalesce."""
    lo, hi = layout.slab_region().start, layout.slab_region().stop
    ordered = np.sort(pages_array(pages))
    in_slabs = (ordered >= lo) & (ordered < hi)
    return np.concatenate([ordered[~in_slabs], ordered[in_slabs]])


def _distinct(pages: np.ndarray, num_pages: int) -> np.ndarray:
    """The distinct pages, ascending (a mask over the device's pages: np.unique hashes, much slower;
    measured: docs/benchmarks.md, 'Measurements behind code choices')."""
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

    def take(self, device: int, n: int) -> np.ndarray:
        i = self.pos[device]
        if i + n > len(self.pages[device]):
            raise TransformError(f"device {device} has no free page left for the KV units it must receive")
        self.pos[device] = i + n
        return self.pages[device][i:i + n]

    def left(self, device: int) -> np.ndarray:
        return self.pages[device][self.pos[device]:]


def _outside(pages: np.ndarray, span: range) -> np.ndarray:
    return pages[(pages < span.start) | (pages >= span.stop)]


# (seq, head group) -> (source pages, destination device, destination pages) of the row's units
# pre-copied, block by block (source -1: not copied). A split places requests again at the switch,
# so a row may now belong on another device than the one it was copied to, or stay where it is: a
# copy counts only where both ends still match.
Placed = dict[tuple[int, int], tuple[np.ndarray, int, np.ndarray]]


def _precopied(placed: Placed, seq_id: int, group: int, dst: int, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of the row's blocks were pre-copied from the page they still occupy to `dst` (a mask),
    and the destination pages of the row's pre-copy (empty when none)."""
    hit = np.zeros(len(row), dtype=bool)
    pre = placed.get((seq_id, group))
    if pre is None or pre[1] != dst:
        return hit, pages_array([])
    n = min(len(pre[0]), len(row))
    hit[:n] = pre[0][:n] == row[:n]
    return hit, pre[2]


def _relocate(seqs: list[SeqKV], old: list[list[int]], new: list[list[int]], seq_instance: dict[int, int],
              max_tp: int, pools: _Pools, pinned: dict[int, range], placed: Placed):
    """Move every unit whose head group changes device, or whose page the new weights need.

    A unit in `placed` was pre-copied from that same source page to that same device: it is
    already in place. Whole block rows at a time in numpy: plans run in the engine loop's thread.
    """
    units, seq_pages, freed = Units(), {}, {d: [] for d in pools.pages}
    for s in seqs:
        src_devs, dst_devs = old[s.instance], new[seq_instance[s.seq_id]]
        pages = []
        for g, blocks in enumerate(s.pages):
            src, dst = owner_of(src_devs, max_tp, g), owner_of(dst_devs, max_tp, g)
            row = pages_array(blocks)
            if src != dst:
                move = np.ones(len(row), dtype=bool)
            else:
                pin = pinned.get(src, range(0))
                move = (row >= pin.start) & (row < pin.stop)
                if not move.any():
                    pages.append(list(blocks))
                    continue
            out = row.copy()
            hit, pre = _precopied(placed, s.seq_id, g, dst, row)
            kept = np.flatnonzero(hit & move)
            out[kept] = pre[kept]
            fresh = np.flatnonzero(move & ~hit)
            out[fresh] = pools.take(dst, len(fresh))
            units.add(src, dst, row[fresh], out[fresh])
            freed[src].append(row[move])
            pages.append(out.tolist())
        seq_pages[s.seq_id] = pages
    return units, seq_pages, {d: np.concatenate(f) if f else pages_array([]) for d, f in freed.items()}


def _check_room(seqs: list[SeqKV], old: list[list[int]], merged: list[int], max_tp: int,
                pools: dict[int, np.ndarray], placed: Placed):
    """Refuse at once, before any page is taken, when a device must receive more units than it has
    free pages (at GPU page counts, finding out by allocating costs about a second)."""
    need = dict.fromkeys(pools, 0)
    for s in seqs:
        for g, blocks in enumerate(s.pages):
            src, dst = owner_of(old[s.instance], max_tp, g), owner_of(merged, max_tp, g)
            if src != dst:
                need[dst] += len(blocks) - int(_precopied(placed, s.seq_id, g, dst, pages_array(blocks))[0].sum())
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
        released = [] if layout.whole_weights else [pages_array(layout.slab_pages_of(g)) for g in old_g
                                                     if g not in new_g]
        old_kept = layout.weight_pages(len(old_inst), old_inst.index(d))
        assert old_kept.start <= kept.start and kept.stop <= old_kept.stop
        pools_init[d] = np.concatenate([pages_array(free[d]), *released])
    _check_room(seqs, instances, merged, max_tp, pools_init, placed or {})
    seq_instance = {s.seq_id: 0 for s in seqs}
    pools = _Pools(pools_init)
    units, seq_pages, freed = _relocate(seqs, instances, [merged], seq_instance, max_tp, pools, {}, placed or {})
    return TransformPlan([merged], seq_instance, seq_pages, units.moves(), [],
                         {d: np.concatenate([pools.left(d), freed[d]]) for d in devices}, len(units))


def plan_split(layout: DeviceLayout, devices: list[int], k: int, seqs: list[SeqKV],
               free: dict[int, np.ndarray], placed: Placed | None = None,
               fetched: set[tuple[int, int]] = frozenset()) -> TransformPlan:
    """One instance of TP T (devices in rank order) becomes k instances of TP T/k.

    `fetched`: (device, slot) weight copies already done during pre-copy. A device fetches a slab
    into the slot of its group; when that slot holds one of its present groups that another device
    must fetch from it (a model that does not fit one device shares slots among groups), the split
    is refused rather than planned as a copy that could overwrite its own source.
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
    weight_moves, pinned, overwritten = [], {}, set()
    for part in parts:
        for d in part:
            have = groups_of(devices, max_tp, d)
            need = groups_of(part, max_tp, d)
            pinned[d] = layout.weight_pages(len(part), part.index(d))
            for g in () if layout.whole_weights else need:
                if g not in have and (d, layout.slot_of(g)) not in fetched:
                    src = owner_of(devices, max_tp, g)
                    pages = layout.slab_pages_of(g)
                    weight_moves.append(Move(src, d, pages.start, pages.start, len(pages)))
                    overwritten.update((d, h) for h in have if h not in need and layout.slot_of(h) == layout.slot_of(g))
    sources = {(owner_of(devices, max_tp, g), g) for part in parts for d in part
               for g in groups_of(part, max_tp, d) if g not in groups_of(devices, max_tp, d)}
    if overwritten & sources:
        d, h = min(overwritten & sources)
        raise TransformError(f"split refused: device {d} would overwrite head group {h}'s weights while another "
                             f"device copies them (the instance was not formed by merging these halves)")
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
    units, seq_pages, freed = _relocate(seqs, [devices], parts, seq_instance, max_tp, pools, pinned, placed or {})
    free_after = {}
    for part in parts:
        for d in part:
            kept_before = pages_array(layout.weight_pages(T, devices.index(d)))
            pages = np.concatenate([pools.left(d), freed[d], kept_before])
            free_after[d] = _distinct(_outside(pages, pinned[d]), layout.num_pages)
    return TransformPlan(parts, seq_instance, seq_pages, units.moves(), weight_moves, free_after, len(units))
