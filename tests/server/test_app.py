"""The HTTP layer against a fake cluster: formats, streaming, stop strings, errors, auth, metrics."""
import json

import pytest
from fastapi.testclient import TestClient

from gyges.server.app import ServerSettings, build_app
from tests.server.fake_cluster import SCRIPT, FakeCluster


def client(tok, **kw) -> tuple[TestClient, FakeCluster]:
    cluster = FakeCluster(tok, **{k: kw.pop(k) for k in list(kw) if k in ("delay_s", "burst", "queue_full", "down")})
    return TestClient(build_app(cluster, ServerSettings("fake", **kw))), cluster


def sse(resp) -> list:
    lines = [ln.removeprefix("data: ") for ln in resp.text.split("\n\n") if ln]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


@pytest.fixture(scope="module")
def app(smol_tokenizer):
    return client(smol_tokenizer)


def test_completion_text_usage_and_batched_prompts_with_n(app, smol_tokenizer):
    c, cluster = app
    script = smol_tokenizer.encode(SCRIPT, add_special_tokens=False)
    r = c.post("/v1/completions", json={"model": "fake", "prompt": "Hi there", "max_tokens": 5}).json()
    assert r["object"] == "text_completion" and r["choices"][0]["text"] == smol_tokenizer.decode(script[:5])
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    r = c.post("/v1/completions", json={"prompt": [[5, 6, 7], [8]], "max_tokens": 2, "n": 2, "seed": 3}).json()
    assert [ch["index"] for ch in r["choices"]] == [0, 1, 2, 3]
    assert r["usage"]["prompt_tokens"] == 4 and r["usage"]["completion_tokens"] == 8
    seeds = [p.seed for _, _, p in cluster.submitted[-4:]]
    assert seeds == [3, 4, 3, 4] and [ids for _, ids, _ in cluster.submitted[-4:]] == [[5, 6, 7]] * 2 + [[8]] * 2


def test_streaming_ends_with_done_and_a_usage_chunk(app, smol_tokenizer):
    c, _ = app
    r = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 12, "stream": True,
                                        "stream_options": {"include_usage": True}})
    chunks = sse(r)
    assert r.headers["content-type"].startswith("text/event-stream")
    script = smol_tokenizer.encode(SCRIPT, add_special_tokens=False)
    assert "".join(ch["choices"][0]["text"] for ch in chunks[:-1]) == smol_tokenizer.decode(script[:12])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12


def test_stop_string_cuts_the_text_and_aborts_the_request(app):
    c, cluster = app
    for stream in (False, True):
        r = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 40, "stop": ["END", "zzz"], "stream": stream})
        if stream:
            chunks = sse(r)
            text = "".join(ch["choices"][0]["text"] for ch in chunks)
            reason = chunks[-1]["choices"][0]["finish_reason"]
            assert not any("EN" in ch["choices"][0]["text"] for ch in chunks)
        else:
            text, reason = r.json()["choices"][0]["text"], r.json()["choices"][0]["finish_reason"]
        assert text == SCRIPT[:SCRIPT.index("END")] and reason == "stop"
        assert cluster.submitted[-1][0] in cluster.aborted


@pytest.mark.parametrize("burst", [1, 5])
def test_tokens_after_the_stop_string_are_neither_sent_nor_counted(smol_tokenizer, burst):
    """Usage and logprobs count the tokens up to the one that completed the stop string, even when
    one event carries tokens past it."""
    c, _ = client(smol_tokenizer, burst=burst)
    script = smol_tokenizer.encode(SCRIPT, add_special_tokens=False)
    upto = next(k for k in range(1, len(script) + 1) if "END" in smol_tokenizer.decode(script[:k]))
    body = {"prompt": "Hi", "max_tokens": 40, "stop": ["END"], "logprobs": 1}
    r = c.post("/v1/completions", json=body).json()
    assert r["usage"]["completion_tokens"] == upto and len(r["choices"][0]["logprobs"]["tokens"]) == upto
    chunks = sse(c.post("/v1/completions", json=body | {"stream": True, "stream_options": {"include_usage": True}}))
    assert chunks[-1]["usage"]["completion_tokens"] == upto
    assert sum(len(ch["choices"][0]["logprobs"]["tokens"]) for ch in chunks[:-1] if ch["choices"][0]["logprobs"]) == upto


def test_completion_logprobs(app):
    c, _ = app
    r = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "logprobs": 2}).json()
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert lp["token_logprobs"][0] == -0.25 and len(lp["top_logprobs"][0]) == 2
    assert "".join(lp["tokens"]) == r["choices"][0]["text"] and lp["text_offset"][1] == len(lp["tokens"][0])


def test_chat_applies_the_template_and_streams_role_then_content(app, smol_tokenizer):
    c, cluster = app
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    r = c.post("/v1/chat/completions", json={"messages": msgs, "max_completion_tokens": 3, "logprobs": True,
                                             "top_logprobs": 1}).json()
    want = smol_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert cluster.submitted[-1][1] == smol_tokenizer.encode(want, add_special_tokens=False)
    ch = r["choices"][0]
    assert r["object"] == "chat.completion" and ch["message"]["role"] == "assistant"
    assert len(ch["logprobs"]["content"]) == 3 and len(ch["logprobs"]["content"][0]["top_logprobs"]) == 1
    chunks = sse(c.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 3, "stream": True}))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and "role" not in chunks[1]["choices"][0]["delta"]
    assert "".join(x["choices"][0]["delta"]["content"] for x in chunks) == ch["message"]["content"]
    assert chunks[0]["object"] == "chat.completion.chunk"


