"""The highest request rate a policy sustains within the SLO: a search over rates, as DistServe's.

Pure: `attains(rate) -> bool` runs one simulation with the trace's arrivals rescaled to `rate` and
says whether enough requests met the SLO; this module only picks which rates to try.
"""
from collections.abc import Callable


def max_rate(attains: Callable[[float], bool], start: float, rel_tol: float = 0.02,
             max_runs: int = 16, factor: float = 2.0) -> float:
    """The highest rate found to attain (0.0 if none does), within `rel_tol` of the boundary.

    Multiplies (or divides) `start` by `factor` until it brackets the boundary, then bisects. Assumes
    attainment falls as the rate rises; `max_runs` bounds the simulations. A start just above the
    boundary is cheapest when failing runs stop early (gyges.sim.run.GiveUp).
    """
    if start <= 0:
        raise ValueError(f"the starting rate must be positive, got {start}")
    runs, ok = 0, None
    lo, hi = 0.0, None
    rate = start
    while runs < max_runs:
        runs += 1
        ok = attains(rate)
        if ok:
            lo = rate
            if hi is None:
                rate *= factor
                continue
        else:
            hi = rate
            if lo == 0.0:
                rate /= factor
                if runs >= max_runs or rate < start / 1024:
                    break
                continue
        if hi - lo <= rel_tol * hi:
            break
        rate = (lo + hi) / 2
    return lo


