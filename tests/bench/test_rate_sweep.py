"""The policies benchmark's rate ladder (benchmarks/policies.py: next_rate), a pure function."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.policies import next_rate  # noqa: E402


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
