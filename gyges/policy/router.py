"""Where a request starts soonest (pure): each instance's queued prefill work, turned into a predicted
time to first token by the cost model.

An instance's steps carry its decodes and as much prompt as the token budget leaves; the prompts
queued on it (waiting requests' whole prompts, running ones' remainders) go first, so a request's
first token comes after those and its own prompt. Among instances that would start it soon (within
`soon_factor` times its own prefill time) and are not above the home layout, the one with the most
room per request takes it, as before; when none would, the one with the least predicted TTFT, so a
short request is not queued behind a long document's prefill."""
import math

from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import CostModel, StepLoad
from gyges.policy.load import freeness, room
from gyges.policy.snapshot import InstanceView, RequestView


def prefill_backlog(inst: InstanceView) -> int:
    """Prompt tokens queued on the instance: waiting requests' whole prompts, running ones' remainders."""
    return inst.prefill_tokens


def _step(cost: CostModel, inst: InstanceView, chunk_cap: int, config: PolicyConfig) -> tuple[float, int]:
    """(seconds, prompt tokens) of one of the instance's steps while prompts are queued on it."""
    decoding, context = inst.decodes
    chunk = max(1, min(chunk_cap, config.max_batched_tokens - decoding))
    load = StepLoad(chunk, decoding, context + chunk * (chunk + 1) / 2, context + chunk)
    return cost.step_time(inst.tp, load), chunk


def predicted_ttft(cost: CostModel, inst: InstanceView, request: RequestView, config: PolicyConfig) -> float:
    """Seconds until `request`'s first token on `inst`: the prompts queued there, then its own."""
    tokens = prefill_backlog(inst) + request.prompt_tokens
    step_s, chunk = _step(cost, inst, tokens, config)
    return math.ceil(tokens / chunk) * step_s


def soonest(cost: CostModel, holders: list[InstanceView], request: RequestView, config: PolicyConfig,
            draining: set[int], need_room: bool) -> InstanceView | None:
    """Among `holders` (instances that can hold the request), those that would start it soon (within
    `soon_factor` times its own prefill time there), not draining if any is not, `need_room`: with
    room for it now; the one with the most room per request."""
    own = {tp: config.soon_factor * cost.prefill_time(tp, request.prompt_tokens, config.max_batched_tokens)
           for tp in {i.tp for i in holders}}
    soon = [i for i in holders if predicted_ttft(cost, i, request, config) <= own[i.tp]]
    soon = [i for i in soon if i.id not in draining] or soon
    if need_room:
        soon = [i for i in soon if room(i) >= request.need_tokens]
    return max(soon, key=lambda i: (freeness(i), -i.id), default=None)


def least_ttft(cost: CostModel, holders: list[InstanceView], request: RequestView, config: PolicyConfig,
               draining: set[int], wait_for_room) -> InstanceView | None:
    """The holder where the request's first token comes first: its queued prompts, and, where it has no
    room yet, the wait for room (`wait_for_room(inst)`); instances not draining first."""
    pool = [i for i in holders if i.id not in draining] or holders

    def ttft(i: InstanceView) -> float:
        t = predicted_ttft(cost, i, request, config)
        return max(t, wait_for_room(i)) if room(i) < request.need_tokens else t
    return min(pool, key=lambda i: (ttft(i), -freeness(i), i.id), default=None)
