"""The latency-aware router on hand-made instances: queued prefill work, predicted TTFT, where a
request starts soonest (draining instances, kept for last, are tested in test_homing.py)."""
from dataclasses import replace

from gyges.policy.config import PolicyConfig
from gyges.policy.policy import GygesPolicy, StaticPolicy
from gyges.policy.router import least_ttft, predicted_ttft, prefill_backlog, soonest
from gyges.policy.snapshot import Arrival, HomeLayout, Route
from tests.policy.test_policy import CAP, COST, POLICY, inst, req, snap, tp1s

CONFIG = PolicyConfig()
DOC = 60000  # a long document's prompt


def document_queued(first: int):
    """An instance with a long document's prompt waiting, nothing decoding."""
    return inst(first, waiting=[req(100 + first, DOC + 500, prompt=DOC)])


def test_backlog_counts_waiting_prompts_and_running_remainders():
    i = inst(0, running=[req(1, 3000, 1000, prompt=2000), req(2, 3000, 2500, prompt=2000)],
             waiting=[req(3, 5000, prompt=4000)])
    assert prefill_backlog(i) == 1000 + 0 + 4000


def test_predicted_ttft_grows_with_the_prompts_queued_ahead():
    short = req(9, 600, prompt=500)
    idle, queued = inst(0), document_queued(1)
    assert predicted_ttft(COST, queued, short, CONFIG) > 50 * predicted_ttft(COST, idle, short, CONFIG)


def test_a_short_request_is_not_queued_behind_a_long_prefill():
    """Freeness alone prefers the emptier instance, whose queue holds a document; the router does not."""
    decoding = inst(0, running=[req(i, 9000, 8500, prompt=500) for i in range(6)])
    s = snap(decoding, document_queued(1), inst(2, running=[req(20 + i, 9000, 8500, prompt=500) for i in range(6)]),
             inst(3, running=[req(30 + i, 9000, 8500, prompt=500) for i in range(6)]))
    short = req(9, 600, prompt=500)
    freeness = GygesPolicy(COST, replace(CONFIG, router="freeness"))
    assert freeness.decide(s, Arrival(short)) == [Route(9, 1)]
    assert POLICY.decide(s, Arrival(short))[0].instance != 1


def test_static_layouts_route_with_the_same_router_or_by_room():
    s = snap(inst(0, running=[req(i, 9000, 8500, prompt=500) for i in range(6)]), document_queued(1), inst(2), inst(3))
    assert StaticPolicy(CONFIG, COST).decide(s, Arrival(req(9, 600, prompt=500)))[0].instance in (0, 2, 3)
    assert StaticPolicy(CONFIG).decide(s, Arrival(req(9, 600, prompt=500)))[0] == Route(9, 2)  # no cost: by room


def test_when_nothing_starts_it_soon_the_least_predicted_ttft_wins():
    holders = [document_queued(0), inst(1, waiting=[req(50, 20500, prompt=20000)])]
    short = req(9, 600, prompt=500)
    assert soonest(COST, holders, short, CONFIG, set(), need_room=False) is None
    assert least_ttft(COST, holders, short, CONFIG, set(), lambda i: 0.0).id == 1


def test_requests_only_the_large_instance_holds_still_go_there():
    tp2 = inst(0, 2)
    s = replace(snap(tp2, inst(2), inst(3)), home=HomeLayout((1, 1, 1, 1), 0.0, 0.0))
    assert POLICY.decide(s, Arrival(req(9, CAP[1] + 100)))[0] == Route(9, 0)


def test_tp1_instances_of_a_busy_host_share_the_load():
    s = snap(*tp1s(i0=((req(1, 3000, 2500, prompt=500),), ())))
    assert POLICY.decide(s, Arrival(req(9, 600, prompt=500)))[0].instance != 0
