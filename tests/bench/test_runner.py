"""The runner end to end against a fake OpenAI SSE server."""
import pytest

from gyges.bench.report import replay_lines, result_json, table
from gyges.bench.runner import BenchConfig, build_workload, run_benchmark
from gyges.bench.slo import Baseline, Line
from tests.bench.fake_openai import FakeServer, write_trace


@pytest.fixture
def trace(tmp_path):
    return write_trace(tmp_path / "t.jsonl")


def test_replay_trace_end_to_end(trace):
    # length 1/32: prompts 32, 47, 12, 128 tokens; outputs 2, 1, 1, 1; hash blocks of 16 tokens
    cfg = BenchConfig(base_url="", trace=trace, length_scale=1 / 32, time_scale=0.5, vocab_size=500,
                      slo={"ttft": 5.0, "tpot": 5.0}, slo_baseline=Baseline(Line(1.0), Line(1.0)),
                      goodput_ms={"ttft": 10000}, percentiles=(50.0,), progress=False, warmup=2)
    with FakeServer() as srv:
        cfg.base_url = srv.url
        res = run_benchmark(cfg)
    warm, sent = srv.bodies[:2], srv.bodies[2:]
    assert warm[0] == warm[1] == sent[0]
    assert [len(b["prompt"]) for b in sent] == [32, 47, 12, 128]
    assert [b["max_tokens"] for b in sent] == [2, 1, 1, 1]
    assert all(b["ignore_eos"] and b["stream"] and b["stream_options"] == {"include_usage": True} and
               b["model"] == "fake-model" for b in sent)
    assert sent[0]["prompt"][:16] == sent[1]["prompt"][:16] and sent[0]["prompt"][16:32] != sent[1]["prompt"][16:32]
    assert all(100 <= t < 500 for b in sent for t in b["prompt"])
    r = res.records
    assert [x.success for x in r] == [True, True, True, False] and r[3].status == 400
    assert [x.output_tokens for x in r[:3]] == [2, 1, 1] and len(r[0].itl_s) == 1
    assert [x.send_s for x in r] == pytest.approx([0.0, 0.05, 0.1, 0.15], abs=0.03)  # the trace times, halved
    assert all(0 < x.ttft_s <= x.e2el_s for x in r[:3])
    m = res.metrics
    assert (m.completed, m.failed, m.total_input, m.total_output) == (3, 1, 91, 4)
    assert m.request_goodput == pytest.approx(3 / m.duration_s)
    assert res.slo_attainment == 0.75  # the rejected request misses
    text = table(res)
    assert "Successful requests:" in text and "P50 ITL (ms):" in text and "SLO attainment (%):" in text
    out = result_json(res)
    assert out["completed"] == 3 and out["failed"] == 1 and "p50_ttft_ms" in out and "median_tpot_ms" in out
    assert out["requests"][3]["error"].startswith("HTTP 400") and out["requests"][0]["first_token_s"] > 0
    lines = replay_lines(res)
    assert [b["prompt"] for b in sent] == [x["prompt"] for x in lines]
    assert [x["input_length"] for x in lines] == [32, 47, 12, 128] and lines[0]["timestamp"] == 0.0
    assert lines[1]["hash_ids"] == [0, 2, 3] and lines[1]["block_tokens"] == 16
    assert lines[2]["timestamp"] == pytest.approx(100, abs=40)


def test_rate_and_concurrency(trace):
    cfg = BenchConfig(base_url="", trace=trace, length_scale=1 / 32, max_model_len=50, request_rate=float("inf"),
                      max_concurrency=1, progress=False)
    assert build_workload(cfg).clipped == 1
    with FakeServer() as srv:
        cfg.base_url = srv.url
        res = run_benchmark(cfg)
    assert srv.peak == 1 and res.metrics.completed == 4 and res.workload.clipped == 1
    assert [len(b["prompt"]) for b in srv.bodies] == [32, 47, 12, 49]


def test_replay_names_every_block_for_vllm_timed_trace():
    # vLLM's timed_trace makes one chunk per hash id: blocks without one (Azure) get fresh ids
    from gyges.bench.metrics import RequestRecord
    from gyges.bench.runner import BenchResult
    from gyges.bench.traces import TraceRequest
    from gyges.bench.workload import Workload
    w = Workload([TraceRequest(0.0, 40, 2), TraceRequest(0.1, 10, 1, (7,)), TraceRequest(0.2, 16, 1)], 16, 0)
    recs = [RequestRecord(i, r.input_len, r.output_len, r.arrival_s) for i, r in enumerate(w.requests)]
    lines = replay_lines(BenchResult(BenchConfig(base_url="", vocab_size=500), w, recs, None, None))
    assert [x["hash_ids"] for x in lines] == [[8, 9, 10], [7], [11]]
    assert [x["timestamp"] for x in lines] == [0.0, 100.0, 200.0]


def test_a_run_gives_up_once_enough_requests_have_missed_the_slo(trace):
    """A sweep only needs to know that a rate failed: with give_up_misses=1 the first request whose
    TTFT limit passes without a token ends the run; what was running or not yet sent ends as a miss."""
    import time
    cfg = BenchConfig(base_url="", trace=trace, length_scale=1 / 32, time_scale=1.0, vocab_size=500,
                      slo={"ttft": 5.0}, slo_baseline=Baseline(Line(0.01), Line(1.0)), give_up_misses=1,
                      progress=False)
    with FakeServer("slow") as srv:
        cfg.base_url = srv.url
        t0 = time.perf_counter()
        res = run_benchmark(cfg)
        took = time.perf_counter() - t0
    assert res.gave_up and took < 2.0  # the first token would have come after 5 s
    assert len(srv.bodies) < 4 and res.metrics.completed == 0 and res.slo_attainment == 0.0
    assert all("gave up after 1 SLO misses" in r.error for r in res.records)
    with pytest.raises(ValueError):
        BenchConfig(base_url="x", give_up_misses=1)


def test_attainment_per_class_against_a_gyges_server(trace):
    """Against a server that says its instances' KV capacities, attainment is reported per class (the
    smallest TP degree that holds the request); a failed request fails the target. Elsewhere, overall only."""
    cfg = BenchConfig(base_url="", trace=trace, length_scale=1 / 32, time_scale=0.01, vocab_size=500,
                      slo={"ttft": 5.0}, slo_baseline=Baseline(Line(10.0), Line(10.0)), progress=False)
    with FakeServer(kv_capacity_by_tp={1: 40, 2: 200}) as srv:  # requests of 13, 34, 48 and 128 tokens, at 1/32
        cfg.base_url = srv.url
        res = run_benchmark(cfg)
    assert set(res.slo_by_class) == {"tp1", "tp2"} and sum(n for _, n in res.slo_by_class.values()) == 4
    assert res.slo_by_class["tp2"][1] == 2 and res.attains is False  # the one longer than 60 tokens got a 400
    assert "class tp2" in table(res) and result_json(res)["slo_attainment_by_class"]["tp1"]["requests"] == 2
    with FakeServer() as srv:
        cfg.base_url = srv.url
        assert run_benchmark(cfg).slo_by_class is None
