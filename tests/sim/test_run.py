"""The event loop on tiny traces with known answers, and stretch == stepping one by one."""
from dataclasses import replace

import pytest

from gyges.bench.traces import TraceRequest
from gyges.policy.cost_model import StepLoad
from gyges.policy.policy import GygesPolicy, StaticPolicy
from gyges.sim.profiles import gpu, model
from gyges.sim.run import GiveUp, Setup, simulate


def setup(gpus=1, kv_tokens=None, stretch=True, **kw) -> Setup:
    """Llama-3.1-8B on H100s; `kv_tokens`: shrink memory so a TP1 instance holds about that many."""
    s = Setup(model("llama-3.1-8b"), gpu("h100"), gpus=gpus, max_tp=min(gpus, 8), stretch=stretch, **kw)
    if kv_tokens is not None:
        c = s.cost()
        mem = c.model.weight_bytes(1) + kv_tokens * c.model.kv_bytes_per_token
        s = replace(s, hw=replace(s.hw, memory_bytes=mem))
    return s


def decode_times(s: Setup, tp: int, prompt: int, output: int) -> float:
    c = s.cost()
    return sum(c.step_time(tp, StepLoad.of(decode_lens=[prompt + i + 1])) for i in range(output - 1))


@pytest.mark.parametrize("stretch", [False, True])
def test_one_request_alone(stretch):
    s = setup(stretch=stretch)
    r = simulate([TraceRequest(2.0, 1000, 50)], s, StaticPolicy(), per_host=(1,))
    o = r.outcomes[0]
    ttft = s.cost().step_time(1, StepLoad.of([(1000, 0)]))
    assert o.ttft_s == pytest.approx(ttft, rel=1e-12) and o.error is None
    assert o.finish_s == pytest.approx(2.0 + ttft + decode_times(s, 1, 1000, 50), rel=1e-9)
    assert r.transformations == 0 and (r.launches == 50) is (not stretch)


def test_two_requests_must_queue():
    s = setup(kv_tokens=1500)  # each needs ~1,050 tokens: they cannot run together
    r = simulate([TraceRequest(0.0, 1000, 50), TraceRequest(0.0, 1000, 50)], s, StaticPolicy(), per_host=(1,))
    a, b = sorted(r.outcomes, key=lambda o: o.finish_s)
    assert a.error is None and b.error is None
    assert b.first_token_s >= a.finish_s  # the second starts only when the first frees its pages
    assert b.ttft_s == pytest.approx(a.ttft_s + (a.finish_s - a.first_token_s) + a.ttft_s, rel=1e-9)


def test_long_request_triggers_a_merge():
    s = setup(gpus=2, kv_tokens=2000)
    long = TraceRequest(0.0, 3000, 20)  # fits no TP1 instance; a TP2 one holds ~4x as much
    r = simulate([long], s, GygesPolicy(s.cost()), per_host=(1, 1))
    assert r.outcomes[0].error is None and r.transformations >= 1
    assert any(len(devs) == 2 for _, layout in r.layouts for devs in layout)
    static = simulate([long], s, StaticPolicy(), per_host=(1, 1))
    assert static.outcomes[0].error is not None  # the static layout rejects it


def test_stretch_equals_step_by_step():
    trace = [TraceRequest(0.1 * i, 200 + 37 * i, 20 + 7 * (i % 5)) for i in range(30)]
    runs = [simulate(trace, setup(kv_tokens=6000, stretch=st), StaticPolicy(), per_host=(1,)) for st in (False, True)]
    step, stretch = runs
    assert stretch.launches < step.launches / 3
    assert stretch.steps == step.steps
    for a, b in zip(step.outcomes, stretch.outcomes):
        assert b.first_token_s == pytest.approx(a.first_token_s, rel=1e-9)
        assert b.finish_s == pytest.approx(a.finish_s, rel=1e-9)


def test_give_up_stops_an_overloaded_run():
    """Limits no request can meet: the run stops after max_misses + 1 misses, the rest count as misses."""
    s = setup()
    trace = [TraceRequest(0.01 * i, 500, 20) for i in range(40)]
    full = simulate(trace, s, StaticPolicy(), per_host=(1,))
    cut = simulate(trace, s, StaticPolicy(), per_host=(1,), give_up=GiveUp(lambda p, o: (1e-6, 1e-6), 3))
    assert cut.gave_up and not full.gave_up and len(cut.outcomes) == 40
    assert cut.end_s < full.end_s and sum(o.error is None for o in cut.outcomes) < 40
    loose = simulate(trace, s, StaticPolicy(), per_host=(1,), give_up=GiveUp(lambda p, o: (1e3, 1e3), 0))
    assert not loose.gave_up and [o.finish_s for o in loose.outcomes] == [o.finish_s for o in full.outcomes]


def test_a_tpot_target_keeps_decodes_within_it_while_long_prompts_prefill():
    """Eight requests decode when four 16K-token prompts arrive: without a target each prompt's
    step (the whole 8,192-token budget) stalls them; with one, their TPOT stays within it, and the
    stretch (decodes launched as one) agrees with stepping one by one."""
    trace = [TraceRequest(0.0, 100, 40) for _ in range(8)] + [TraceRequest(0.1 + 0.01 * i, 16000, 2) for i in range(4)]
    free = simulate(trace, setup(), StaticPolicy(), per_host=(1,))
    assert max(o.tpot_s for o in free.outcomes[:8]) > 0.05
    for stretch in (True, False):
        r = simulate(trace, setup(stretch=stretch, target_tpot_s=0.02), StaticPolicy(), per_host=(1,))
        assert all(o.error is None for o in r.outcomes)
        assert max(o.tpot_s for o in r.outcomes[:8]) <= 0.02
        # the prompts pay for it, later but not starved
        assert all(f.ttft_s < o.ttft_s < 2 * f.ttft_s for f, o in zip(free.outcomes[8:], r.outcomes[8:]))


def test_the_home_layout_follows_the_traffic():
    """Short prompts, then long contexts a TP1 instance holds only two of, then short prompts again:
    Gyges starts in TP1s (its planner's choice for the first minute), re-plans to TP2s for the long
    contexts, and back."""
    s = setup(gpus=4, kv_tokens=42000)
    chats = [TraceRequest(0.5 * i, 2000, 20) for i in range(240)]                    # 0-120 s
    docs = [TraceRequest(120 + 1.5 * i, 18000, 400) for i in range(120)]            # 120-300 s
    again = [TraceRequest(300 + 0.5 * i, 2000, 20) for i in range(240)]              # 300-420 s
    r = simulate(chats + docs + again, s, GygesPolicy(s.cost(), s.policy_config()))
    sizes = [(t, sorted(len(d) for d in layout)) for t, layout in r.layouts]
    assert sizes[0] == (0.0, [1, 1, 1, 1])
    assert any(120 < t < 300 and lay == [2, 2] for t, lay in sizes)
    assert sizes[-1][1] == [1, 1, 1, 1] and sizes[-1][0] > 300
    assert all(o.error is None for o in r.outcomes)
