"""`gyges bench` from the command line against a fake OpenAI SSE server."""
import json

import pytest

from gyges.bench.runner import BenchConfig
from gyges.cli import main
from tests.bench.fake_openai import FakeServer, write_trace


@pytest.fixture
def trace(tmp_path):
    return write_trace(tmp_path / "t.jsonl")


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
