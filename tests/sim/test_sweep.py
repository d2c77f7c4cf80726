import pytest

from gyges.sim.sweep import max_rate


@pytest.mark.parametrize("boundary,start", [(3.7, 1.0), (0.3, 1.0), (5.0, 5.0)])
def test_max_rate_brackets_and_bisects(boundary, start):
    tried = []

    def attains(rate):
        tried.append(rate)
        return rate <= boundary

    found = max_rate(attains, start, rel_tol=0.05)
    assert 0.95 * boundary <= found <= boundary
    assert len(tried) <= 16


def test_max_rate_none_attains():
    assert max_rate(lambda r: False, 1.0, max_runs=6) == 0.0




def test_max_rate_brackets_by_its_factor_from_above():
    tried = []

    def attains(rate):
        tried.append(rate)
        return rate <= 2.0

    assert 0.98 * 2.0 <= max_rate(attains, 9.0, rel_tol=0.02, factor=1.5) <= 2.0
    assert tried[:4] == [9.0, 6.0, 4.0, pytest.approx(8 / 3)]  # down by 1.5 until one attains
