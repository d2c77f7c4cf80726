"""The planner's linear program: exact on cases with a known answer, never above what capacity allows."""
import itertools

import numpy as np
import pytest

from gyges.policy.lp import served_fraction, simplex_max


def test_simplex_finds_a_textbook_optimum():
    # max 3x + 5y  s.t.  x <= 4, 2y <= 12, 3x + 2y <= 18  ->  x = 2, y = 6, 36
    value, x = simplex_max(np.array([3.0, 5.0]), np.array([[1.0, 0], [0, 2], [3, 2]]), np.array([4.0, 12, 18]))
    assert value == pytest.approx(36) and x == pytest.approx([2, 6])


def test_simplex_says_unbounded():
    value, _ = simplex_max(np.array([1.0, 1.0]), np.array([[1.0, -1.0]]), np.array([1.0]))
    assert value == float("inf")


def test_one_kind_of_work_is_served_by_every_instance_at_its_rate():
    # 2 instances at 10/s and 3 at 4/s serve 32/s: 64 units take 2 s
    lam, share = served_fraction(np.array([[10.0, 4.0]]), np.array([64.0]), np.array([2.0, 3.0]))
    assert lam == pytest.approx(0.5) and share[0] == pytest.approx([20 / 32, 12 / 32])


def test_work_only_one_kind_can_serve_goes_there_and_the_rest_fills_around_it():
    # long work only on kind 1 (rate 5); short work anywhere (10 on kind 0, 8 on kind 1); one of each
    lam, share = served_fraction(np.array([[10.0, 8.0], [0.0, 5.0]]), np.array([10.0, 2.0]), np.array([1.0, 1.0]))
    # kind 0 serves short only; kind 1 spends 2λ/5 on long and the rest on short: 10 + 8 (1 - 0.4 λ) = 10 λ
    assert lam == pytest.approx(18 / 13.2) and share[1, 0] == 0 and share[1, 1] == pytest.approx(1.0)


def test_work_nobody_can_serve_serves_nothing():
    lam, _ = served_fraction(np.array([[10.0], [0.0]]), np.array([5.0, 1.0]), np.array([4.0]))
    assert lam == 0.0


def test_the_optimum_is_feasible_and_no_grid_assignment_beats_it():
    rng = np.random.default_rng(7)
    for _ in range(20):
        rates = rng.uniform(1, 10, (2, 2)) * (rng.random((2, 2)) > 0.2)
        rates[:, 1] = np.maximum(rates[:, 1], 0.5)  # kind 1 serves everything
        work, counts = rng.uniform(1, 20, 2), rng.integers(1, 4, 2).astype(float)
        lam, share = served_fraction(rates, work, counts)
        busy = [(share[:, k] * lam * work / np.where(rates[:, k] > 0, rates[:, k], np.inf)).sum() for k in range(2)]
        assert all(b <= c + 1e-9 for b, c in zip(busy, counts)) and share.sum(axis=1) == pytest.approx([1, 1])
        best = 0.0
        for f0, f1 in itertools.product(np.linspace(0, 1, 41), repeat=2):  # share of each work on kind 0
            f = np.array([[f0, 1 - f0], [f1, 1 - f1]])
            if np.any((f > 0) & ~(rates > 0)):
                continue
            t = [(f[:, k] * work / np.where(rates[:, k] > 0, rates[:, k], np.inf)).sum() / counts[k] for k in range(2)]
            best = max(best, 1 / max(t))
        assert lam >= best - 1e-9
