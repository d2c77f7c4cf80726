"""GygesPolicy and StaticPolicy on hand-made snapshots: a Llama-3-8B-like model on 24 GiB devices.
Unless a test says otherwise, the snapshot's home layout is its present layout, planned just now
(so the planner is not due): the tests of the planner itself are in test_planner.py."""
import pytest

from gyges.model.config import ModelConfig
from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import CostModel, HardwareProfile, ModelProfile, TransformCost
from gyges.policy.policy import GygesPolicy, StaticPolicy
from gyges.policy.reshape import Group, Reshape, keeps_balance, pack, wait_for_room
from gyges.policy.snapshot import (Arrival, Finished, Hold, HomeLayout, InstanceView, Merge, PendingTransform, Refusal,
                                   Reject, RequestView, Route, Snapshot, Split, StepDone, Tick, TransformDone)

CONFIG = ModelConfig(arch="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                     num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=5e5,
                     max_position_embeddings=131072, tie_word_embeddings=False)
HW = HardwareProfile("gpu", 3.35e12, 990e12, 450e9, 1e-5, 24 * 2**30, mem_efficiency=0.7, flop_efficiency=0.5,
                     link_efficiency=0.7, transfer_efficiency=0.5, step_overhead_s=2e-3, switch_overhead_s=0.05)
COST = CostModel(ModelProfile.from_config(CONFIG, max_tp=4, dtype_bytes=2), HW)
CAP = {t: COST.kv_capacity_tokens(t, block_tokens=16) for t in (1, 2, 4)}
LONG = CAP[1] + 1000  # fits no TP1 instance, fits TP2


def test_capacities_make_the_scenarios_meaningful():
    assert CAP[1] < LONG < CAP[2] < CAP[4]


