from dataclasses import replace

import pytest

from gyges.policy.cost_model import CostModel, StepLoad
from gyges.sim.paper import tp4_loss, tp_efficiency_for
from gyges.sim.profiles import gpu, model
from gyges.sim.run import Setup


def cost(e: float) -> CostModel:
    return Setup(model("qwen2.5-32b"), replace(gpu("h100"), tp_efficiency=e)).cost()


def test_tp_efficiency_slows_only_tp_above_one():
    load = StepLoad.of(decode_lens=[500] * 8)
    neutral, slow = cost(1.0), cost(0.5)
    assert slow.step_time(1, load) == neutral.step_time(1, load)
    q = neutral.quantities(4, load)
    by_hand = (q[:2] * 4) @ neutral.unit_costs()[:2] + q[2:] @ neutral.unit_costs()[2:]  # 0.5 ** -log2(4)
    assert slow.step_time(4, load) == pytest.approx(by_hand, rel=1e-12)


def test_shipped_h100_profile_reproduces_the_papers_tp4_loss():
    shipped = Setup(model("qwen2.5-32b"), gpu("h100")).cost()
    assert tp4_loss(shipped, 256) == pytest.approx(0.57, abs=0.01)
    assert tp4_loss(cost(1.0), 256) < 0.2  # without the term TP4 loses little
    assert tp4_loss(cost(tp_efficiency_for(cost(1.0), 0.4, 256)), 256) == pytest.approx(0.4, abs=1e-6)
