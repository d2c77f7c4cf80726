"""One streamed request to an OpenAI-compatible completions endpoint, timed as `vllm bench serve`
times it: the first SSE chunk with choices is the first token, each later one an inter-token gap,
the last one the end; the usage chunk gives the output token count."""
import json
import time

import aiohttp

from gyges.bench.metrics import RequestRecord


def completion_payload(model: str, prompt: list[int], max_tokens: int, ignore_eos: bool) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    if ignore_eos:
        body["ignore_eos"] = True
    return body


async def send(session: aiohttp.ClientSession, url: str, payload: dict, record: RequestRecord, t0: float):
    """Post `payload` and fill `record` in place; never raises for a failed request."""
    record.send_s = time.perf_counter() - t0
    last, chunks, usage = None, 0, None
    try:
        async with session.post(url, json=payload) as resp:
            record.status = resp.status
            if resp.status != 200:
                record.error = f"HTTP {resp.status}: {(await resp.text())[:500]}"
            else:
                async for raw in resp.content:
                    line = raw.decode("utf-8").strip()
                    if not line.startswith("data:"):
                        continue  # blank separators and SSE comments (pings)
                    data = line.removeprefix("data:").strip()
                    if data == "[DONE]":
                        break
                    msg = json.loads(data)
                    if msg.get("choices"):
                        now = time.perf_counter() - t0
                        if last is None:
                            record.first_token_s = now
                        else:
                            record.itl_s.append(now - last)
                        last, chunks = now, chunks + 1
                    elif msg.get("usage"):
                        usage = msg["usage"].get("completion_tokens")
                    elif "error" in msg:
                        record.error = f"stream error: {msg['error']}"
                if last is None and not record.error:
                    record.error = "no chunk with choices received"
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        record.error = f"{type(e).__name__}: {e}"
    record.output_tokens = usage if usage is not None else chunks
    record.finish_s = last if last is not None and not record.error else time.perf_counter() - t0