def req(id: int, need: int, computed: int = 0, prompt: int | None = None, arrived: float = 0.0) -> RequestView:
    return RequestView(id, prompt if prompt is not None else need // 2, need, computed, arrived)


def inst(first: int, tp: int = 1, running=(), waiting=(), formed_at: float = 0.0, transforming=False) -> InstanceView:
    cap = CAP[tp]
    devices = tuple(range(first, first + tp))
    return InstanceView(first, devices, cap, cap - sum(r.computed_tokens for r in running), tuple(running),
                        tuple(waiting), formed_at, transforming)


def snap(*instances, time=0.0, held=(), pending=None, host=4, refused=(), home=None) -> Snapshot:
    """`home`: the home layout's sizes (default: the present layout of the first host)."""
    sizes = home or tuple(sorted((i.tp for i in instances if i.devices[0] < host), reverse=True))
    return Snapshot(time, 4, 4, host, dict(CAP), tuple(instances), tuple(held), pending, tuple(refused),
                    home=HomeLayout(tuple(sizes), 0.0, time))


TP1_HOME = (1, 1, 1, 1)


def tp1s(**loads):
    """Four TP1 instances; `loads` maps 'i0'..'i3' to (running, waiting)."""
    return [inst(d, 1, *loads.get(f"i{d}", ((), ()))) for d in range(4)]


POLICY = GygesPolicy(COST)


# routing

def test_routes_to_the_instance_with_most_room_per_request():
    busy = ((req(1, 20000, 10000), req(2, 20000, 10000)), ())
    light = ((req(3, 20000, 10000),), ())
    s = snap(*tp1s(i0=busy, i1=busy, i2=light, i3=busy))
    assert POLICY.decide(s, Arrival(req(9, 2000))) == [Route(9, 2)]


def test_queued_requests_count_against_room():
    """Short prompts, so every instance would start the newcomer soon and room decides."""
    s = snap(*tp1s(i0=((), (req(1, 30000, prompt=100),)), i1=((), (req(2, 30000, prompt=100),)),
                   i2=((), (req(3, 30000, prompt=100),)), i3=((req(4, 30000, 1000, prompt=100),), ())))
    # i3's running request holds only 1,000 tokens now, but will grow to 30,000 like the queued ones
    actions = POLICY.decide(s, Arrival(req(9, 2000)))
    assert actions == [Route(9, 0)]  # equal room everywhere: lowest id


def test_never_routes_where_it_cannot_fit():
    """A busy TP2 instance still beats empty TP1 instances that could never hold the request."""
    crowded = inst(0, 2, running=[req(i, 30000, 30000) for i in range(5)])
    s = snap(crowded, inst(2), inst(3))
    assert POLICY.decide(s, Arrival(req(9, LONG))) == [Route(9, 0)]


def test_several_offered_requests_spread_over_instances():
    s = snap(*tp1s(), held=(req(1, 30000), req(2, 30000), req(3, 30000)))
    actions = POLICY.decide(s, Arrival(req(4, 30000)))
    assert sorted(a.instance for a in actions) == [0, 1, 2, 3]


def test_rejects_what_no_layout_can_hold():
    actions = POLICY.decide(snap(*tp1s()), Arrival(req(9, CAP[4] + 1)))
    assert len(actions) == 1 and isinstance(actions[0], Reject)
    assert "TP4" in actions[0].reason and str(CAP[4]) in actions[0].reason


def test_merges_stay_within_a_host():
    actions = POLICY.decide(snap(*tp1s(), host=2), Arrival(req(9, CAP[2] + 1)))
    assert len(actions) == 1 and isinstance(actions[0], Reject) and "TP2" in actions[0].reason
    assert merge_of(POLICY.decide(snap(*tp1s(), host=2), Arrival(req(9, LONG)))).devices == (0, 1)


# forced merges: the group

def merge_of(actions) -> Merge:
    merges = [a for a in actions if isinstance(a, Merge)]
    assert len(merges) == 1, actions
    return merges[0]


def test_merges_the_pair_with_least_kv_to_move_and_holds_the_request():
    s = snap(*tp1s(i0=((req(1, 20000, 15000),), ()), i1=((req(2, 20000, 15000),), ()),
                   i2=((req(3, 20000, 5000),), ()), i3=((req(4, 20000, 5000),), ())))
    actions = POLICY.decide(s, Arrival(req(9, LONG)))
    assert merge_of(actions).devices == (2, 3)
    assert actions[-1] == Hold(9, actions[-1].reason) and "merge" in actions[-1].reason


def test_a_group_that_holds_it_now_comes_before_less_kv():
    """Devices 2-3 move less KV, but their promised work leaves no room for the request until it drains."""
    s = snap(*tp1s(i0=((req(1, 20000, 15000),), ()), i1=((req(2, 20000, 15000),), ()),
                   i2=((req(3, 20000, 5000),), (req(5, 70000),)), i3=((req(4, 20000, 5000),), (req(6, 70000),))))
    assert merge_of(POLICY.decide(s, Arrival(req(9, LONG)))).devices == (0, 1)


def test_least_work_breaks_a_tie_in_kv():
    s = snap(*tp1s(i0=((req(1, 60000, 5000),), ()), i1=((req(2, 60000, 5000),), ()),
                   i2=((req(3, 20000, 5000),), ()), i3=((req(4, 20000, 5000),), ())))
    assert merge_of(POLICY.decide(s, Arrival(req(9, LONG)))).devices == (2, 3)


def test_smallest_degree_that_holds_it():
    assert merge_of(POLICY.decide(snap(*tp1s()), Arrival(req(9, LONG)))).devices == (0, 1)
    assert merge_of(POLICY.decide(snap(*tp1s()), Arrival(req(9, CAP[2] + 1)))).devices == (0, 1, 2, 3)


def test_merge_covers_whole_instances():
    """A TP2 instance on 0-1 can only join a TP4 merge; the TP1 pair 2-3 is the TP2 candidate."""
    big = inst(0, 2, running=[req(1, 1000, 500)])
    assert merge_of(POLICY.decide(snap(big, inst(2), inst(3)), Arrival(req(9, CAP[2] + 1)))).devices == (0, 1, 2, 3)


# a full merged instance: queue there, or merge a second one

MERGE_S = COST.transform_cost(0, 0, 2).time_s  # an idle TP1 pair merges in the switch overhead alone


def full_tp2(left: int) -> InstanceView:
    """A TP2 instance whose three long requests each have `left` tokens to go: no room for a fourth."""
    return inst(0, 2, running=[req(i, LONG, LONG - left) for i in range(3)])


SLOW_MERGE = GygesPolicy(CostModel(COST.model, HardwareProfile(**{**HW.__dict__, "switch_overhead_s": 5.0})))


def test_a_long_request_merges_a_second_pair_rather_than_queue_behind_a_full_one():
    tp2 = full_tp2(left=20000)
    assert wait_for_room(COST, tp2, LONG, 64) > MERGE_S
    actions = POLICY.decide(snap(tp2, inst(2), inst(3)), Arrival(req(9, LONG)))
    assert merge_of(actions).devices == (2, 3) and "first token comes in" in merge_of(actions).reason
    assert actions[-1] == Hold(9, actions[-1].reason) and "merge" in actions[-1].reason


def test_a_long_request_merges_when_its_first_token_comes_clearly_sooner_than_beside_long_decodes():
    """Room frees within a step, but the full instance's three 75k-token decodes slow every prefill step
    of it by half: a merged pair of its own starts it sooner. Where the merge takes longer, it queues."""
    tp2 = full_tp2(left=1)
    assert 0 < wait_for_room(COST, tp2, LONG, 64) < MERGE_S
    assert isinstance(POLICY.decide(snap(tp2, inst(2), inst(3)), Arrival(req(9, LONG)))[0], Merge)
    assert SLOW_MERGE.decide(snap(tp2, inst(2), inst(3)), Arrival(req(9, LONG))) == [Route(9, 0)]


def test_no_second_merge_when_the_pair_has_no_room_either():
    busy = ([req(1, 60000, 30000)], [req(2, 60000)])
    s = snap(full_tp2(left=20000), *tp1s(i2=busy, i3=busy)[2:])
    assert POLICY.decide(s, Arrival(req(9, LONG)))[0] == Route(9, 0)  # (a pressure merge of the pair may follow)


def test_a_merged_instance_with_room_is_preferred_to_a_full_one():
    """After the second merge, the held request goes to the new instance, not behind the full one."""
    s = snap(full_tp2(left=20000), inst(2, 2, formed_at=1.0), time=1.0, held=(req(9, LONG),))
    assert POLICY.decide(s, TransformDone("merge", (2, 3))) == [Route(9, 2)]


def test_held_for_the_merge_in_progress_while_the_full_instance_drains_slower():
    pending = PendingTransform("merge", (2, 3), started=0.0)
    merging = (inst(2, transforming=True), inst(3, transforming=True))
    actions = POLICY.decide(snap(full_tp2(left=20000), *merging, pending=pending), Arrival(req(9, LONG)))
    assert actions == [Hold(9, actions[0].reason)] and "merge of devices [2, 3]" in actions[0].reason
    queued = SLOW_MERGE.decide(snap(full_tp2(left=1), *merging, pending=pending), Arrival(req(9, LONG)))
    assert queued == [Route(9, 0)]


# refused transformations are not proposed again until something changed

def one_each(skip: int | None = None) -> list[InstanceView]:
    """Four TP1 instances, each running one request (its id is its device), but the one on `skip`."""
    return tp1s(**{f"i{d}": ((req(d, 20000, 5000),), ()) for d in range(4) if d != skip})


REFUSED_01 = Refusal((0, 1), time=10.0, running=frozenset({0, 1}))


def test_a_refused_merge_is_not_proposed_again_with_the_same_requests():
    assert merge_of(POLICY.decide(snap(*one_each()), Arrival(req(9, LONG)))).devices == (0, 1)
    again = POLICY.decide(snap(*one_each(), time=12.0, refused=[REFUSED_01]), Arrival(req(9, LONG)))
    assert merge_of(again).devices == (2, 3)


def test_a_refused_merge_is_proposed_again_after_its_requests_change_or_the_retry_time():
    late = REFUSED_01.time + POLICY.config.refusal_retry_s
    again = POLICY.decide(snap(*one_each(), time=late, refused=[REFUSED_01]), Arrival(req(9, LONG)))
    assert merge_of(again).devices == (0, 1)
    finished = POLICY.decide(snap(*one_each(skip=1), time=12.0, refused=[REFUSED_01]), Arrival(req(9, LONG)))
    assert merge_of(finished).devices == (0, 1)


def test_a_refused_split_is_not_proposed_again_with_the_same_requests():
    merged = inst(0, 2, running=short_requests(6), formed_at=0.0)
    assert isinstance(POLICY.decide(snap(merged, inst(2), inst(3), time=20.0, home=TP1_HOME), Tick())[0], Split)
    refusal = Refusal((0, 1), time=19.0, running=frozenset(range(6)))
    assert POLICY.decide(snap(merged, inst(2), inst(3), time=20.0, refused=[refusal], home=TP1_HOME), Tick()) == []


# one transformation at a time, and nothing routed to it

PENDING = PendingTransform("merge", (0, 1), started=0.0)


def test_requests_for_a_merging_group_are_held():
    s = snap(inst(0, transforming=True), inst(1, transforming=True), inst(2), inst(3), pending=PENDING,
             held=(req(1, LONG),))
    actions = POLICY.decide(s, Arrival(req(2, 1000)))
    assert actions[0] == Hold(1, actions[0].reason)
    assert isinstance(actions[1], Route) and actions[1].instance in (2, 3)
    assert not any(isinstance(a, (Merge, Split)) for a in actions)


def test_instances_of_a_switching_merge_get_nothing_even_when_others_are_full():
    full = [req(i, 30000, 30000) for i in range(2)]
    switching = PendingTransform("merge", (0, 1), started=0.0, switching=True)
    s = snap(inst(0, transforming=True), inst(1, transforming=True), inst(2, running=full), inst(3, running=full),
             pending=switching)
    assert POLICY.decide(s, Arrival(req(9, 1000)))[0].instance in (2, 3)


# riding along with a merge in pre-copy

def merging_pair(load0=(), load1=()) -> list[InstanceView]:
    return [inst(0, running=load0, transforming=True), inst(1, running=load1, transforming=True)]


def test_an_arrival_rides_along_with_a_merge_in_precopy_when_nothing_else_has_room():
    full = [req(i, CAP[1] // 2, CAP[1] // 2) for i in range(2)]
    s = snap(*merging_pair((req(1, 20000, 20000),)), inst(2, running=full), inst(3, running=full), pending=PENDING,
             held=(req(5, LONG),))
    actions = POLICY.decide(s, Arrival(req(9, 1000)))
    assert actions == [Hold(5, actions[0].reason), Route(9, 1)]  # the idler member, then it moves with it


def test_instances_with_room_outside_the_merge_come_first():
    s = snap(*merging_pair(), inst(2), inst(3), pending=PENDING)
    assert POLICY.decide(s, Arrival(req(9, 1000)))[0].instance in (2, 3)


def test_no_ride_along_that_would_leave_the_merged_instance_short():
    # members nearly full: the held long request plus a newcomer would not fit the merged instance
    half = CAP[1] // 2
    load = (req(1, half, half),)
    s = snap(*merging_pair(load, load), time=1.0, held=(req(5, CAP[2] - 2 * half - 500),), pending=PENDING)
    actions = POLICY.decide(s, Arrival(req(9, 1000)))
    assert [type(a) for a in actions] == [Hold, Hold]
    # without that held request it rides along
    s = snap(*merging_pair(load, load), time=1.0, pending=PENDING)
    assert isinstance(POLICY.decide(s, Arrival(req(9, 1000)))[0], Route)


def test_no_ride_along_that_a_device_could_not_receive_at_the_switch():
    # KV-dominated devices (a merge frees little weight memory): member 0 nearly full, member 1 empty.
    # Member 0's device keeps all it has while it takes half of member 1's KV, so member 1 may be
    # promised only what 2 * promised(0) + promised(1) <= the TP2 capacity leaves
    caps = {1: 10000, 2: 20400, 4: 41600}
    m0 = InstanceView(0, (0,), caps[1], 1000, (req(1, 9000, 9000),), transforming=True)
    m1 = InstanceView(1, (1,), caps[1], caps[1], transforming=True)
    s = Snapshot(1.0, 2, 2, 2, caps, (m0, m1), (), PENDING, home=HomeLayout((1, 1), 0.0, 1.0))
    limit = caps[2] - 2 * (9000 + 16) - 16  # 2352, well within member 1's room
    assert POLICY.decide(s, Arrival(req(9, limit)))[0] == Route(9, 1)
    assert isinstance(POLICY.decide(s, Arrival(req(9, limit + 1)))[0], Hold)


def test_no_ride_along_with_a_split():
    split = PendingTransform("split", (0, 1), started=0.0)
    s = snap(inst(0, 2, transforming=True), inst(2, running=[req(1, CAP[1], CAP[1])]),
             inst(3, running=[req(2, CAP[1], CAP[1])]), pending=split)
    assert all(not isinstance(a, Route) or a.instance != 0 for a in POLICY.decide(s, Arrival(req(9, 1000))))


def test_two_requests_that_need_merges_start_one():
    actions = POLICY.decide(snap(*tp1s(), held=(req(1, LONG),)), Arrival(req(2, LONG)))
    assert merge_of(actions).devices == (0, 1)
    assert [type(a) for a in actions] == [Merge, Hold, Hold]


def test_held_request_is_routed_once_the_merge_is_done():
    s = snap(inst(0, 2, formed_at=5.0), inst(2), inst(3), time=5.0, held=(req(1, LONG),))
    assert POLICY.decide(s, TransformDone("merge", (0, 1))) == [Route(1, 0)]


# splits

def short_requests(n: int, first: int = 0) -> list[RequestView]:
    return [req(first + i, 1000, 600) for i in range(n)]


def test_splits_towards_home_after_the_dwell_time():
    merged = inst(0, 2, running=short_requests(6), formed_at=0.0)
    assert POLICY.decide(snap(merged, inst(2), inst(3), time=5.0, home=TP1_HOME), Tick()) == []
    actions = POLICY.decide(snap(merged, inst(2), inst(3), time=10.0, home=TP1_HOME), Tick())
    assert [(a.instance, a.parts) for a in actions] == [(0, 2)] and "home" in actions[0].reason
    assert POLICY.decide(snap(merged, inst(2), inst(3), time=10.0), Tick()) == []  # TP2 is home: it stays


def test_an_idle_merged_instance_splits_after_the_dwell_time_even_if_the_estimate_fits_no_part():
    """Devices whose TP1 instances hold less than the output estimate (a scaled trace on small devices)
    priced an idle merged instance against requests no part can hold, so it stayed merged for good."""
    policy = GygesPolicy(COST, PolicyConfig(output_estimate=CAP[1] + 1))
    merged = inst(0, 2, formed_at=0.0)
    assert policy.decide(snap(merged, inst(2), inst(3), time=5.0, home=TP1_HOME), Tick()) == []
    actions = policy.decide(snap(merged, inst(2), inst(3), time=10.0, home=TP1_HOME), Tick())
    assert [(a.instance, a.parts) for a in actions] == [(0, 2)]


def test_a_queue_longer_than_the_parts_hold_does_not_keep_it_merged():
    """Only the running requests must fit the parts; the queued ones queue there. One queued request
    that fits no part keeps it merged."""
    queue = short_requests(160, 100)  # 160k tokens: more than two TP1 instances hold
    merged = inst(0, 2, running=short_requests(6), waiting=queue, formed_at=0.0)
    actions = POLICY.decide(snap(merged, inst(2), inst(3), time=10.0, home=TP1_HOME), Tick())
    assert [(a.instance, a.parts) for a in actions] == [(0, 2)]
    merged = inst(0, 2, running=short_requests(6), waiting=queue + [req(99, LONG)], formed_at=0.0)
    assert POLICY.decide(snap(merged, inst(2), inst(3), time=10.0, home=TP1_HOME), Tick()) == []


def test_a_tp4_splits_towards_a_tp1_home_in_halves():
    merged = inst(0, 4, running=short_requests(6))
    assert [(a.instance, a.parts) for a in POLICY.decide(snap(merged, time=60.0, home=TP1_HOME), Tick())] == [(0, 2)]
    halves = [inst(0, 2, running=short_requests(3)), inst(2, 2, running=short_requests(3, 3))]
    assert [(a.instance, a.parts) for a in POLICY.decide(snap(*halves, time=60.0, home=TP1_HOME), Tick())] == [(0, 2)]


def test_a_tp4_splits_only_as_far_as_a_tp2_home():
    merged = inst(0, 4, running=short_requests(6))
    assert [(a.instance, a.parts) for a in POLICY.decide(snap(merged, time=60.0, home=(2, 2)), Tick())] == [(0, 2)]
    halves = [inst(0, 2, running=short_requests(3)), inst(2, 2, running=short_requests(3, 3))]
    assert POLICY.decide(snap(*halves, time=60.0, home=(2, 2)), Tick()) == []


def test_no_split_while_a_request_needs_the_merged_instance():
    merged = inst(0, 2, running=[req(1, LONG, 5000)] + short_requests(3, 2))
    assert POLICY.decide(snap(merged, inst(2), inst(3), time=60.0, home=TP1_HOME), Tick()) == []


def test_a_merged_instance_stays_only_while_it_serves_the_margin_more():
    """A merge must serve 10% more; a merged instance is split back unless it still serves 10% more
    than its parts (the merge's own test, negated), the split's stall counted against the parts."""
    group = Group((0, 1), (inst(0, 2),))
    cfg = PolicyConfig(gain_margin=0.1, min_dwell_s=10.0)
    split = lambda merged, parts, stall=0.1: Reshape(group, 2, merged, parts, TransformCost(1.0, stall)).worth(cfg)
    merge = lambda parts, merged: Reshape(group, 1, parts, merged, TransformCost(1.0, 0.1)).worth(cfg)
    assert not merge(100.0, 105.0) and split(105.0, 100.0)   # 5% better merged: neither merges nor stays
    assert merge(100.0, 115.0) and not split(115.0, 100.0)   # 15% better merged: merges, and stays
    assert not split(105.0, 100.0, stall=6.0)                 # a split whose stall costs more than it gains


def test_keeps_balance():
    assert keeps_balance([0.3, 0.1], [0.0], band=0.5)
    assert not keeps_balance([0.9, 0.0], [0.5, 0.5], band=0.5)
    assert keeps_balance([0.9, 0.0], [0.95], band=0.5)


def test_pack_balances_parts_or_refuses():
    bins = pack((req(1, 50), req(2, 40), req(3, 30), req(4, 20)), parts=2, capacity=80)
    assert [[r.id for r in b] for b in bins] == [[1, 4], [2, 3]]
    assert pack((req(1, 90),), parts=2, capacity=80) is None
    assert pack((req(1, 60), req(2, 60), req(3, 30)), parts=2, capacity=80) is None


def test_no_thrash_under_alternating_short_and_long_arrivals():
    """Long requests (each fits only TP2) arrive every 3 s and run 5 s, shorts between them: one merge,
    no split while longs keep coming, one split after they stop and the dwell time has passed."""
    policy, transforms, held = GygesPolicy(COST, PolicyConfig(min_dwell_s=10.0)), [], ()
    tp2, longs = None, {}  # the merged instance's formed_at, running long requests (id -> end time)
    shorts = short_requests(4, 100)
    for step in range(0, 40):
        t = step * 1.0
        longs = {i: end for i, end in longs.items() if end > t}
        arrival = req(step, LONG, arrived=t) if step % 3 == 0 and t < 24 else req(1000 + step, 1500, arrived=t)
        if tp2 is None:
            instances = [inst(0, running=shorts[:2]), inst(1, running=shorts[2:]), inst(2), inst(3)]
        else:
            running = [req(i, LONG, 5000) for i in longs] + shorts
            instances = [inst(0, 2, running=running, formed_at=tp2), inst(2), inst(3)]
        actions = policy.decide(snap(*instances, time=t, held=held, home=TP1_HOME), Arrival(arrival))
        transforms += [(t, a) for a in actions if isinstance(a, (Merge, Split))]
        for a in actions:
            if isinstance(a, Merge):
                tp2 = t  # the merge completes before the next event here
            if isinstance(a, Split):
                tp2 = None
            if isinstance(a, Route) and a.instance == 0 and tp2 is not None and a.request < 1000:
                longs[a.request] = t + 5
        held = tuple(r for r in (*held, arrival) if any(isinstance(a, Hold) and a.request == r.id for a in actions))
    kinds = [(type(a).__name__, t) for t, a in transforms]
    assert kinds[0] == ("Merge", 0.0)
    assert [k for k, _ in kinds] == ["Merge", "Split"]
    last_long_ends = 21 + 5  # the last long arrives at 21 s
    assert kinds[1][1] == last_long_ends  # split at the first event after it finished, not before


# static

def test_static_never_transforms_and_rejects_what_its_layout_cannot_hold():
    static = StaticPolicy()
    s = snap(*tp1s(i0=([req(i, 8000, 4000) for i in range(10)], ())))
    assert static.decide(s, Arrival(req(9, 1000))) == [Route(9, 1)]
    rejected = static.decide(s, Arrival(req(10, LONG)))
    assert len(rejected) == 1 and isinstance(rejected[0], Reject) and str(CAP[1]) in rejected[0].reason
    assert static.decide(s, StepDone(0)) == [] and static.decide(s, Finished(1, 0)) == []


def test_static_routes_long_requests_to_its_large_instances():
    s = snap(inst(0, 2), inst(2), inst(3))
    assert StaticPolicy().decide(s, Arrival(req(9, LONG))) == [Route(9, 0)]


def test_bad_config_is_an_error():
    with pytest.raises(ValueError, match="max_num_seqs"):
        PolicyConfig(max_num_seqs=0)
