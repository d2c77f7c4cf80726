"""Carry out a merge or split on a cluster between two steps: plan, execute on the workers,
install the new instances with every request still in them.

With pre-copy (`Transition`), the KV units of full blocks (immutable from then on) and, for a
split, weight slabs whose pages are free are copied in chunks between steps while the instances
keep decoding; the switch then plans again and moves only what changed.
"""
import time
from dataclasses import dataclass, field

from gyges.transform.plan import (Move, Placed, SeqKV, TransformError, TransformPlan, coalesce, owner_of,
                                  plan_merge, plan_split)
from gyges.worker.handle import recv_all

PRECOPY_CHUNK_BYTES = 32 << 20


@dataclass
class TransformReport:
    kind: str
    before: list[list[int]]
    after: list[list[int]]
    total_s: float
    kv_units_moved: int
    kv_bytes: int
    weight_bytes: int
    worker_stats: dict[int, dict] = field(default_factory=dict)
    plan: TransformPlan | None = None
    precopy_bytes: int = 0
    precopy_s: float = 0.0


def _snapshot(instances) -> tuple[list[SeqKV], dict[int, list[int]]]:
    seqs, free = [], {}
    for i, inst in enumerate(instances):
        for s in inst.scheduler.running:
            seqs.append(SeqKV(s.id, i, s.pages))
        for d, pages in zip(inst.devices, inst.scheduler.pool.devices):
            free[d] = list(reversed(pages.free))
    return seqs, free


def _execute(cluster, kind: str, old, plan: TransformPlan) -> TransformReport:
    t0 = time.perf_counter()
    kv = list(enumerate(plan.kv_moves))
    weights = list(enumerate(plan.weight_moves, start=len(kv)))
    involved = [d for part in plan.instances for d in part]
    group = (min(involved), len(involved))
    for part in plan.instances:
        for rank, d in enumerate(part):
            cluster.workers[d].send("transform", [x for x in kv if d in (x[1].src, x[1].dst)],
                                    [x for x in weights if d in (x[1].src, x[1].dst)], len(part), rank, min(part), group)
    stats = dict(zip(involved, recv_all([cluster.workers[d] for d in involved])))
    new = [cluster._make_instance(part, plan.free_after) for part in plan.instances]
    by_id = {s.id: s for inst in old for s in inst.scheduler.running}
    for sid, j in sorted(plan.seq_instance.items(), key=lambda x: x[0]):
        seq = by_id[sid]
        seq.pages = plan.seq_pages[sid]
        new[j].scheduler.running.append(seq)
    for inst in old:
        for seq in inst.scheduler.waiting:
            min(new, key=lambda i: i.scheduler.load_tokens).scheduler.add(seq)
    cluster.instances = sorted([i for i in cluster.instances if i not in old] + new, key=lambda i: min(i.devices))
    page = cluster.layout.page_bytes
    return TransformReport(kind, [i.devices for i in old], plan.instances, time.perf_counter() - t0,
                           plan.kv_units_moved, plan.kv_units_moved * page,
                           sum(mv.count for mv in plan.weight_moves) * page, stats, plan)


def _plan(cluster, kind: str, old, parts: int, placed: Placed | None = None, fetched=frozenset()) -> TransformPlan:
    seqs, free = _snapshot(old)
    if kind == "merge":
        return plan_merge(cluster.layout, [i.devices for i in old], seqs, free, placed)
    return plan_split(cluster.layout, old[0].devices, parts, seqs, free, placed, fetched)


