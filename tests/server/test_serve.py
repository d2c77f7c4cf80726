"""A real `gyges serve` process driven over HTTP with the official openai client."""
import os
import signal
import time

import httpx
import openai
import pytest

from tests.server.conftest import API_KEY

PROMPT = "w5 w6 w7 w8"


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def complete(client, prompt=PROMPT, **kw):
    extra = {k: kw.pop(k) for k in list(kw) if k in ("top_k", "min_tokens", "repetition_penalty", "ignore_eos",
                                                     "stop_token_ids")}
    return client.completions.create(model="tiny", prompt=prompt, extra_body=extra, **kw)


def greedy(client, n=12, **kw):
    return complete(client, max_tokens=n, temperature=0, ignore_eos=True, **kw)


def test_completion_streaming_and_not_agree_with_usage(client):
    r = greedy(client)
    text = r.choices[0].text
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
    chunks = list(complete(client, max_tokens=12, temperature=0, ignore_eos=True, stream=True,
                           stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []
    assert complete(client, prompt=[5, 6, 7, 8], max_tokens=12, temperature=0, ignore_eos=True).choices[0].text == text


def test_chat_uses_the_given_template_streaming_and_not(client):
    msgs = [{"role": "user", "content": "w20 w21"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_completion_tokens=6, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 6  # w10 w20 w21 w11 w12
    want = greedy(client, n=6, prompt="w10 w20 w21 w11 w12").choices[0].text
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want


def test_batched_prompts_and_n_choices(client):
    r = complete(client, prompt=["w5 w6", "w7"], n=3, max_tokens=5, seed=11, ignore_eos=True)
    assert sorted(c.index for c in r.choices) == list(range(6))
    assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 30
    again = complete(client, prompt=["w5 w6", "w7"], n=3, max_tokens=5, seed=11, ignore_eos=True)
    assert [c.text for c in r.choices] == [c.text for c in again.choices]
    assert len({c.text for c in r.choices[:3]}) > 1


def test_seed_temperature_top_p_top_k(client):
    a = complete(client, max_tokens=10, temperature=1.0, seed=5, ignore_eos=True).choices[0].text
    assert complete(client, max_tokens=10, temperature=1.0, seed=5, ignore_eos=True).choices[0].text == a
    assert any(complete(client, max_tokens=10, temperature=1.0, seed=s, ignore_eos=True).choices[0].text != a
               for s in (6, 7, 8))
    g = greedy(client, n=10).choices[0].text
    assert complete(client, max_tokens=10, temperature=1.5, top_k=1, seed=3, ignore_eos=True).choices[0].text == g
    assert complete(client, max_tokens=10, temperature=1.5, top_p=1e-6, seed=3, ignore_eos=True).choices[0].text == g


def test_stop_token_ids_min_tokens_and_stop_strings(client):
    words = greedy(client, n=8).choices[0].text.split()
    first = int(words[0][1:])
    r = complete(client, max_tokens=8, temperature=0, stop_token_ids=[first])
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 1
    r = complete(client, max_tokens=8, temperature=0, stop_token_ids=[first], min_tokens=3)
    assert r.usage.completion_tokens >= 3 and r.choices[0].text.split()[0] != words[0]
    r = complete(client, max_tokens=8, temperature=0, ignore_eos=True, stop=[words[3]])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text.split() == words[:3]


def test_penalties_stop_repeats(client):
    for kw in (dict(presence_penalty=2.0), dict(frequency_penalty=2.0), dict(repetition_penalty=50.0)):
        words = greedy(client, n=30, **kw).choices[0].text.split()
        assert len(set(words)) == len(words), kw
    words = greedy(client, n=30, repetition_penalty=50.0).choices[0].text.split()
    assert not set(words) & set(PROMPT.split())


def test_logprobs_completion_and_chat(client):
    r = greedy(client, n=5, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == 5 and all(len(t) == 3 for t in lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(lp.token_logprobs[i] == max(lp.top_logprobs[i].values()) for i in range(5))  # greedy: the best
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "w9"}], max_tokens=4,
                                       logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 4 and all(len(c.top_logprobs) == 2 for c in content)


def test_text_equals_gyges_generate_for_the_same_greedy_request(client, tiny_server):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "gyges.cli", "generate", tiny_server.model, "--prompt", PROMPT,
                          "--no-chat", "--max-tokens", "12", "--dtype", "float32", "--device-memory", "0.95MiB"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    served = complete(client, max_tokens=12, temperature=0).choices[0].text
    assert served.strip() and served.strip() == out.strip()


def test_models_cluster_and_metrics(client, tiny_server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    info = httpx.get(f"{tiny_server.url}/v1/cluster", headers=auth).json()
    assert [i["tp"] for i in info["instances"]] == [1, 1]
    text = httpx.get(f"{tiny_server.url}/metrics").text
    for name in ("gyges:time_to_first_token_seconds_count", "gyges:generation_tokens_total",
                 "gyges:request_queue_time_seconds_count",
                 "gyges:kv_cache_usage_perc", 'gyges:instances{model_name="tiny",tp="1"} 2.0'):
        assert name in text


@pytest.mark.parametrize("body, words", [
    ('{"model": "tiny", "prompt": "w5", ', "json"), ('{"model": "tiny"}', "prompt"),
    ('{"model": "tiny", "prompt": "w5", "max_tokens": "many"}', "max_tokens"),
    ('{"model": "tiny", "prompt": "w5", "max_tokens": -3}', "max_tokens"),
    ('{"model": "tiny", "prompt": "w5", "max_tokens": 100000}', "maximum context length is 256"),
    ('{"model": "tiny", "prompt": "w5", "temperature": -1}', "temperature"),
    ('{"model": "tiny", "prompt": "w5", "top_p": 1.01}', "top_p"),
    ('{"model": "gpt-4", "prompt": "w5"}', "does not exist"), ('{"model": "tiny", "prompt": ""}', "empty"),
    ('{"model": "tiny", "prompt": [600]}', "token ids"),
    ('{"model": "tiny", "prompt": "' + "w5 " * 230 + '", "max_tokens": 1}', "kv cache")])
def test_bad_input_is_a_4xx_and_the_server_keeps_serving(client, tiny_server, body, words):
    r = httpx.post(f"{tiny_server.url}/v1/completions", content=body,
                   headers={"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
    assert 400 <= r.status_code < 500 and words in r.json()["error"]["message"].lower(), r.text
    assert greedy(client, n=2).usage.completion_tokens == 2


def test_wrong_api_key_is_401(tiny_server):
    bad = openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def running(tiny_server) -> int:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    return sum(i["running"] + i["waiting"] for i in httpx.get(f"{tiny_server.url}/v1/cluster", headers=auth)
               .json()["instances"])


def test_a_client_that_vanishes_mid_stream_has_its_request_aborted(client, tiny_server):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{tiny_server.url}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        assert running(tiny_server) == 1
    deadline = time.monotonic() + 5
    while running(tiny_server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(tiny_server) == 0
    assert greedy(client, n=2).usage.completion_tokens == 2


def test_sigterm_lets_running_requests_finish_then_leaves_no_worker(tiny_server):
    """Last in this module: it stops the shared server."""
    children = tiny_server.children()
    assert children
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 100, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{tiny_server.url}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        tiny_server.proc.send_signal(signal.SIGTERM)
        rest = list(lines)
    assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
    assert any('"finish_reason": "length"' in ln for ln in rest)
    assert tiny_server.proc.wait(60) == 0, tiny_server.proc.stdout.read()
    deadline = time.monotonic() + 5  # the resource tracker exits once it sees its pipe close
    while [p for p in children if os.path.exists(f"/proc/{p}")] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in children if os.path.exists(f"/proc/{p}")]
