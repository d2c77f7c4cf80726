"""The policies benchmark's pure parts (benchmarks/policies.py): the rate ladder and the layout timeline."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.policies import Run, layout_segments, next_rate, tpot_target_ms  # noqa: E402
from gyges.bench.slo import Baseline, Line  # noqa: E402


def walk(threshold: float, start=1.0, factor=2.0, max_runs=5) -> list[float]:
    """The rates a policy that meets the SLO up to `threshold` is sent, in order."""
    met, order = {}, []
    while (rate := next_rate(met, start, factor, max_runs)) is not None:
        order.append(rate)
        met[rate] = rate <= threshold
    return order


def test_climbs_while_the_slo_holds_then_bisects():
    assert walk(threshold=5.0) == [1.0, 2.0, 4.0, 8.0, 32 ** 0.5]


def test_descends_while_it_fails_then_bisects():
    assert walk(threshold=0.3) == [1.0, 0.5, 0.25, 0.125 ** 0.5, (0.25 * 0.125 ** 0.5) ** 0.5]


def test_stops_after_max_runs_and_never_repeats_a_rate():
    order = walk(threshold=1.5, max_runs=3)
    assert order == [1.0, 2.0, 2 ** 0.5] and len(set(order)) == len(order)


def test_gives_up_descending_after_four_halvings():
    assert walk(threshold=0.0, max_runs=10) == [1.0, 0.5, 0.25, 0.125, 0.0625]


def test_layout_timeline_keeps_the_instances_a_merge_leaves_out():
    """4 devices: 2 and 3 merge from 1.0 s to 1.5 s and split back at 4.0-4.2 s; 0 and 1 serve throughout."""
    merge = {"started": 101.0, "duration_s": 0.5, "from": [[2], [3]], "to": [[2, 3]]}
    split = {"started": 104.0, "duration_s": 0.2, "from": [[2, 3]], "to": [[2], [3]]}
    run = Run(None, 100.0, [[0], [1], [2], [3]], [split, merge])
    assert sorted(layout_segments(run, 6.0)) == sorted([
        (0.0, 6.0, (0,), 1), (0.0, 6.0, (1,), 1),
        (0.0, 1.0, (2,), 1), (1.0, 1.5, (2,), None), (0.0, 1.0, (3,), 1), (1.0, 1.5, (3,), None),
        (1.5, 4.0, (2, 3), 2), (4.0, 4.2, (2, 3), None), (4.2, 6.0, (2,), 1), (4.2, 6.0, (3,), 1)])


def test_the_servers_tpot_target_is_a_share_of_the_tightest_tpot_limit():
    base = Baseline(Line(0.1, 0.002), Line(0.07, 0.0002))
    assert tpot_target_ms("slo", base) == pytest.approx(5 * 70 * 0.8)  # 5x the shortest prompt's TPOT, 80% of it
    assert tpot_target_ms("250", base) == 250.0 and tpot_target_ms("0", base) == 0.0
