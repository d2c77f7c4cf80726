"""The pure half of --fit: loads from the requests' progress, held-back runs, fitting known profiles."""
import math
from dataclasses import replace

import pytest

from gyges.policy.cost_model import CostModel, StepLoad, StepSample
from gyges.policy.profiles import CPU_NOMINAL
from gyges.sim.fit import Measured, Point, errors, fit_profile, held_back, run_name, sample_dict, sample_of, step_load
from gyges.sim.profiles import model
from gyges.sim.run import Setup


def test_step_load_from_progress():
    # a 10-token prompt prefilled whole, a 20-token one in its second chunk, a decode at length 13, one idle
    load = step_load([(10, 0, 10), (20, 8, 16), (10, 12, 13), (5, 6, 6)])
    assert load == StepLoad.of([(10, 0), (8, 8)], [13])


def test_every_third_run_is_held_back():
    runs = [run_name(tp, Point(b, 16, 4)) for tp in (1, 2) for b in (1, 2, 4)]
    assert held_back(runs * 2) == {"tp1-b4-p16", "tp2-b4-p16"}  # sorted: b1, b2, b4 per degree


def _cost(hw=CPU_NOMINAL) -> CostModel:
    return CostModel(Setup(model("llama-3.1-8b"), hw, gpus=2, max_tp=2).cost().model, hw)


def _measured(cost: CostModel, scale: float = 1.0) -> list[Measured]:
    out = []
    for tp in (1, 2):
        for b, p in ((1, 16), (4, 64), (16, 32), (2, 256)):
            p_ = Point(b, p, 4)
            for load in (StepLoad.of([(p, 0)] * b), StepLoad.of(decode_lens=[p + 1] * b), StepLoad.of(decode_lens=[p + 2] * b)):
                out.append(Measured(run_name(tp, p_), StepSample(tp, load.prefill_tokens, load.decode_tokens,
                                                                 load.context_tokens, scale * cost.step_time(tp, load),
                                                                 load.kv_read_tokens)))
    return out


def test_fit_recovers_a_known_profile_from_the_runs_it_keeps():
    truth = replace(CPU_NOMINAL, mem_efficiency=0.5, flop_efficiency=0.25, link_efficiency=0.4,
                    link_latency=1e-4, step_overhead_s=2e-3)
    measured = _measured(_cost(truth))
    hold = held_back([m.run for m in measured])
    hw = fit_profile(measured, _cost().model, CPU_NOMINAL, hold)
    for f in ("mem_efficiency", "flop_efficiency", "link_efficiency", "link_latency", "step_overhead_s"):
        assert getattr(hw, f) == pytest.approx(getattr(truth, f), rel=1e-6)
    e = errors(CostModel(_cost().model, hw), [m for m in measured if m.run in hold])
    assert e["step_max_abs"] < 1e-6 and e["run_max_abs"] < 1e-6


def test_errors_per_step_and_per_run():
    cost = _cost()
    e = errors(cost, _measured(cost, scale=2.0))  # every step measured at twice the prediction
    assert e["step_median_abs"] == pytest.approx(0.5) and e["step_max_abs"] == pytest.approx(0.5)
    assert e["runs"] and all(v == pytest.approx(-0.5) for v in e["runs"].values())
    with pytest.raises(ValueError):
        errors(cost, [])


def test_samples_round_trip_through_json_dicts():
    m = _measured(_cost())[0]
    assert sample_of(sample_dict(m)) == m
    assert not math.isinf(m.sample.seconds)
