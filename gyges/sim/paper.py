"""The paper's figures recomputed by our cost model (pure)."""
from dataclasses import replace

from gyges.policy.cost_model import CostModel, ServingLoad


def tp4_loss(cost: CostModel, context: int, max_batch: int = 256) -> float:
    """Throughput lost going from 4 x TP1 to 1 x TP4 (the paper's Qwen2.5-32B / H100 figure: over 57%):
    every instance saturated with requests of `context` tokens, at the engine's batch and KV limits."""
    load = ServingLoad(10 ** 6, context, context)
    tp1 = cost.throughput(1, load, cost.kv_capacity_tokens(1), max_batch)
    tp4 = cost.throughput(4, load, cost.kv_capacity_tokens(4), max_batch)
    return 1 - tp4 / (4 * tp1)


def tp_efficiency_for(cost: CostModel, loss: float, context: int, max_batch: int = 256) -> float:
    """The per-doubling TP efficiency at which `tp4_loss` equals `loss` (bisection; the loss falls as
    the efficiency rises)."""
    lo, hi = 0.05, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if tp4_loss(CostModel(cost.model, replace(cost.hw, tp_efficiency=mid)), context, max_batch) > loss:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
