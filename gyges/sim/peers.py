"""Models of the closest systems, each a policy or cost-model variant run by the same controller.

What each does, and what we simplified (docs/simulator.md has the longer account):
- Llumnix: fixed instances, requests live-migrated between them. Our controller has no live
  migration, so we model its effect: one instance per host large enough for the longest request, the
  rest TP1, and short requests kept off the large instance while a TP1 one has room (Llumnix migrates
  them off to free it for long ones). Migration's rebalancing after dispatch is not modelled.
- KunServe: under memory pressure, drops replicated weights so instances share one copy (pipelined)
  and the freed memory holds KV. Modelled as merging whenever an instance's queued requests have no
  room (pressure alone, no throughput test), with our TP merge standing in for its pipelining.
- Flying Serving: switches a host between data parallel (TP1 instances) and tensor parallel.
  Modelled as reactive Gyges with whole-host switches: a request no instance holds merges the whole
  host; no merges for KV pressure; splits as reactive Gyges's.
- LoongServe: elastic sequence parallelism: every device keeps whole weights, a long request's KV and
  tokens are spread over several instances, scaled per iteration. Modelled as reactive Gyges's
  decisions on an ESP cost model (each device reads whole weights every step; linear FLOPs split over
  the group; per-layer exchange latency, no all-reduce bytes) and memory (every device holds the whole
  model, so a group of k holds k times a device's TP1 KV; merges free no weight pages).
- gyges-reactive: Gyges before its layout planner and latency-aware router (`ReactivePolicy`), the
  base of the reshaping peers above, kept as a reference.
None of the peers plans a home layout from the traffic, and all route by room per request (freeness):
that is how they are described; Llumnix's own rule is the smallest instance with room.
"""
from dataclasses import dataclass, replace

from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import CostModel, StepLoad
from gyges.policy.load import freeness, room
from gyges.policy.policy import GygesPolicy, Plan, StaticPolicy
from gyges.policy.reshape import best_split, degrees, kv_to_move, mergeable, pressure_merge
from gyges.policy.snapshot import Action, Hold, Merge, RequestView, Split
from gyges.sim.run import Setup


class LlumnixPolicy(StaticPolicy):
    """Fixed instances; a request goes to the smallest instances that hold it and have room now."""

    def _place(self, plan: Plan, r: RequestView) -> list[Action]:
        fits = [i for i in plan.instances if not i.transforming and i.kv_capacity_tokens >= r.need_tokens]
        roomy = [i for i in fits if room(i) >= r.need_tokens]
        if roomy:
            small = min(i.tp for i in roomy)
            return [plan.route(r, max((i for i in roomy if i.tp == small), key=lambda i: (freeness(i), -i.id)))]
        return super()._place(plan, r)


class ReactivePolicy(GygesPolicy):
    """Gyges's decisions before its layout planner, the base of the reshaping peers: no home layout;
    merges when a request fits no instance, or when KV-starved instances would serve more merged;
    splits back when the parts serve more (to TP1 when idle); routes by room per request."""

    def __init__(self, cost: CostModel, config: PolicyConfig | None = None):
        super().__init__(cost, replace(config or PolicyConfig(), router="freeness"))

    def _plan_home(self, plan: Plan) -> list[Action]:
        return []

    def _reshape(self, plan: Plan) -> list[Action]:
        if plan.busy:
            return []
        merge = pressure_merge(self.cost, plan.snap, plan.instances, self.config, plan.blocked)
        if merge is not None:
            plan.start(merge.group.devices)
            return [Merge(merge.group.devices, f"KV-starved instances: merged serves {merge.after:.0f} tokens/s "
                                               f"instead of {merge.before:.0f}")]
        return _split(self, plan)


def _split(policy: GygesPolicy, plan: Plan) -> list[Action]:
    """The reactive priced split, if one is worth it (peers that merge differently split the same way)."""
    split = best_split(policy.cost, plan.snap, plan.instances, policy.config, plan.blocked)
    if split is None:
        return []
    inst = split.group.members[0]
    plan.start(inst.devices)
    return [Split(inst.id, split.parts, f"{split.parts} parts serve {split.after:.0f} tokens/s instead of {split.before:.0f}")]