class Transition:
    """A merge or split in two phases: `advance` pre-copies a chunk between steps, `switch` finishes."""

    def __init__(self, cluster, kind: str, old, parts: int = 0):
        self.cluster, self.kind, self.old, self.parts = cluster, kind, old, parts
        self.started = time.perf_counter()
        tentative = _plan(cluster, kind, old, parts)
        self.placed: Placed = {}
        self.fetched: set[tuple[int, int]] = set()
        self.reserved: dict[int, set[int]] = {d: set() for i in old for d in i.devices}
        free = {d: set(p.free) for i in old for d, p in zip(i.devices, i.scheduler.pool.devices)}
        units = []
        block = cluster.cfg.block_tokens
        for i, inst in enumerate(old):
            for seq in inst.scheduler.running:
                part = tentative.instances[tentative.seq_instance[seq.id]]
                for g, row in enumerate(seq.pages):
                    src, dst = owner_of(inst.devices, cluster.layout.max_tp, g), owner_of(part, cluster.layout.max_tp, g)
                    for b, p in enumerate(row[:seq.num_computed // block]):  # full blocks only
                        q = tentative.seq_pages[seq.id][g][b]
                        if (src, p) != (dst, q) and q in free[dst] and q not in self.reserved[dst]:
                            self.placed[(seq.id, g, b)] = (p, q)
                            self.reserved[dst].add(q)
                            units.append(Move(src, dst, p, q))
        weights = []
        lay = cluster.layout
        for mv in tentative.weight_moves:
            pages = set(range(mv.dst_page, mv.dst_page + mv.count))
            if pages <= free[mv.dst] - self.reserved[mv.dst]:
                self.reserved[mv.dst] |= pages
                self.fetched.add((mv.dst, (mv.dst_page - lay.replicated_pages) // lay.slab_pages))
                weights.append(mv)
        for inst in old:
            for d, pages in zip(inst.devices, inst.scheduler.pool.devices):
                pages.free = [p for p in pages.free if p not in self.reserved[d]]
        self.chunks = _chunks(coalesce(units) + weights, cluster.layout.page_bytes)
        self.precopy_bytes = (len(units) + sum(m.count for m in weights)) * cluster.layout.page_bytes
        self.precopy_s = 0.0

    @property
    def done(self) -> bool:
        return not self.chunks

    def advance(self):
        """Copy the next chunk; the instances keep their requests and decode on afterwards."""
        t = time.perf_counter()
        chunk = list(enumerate(self.chunks.pop(0)))
        devices = [d for i in self.old for d in i.devices]
        for d in devices:
            self.cluster.workers[d].send("copy_pages", [x for x in chunk if d in (x[1].src, x[1].dst)])
        recv_all([self.cluster.workers[d] for d in devices])
        self.precopy_s += time.perf_counter() - t

    def abort(self):
        """Give the reserved destination pages back; the old instances serve on untouched."""
        for inst in self.old:
            for d, pages in zip(inst.devices, inst.scheduler.pool.devices):
                pages.give(sorted(self.reserved[d], reverse=True))

    def switch(self) -> TransformReport:
        """Plan again with the pre-copied units in place, move the rest, install the new instances."""
        try:
            plan = _plan(self.cluster, self.kind, self.old, self.parts, self.placed, self.fetched)
        except TransformError:
            self.abort()
            raise
        used = {}
        for sid, rows in plan.seq_pages.items():
            for g, row in enumerate(rows):
                d = owner_of(plan.instances[plan.seq_instance[sid]], self.cluster.layout.max_tp, g)
                used.setdefault(d, set()).update(row)
        weight_pages = {d: set(self.cluster.layout.weight_pages(len(part), r))
                        for part in plan.instances for r, d in enumerate(part)}
        for d, pages in self.reserved.items():
            plan.free_after[d] = sorted(set(plan.free_after[d]) | (pages - used.get(d, set()) - weight_pages[d]))
        report = _execute(self.cluster, self.kind, self.old, plan)
        report.total_s = time.perf_counter() - self.started
        report.precopy_bytes, report.precopy_s = self.precopy_bytes, self.precopy_s
        return report


def _chunks(moves: list[Move], page_bytes: int) -> list[list[Move]]:
    out, size = [[]], 0
    for mv in moves:
        if size and size + mv.count * page_bytes > PRECOPY_CHUNK_BYTES:
            out.append([])
            size = 0
        out[-1].append(mv)
        size += mv.count * page_bytes
    return [c for c in out if c]


def merge(cluster, instances) -> TransformReport:
    return _execute(cluster, "merge", instances, _plan(cluster, "merge", instances, 0))


def split(cluster, instance, parts: int) -> TransformReport:
    return _execute(cluster, "split", [instance], _plan(cluster, "split", [instance], parts))
