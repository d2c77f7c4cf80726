from gyges.sim.backend import Flight, _largest_j


def test_largest_j_matches_a_running_sum():
    for t0, dt, s in [(0.01, 1e-5, 0.5), (0.02, 0.0, 0.1), (0.003, 2e-4, 1.0), (0.5, 0.0, 0.1)]:
        total, j = 0.0, 0
        while total + t0 + dt * j <= s:
            total += t0 + dt * j
            j += 1
        assert _largest_j(t0, dt, s) == j


def test_flight_bounds_steps():
    f = Flight(None, [0], 1.0, 0.01, 0.001, 100, [])
    assert f.steps_within(0.0) == 1 and f.steps_within(1e9) == 100
    assert f.elapsed(3) == 0.01 * 3 + 0.001 * 3
