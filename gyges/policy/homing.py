"""Moving a host towards its home layout (pure): the cheapest merge or split that brings the layout
closer, and which instance drains so that it can split."""
from collections import Counter

from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import CostModel
from gyges.policy.reshape import degrees, kv_to_move, mergeable, pack
from gyges.policy.snapshot import HomeLayout, InstanceView, Merge, SetDraining, Snapshot, Split


def distance(sizes: Counter, home: Counter) -> int:
    """How far a host's instance sizes are from its home layout's: devices times the doublings or
    halvings they are from their home size (the earth mover's distance over sizes; 0: they match)."""
    out = have = want = 0
    s, top = 1, max([*sizes, *home], default=1)
    while s < top:
        have, want = have + s * sizes.get(s, 0), want + s * home.get(s, 0)
        out += abs(have - want)
        s *= 2
    return out


def hosts(snap: Snapshot, instances: tuple[InstanceView, ...]) -> list[list[InstanceView]]:
    return [[i for i in instances if start <= i.devices[0] < start + snap.host_devices]
            for start in range(0, snap.devices, snap.host_devices)]


def drains(snap: Snapshot, instances: tuple[InstanceView, ...], home: HomeLayout) -> list[SetDraining]:
    """A split needs its instance's running requests to fit the halves; an instance too busy for that
    drains: it admits nothing new, its queued requests go elsewhere, and it splits once its running
    ones fit. One instance per host at a time, so the others take the load meanwhile: of those of a
    size the host has more of than its home layout, whose running requests each fit a half, the one
    with the least KV to finish. An instance draining that is no longer above home, or that was given a
    request only it holds (it must admit that one), admits again."""
    want, out = Counter(home.sizes), []
    for members in hosts(snap, instances):
        have = Counter(i.tp for i in members)
        surplus = {s for s, n in have.items() if n > want.get(s, 0) and s > min(want)}
        for i in members:
            if i.draining and (i.tp not in surplus or not _halves_hold(snap, i)):
                out.append(SetDraining(i.id, False, f"its size is home again ({_name(home.sizes)})"
                                       if i.tp not in surplus else "it has a request only it holds"))
        if any(i.draining and i.tp in surplus and _halves_hold(snap, i) for i in members):
            continue
        cands = [i for i in members if i.tp in surplus and not i.transforming and not i.draining
                 and not _splits(snap, i, i.tp // 2) and _halves_hold(snap, i)]
        if cands:
            target = min(cands, key=lambda i: (sum(r.need_tokens - r.computed_tokens for r in i.running), i.id))
            out.append(SetDraining(target.id, True, f"to split towards the home layout {_name(home.sizes)}"))
    return out


def toward_home(cost: CostModel, snap: Snapshot, instances: tuple[InstanceView, ...], home: HomeLayout,
                config: PolicyConfig, blocked: frozenset[tuple[int, ...]] = frozenset()) -> Merge | Split | None:
    """The transformation that brings a host closest to home for the least moved bytes (idle instances
    first; a merge only frees weight pages, a split fetches them back); None if every host is home or
    nothing can move yet (a split waits for the dwell time and for its running requests to fit the
    halves)."""
    want = Counter(home.sizes)
    best = None
    for members in hosts(snap, instances):
        have = Counter(i.tp for i in members)
        now = distance(have, want)
        if now == 0:
            continue
        for tp in (t for t in degrees(snap) if 1 < t <= max(want)):
            for g in mergeable(snap, tuple(members), tp, blocked):
                after = have - Counter(m.tp for m in g.members) + Counter({tp: 1})
                if distance(after, want) < now:
                    moved = kv_to_move(g) * cost.model.kv_bytes_per_token
                    best = _cheaper(best, (moved, -tp, g.devices[0]),
                                    Merge(g.devices, f"towards the home layout {_name(home.sizes)}"))
        for inst in members:
            half = inst.tp // 2
            if (inst.tp == 1 or inst.transforming or inst.devices in blocked
                    or snap.time - inst.formed_at < config.min_dwell_s or not _splits(snap, inst, half)):
                continue
            after = have - Counter({inst.tp: 1}) + Counter({half: 2})
            if distance(after, want) < now:
                kv = sum(r.computed_tokens for r in inst.running) / 2 * cost.model.kv_bytes_per_token
                moved = kv + inst.tp * (cost.model.weight_bytes(half) - cost.model.weight_bytes(inst.tp))
                best = _cheaper(best, (moved, -inst.tp, inst.id),
                                Split(inst.id, 2, f"towards the home layout {_name(home.sizes)}"))
    return None if best is None else best[1]


def _halves_hold(snap: Snapshot, inst: InstanceView) -> bool:
    """Each of its requests, running or queued, fits an instance half its size."""
    cap = snap.kv_capacity_by_tp[inst.tp // 2]
    return all(r.need_tokens <= cap for r in inst.running + inst.waiting)


def _splits(snap: Snapshot, inst: InstanceView, half: int) -> bool:
    """Its running requests fit two halves, each queued one fits a half alone (it queues there), and
    each device has free pages for what it receives now: units only land in pages free before a
    transformation, and the weights a half needs back take a slab's worth of them (the KV a merge of
    two halves gains: cap(tp) - 2 cap(half))."""
    cap = snap.kv_capacity_by_tp[half]
    bins = pack(inst.running, 2, cap)
    if bins is None or any(r.need_tokens > cap for r in inst.waiting):
        return False
    slab = snap.kv_capacity_by_tp[inst.tp] - 2 * cap
    return max(sum(r.computed_tokens for r in b) for b in bins) <= inst.kv_free_tokens - slab


def _cheaper(best, key, action):
    return (key, action) if best is None or key < best[0] else best


def _name(sizes: tuple[int, ...]) -> str:
    return "+".join(map(str, sizes))
