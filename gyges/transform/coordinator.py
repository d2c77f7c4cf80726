"""Carry out a merge or split on a cluster between two steps: plan, execute on the workers,
install the new instances with every request still in them."""
import time
from dataclasses import dataclass, field

from gyges.transform.plan import SeqKV, TransformPlan, plan_merge, plan_split


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
    for part in plan.instances:
        for rank, d in enumerate(part):
            cluster.workers[d].send("transform", [x for x in kv if d in (x[1].src, x[1].dst)],
                                    [x for x in weights if d in (x[1].src, x[1].dst)], len(part), rank, min(part))
    stats = {d: cluster.workers[d].recv() for d in involved}
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


def merge(cluster, instances) -> TransformReport:
    seqs, free = _snapshot(instances)
    plan = plan_merge(cluster.layout, [i.devices for i in instances], seqs, free)
    return _execute(cluster, "merge", instances, plan)


def split(cluster, instance, parts: int) -> TransformReport:
    seqs, free = _snapshot([instance])
    plan = plan_split(cluster.layout, instance.devices, parts, seqs, free)
    return _execute(cluster, "split", [instance], plan)
