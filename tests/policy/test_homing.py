"""Moving a host towards its home layout: the distance between layouts, the cheapest move first,
splits in halves after the dwell time and only when the running requests fit."""
from collections import Counter
from dataclasses import replace

from gyges.policy.config import PolicyConfig
from gyges.policy.homing import distance, drains, toward_home
from gyges.policy.snapshot import HomeLayout, Merge, SetDraining, Split
from tests.policy.test_policy import COST, LONG, inst, req, snap, tp1s

CONFIG = PolicyConfig()


def home(*sizes) -> HomeLayout:
    return HomeLayout(tuple(sizes), 0.0, 0.0)


def test_distance_counts_devices_times_the_levels_they_are_from_home():
    d = lambda have, want: distance(Counter(have), Counter(want))
    assert d([1, 1, 1, 1], [1, 1, 1, 1]) == d([2, 1, 1], [1, 2, 1]) == 0
    assert d([1, 1, 1, 1], [2, 2]) == 4 and d([2, 1, 1], [2, 2]) == 2
    assert d([4], [1, 1, 1, 1]) == 8 and d([2, 2], [1, 1, 1, 1]) == 4


def test_idle_pairs_merge_first():
    busy = ((req(1, 20000, 15000),), ())
    s = snap(*tp1s(i0=busy, i1=busy))
    move = toward_home(COST, s, s.instances, home(2, 2), CONFIG)
    assert move == Merge((2, 3), move.reason) and "home" in move.reason


def test_nothing_to_do_at_home():
    s = snap(inst(0, 2), inst(2), inst(3))
    assert toward_home(COST, s, s.instances, home(2, 1, 1), CONFIG) is None
    assert toward_home(COST, s, s.instances, home(1, 1, 2), CONFIG) is None  # the same sizes, anywhere


def test_a_split_waits_for_the_dwell_time_and_for_its_requests_to_fit_the_halves():
    young = snap(inst(0, 2, formed_at=5.0), inst(2), inst(3), time=10.0)
    assert toward_home(COST, young, young.instances, home(1, 1, 1, 1), CONFIG) is None
    old = replace(young, time=15.0)
    assert toward_home(COST, old, old.instances, home(1, 1, 1, 1), CONFIG) == Split(0, 2, "towards the home layout 1+1+1+1")
    busy = snap(inst(0, 2, running=[req(1, LONG, 5000)], formed_at=0.0), inst(2), inst(3), time=60.0)
    assert toward_home(COST, busy, busy.instances, home(1, 1, 1, 1), CONFIG) is None


def test_a_host_can_mix_merges_and_splits_on_the_way():
    s = snap(inst(0, 4), time=60.0)
    assert isinstance(toward_home(COST, s, s.instances, home(2, 1, 1), CONFIG), Split)
    s = snap(inst(0, 2), inst(2), inst(3), time=60.0)
    assert isinstance(toward_home(COST, s, s.instances, home(4), CONFIG), Merge)


def test_one_busy_instance_above_home_drains_at_a_time():
    """Two TP2 instances with more running than two TP1 halves hold, home all TP1: the one with less
    left to finish drains; the other waits its turn; one whose requests need TP2 never drains."""
    busy = [req(i, 40000, 30000) for i in range(5)]    # 200k tokens: more than two TP1 halves hold
    busier = [req(10 + i, 40000, 10000) for i in range(5)]
    s = snap(inst(0, 2, running=busy), inst(2, 2, running=busier), time=60.0)
    assert drains(s, s.instances, home(1, 1, 1, 1)) == [SetDraining(0, True, "to split towards the home layout 1+1+1+1")]
    both = snap(replace(inst(0, 2, running=busy), draining=True), inst(2, 2, running=busier), time=60.0)
    assert drains(both, both.instances, home(1, 1, 1, 1)) == []
    assert drains(both, both.instances, home(2, 2))[0] == SetDraining(0, False, "its size is home again (2+2)")
    long = snap(inst(0, 2, running=busy + [req(9, LONG, 1000)]), inst(2, 2, running=busier), time=60.0)
    assert [a.instance for a in drains(long, long.instances, home(1, 1, 1, 1))] == [2]


def test_a_draining_instance_gets_no_new_requests_while_others_hold_them():
    from gyges.policy.snapshot import Arrival
    from tests.policy.test_policy import POLICY
    s = snap(replace(inst(0, 2), draining=True), inst(2), inst(3), home=(1, 1, 1, 1))
    assert POLICY.decide(s, Arrival(req(9, 2000)))[0].instance in (2, 3)
    assert POLICY.decide(s, Arrival(req(9, LONG)))[0].instance == 0  # only it holds this one
