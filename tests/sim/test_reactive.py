"""The reactive policy, Gyges's decisions before its layout planner and the base of the reshaping peers
(gyges/sim/peers.py): merges of KV-starved instances that serve more merged, and priced splits."""
from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import CostModel, HardwareProfile
from gyges.policy.snapshot import StepDone, Tick
from gyges.sim.peers import ReactivePolicy
from tests.policy.test_policy import CAP, COST, HW, LONG, inst, merge_of, req, short_requests, snap, tp1s

REACTIVE = ReactivePolicy(COST)


# merges under memory pressure

def test_merges_kv_starved_instances_when_merged_serves_more():
    starved = ([req(i, 8000, 4000) for i in range(10)], ())
    s = snap(*tp1s(i0=starved, i1=starved))  # 10 x 8,000 > 74k tokens: at most 9 run at once
    actions = REACTIVE.decide(s, StepDone(0))
    assert merge_of(actions).devices == (0, 1) and "starved" in merge_of(actions).reason


def test_no_merge_at_light_load_or_beside_an_idle_instance():
    light = ([req(i, 8000, 4000) for i in range(3)], ())
    assert REACTIVE.decide(snap(*tp1s(i0=light, i1=light)), StepDone(0)) == []
    starved = ([req(i, 8000, 4000) for i in range(10)], ())
    assert REACTIVE.decide(snap(*tp1s(i0=starved)), StepDone(0)) == []


def test_no_merge_of_starved_instances_whose_requests_are_mostly_prompt():
    """Prefill-heavy requests keep a KV-starved TP1 instance's steps full however small its batch:
    merging buys a bigger batch, which prefill does not need. Same KV overcommitment as the decode-heavy
    case above, which merges."""
    starved = ([req(i, 8000, 4000, prompt=7990) for i in range(10)], ())
    assert REACTIVE.decide(snap(*tp1s(i0=starved, i1=starved)), StepDone(0)) == []


def test_no_merge_whose_stall_outweighs_the_gain():
    """Barely starved: one request too many gains little, and the stall of moving 70k tokens is not repaid."""
    slow = CostModel(COST.model, HardwareProfile(**{**HW.__dict__, "switch_overhead_s": 5.0}))
    barely = ([req(i, 7000, 6000) for i in range(11)], ())
    s = snap(*tp1s(i0=barely, i1=barely))
    assert merge_of(REACTIVE.decide(s, StepDone(0))).devices == (0, 1)
    assert ReactivePolicy(slow).decide(s, StepDone(0)) == []




def test_a_tp4_splits_all_the_way_when_that_serves_most():
    merged = inst(0, 4, running=short_requests(6))
    assert [(a.instance, a.parts) for a in REACTIVE.decide(snap(merged, time=60.0), Tick())] == [(0, 4)]


def test_no_split_that_makes_a_part_the_hot_spot():
    """With all-reduces this slow the parts always serve more, so balance alone decides: with a band of
    0.5, a request of 90% of a TP1 instance keeps the instance merged beside half-full instances, not
    beside fuller ones. (The default band is 1.0: see PolicyConfig.split_max_utilization.)"""
    slow_link = ReactivePolicy(CostModel(COST.model, HardwareProfile(**{**HW.__dict__, "link_latency": 1e-3})),
                            PolicyConfig(split_max_utilization=0.5))
    merged = inst(0, 2, running=[req(1, CAP[1] * 9 // 10, 5000)])
    half = [req(10, CAP[1] // 2, 1000)]
    assert slow_link.decide(snap(merged, inst(2, running=half), inst(3, running=half), time=60.0), Tick()) == []
    full = [req(10, CAP[1] * 19 // 20, 1000)]
    actions = slow_link.decide(snap(merged, inst(2, running=full), inst(3, running=full), time=60.0), Tick())
    assert [(a.instance, a.parts) for a in actions] == [(0, 2)]


def test_no_split_of_long_requests_that_serve_more_merged():
    """Everything fits the parts, but requests this long fill a TP1 instance with a handful: merged serves more."""
    merged = inst(0, 2, running=[req(i, 30000, 15000) for i in range(2)])
    assert REACTIVE.decide(snap(merged, inst(2), inst(3), time=60.0), Tick()) == []


def test_splits_after_the_dwell_time_when_the_parts_serve_more():
    merged = inst(0, 2, running=short_requests(6), formed_at=0.0)
    assert REACTIVE.decide(snap(merged, inst(2), inst(3), time=5.0), Tick()) == []
    actions = REACTIVE.decide(snap(merged, inst(2), inst(3), time=10.0), Tick())
    assert [(a.instance, a.parts) for a in actions] == [(0, 2)]
