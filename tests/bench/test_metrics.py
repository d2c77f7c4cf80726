import pytest

from gyges.bench.metrics import RequestRecord, compute_metrics, meets_goodput, span_s, summarize


def records():
    # request 0: sent at 0, first token at 0.5, three more chunks 0.1, 0.2, 0.3 apart -> finish 1.1, 4 tokens
    a = RequestRecord(0, 10, 4, send_s=0.0, first_token_s=0.5, finish_s=1.1, itl_s=[0.1, 0.2, 0.3], output_tokens=4)
    # request 1: sent at 1, first token at 1.2, one chunk 0.4 later, but usage says 3 tokens
    b = RequestRecord(1, 20, 3, send_s=1.0, first_token_s=1.2, finish_s=1.6, itl_s=[0.4], output_tokens=3)
    # request 2: a single token
    c = RequestRecord(2, 30, 1, send_s=1.5, first_token_s=2.5, finish_s=2.5, output_tokens=1)
    # request 3: rejected with HTTP 400 at 3.0
    d = RequestRecord(3, 40, 5, send_s=2.0, finish_s=3.0, error="Bad Request", status=400)
    return [a, b, c, d]


def test_request_level_definitions():
    a, b, c, d = records()
    assert (a.ttft_s, a.e2el_s, a.tpot_s) == pytest.approx((0.5, 1.1, 0.2))
    assert b.tpot_s == pytest.approx(0.2)  # (0.6 - 0.2) / (3 - 1)
    assert c.tpot_s == 0.0 and not d.success


def test_metrics_by_hand():
    m = compute_metrics(records(), percentiles=(50.0, 90.0))
    assert (m.completed, m.failed, m.total_input, m.total_output) == (3, 1, 60, 8)
    assert m.duration_s == pytest.approx(3.0)  # first send 0 to last finish 3.0 (the rejection)
    assert m.request_throughput == pytest.approx(1.0)
    assert m.output_throughput == pytest.approx(8 / 3)
    assert m.total_token_throughput == pytest.approx(68 / 3)
    assert m.request_goodput is None
    ttft = m.stats["ttft"]  # 500, 200, 1000 ms
    assert (ttft.mean, ttft.median) == pytest.approx((1700 / 3, 500))
    assert ttft.percentiles[90.0] == pytest.approx(900)  # linear: 500 + 0.8 * 500
    assert m.stats["tpot"].mean == pytest.approx(200)  # only requests with more than one token
    itl = m.stats["itl"]  # pooled chunks: 100, 200, 300, 400
    assert (itl.mean, itl.median, itl.percentiles[50.0]) == pytest.approx((250, 250, 250))
    assert itl.std == pytest.approx(111.80339887)
    assert m.stats["e2el"].mean == pytest.approx((1100 + 600 + 1000) / 3)


def test_goodput_counts_completed_within_every_limit():
    m = compute_metrics(records(), goodput_ms={"ttft": 600, "tpot": 250})
    assert m.request_goodput == pytest.approx(2 / 3)  # a and b; c's TTFT is 1 s; d failed
    a, b, c, d = records()
    assert meets_goodput(c, {"tpot": 0}) and not meets_goodput(d, {}) and not meets_goodput(a, {"e2el": 1000})


def test_empty_and_degenerate():
    assert summarize([], (99.0,)).mean == 0.0
    with pytest.raises(ValueError):
        compute_metrics([])
    with pytest.raises(ValueError, match="duration"):
        compute_metrics([RequestRecord(0, 1, 1, send_s=0.0)])
    assert span_s([RequestRecord(0, 1, 1, send_s=0.0)]) == 0.0
