"""Moving a host towards its home layout (pure): which instances are above it, and the cheapest
merge or split that brings the layout closer."""
from collections import Counter

from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import CostModel
from gyges.policy.reshape import degrees, kv_to_move, mergeable, pack
from gyges.policy.snapshot import HomeLayout, InstanceView, Merge, Snapshot, Split


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


def above_home(snap: Snapshot, instances: tuple[InstanceView, ...], home: HomeLayout | None) -> set[int]:
    """Instances of sizes their host has more of than its home layout: the router keeps new requests
    off them where it can, so that they drain and split back sooner."""
    if home is None:
        return set()
    want, out = Counter(home.sizes), set()
    for members in hosts(snap, instances):
        have = Counter(i.tp for i in members)
        out |= {i.id for i in members if have[i.tp] > want.get(i.tp, 0) and i.tp > min(want)}
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


def _splits(snap: Snapshot, inst: InstanceView, half: int) -> bool:
    """Its running requests fit two halves and each queued one fits a half alone (it queues there)."""
    cap = snap.kv_capacity_by_tp[half]
    return pack(inst.running, 2, cap) is not None and all(r.need_tokens <= cap for r in inst.waiting)


def _cheaper(best, key, action):
    return (key, action) if best is None or key < best[0] else best


def _name(sizes: tuple[int, ...]) -> str:
    return "+".join(map(str, sizes))
