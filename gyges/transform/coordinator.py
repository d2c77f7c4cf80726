"""A merge or split as phases the controller runs between steps: plan, pre-copy chunks, switch,
install the new instances with every request still in them.

Nothing here talks to a process: each phase returns the commands for the devices taking part
(`{device: CopyPages | Transform}`, gyges/protocol/commands.py), and the controller sends them,
collects the answers while other instances keep stepping, and calls back. The instances are asked
through the methods of `Member`, never through their scheduler's or pool's fields. With pre-copy,
the KV units of full blocks (immutable from then on) and, for a split, weight slabs whose pages are
free are copied in chunks while the instances keep decoding; the switch then plans again and moves
only what changed.
"""
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from gyges.engine.sequence import Sequence
from gyges.protocol.answers import CopyDone, TransformStats
from gyges.protocol.commands import CopyPages, Move, Transform
from gyges.transform.plan import (Placed, SeqKV, TransformError, TransformPlan, Units, owner_of, pages_array,
                                  plan_merge, plan_split)

FIRST_CHUNK_BYTES = 8 << 20  # the first pre-copy chunk, before the copy rate is known
PRECOPY_STEP_SHARE = 0.25    # a chunk runs between two steps of the instances involved: it may add this share


def one_more_step(own_step_s: float, others_left_s: list[float]) -> bool:
    """Before the switch every instance involved must be between steps. One that finishes first runs
    one more step when the others still need more than half of its step: then whichever waits, waits
    at most about half a step (the requests that ran through a switch otherwise wait up to a whole
    extra step of the slowest instance, on top of the stall and the new instance's first step)."""
    return own_step_s > 0 and bool(others_left_s) and max(others_left_s) > own_step_s / 2


def chunk_budget(step_s: float, bytes_per_s: float) -> int:
    """Bytes of the next pre-copy chunk: what the devices copy in a quarter of the involved instances'
    step (on a GPU, gigabytes; on a CPU, megabytes), or FIRST_CHUNK_BYTES until both are known."""
    if step_s <= 0 or bytes_per_s <= 0:
        return FIRST_CHUNK_BYTES
    return max(int(PRECOPY_STEP_SHARE * step_s * bytes_per_s), 1)


class Member(Protocol):
    """What a transformation asks of an instance taking part in it, or formed by it."""
    devices: list[int]

    def running(self) -> list[Sequence]: ...
    def waiting(self) -> list[Sequence]: ...
    def free_pages(self) -> dict[int, np.ndarray]: ...
    def reserve(self, pages: dict[int, np.ndarray]) -> None: ...
    def give_back(self, pages: dict[int, np.ndarray]) -> None: ...
    def adopt(self, seq: Sequence) -> None: ...
    def add(self, seq: Sequence) -> None: ...
    def load_tokens(self) -> int: ...


@dataclass
class TransformReport:
    kind: str
    before: list[list[int]]
    after: list[list[int]]
    total_s: float
    kv_units_moved: int
    kv_bytes: int
    weight_bytes: int
    worker_stats: dict[int, TransformStats] = field(default_factory=dict)
    plan: TransformPlan | None = None
    precopy_bytes: int = 0
    precopy_s: float = 0.0
    switch_s: float = 0.0   # from the switch's commands to the new instances installed


def _snapshot(instances: list[Member]) -> tuple[list[SeqKV], dict[int, np.ndarray]]:
    seqs, free = [], {}
    for i, inst in enumerate(instances):
        seqs += [SeqKV(s.id, i, s.pages) for s in inst.running()]
        free |= inst.free_pages()
    return seqs, free


def _plan(layout, kind: str, old: list[Member], parts: int, placed: Placed | None = None, fetched=frozenset()) -> TransformPlan:
    seqs, free = _snapshot(old)
    if kind == "merge":
        return plan_merge(layout, [i.devices for i in old], seqs, free, placed)
    return plan_split(layout, old[0].devices, parts, seqs, free, placed, fetched)


