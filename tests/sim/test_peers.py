"""Peer models on tiny traces."""
from dataclasses import replace

import numpy as np
import pytest

from gyges.bench.traces import TraceRequest
from gyges.policy.cost_model import CostModel, StepLoad
from gyges.policy.policy import StaticPolicy
from gyges.sim.peers import FlyingServingPolicy, KunServePolicy, LlumnixPolicy, SequenceParallelCost, peers
from gyges.sim.run import simulate
from tests.sim.test_run import setup

SHORTS = [TraceRequest(0.0, 300, 20) for _ in range(3)]
LONG = TraceRequest(0.001, 3000, 20)  # fits no TP1 instance of 2,000 tokens


def test_llumnix_keeps_the_large_instance_for_long_requests():
    s = setup(gpus=4, kv_tokens=2000)
    alone = s.cost().step_time(2, StepLoad.of([(3000, 0)]))
    llumnix = simulate(SHORTS + [LONG], s, LlumnixPolicy(), per_host=(2, 1, 1))
    assert all(o.error is None for o in llumnix.outcomes) and llumnix.transformations == 0
    assert llumnix.outcomes[-1].ttft_s == pytest.approx(alone, rel=1e-9)  # nothing ahead of it on the TP2
    static = simulate(SHORTS + [LONG], s, StaticPolicy(), per_host=(2, 1, 1))
    assert static.outcomes[-1].ttft_s > alone  # most room first: a short one went to the TP2


def test_kunserve_merges_under_memory_pressure():
    s = setup(gpus=2, kv_tokens=2000)
    trace = [TraceRequest(0.01 * i, 900, 100) for i in range(8)]  # two fit per TP1 instance at a time
    r = simulate(trace, s, KunServePolicy(s.cost()), per_host=(1, 1))
    assert all(o.error is None for o in r.outcomes) and r.transformations >= 1


def test_flying_serving_switches_the_whole_host():
    s = setup(gpus=4, kv_tokens=2000)
    r = simulate([LONG], s, FlyingServingPolicy(s.cost()), per_host=(1, 1, 1, 1))
    assert r.outcomes[0].error is None
    assert any(len(devs) == 4 for _, layout in r.layouts for devs in layout)


def test_sequence_parallel_cost_reads_whole_weights():
    s = setup(gpus=2)
    neutral = replace(s, hw=replace(s.hw, tp_efficiency=1.0))
    esp, tp = replace(neutral, cost_model=SequenceParallelCost).cost(), neutral.cost()
    load = StepLoad.of([(100, 50)], [400, 700])
    assert np.allclose(esp.quantities(1, load), tp.quantities(1, load))
    assert esp.quantities(2, load)[0] > tp.quantities(2, load)[0]  # whole weights on each device
    assert esp.quantities(2, load)[1] == pytest.approx(tp.quantities(1, load)[1] / 2)
    assert isinstance(esp, CostModel) and esp.quantities(2, load)[2] == 0


def test_every_peer_serves_a_tiny_trace():
    s = setup(gpus=4, kv_tokens=2000)
    for name, (policy, sizes, on) in peers(s, 3020).items():
        r = simulate(SHORTS + [LONG], on, policy, per_host=sizes)
        assert all(o.error is None for o in r.outcomes), name
