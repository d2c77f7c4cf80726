"""Many rate searches: their order, which static layouts need no search, and that the searches run in
worker processes find what one search alone finds."""
import pytest

from gyges.bench.slo import parse_slo
from gyges.sim.compare import Setting, search
from gyges.sim.profiles import gpu, model
from gyges.sim.run import Setup
from gyges.sim.searches import FACTOR, Job, cannot_hold, plan, search_many, skipped


@pytest.fixture(scope="module")
def setting():
    return Setting(Setup(model("llama-3.1-8b"), gpu("h100"), gpus=2, max_tp=2), parse_slo(["ttft:5x", "tpot:5x"]),
                   trace="azure-code", duration=30)


def test_the_static_layout_with_the_highest_bound_goes_first_then_gyges(setting):
    jobs = {j.name: j for j in plan("x", setting, ["gyges", "static-tp1", "static-tp1-freeness", "static-tp2"])}
    assert jobs["static-tp1"].bound > jobs["static-tp2"].bound  # an 8B model: TP1 serves more per device
    assert jobs["static-tp1"].rank == jobs["static-tp1-freeness"].rank == 0
    assert jobs["gyges"].rank == 1 and jobs["static-tp2"].rank > 1 and jobs["gyges"].bound is None
    assert len({j.start for j in jobs.values()}) == 1  # every policy tries the same rates


def test_a_static_layout_is_skipped_only_when_it_cannot_win(setting):
    job = Job("x", "static-tp2", 1.0, 5.0, (2,), 2)
    assert skipped(job, {}) is None
    assert skipped(job, {"static-tp1": {"max_rate_at_slo": 4.0, "rejected": 0}}) is None
    assert "below static-tp1's 6" in skipped(job, {"static-tp1": {"max_rate_at_slo": 6.0, "rejected": 0}})
    # a layout that rejected requests, or a policy that is not static, sets no bar
    assert skipped(job, {"static-tp1": {"max_rate_at_slo": 6.0, "rejected": 3},
                                  "gyges": {"max_rate_at_slo": 9.0, "rejected": 0}}) is None
    need = max(r.input_len + r.output_len for r in setting.requests)
    big = Setting(Setup(model("llama-3.1-70b"), gpu("h100"), gpus=2, max_tp=2), setting.slo, trace="azure-code",
                  duration=30)
    why = cannot_hold((1,), big.setup, need)
    tiny = Job("x", "static-tp1", 1.0, 5.0, (1,), 2, why)
    assert "holds" in skipped(tiny, {}) and str(need) in skipped(tiny, {})


def test_searches_in_two_processes_find_what_one_search_finds(setting):
    names = ["gyges", "static-tp2"]
    seen = []
    found, runs = search_many({"x": setting}, {"x": names}, workers=2, keep_runs=True,
                              on_done=lambda key, name, out, took: seen.append(name))
    assert sorted(seen) == sorted(names) and set(runs) == {("x", n) for n in names}
    start = plan("x", setting, names)[0].start
    for n in names:
        alone, _ = search(setting, n, start=start, factor=FACTOR)
        assert found["x"][n]["max_rate_at_slo"] == alone["max_rate_at_slo"] > 0


def test_a_search_that_fails_is_reported_with_its_traceback(setting, monkeypatch):
    import gyges.sim.searches as searches

    def broken(*args, **kwargs):
        raise IndexError("page 9 is out of bounds")
    monkeypatch.setattr(searches, "search", broken)
    found, _ = search_many({"x": setting}, {"x": ["gyges", "static-tp2"]})
    for name in ("gyges", "static-tp2"):
        out = found["x"][name]
        assert out["max_rate_at_slo"] is None and out["error"] == "IndexError: page 9 is out of bounds"
        assert "Traceback" in out["traceback"]


def test_a_peer_whose_instancescannot_hold_the_weights_is_skipped_with_the_reason():
    big = Setting(Setup(model("llama-3.1-70b"), gpu("h100"), gpus=2, max_tp=2), parse_slo(["ttft:5x"]),
                  trace="azure-code", duration=30)
    jobs = {j.name: j for j in plan("x", big, ["kunserve", "gyges", "static-tp2"])}
    assert "TP1 instances do not hold the model's weights" in skipped(jobs["kunserve"], {})
    assert jobs["gyges"].why is None and skipped(jobs["gyges"], {}) is None  # it starts at TP2
