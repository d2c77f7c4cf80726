"""/v1/completions and /v1/chat/completions: prompts in, each choice's deltas out, streamed as SSE or
collected into one body."""
import asyncio
import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from gyges.server import responses as R
from gyges.server.errors import APIError, api_error
from gyges.server.generation import Delta, Generation
from gyges.server.metrics import ServerMetrics
from gyges.server.schema import ChatCompletionRequest, CompletionRequest


def openai_routes(v1: APIRouter, cluster, settings, metrics: ServerMetrics):
    tok = cluster.tokenizer

    def check_model(name: str | None):
        if name is not None and name != settings.model_name:
            raise APIError(404, f"The model `{name}` does not exist.", "model")

    def start(req, prompts: list[list[int]], max_tokens: int | None, logprobs: int | None, where: str) -> Generation:
        params = [[req.sampling_params(max_tokens, logprobs, j) for j in range(req.n)] for _ in prompts]
        try:
            return Generation(cluster, metrics, prompts, params, where)
        except Exception as e:
            raise api_error(e, where) from e

    @v1.post("/completions")
    async def completions(req: CompletionRequest, raw: Request):
        check_model(req.model)
        prompts = [tok.encode(p, add_special_tokens=False) if isinstance(p, str) else p for p in req.prompts()]
        gen = start(req, prompts, req.max_tokens, req.logprobs, "prompt")
        rid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), settings.model_name
        offsets = [0] * len(gen.choices)

        def choice(d: Delta) -> dict:
            lps = R.completion_logprobs(tok, d.logprobs, offsets[d.index]) if d.logprobs is not None else None
            offsets[d.index] += sum(len(t) for t in lps["tokens"]) if lps else 0
            return {"index": d.index, "text": d.text, "logprobs": lps, "finish_reason": d.finish_reason}

        def body(choices, u=None, chunk=True):
            return R.body("text_completion", rid, created, model, choices, u)

        return await _respond(raw, gen, req, body, choice, _merge_completion)

    @v1.post("/chat/completions")
    async def chat(req: ChatCompletionRequest, raw: Request):
        check_model(req.model)
        if settings.chat_template is None and not tok.chat_template:
            raise APIError(400, "this model has no chat template: start the server with --chat-template FILE")
        try:
            text = tok.apply_chat_template([m.template_dict() for m in req.messages], tokenize=False,
                                           chat_template=settings.chat_template,
                                           add_generation_prompt=req.add_generation_prompt)
        except Exception as e:  # the template's own checks (roles, order) raise jinja errors
            raise APIError(400, f"the messages do not fit the chat template: {e}", "messages") from e
        gen = start(req, [tok.encode(text, add_special_tokens=False)], req.max_new_tokens, req.num_logprobs, "messages")
        rid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), settings.model_name
        started = set()

        def choice(d: Delta) -> dict:
            lps = R.chat_logprobs(tok, d.logprobs) if d.logprobs is not None else None
            delta = {"content": d.text}
            if d.index not in started:
                started.add(d.index)
                delta["role"] = "assistant"
            return {"index": d.index, "delta": delta, "logprobs": lps, "finish_reason": d.finish_reason}

        def body(choices, u=None, chunk=True):
            return R.body("chat.completion.chunk" if chunk else "chat.completion", rid, created, model, choices, u)

        return await _respond(raw, gen, req, body, choice, _merge_chat)


async def _until_disconnected(raw: Request):
    while (await raw.receive())["type"] != "http.disconnect":
        pass


async def _respond(raw: Request, gen: Generation, req, body, choice, merge):
    """Stream SSE chunks, or collect every choice into one body; either way, a client that
    disconnects gets its requests aborted at once."""
    watcher = asyncio.create_task(_until_disconnected(raw))
    watcher.add_done_callback(lambda t: t.cancelled() or gen.abort())

    def usage() -> dict:
        return R.usage(gen.prompt_tokens, gen.completion_tokens)

    if req.stream:
        async def events():
            try:
                async for d in gen.deltas():
                    if d.error is not None:
                        yield _sse(APIError(503, f"choice {d.index}: {d.error}").body())
                    yield _sse(body([choice(d)]))
                if watcher.done():  # the client left: nobody to tell
                    return
                if req.include_usage:
                    yield _sse(body([], usage()))
                yield "data: [DONE]\n\n"
            finally:
                watcher.cancel()
                gen.abort()
        return StreamingResponse(events(), media_type="text/event-stream")
    try:
        results: dict[int, dict] = {}
        async for d in gen.deltas():
            if d.error is not None:
                raise APIError(503, d.error)
            merge(results.setdefault(d.index, {}), choice(d))
    finally:
        watcher.cancel()
        gen.abort()
    return body([results[i] for i in sorted(results)], usage(), chunk=False)


def _merge_completion(acc: dict, c: dict):
    if not acc:
        acc.update(c, text="", logprobs=None)
    acc["text"] += c["text"]
    acc["finish_reason"] = c["finish_reason"]
    if c["logprobs"] is not None:
        lp = acc["logprobs"] = acc["logprobs"] or {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                                   "text_offset": []}
        for k in lp:
            lp[k] += c["logprobs"][k]


def _merge_chat(acc: dict, c: dict):
    if not acc:
        acc.update(index=c["index"], message={"role": "assistant", "content": ""}, logprobs=None)
    acc["message"]["content"] += c["delta"]["content"]
    acc["finish_reason"] = c["finish_reason"]
    if c["logprobs"] is not None:
        acc["logprobs"] = acc["logprobs"] or {"content": []}
        acc["logprobs"]["content"] += c["logprobs"]["content"]


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
