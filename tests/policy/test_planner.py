"""The layout planner on hand-made windows: classes, prices, the best layout, hysteresis, pinning."""
from dataclasses import replace

import pytest

from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import ServingLoad
from gyges.policy.planner import (classify, device_seconds, layouts, price_layouts, replan, saturated, start_layout,
                                  window_of)
from gyges.policy.snapshot import HomeLayout, RequestView
from tests.policy.test_policy import CAP, COST, inst, snap, tp1s

CONFIG = PolicyConfig()


def arrivals(n: int, prompt: int, output: int, start: float = 0.0, every: float = 0.1, first_id: int = 0):
    return tuple(RequestView(first_id + i, prompt, prompt + output, 0, start + i * every) for i in range(n))


SHORT = arrivals(100, 1000, 200)        # chat: a TP1 instance batches dozens of these
LONG_CONTEXT = arrivals(100, 20000, 500)  # RAG: a TP1 instance holds three


def test_classes_by_the_smallest_degree_that_holds_them_and_the_output_length():
    window = SHORT[:3] + arrivals(2, 100, 600, first_id=10) + arrivals(1, CAP[1] + 10, 10, first_id=20)
    classes = classify(window, CAP)
    assert [(c.degree, c.long_output, len(c.requests)) for c in classes] == [(1, False, 3), (1, True, 2), (2, False, 1)]
    assert classes[0].tokens == 3 * 1200
    assert classify(arrivals(1, CAP[4] + 1, 1), CAP) == []  # nothing holds it: rejected, not priced


def test_saturated_prices_a_full_instance():
    seen = {}

    class Spy:
        def throughput(self, tp, load, kv_capacity, max_batch, max_batched_tokens=None):
            seen.update(load=load, cap=kv_capacity, batch=max_batch, chunk=max_batched_tokens)
            return 600.0

    assert saturated(Spy(), 2, [(100, 120), (300, 340)], 7000, 16, 256) == 600.0
    assert seen == {"load": ServingLoad(16, 230, 215, 200), "cap": 7000, "batch": 16, "chunk": 256}


def test_every_aligned_cut_of_a_host_is_a_candidate():
    assert layouts(4, [1, 2, 4]) == [(4,), (2, 2), (2, 1, 1), (1, 1, 1, 1)]
    assert len(layouts(8, [1, 2, 4, 8])) == 10 and layouts(8, [2, 4]) == [(4, 4), (4, 2, 2), (2, 2, 2, 2)]


def test_short_requests_are_served_best_by_small_instances_and_long_contexts_by_tp2():
    s = snap(*tp1s())
    assert price_layouts(COST, s, SHORT, CONFIG)[0][0] == (1, 1, 1, 1)
    assert price_layouts(COST, s, LONG_CONTEXT, CONFIG)[0][0] == (2, 2)


def test_a_class_no_instance_holds_is_priced_as_a_merge_not_as_free():
    window = SHORT + arrivals(10, CAP[1] + 1000, 200, first_id=500)
    priced = dict(price_layouts(COST, snap(*tp1s()), window, CONFIG))
    without = dict(price_layouts(COST, snap(*tp1s()), SHORT, CONFIG))
    assert priced[(1, 1, 1, 1)] > without[(1, 1, 1, 1)]
    assert all(v < float("inf") for v in priced.values())


def test_device_seconds_share_work_between_unlike_instances():
    """One kind of work, two instances at 10 and 4 units/s: the window's 14 units take 1 s on 2 devices."""
    from gyges.policy.planner import RequestClass
    import numpy as np
    cls = [RequestClass(1, False, ((6, 14),))]
    assert device_seconds((2, 1), cls, np.array([[4.0, 10.0]]), [1, 2]) == pytest.approx(3 * 14 / 14)


def test_the_window_is_the_last_minute_or_the_last_few_dozen_arrivals():
    recent = arrivals(100, 1000, 200, every=2.0)  # one every 2 s, the last at 198 s
    s = replace(snap(*tp1s(), time=200.0), recent=recent)
    assert len(window_of(s, CONFIG)) == CONFIG.plan_min_requests  # 30 in the last minute, fewer than 32
    dense = arrivals(100, 1000, 200, start=145.0, every=0.5)  # 100 in the last 55 s
    assert len(window_of(replace(s, recent=dense), CONFIG)) == 100


def planned(s, home: HomeLayout | None, recent, time: float):
    return replan(COST, replace(s, time=time, home=home, recent=recent), CONFIG)


def test_the_first_decision_takes_the_present_layout_as_home_then_replans_every_replan_s():
    s = snap(*tp1s())
    first = planned(s, None, (), 0.0)
    assert first.sizes == (1, 1, 1, 1) and first.planned_at == 0.0
    assert planned(s, first, LONG_CONTEXT, CONFIG.replan_s - 1) is None
    assert planned(s, first, LONG_CONTEXT, CONFIG.replan_s).planned_at == CONFIG.replan_s


def test_a_better_layout_becomes_home_only_after_winning_twice_in_a_row():
    s = snap(*tp1s())
    home = HomeLayout((1, 1, 1, 1), 0.0, 0.0)
    window = arrivals(100, 20000, 500, start=5.0)
    once = planned(s, home, window, 10.0)
    assert once.sizes == (1, 1, 1, 1) and once.challenger == (2, 2) and once.streak == 1
    twice = planned(s, once, window, 20.0)
    assert twice.sizes == (2, 2) and twice.since == 20.0 and "device-seconds" in twice.reason
    assert twice.priced[0][0] == (2, 2)
    # noise: a window where the challenger wins by less than the margin resets the streak
    interrupted = planned(s, replace(once, challenger=(2, 2)), SHORT + tuple(replace(r, arrived=15 + r.arrived)
                                                                             for r in SHORT), 20.0)
    assert interrupted.sizes == (1, 1, 1, 1) and interrupted.streak == 0


def test_too_few_recent_arrivals_keep_the_home():
    home = HomeLayout((1, 1, 1, 1), 0.0, 0.0)
    kept = planned(snap(*tp1s()), home, LONG_CONTEXT[:CONFIG.plan_min_requests - 1], 30.0)
    assert kept.sizes == home.sizes and kept.planned_at == 30.0


def test_a_pinned_home_is_never_replanned():
    pinned = replace(CONFIG, home_layout=(2, 1, 1))
    s = replace(snap(*tp1s()), recent=SHORT)
    first = replan(COST, s, pinned)
    assert first.sizes == (2, 1, 1) and first.pinned and "--home-layout" in first.reason
    assert replan(COST, replace(s, home=first, time=100.0), pinned) is None


def test_the_start_layout_is_the_best_for_the_first_window_and_holds_its_weights():
    s = snap(*tp1s())
    assert start_layout(COST, s, LONG_CONTEXT, CONFIG) == (2, 2)
    assert start_layout(COST, s, (), CONFIG) == (1, 1, 1, 1)
    no_tp1 = replace(s, kv_capacity_by_tp={1: 0, 2: CAP[2], 4: CAP[4]})  # weights fill a TP1 device
    assert start_layout(COST, no_tp1, (), CONFIG) == (2, 2)
    assert all(1 not in lay for lay, _ in price_layouts(COST, no_tp1, SHORT, CONFIG))
