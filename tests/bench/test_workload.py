import math

import numpy as np
import pytest

from gyges.bench.traces import TraceRequest, load_trace
from gyges.bench.workload import (FIRST_TOKEN_ID, gamma_arrivals, prompt_tokens, scale_trace, time_scale_for_rate,
                                  with_arrivals)

TRACE = [TraceRequest(0.0, 1000, 100, (0, 1)), TraceRequest(2.0, 1600, 41, (0, 1, 2, 3)),
         TraceRequest(4.0, 50, 9, ())]


def test_scale_times_and_lengths_alike():
    w = scale_trace(TRACE, time_scale=0.5, length_scale=0.25)
    assert w.block_tokens == 128 and w.clipped == 0
    assert w.requests == [TraceRequest(0.0, 250, 25, (0, 1)), TraceRequest(1.0, 400, 10, (0, 1, 2, 3)),
                          TraceRequest(2.0, 12, 2, ())]


def test_scale_clips_to_context_keeping_output_and_counts():
    w = scale_trace(TRACE, max_model_len=1100, max_requests=2)
    assert w.clipped == 1
    assert w.requests == [TraceRequest(0.0, 1000, 100, (0, 1)), TraceRequest(2.0, 1059, 41, (0, 1, 2))]
    assert scale_trace([TraceRequest(0.0, 5, 50)], max_model_len=8).requests == [TraceRequest(0.0, 1, 7)]


def test_scale_keeps_at_least_one_token():
    assert scale_trace(TRACE, length_scale=1e-4).requests[2] == TraceRequest(4.0, 1, 1, ())


@pytest.mark.parametrize("kw", [dict(time_scale=0), dict(length_scale=-1), dict(max_model_len=1),
                                dict(max_requests=0)])
def test_scale_rejects_bad_arguments(kw):
    with pytest.raises(ValueError):
        scale_trace(TRACE, **kw)


def test_time_scale_for_rate_hits_the_rate():
    s = time_scale_for_rate(TRACE, rate=2.0)  # 2 gaps over 4 s: 0.5 req/s
    assert s == pytest.approx(0.25)
    reqs = scale_trace(TRACE, time_scale=s).requests
    assert (len(reqs) - 1) / (reqs[-1].arrival_s - reqs[0].arrival_s) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        time_scale_for_rate(TRACE[:1], 1.0)


@pytest.mark.parametrize("burstiness", [0.5, 1.0, 4.0])
def test_gamma_arrivals_rate_and_burstiness(burstiness):
    n, rate = 20000, 8.0
    t = np.asarray(gamma_arrivals(n, rate, burstiness, seed=1))
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert t[-1] == pytest.approx(n / rate)  # vLLM stretches the total to n / rate
    assert gaps.mean() == pytest.approx(1 / rate, rel=1e-9)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)  # gamma CV
    assert gamma_arrivals(5, rate, burstiness, seed=3) == gamma_arrivals(5, rate, burstiness, seed=3)
    assert gamma_arrivals(5, rate, burstiness, seed=3) != gamma_arrivals(5, rate, burstiness, seed=4)


def test_gamma_arrivals_limits():
    assert gamma_arrivals(3, math.inf) == [0.0, 0.0, 0.0]
    assert gamma_arrivals(4, 2.0, math.inf) == pytest.approx([0.5, 1.0, 1.5, 2.0])
    for bad in [(0, 1.0, 1.0), (3, 0.0, 1.0), (3, 1.0, 0.0)]:
        with pytest.raises(ValueError):
            gamma_arrivals(*bad)
    assert [r.arrival_s for r in with_arrivals(TRACE, [1.0, 2.0, 3.0])] == [1.0, 2.0, 3.0]


def test_prompts_exact_length_in_vocab_and_share_prefixes_by_hash_id():
    a, b, c = (prompt_tokens(r, i, 512, 1000, seed=7) for i, r in enumerate(TRACE))
    assert [len(a), len(b), len(c)] == [1000, 1600, 50]
    assert all(FIRST_TOKEN_ID <= t < 1000 for t in a + b + c)
    assert a == b[:1000]  # hash ids 0, 1 in common, including the partial block of a
    assert b[1000:1024] != a[1000 - 512:1000 - 488]
    again = prompt_tokens(TRACE[2], 5, 512, 1000, seed=7)
    assert c != again and c == prompt_tokens(TRACE[2], 2, 512, 1000, seed=7)  # no hash ids: per request
    assert prompt_tokens(TRACE[0], 0, 512, 1000, seed=8) != a
    with pytest.raises(ValueError, match="vocab_size"):
        prompt_tokens(TRACE[0], 0, 512, FIRST_TOKEN_ID)


def test_scaled_mooncake_prompts_share_the_system_prefix():
    w = scale_trace(load_trace("mooncake-conversation"), length_scale=1 / 16, max_requests=2)
    p0, p1 = (prompt_tokens(r, i, w.block_tokens, 49152) for i, r in enumerate(w.requests))
    assert w.block_tokens == 32 and p0[:32] == p1[:32] and p0[32:64] != p1[32:64]


def test_spread_ties_over_the_resolution():
    from gyges.bench.traces import TraceRequest
    from gyges.bench.workload import spread_ties
    trace = [TraceRequest(t, 10, 2) for t in (0.0, 0.0, 0.0, 0.0, 1.0, 3.0, 3.0)]
    assert [r.arrival_s for r in spread_ties(trace)] == [0.0, 0.25, 0.5, 0.75, 1.0, 3.0, 3.5]
    distinct = [TraceRequest(0.1 * i, 10, 2) for i in range(5)]
    assert spread_ties(distinct) == distinct
