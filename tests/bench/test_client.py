import asyncio
import time

import aiohttp
import pytest

from gyges.bench.client import completion_payload, send
from gyges.bench.metrics import RequestRecord
from tests.bench.fake_openai import FakeServer


def post(url: str, prompt_len: int, max_tokens: int) -> RequestRecord:
    async def go():
        rec = RequestRecord(0, prompt_len, max_tokens, send_s=-1.0)
        async with aiohttp.ClientSession() as s:
            await send(s, url + "/v1/completions", completion_payload("m", [7] * prompt_len, max_tokens, True),
                       rec, time.perf_counter())
        return rec
    return asyncio.run(go())


def test_payload_follows_vllm():
    assert completion_payload("m", [1, 2], 3, False) == {
        "model": "m", "prompt": [1, 2], "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    assert completion_payload("m", [1], 1, True)["ignore_eos"] is True


@pytest.mark.parametrize("mode,tokens,chunks,error", [("normal", 5, 4, ""), ("no_usage", 5, 4, ""),
                                                      ("empty", 0, 0, "no chunk with choices"),
                                                      ("error", 1, 0, "stream error")])
def test_stream_outcomes(mode, tokens, chunks, error):
    with FakeServer(mode) as srv:
        r = post(srv.url, 3, 5)
    assert r.status == 200 and r.output_tokens == tokens and len(r.itl_s) == chunks and r.send_s >= 0
    assert r.error.startswith(error) if error else r.success
    assert r.finish_s >= (r.first_token_s or 0.0)


def test_rejection_and_connection_error_are_recorded():
    with FakeServer() as srv:
        r = post(srv.url, 61, 5)
    assert (r.status, r.success, r.output_tokens) == (400, False, 0) and "prompt too long" in r.error
    r = post("http://127.0.0.1:9", 1, 1)
    assert r.status is None and r.error.startswith("ClientConnectorError") and r.finish_s is not None
