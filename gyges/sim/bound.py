"""How many requests per second any layout, static or changing, can serve on a trace: the cost
model's saturated throughput per device at each TP degree, given each request to the degree that
serves it with the fewest device-seconds. A bound at full utilization (no SLO, no queueing), so the
rate a policy sustains at the SLO is below it; it says which gains a policy could possibly show."""
import statistics
from dataclasses import dataclass

from gyges.policy.cost_model import CostModel, ServingLoad


@dataclass(frozen=True)
class RateBound:
    per_device_tok_s: dict[int, float]   # TP degree -> tokens/s per device, on the requests that degree holds
    best_tp: dict[int, int]              # smallest degree holding a request -> the degree that serves it best
    max_rate: float                      # requests/s of the whole cluster at full utilization


def saturated(cost: CostModel, tp: int, requests: list[tuple[int, int]], kv_capacity: int, max_num_seqs: int,
              max_batched_tokens: int) -> float:
    """Tokens/s (prompt and output) per device of one TP-`tp` instance kept full of requests like these
    ((prompt, output) pairs), in the waves `CostModel.throughput` prices."""
    need = statistics.mean(p + o for p, o in requests)
    load = ServingLoad(max_num_seqs, need, statistics.mean(p + o / 2 for p, o in requests),
                       statistics.mean(p for p, _ in requests))
    return cost.throughput(tp, load, kv_capacity, max_num_seqs, max_batched_tokens) / tp


def rate_bound(cost: CostModel, capacity_by_tp: dict[int, int], requests: list[tuple[int, int]], devices: int,
               max_num_seqs: int, max_batched_tokens: int) -> RateBound:
    """Requests are grouped by the smallest degree that holds them; each group is served at the degree
    (that holds it) with the most tokens/s per device, and the cluster's device-seconds bound the rate."""
    degrees = sorted(capacity_by_tp)
    groups: dict[int, list[tuple[int, int]]] = {}
    for p, o in requests:
        tp = next((t for t in degrees if capacity_by_tp[t] >= p + o), None)
        if tp is None:
            raise ValueError(f"a request of {p + o} tokens fits no degree up to TP{degrees[-1]}")
        groups.setdefault(tp, []).append((p, o))
    per_device, best = {}, {}
    device_s = 0.0
    for small, group in sorted(groups.items()):
        rates = {t: saturated(cost, t, group, capacity_by_tp[t], max_num_seqs, max_batched_tokens)
                 for t in degrees if t >= small}
        if small == degrees[0]:
            per_device = rates
        best[small] = max(rates, key=lambda t: (rates[t], -t))
        device_s += sum(p + o for p, o in group) / rates[best[small]]
    return RateBound(per_device, best, devices * len(requests) / device_s)