def _take(todo: deque, max_bytes: int, page_bytes: int) -> list[Move]:
    """Moves off the front of `todo` up to `max_bytes` (at least one page), splitting a run if needed."""
    out, left = [], max(max_bytes // page_bytes, 1)
    while todo and left:
        mv = todo.popleft()
        if mv.count > left:
            todo.appendleft(Move(mv.src, mv.dst, mv.src_page + left, mv.dst_page + left, mv.count - left))
            mv = Move(mv.src, mv.dst, mv.src_page, mv.dst_page, left)
        out.append(mv)
        left -= mv.count
    return out


def _cross_bytes(moves: list[Move], page_bytes: int) -> int:
    return sum(mv.count for mv in moves if mv.src != mv.dst) * page_bytes


def _weight_mask(layout, instances: list[list[int]], devices: list[int]) -> dict[int, np.ndarray]:
    """Per device, a mask over its pages of the weights it holds as a rank of `instances`."""
    mask = {d: np.zeros(layout.num_pages, dtype=bool) for d in devices}
    for inst in instances:
        for r, d in enumerate(inst):
            span = layout.weight_pages(len(inst), r)
            mask[d][span.start:span.stop] = True
    return mask


def _for_devices(moves: list[tuple[int, Move]], devices) -> dict[int, list]:
    return {d: [x for x in moves if d in (x[1].src, x[1].dst)] for d in devices}


class Transition:
    """One merge or split of `old` instances. `make_instance(devices, free_pages)` builds an instance.

    Phases: until `done`, `next_chunk()` gives each device its `CopyPages`; then `switch()` plans
    with the pre-copied units in place and gives each device its `Transform`; `install(stats)` returns the new instances (requests moved in) and the report.
    """

    def __init__(self, layout, block_tokens: int, make_instance: Callable[[list[int], dict], Member], kind: str,
                 old: list[Member], parts: int = 0, precopy: bool = True):
        self.layout, self.make_instance = layout, make_instance
        self.kind, self.old, self.parts = kind, old, parts
        self.devices = [d for i in old for d in i.devices]
        self.started = time.perf_counter()
        self.placed: Placed = {}
        self.fetched: set[tuple[int, int]] = set()  # (device, weight slot) copied during pre-copy
        self.reserved: dict[int, np.ndarray] = {d: pages_array([]) for d in self.devices}
        self.todo: deque[Move] = deque()  # pre-copy runs not handed out yet
        self.precopy_bytes, self.precopy_s = 0, 0.0
        self.copy_rate = 0.0   # bytes/s the devices copied in the last chunk
        self._chunk_bytes = 0
        self.plan: TransformPlan | None = None
        self._switch_t = 0.0
        tentative = _plan(layout, kind, old, parts)  # raises TransformError when it cannot fit
        if precopy:
            self._reserve_precopy(tentative, block_tokens)

    def _reserve_precopy(self, tentative: TransformPlan, block_tokens: int):
        """Reserve the destination pages of the tentative plan's full blocks (and, for a split, of
        weight slabs landing on free pages) and list their copies as pre-copy chunks. Every page
        the tentative plan hands out was free just now, except the old weights a merge releases.
        Whole block rows at a time in numpy: this runs in the loop's thread, between other steps."""
        lay = self.layout
        taken = _weight_mask(lay, [i.devices for i in self.old], self.devices)  # weights now, or reserved
        units, reserved = Units(), {d: [] for d in self.devices}
        for inst in self.old:
            for seq in inst.running():
                part = tentative.instances[tentative.seq_instance[seq.id]]
                full = seq.num_computed // block_tokens
                for g, row in enumerate(seq.pages):
                    src, dst = owner_of(inst.devices, lay.max_tp, g), owner_of(part, lay.max_tp, g)
                    p, q = pages_array(row[:full]), pages_array(tentative.seq_pages[seq.id][g][:full])
                    copy = ~taken[dst][q] & ((p != q) if src == dst else True)
                    if not copy.any():
                        continue
                    taken[dst][q[copy]] = True
                    reserved[dst].append(q[copy])
                    self.placed[(seq.id, g)] = (np.where(copy, p, -1), dst, q)
                    units.add(src, dst, p[copy], q[copy])
        weights = []
        if tentative.weight_moves:  # a split: which slab pages are free is a question about the whole list
            free = {d: np.zeros(lay.num_pages, dtype=bool) for d in self.devices}
            for inst in self.old:
                for d, pages in inst.free_pages().items():
                    free[d][pages] = True
                    free[d][taken[d]] = False
            for mv in tentative.weight_moves:
                span = slice(mv.dst_page, mv.dst_page + mv.count)
                if free[mv.dst][span].all():
                    free[mv.dst][span] = False
                    reserved[mv.dst].append(np.arange(span.start, span.stop, dtype=np.int64))
                    self.fetched.add((mv.dst, (mv.dst_page - lay.replicated_pages) // lay.slab_pages))
                    weights.append(mv)
        self.reserved = {d: np.concatenate(r) if r else pages_array([]) for d, r in reserved.items()}
        for inst in self.old:
            inst.reserve(self.reserved)
        self.todo = deque(units.moves() + weights)
        self.precopy_bytes = (len(units) + sum(m.count for m in weights)) * lay.page_bytes

    @property
    def done(self) -> bool:
        """Every pre-copy chunk has been handed out: the switch is next."""
        return not self.todo

    def next_chunk(self, step_s: float = 0.0) -> tuple[dict[int, CopyPages], int]:
        """The command for every device of the next pre-copy chunk, sized by `chunk_budget` for
        instances whose steps take `step_s`, and the bytes it moves between devices."""
        page = self.layout.page_bytes
        chunk = _take(self.todo, chunk_budget(step_s, self.copy_rate), page)
        self._chunk_bytes = sum(mv.count for mv in chunk) * page
        msgs = {d: CopyPages(moves) for d, moves in _for_devices(list(enumerate(chunk)), self.devices).items()}
        return msgs, _cross_bytes(chunk, page)

    def chunk_done(self, seconds: float, answers: dict[int, CopyDone]):
        """`seconds`: launch to last answer (queued behind steps); `answers`: each device's own copy time."""
        self.precopy_s += seconds
        copy_s = max(a.seconds for a in answers.values())
        if copy_s > 0:
            self.copy_rate = self._chunk_bytes / copy_s

    def abort(self):
        """Give the reserved destination pages back; the old instances serve on untouched."""
        back = {d: np.sort(pages)[::-1] for d, pages in self.reserved.items()}
        for inst in self.old:
            inst.give_back(back)

    def switch(self) -> tuple[dict[int, Transform], int]:
        """Plan again with the pre-copied units in place: the `Transform` command for every device,
        and the bytes they move.
        The old instances must have no step in flight. On TransformError the reservation is undone."""
        self._switch_t = time.perf_counter()
        try:
            plan = _plan(self.layout, self.kind, self.old, self.parts, self.placed, self.fetched)
        except TransformError:
            self.abort()
            raise
        used = _weight_mask(self.layout, plan.instances, self.devices)  # then the KV the plan placed
        for sid, rows in plan.seq_pages.items():
            for g, row in enumerate(rows):
                used[owner_of(plan.instances[plan.seq_instance[sid]], self.layout.max_tp, g)][row] = True
        for d, pages in self.reserved.items():  # reserved pages the plan left unused are free again
            back = pages[~used[d][pages]]
            if len(back):
                plan.free_after[d] = np.concatenate([plan.free_after[d], back])
        self.plan = plan
        kv = list(enumerate(plan.kv_moves))
        weights = list(enumerate(plan.weight_moves, start=len(kv)))
        group = (min(self.devices), len(self.devices))
        kv_by, w_by = _for_devices(kv, self.devices), _for_devices(weights, self.devices)
        msgs = {d: Transform(kv_by[d], w_by[d], len(part), rank, min(part), group)
                for part in plan.instances for rank, d in enumerate(part)}
        return msgs, _cross_bytes(plan.kv_moves + plan.weight_moves, self.layout.page_bytes)

    def install(self, stats: dict[int, TransformStats]) -> tuple[list[Member], TransformReport]:
        """The new instances, every running request in its planned place and the waiting ones spread
        by load; and the report."""
        plan = self.plan
        new = [self.make_instance(part, plan.free_after) for part in plan.instances]
        by_id = {s.id: s for inst in self.old for s in inst.running()}
        for sid, j in sorted(plan.seq_instance.items(), key=lambda x: x[0]):
            seq = by_id[sid]
            seq.pages = plan.seq_pages[sid]
            new[j].adopt(seq)
        for inst in self.old:
            for seq in inst.waiting():
                min(new, key=lambda i: i.load_tokens()).add(seq)
        page = self.layout.page_bytes
        now = time.perf_counter()
        report = TransformReport(self.kind, [i.devices for i in self.old], plan.instances, now - self.started,
                                 plan.kv_units_moved, plan.kv_units_moved * page,
                                 sum(mv.count for mv in plan.weight_moves) * page, stats, plan,
                                 self.precopy_bytes, self.precopy_s, now - self._switch_t)
        return new, report
