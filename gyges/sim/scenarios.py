"""Traffic that changes, as named generators (`gyges simulate --scenario NAME`), defined so that they
cannot be tuned to a result:

- shift: azure-code's requests for 300 s, then Mooncake's for 150 s, twice; each phase a Poisson
  process whose rate is `load` times the rate bound (`bound.rate_bound`) of that phase's own trace
  on the setting simulated.
- bursts: 600 s of azure-code's requests at a steady Poisson rate (`load` times its bound), plus every
  150 s a burst of 8 Mooncake requests longer than one TP1 instance holds, arriving within 15 s.

Requests are taken from each trace in its own order, lengths unchanged (requests no instance of the
setting holds are skipped), arrival times drawn from a fixed seed.
"""
import functools
from dataclasses import dataclass

import numpy as np

from gyges.bench.traces import TraceRequest, load_trace
from gyges.sim.bound import rate_bound
from gyges.sim.run import Setup

BOUND_SAMPLE = 2000  # requests of a trace its rate bound is computed on


@dataclass(frozen=True)
class Phase:
    trace: str
    start_s: float
    duration_s: float


@dataclass(frozen=True)
class Scenario:
    phases: tuple[Phase, ...]
    bursts: tuple[float, ...] = ()   # start times of bursts of long Mooncake requests
    burst_size: int = 8
    burst_span_s: float = 15.0

    @property
    def duration_s(self) -> float:
        return max(p.start_s + p.duration_s for p in self.phases)


SCENARIOS = {
    "shift": Scenario(tuple(Phase(t, start, d) for start, (t, d) in zip(
        (0.0, 300.0, 450.0, 750.0), [("azure-code", 300.0), ("mooncake-conversation", 150.0)] * 2))),
    "bursts": Scenario((Phase("azure-code", 0.0, 600.0),), bursts=(0.0, 150.0, 300.0, 450.0)),
}


@functools.cache
def _requests(trace: str, largest: int) -> tuple[TraceRequest, ...]:
    """A shipped trace's requests that some instance of up to `largest` KV tokens holds."""
    return tuple(r for r in load_trace(trace) if r.input_len + r.output_len <= largest)


def trace_bound(trace: str, setup: Setup) -> float:
    """Requests/s no layout exceeds on `setup` for a trace's requests (its first BOUND_SAMPLE)."""
    key = (trace, repr(setup))
    if key not in _BOUNDS:
        caps = setup.kv_capacities()
        reqs = _requests(trace, max(caps.values()))[:BOUND_SAMPLE]
        _BOUNDS[key] = rate_bound(setup.cost(), caps, [(r.input_len, r.output_len) for r in reqs], setup.gpus,
                                  setup.max_num_seqs, setup.max_batched_tokens).max_rate
    return _BOUNDS[key]


_BOUNDS: dict[tuple[str, str], float] = {}


def generate(name: str, setup: Setup, load: float, seed: int = 0) -> list[TraceRequest]:
    """The scenario's requests at `load` times each phase's rate bound, in arrival order."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    if load <= 0:
        raise ValueError(f"the load must be positive, got {load}")
    sc, rng = SCENARIOS[name], np.random.default_rng(seed)
    caps = setup.kv_capacities()
    cursor: dict[str, int] = {}
    out = []
    for p in sc.phases:
        pool, rate = _requests(p.trace, max(caps.values())), load * trace_bound(p.trace, setup)
        t = p.start_s + rng.exponential(1 / rate)
        while t < p.start_s + p.duration_s:
            i = cursor.get(p.trace, 0)
            r = pool[i % len(pool)]
            cursor[p.trace] = i + 1
            out.append(TraceRequest(t, r.input_len, r.output_len))
            t += rng.exponential(1 / rate)
    if sc.bursts:
        long = [r for r in _requests("mooncake-conversation", max(caps.values()))
                if r.input_len + r.output_len > caps[1]]
        k = 0
        for start in sc.bursts:
            for t in sorted(start + rng.uniform(0, sc.burst_span_s, sc.burst_size)):
                r = long[k % len(long)]
                k += 1
                out.append(TraceRequest(float(t), r.input_len, r.output_len))
    return sorted(out, key=lambda r: r.arrival_s)


def phases_of(name: str, trace: list[TraceRequest]) -> list[list[TraceRequest]]:
    """A generated scenario's requests by phase (bursts with the phase they fall in)."""
    sc = SCENARIOS[name]
    return [[r for r in trace if p.start_s <= r.arrival_s < p.start_s + p.duration_s] for p in sc.phases]


def base_rate(name: str, setup: Setup) -> float:
    """Mean requests/s of the scenario at load 1."""
    return len(generate(name, setup, 1.0)) / SCENARIOS[name].duration_s
