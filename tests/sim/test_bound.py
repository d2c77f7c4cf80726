"""The rate bound by hand on a cost model whose step times are simple."""
import pytest

from gyges.policy.cost_model import ServingLoad
from gyges.sim.bound import rate_bound


class FlatCost:
    """Tokens/s per instance: `tokens_s[tp]` whatever the load (the bound's arithmetic alone)."""
    def __init__(self, tokens_s):
        self.tokens_s = tokens_s

    def throughput(self, tp, load: ServingLoad, kv_capacity, max_batch, max_batched_tokens=None):
        return self.tokens_s[tp]


def test_each_group_goes_to_its_best_degree_and_device_seconds_bound_the_rate():
    cost = FlatCost({1: 100.0, 2: 300.0, 4: 400.0})   # per device: 100, 150, 100
    caps = {1: 1000, 2: 5000, 4: 20000}
    reqs = [(900, 100)] * 3 + [(4000, 1000)]           # three fit TP1, one needs TP2
    b = rate_bound(cost, caps, reqs, devices=4, max_num_seqs=8, max_batched_tokens=512)
    assert b.per_device_tok_s == {1: 100.0, 2: 150.0, 4: 100.0}
    assert b.best_tp == {1: 2, 2: 2}
    # device-seconds: 3 x 1000 / 150 + 5000 / 150 = 53.33; 4 devices serve 4 requests per 53.33 s
    assert b.max_rate == pytest.approx(4 * 4 / (8000 / 150))


def test_a_request_no_degree_holds_is_an_error():
    with pytest.raises(ValueError, match="fits no degree"):
        rate_bound(FlatCost({1: 1.0}), {1: 10}, [(20, 1)], 1, 8, 512)


def test_compare_reports_the_bound_beside_the_best_static_that_served_everyone(capsys):
    from gyges.bench.traces import TraceRequest
    from gyges.sim.compare import bound_of
    from gyges.sim.profiles import gpu, model
    from gyges.sim.run import Setup
    setup = Setup(model("llama-3.1-8b"), gpu("h100"), gpus=8)
    trace = [TraceRequest(float(i), 2000 + 100 * i, 200) for i in range(20)]
    results = {"gyges": {"max_rate_at_slo": 3.0, "rejected": 0}, "static-tp1": {"max_rate_at_slo": 4.0, "rejected": 2},
               "static-tp2": {"max_rate_at_slo": 2.0, "rejected": 0}}
    out = bound_of(setup, trace, results)
    assert out["best_static"] == "static-tp2"  # static-tp1 rejected requests: not a layout that serves every one
    assert out["max_over_best_static"] == pytest.approx(out["max_rate"] / 2.0)
    assert set(out["per_device_tok_s"]) == {1, 2, 4, 8} and "no layout serves more than" in capsys.readouterr().out
