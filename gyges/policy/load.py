"""How loaded an instance is, from its snapshot alone (Llumnix's freeness idea, in KV tokens)."""
from gyges.policy.cost_model import ServingLoad
from gyges.policy.snapshot import InstanceView, RequestView


def requests_of(inst: InstanceView) -> tuple[RequestView, ...]:
    return inst.running + inst.waiting


def room(inst: InstanceView) -> int:
    """KV tokens free once every request it has grows to its need: free now, minus what running
    requests still add, minus what queued ones will take. Negative: it is overcommitted."""
    return inst.kv_free_tokens - inst.growth_tokens


def freeness(inst: InstanceView) -> float:
    """Room per request it serves (the newcomer counted): the larger, the faster a new request runs.
    A deficit shared by more requests is worse, not better, so it is multiplied, not divided."""
    n = len(requests_of(inst)) + 1
    r = room(inst)
    return r / n if r >= 0 else r * n


def promised(inst: InstanceView) -> int:
    """KV tokens its requests will hold at their largest."""
    return inst.kv_capacity_tokens - room(inst)


def utilization(inst: InstanceView) -> float:
    return promised(inst) / inst.kv_capacity_tokens if inst.kv_capacity_tokens else 1.0


def remaining_work(inst: InstanceView) -> int:
    """KV tokens its requests have yet to compute."""
    return sum(r.need_tokens - r.computed_tokens for r in requests_of(inst))


def serving_load(requests: tuple[RequestView, ...], count: int | None = None, idle_need: int = 1024) -> ServingLoad:
    """The cost model's view of `requests` (or `count` requests like them). A request's mean decode
    context over its life is halfway between its prompt and its need; with no requests, ones of
    `idle_need` tokens stand in, decode only."""
    n = len(requests) if count is None else count
    if not requests:
        return ServingLoad(n, idle_need, idle_need / 2)
    need = sum(r.need_tokens for r in requests) / len(requests)
    context = sum((r.prompt_tokens + r.need_tokens) / 2 for r in requests) / len(requests)
    prompt = sum(r.prompt_tokens for r in requests) / len(requests)
    return ServingLoad(n, need, context, prompt)
