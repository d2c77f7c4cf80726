"""The benchmark pipeline end to end, so it keeps working: a real `gyges serve` on a tiny model,
`gyges bench` replaying a few dozen requests of a shipped trace, its metrics, result file and replay
file. The policy comparison itself is a benchmark (benchmarks/policies.py), not a test."""
import json

import pytest

from gyges.bench.slo import load_baseline
from gyges.cli import main
from tests.conftest import make_tiny_model
from tests.server.conftest import start_server, stop_server

REQUESTS = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = make_tiny_model(tmp_path_factory.mktemp("pipeline") / "tiny-llama", "llama")
    srv = start_server(model, "--devices", "2", "--device-memory", "4MiB", "--dtype", "float32",
                       "--policy", "static", "--max-model-len", "256", "--served-model-name", "tiny")
    yield srv
    stop_server(srv)


def test_serve_bench_metrics(server, tmp_path, capsys):
    result, replay = tmp_path / "result.json", tmp_path / "requests.jsonl"
    # Mooncake lengths / 100, clipped to the 256-token context; arrivals drawn at 40 req/s
    rc = main(["bench", "--base-url", server.url, "--trace", "mooncake-conversation", "--length-scale", "0.01",
               "--max-model-len", "256", "--max-requests", str(REQUESTS), "--request-rate", "40",
               "--vocab-size", "512", "--result-file", str(result), "--save-requests", str(replay),
               "--metric-percentiles", "50,99", "--disable-tqdm"])
    assert rc == 0
    assert "Successful requests:" in capsys.readouterr().out
    out = json.loads(result.read_text())
    assert out["completed"] == REQUESTS and out["failed"] == 0
    reqs = out["requests"]
    assert all(not r["error"] and r["output_tokens"] == r["output_len"] for r in reqs)
    assert all(0 <= r["send_s"] < r["first_token_s"] <= r["finish_s"] for r in reqs)
    assert out["total_output_tokens"] == sum(r["output_len"] for r in reqs)
    assert out["total_input_tokens"] == sum(r["prompt_len"] for r in reqs)
    assert out["output_throughput"] == pytest.approx(out["total_output_tokens"] / out["duration"])
    assert 0 < out["median_ttft_ms"] <= out["p99_ttft_ms"] and out["median_tpot_ms"] > 0
    lines = [json.loads(x) for x in replay.read_text().splitlines()]
    assert len(lines) == REQUESTS and all(len(x["prompt"]) == x["input_length"] for x in lines)
    base = load_baseline(result)  # a result file doubles as an SLO baseline: least squares through the mean
    mean_len = sum(r["prompt_len"] for r in reqs) / REQUESTS
    assert base.ttft(mean_len) == pytest.approx(sum(r["first_token_s"] - r["send_s"] for r in reqs) / REQUESTS)