class KunServePolicy(ReactivePolicy):
    """Merges the smallest group whose members all have queued requests and no room for them."""

    def _reshape(self, plan: Plan) -> list[Action]:
        if plan.busy:
            return []
        for tp in degrees(plan.snap)[1:]:
            for g in mergeable(plan.snap, plan.instances, tp):
                if all(m.waiting and room(m) < 0 for m in g.members):
                    plan.start(g.devices)
                    return [Merge(g.devices, f"memory pressure on devices {list(g.devices)}")]
        return _split(self, plan)


class FlyingServingPolicy(ReactivePolicy):
    """A request no instance holds merges its whole host into one TP instance; no pressure merges."""

    def _no_room(self, plan: Plan, r: RequestView) -> list[Action]:
        groups = [] if plan.busy else mergeable(plan.snap, plan.instances, degrees(plan.snap)[-1])
        if not groups:
            return [Hold(r.id, f"needs {r.need_tokens} KV tokens: waiting for a host to switch to TP")]
        g = min(groups, key=lambda g: (kv_to_move(g), g.devices[0]))
        plan.start(g.devices)
        return [Merge(g.devices, f"request {r.id} needs {r.need_tokens} KV tokens: host to TP{g.tp}"),
                Hold(r.id, f"waiting for devices {list(g.devices)} to switch to TP")]

    def _reshape(self, plan: Plan) -> list[Action]:
        return [] if plan.busy else _split(self, plan)


class SequenceParallelCost(CostModel):
    """LoongServe's elastic sequence parallelism over a group of `tp` devices: each keeps whole weights
    and reads them every step; tokens (and their FLOPs, head included) and KV are split over the group;
    each layer exchanges partial attention at the link's latency (bytes small beside the weights). Every
    device holding the whole model, a group of k holds k times one device's TP1 KV."""
    WHOLE_WEIGHTS = True

    def terms(self, tp: int, load: StepLoad) -> tuple[float, float, float, float, float]:
        m = self.model
        m.check_tp(tp)
        if load.tokens == 0:
            return 0.0, 0.0, 0.0, 0.0, 0.0
        head = m.vocab * m.hidden
        read = (m.sharded_params + (head if load.decode_tokens else 0)) * m.dtype_bytes + load.kv_tokens * m.kv_bytes_per_token / tp
        flops = (2 * load.tokens * m.sharded_params + 2 * load.decode_tokens * head
                 + load.context_tokens * 4 * m.layers * m.padded_heads * m.head_dim) / tp
        return read, flops, 0.0, 2 * m.layers if tp > 1 else 0, 1.0


def peers(setup: Setup, longest_need: int) -> dict[str, tuple[object, tuple[int, ...], Setup]]:
    """Name -> (policy, per-host layout, setup) of each modelled peer; `longest_need`: the KV tokens of
    the trace's longest request (Llumnix's fixed large instance must hold it)."""
    cost = setup.cost()
    big = next((t for t in (1, 2, 4, 8) if t <= setup.host and cost.kv_capacity_tokens(t, setup.block_tokens) >= longest_need),
               setup.host)
    esp = replace(setup, cost_model=SequenceParallelCost)
    return {"llumnix": (LlumnixPolicy(setup.policy_config()), (big,) + (1,) * (setup.host - big), setup),
            "kunserve": (KunServePolicy(cost, setup.policy_config()), (1,) * setup.host, setup),
            "flying-serving": (FlyingServingPolicy(cost, setup.policy_config()), (1,) * setup.host, setup),
            "loongserve": (ReactivePolicy(esp.cost(), esp.policy_config()), (1,) * setup.host, esp),
            "gyges-reactive": (ReactivePolicy(cost, setup.policy_config()), (1,) * setup.host, setup)}