@pytest.mark.parametrize("body, status, words", [
    ('{"prompt": "hi", ', 400, "json"), ("{}", 400, "prompt"), ('{"prompt": 5}', 400, "prompt"),
    ('{"prompt": "hi", "max_tokens": -1}', 400, "max_tokens"), ('{"prompt": "hi", "temperature": -1}', 400, "temperature"),
    ('{"prompt": "hi", "top_p": 1.5}', 400, "top_p"), ('{"prompt": "hi", "model": "gpt-9"}', 404, "gpt-9"),
    ('{"prompt": ""}', 400, "empty"), ('{"prompt": []}', 400, "prompt"),
    ('{"prompt": "hi", "max_tokens": 1000000000}', 400, "maximum context length is 256 tokens"),
    ('{"prompt": [99999999]}', 400, "token ids"), ('{"prompt": "hi", "min_tokens": 20, "max_tokens": 5}', 400, "min_tokens"),
    ('{"prompt": "' + "a " * 210 + '", "max_tokens": 1}', 400, "KV")])
def test_bad_completion_requests_get_openai_errors(app, body, status, words):
    c, _ = app
    r = c.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words.lower() in err["message"].lower() and err["code"] == status and err["type"]


def test_bad_chat_requests(app):
    c, _ = app
    for body in ({"messages": []}, {"messages": [{"role": "robot", "content": "x"}]},
                 {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}):
        assert c.post("/v1/chat/completions", json=body).status_code == 400
    assert c.get("/v1/nothing").json()["error"]["code"] == 404


def test_full_queue_and_down_engine_are_503(smol_tokenizer):
    c, _ = client(smol_tokenizer, queue_full=True)
    r = c.post("/v1/completions", json={"prompt": "hi"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "queued" in r.json()["error"]["message"]
    c, _ = client(smol_tokenizer, down=True)
    assert c.post("/v1/completions", json={"prompt": "hi"}).status_code == 503
    assert c.get("/health").status_code == 503


def test_api_key_guards_v1_and_operator_endpoints(smol_tokenizer):
    c, _ = client(smol_tokenizer, api_key="sekret")
    assert c.get("/v1/models").status_code == 401
    assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).json()["error"]["code"] == 401
    ok = {"Authorization": "Bearer sekret"}
    assert c.get("/v1/models", headers=ok).json()["data"][0]["id"] == "fake"
    assert c.get("/health").status_code == 200
    assert c.post("/v1/cluster/merge", json={"devices": [0, 1]}).status_code == 401
    assert c.post("/v1/cluster/merge", json={"devices": [0, 1]}, headers=ok).json()["to"] == [[0, 1]]
    r = c.post("/v1/cluster/merge", json={"devices": [1, 2]}, headers=ok)
    assert r.status_code == 400 and "whole instances" in r.json()["error"]["message"]


def test_operator_endpoints_are_off_without_a_key_unless_enabled(smol_tokenizer):
    c, _ = client(smol_tokenizer)
    r = c.post("/v1/cluster/split", json={"device": 0, "parts": 2})
    assert r.status_code == 403 and "--enable-operator-endpoints" in r.json()["error"]["message"]
    c, _ = client(smol_tokenizer, operator_endpoints=True)
    assert c.post("/v1/cluster/split", json={"device": 0, "parts": 2}).json()["kind"] == "split"
    assert c.get("/v1/cluster").json()["devices"] == 2


def transformation(kind: str, duration_s: float, stall_s: float):
    from types import SimpleNamespace
    return SimpleNamespace(report=SimpleNamespace(kind=kind), duration_s=duration_s, stall_s=stall_s)


def test_metrics_have_vllm_names_and_cluster_state(app):
    c, cluster = app
    c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3})
    for fn in cluster.watchers:
        fn(transformation("merge", 0.3, 0.02))
    text = c.get("/metrics").text
    for name in ("gyges:time_to_first_token_seconds_bucket", "gyges:inter_token_latency_seconds_count",
                 "gyges:e2e_request_latency_seconds_sum", 'gyges:num_requests_running{model_name="fake"} 1.0',
                 'gyges:num_requests_waiting{model_name="fake"} 2.0', "gyges:prompt_tokens_total",
                 'gyges:generation_tokens_total{model_name="fake"} 20.0',
                 'gyges:kv_cache_usage_perc{device="1",model_name="fake"} 0.25',
                 'gyges:instances{model_name="fake",tp="1"} 2.0',
                 'gyges:transformation_duration_seconds_count{kind="merge",model_name="fake"} 1.0',
                 'gyges:transformation_stall_seconds_sum{kind="merge",model_name="fake"} 0.02',
                 'gyges:transformation_duration_seconds_count{kind="split",model_name="fake"} 0.0'):
        assert name in text, name


def test_transformation_counters_keep_rising_past_any_history_length(smol_tokenizer):
    c, cluster = client(smol_tokenizer)
    for i in range(250):
        for fn in cluster.watchers:
            fn(transformation("split", 0.01 * (i % 3), 0.001))
    text = c.get("/metrics").text
    assert 'gyges:transformation_duration_seconds_count{kind="split",model_name="fake"} 250.0' in text
    assert 'gyges:transformation_duration_seconds_bucket{kind="split",le="0.01",model_name="fake"} 167.0' in text
