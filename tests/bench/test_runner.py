"""The client end to end against a fake OpenAI SSE server (aiohttp, in a thread, random port)."""
import asyncio
import json
import threading

import pytest
from aiohttp import web

from gyges.bench.report import replay_lines, result_json, table
from gyges.bench.runner import BenchConfig, build_workload, run_benchmark
from gyges.bench.slo import Baseline, Line
from gyges.cli import main

MAX_PROMPT = 60  # the fake server rejects longer prompts with HTTP 400
TRACE = [{"timestamp": 0, "input_length": 1024, "output_length": 64, "hash_ids": [0, 1]},
         {"timestamp": 100, "input_length": 1500, "output_length": 32, "hash_ids": [0, 2, 3]},
         {"timestamp": 200, "input_length": 400, "output_length": 16, "hash_ids": [4]},
         {"timestamp": 300, "input_length": 4096, "output_length": 16, "hash_ids": list(range(5, 13))}]


class FakeServer:
    """Streams one chunk per token, 1 ms apart, then the usage chunk; remembers every request."""

    def __init__(self):
        self.bodies, self.running, self.peak = [], 0, 0
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def completions(self, request: web.Request):
        body = await request.json()
        self.bodies.append(body)
        if not all(isinstance(t, int) for t in body["prompt"]) or len(body["prompt"]) > MAX_PROMPT:
            return web.json_response({"error": {"message": "prompt too long"}}, status=400)
        self.running += 1
        self.peak = max(self.peak, self.running)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b": ping\n\n")
        for i in range(body["max_tokens"]):
            await asyncio.sleep(0.001)
            await resp.write(f"data: {json.dumps({'choices': [{'index': 0, 'text': f't{i}'}]})}\n\n".encode())
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"]}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        self.running -= 1
        return resp

    async def models(self, request):
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    def _serve(self):
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.add_routes([web.post("/v1/completions", self.completions), web.get("/v1/models", self.models)])
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def __enter__(self):
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in TRACE))
    return str(path)


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


def test_cli_writes_result_and_replay(trace, tmp_path, capsys):
    with FakeServer() as srv:
        rc = main(["bench", "--base-url", srv.url, "--trace", trace, "--length-scale", "0.03125", "--time-scale",
                   "0.1", "--model", "m", "--max-requests", "3", "--request-rate", "100", "--burstiness", "2",
                   "--goodput", "ttft:5000", "--result-file", str(tmp_path / "r.json"),
                   "--save-requests", str(tmp_path / "req.jsonl"), "--disable-tqdm"])
    assert rc == 0 and {b["model"] for b in srv.bodies} == {"m"}
    assert "Request goodput (req/s):" in capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["completed"] == 3 and len(result["requests"]) == 3 and result["config"]["request_rate"] == 100
    assert len((tmp_path / "req.jsonl").read_text().splitlines()) == 3


def test_bad_config_and_unreachable_server(trace, capsys):
    with pytest.raises(ValueError, match="completions"):
        BenchConfig(base_url="x", endpoint="/v1/chat/completions")
    with pytest.raises(ValueError, match="baseline"):
        BenchConfig(base_url="x", slo={"ttft": 5.0})
    assert main(["bench", "--trace", trace, "--slo", "ttft:5"]) == 2
    assert "expected a positive multiple" in capsys.readouterr().err
    assert main(["bench", "--base-url", "http://127.0.0.1:9", "--trace", trace, "--disable-tqdm"]) == 2
    assert "/v1/models failed" in capsys.readouterr().err
