"""The OpenAI-compatible HTTP API over an `Engine` (FastAPI).

Every error is OpenAI's body `{"error": {...}}`: invalid requests 400 (validation errors too, not
FastAPI's 422), a wrong or missing API key 401, an unknown model 404, a full queue or a down
engine 503. A client that disconnects has its requests aborted at once.
"""
import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from gyges.cluster.engine import EngineDown, QueueFull, RequestError
from gyges.server import responses as R
from gyges.server.generation import Delta, Generation
from gyges.server.metrics import ServerMetrics
from gyges.server.protocol import APIError, ChatCompletionRequest, CompletionRequest, context_error

RETRY_AFTER_S = 1


@dataclass
class ServerSettings:
    model_name: str
    api_key: str | None = None
    operator_endpoints: bool = False   # merge/split without an API key
    chat_template: str | None = None   # overrides the tokenizer's


class MergeRequest(BaseModel):
    devices: list[int] = Field(min_length=1)


class SplitRequest(BaseModel):
    device: int = Field(ge=0)
    parts: int = Field(2, ge=2)


def build_app(engine, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="Gyges", description="OpenAI-compatible API over a cluster that reshapes itself")
    metrics = ServerMetrics(engine, settings.model_name)
    tok = engine.tokenizer

    @app.exception_handler(APIError)
    async def api_error(_, e: APIError):
        return JSONResponse(e.body(), e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError):
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        return await api_error(None, APIError(400, f"{where + ': ' if where else ''}{err.get('msg')}", where or None))

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        return await api_error(None, APIError(e.status_code, str(e.detail), headers=e.headers))

    async def authorized(request: Request):
        if settings.api_key is not None and request.headers.get("authorization") != f"Bearer {settings.api_key}":
            raise APIError(401, "a valid API key is needed: send the header 'Authorization: Bearer KEY'")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])

    @app.get("/health")
    async def health():
        if not engine.healthy:
            raise APIError(503, "the engine is down or restarting")
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus():
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE_LATEST)

    @v1.get("/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "gyges", "max_model_len": engine.max_model_len}]}

    @v1.get("/cluster")
    async def cluster():
        return await run_in_threadpool(engine.cluster_info)

    def operator():
        if settings.api_key is None and not settings.operator_endpoints:
            raise APIError(403, "operator endpoints are off: start the server with --api-key KEY (they then need "
                                "the key) or with --enable-operator-endpoints")

    @v1.post("/cluster/merge")
    async def merge(req: MergeRequest):
        operator()
        return await _transform(engine.merge, req.devices)

    @v1.post("/cluster/split")
    async def split(req: SplitRequest):
        operator()
        return await _transform(engine.split, req.device, req.parts)

    def check_model(name: str | None):
        if name is not None and name != settings.model_name:
            raise APIError(404, f"The model `{name}` does not exist.", "model")

    def checked_ids(ids: list[int], max_tokens: int | None, where: str) -> list[int]:
        if not ids:
            raise APIError(400, f"the {where} is empty", where)
        vocab = engine.model_config.vocab_size
        if max(ids) >= vocab:
            raise APIError(400, f"prompt token ids must lie in [0, {vocab})", "prompt")
        msg = context_error(engine.max_model_len, len(ids), max_tokens, where)
        if msg:
            raise APIError(400, msg, where)
        return ids

    def start(req, prompts: list[list[int]], max_tokens: int | None, logprobs: int | None) -> Generation:
        try:
            params = [[req.sampling_params(max_tokens, logprobs, j) for j in range(req.n)] for _ in prompts]
            return Generation(engine, metrics, prompts, params, req.skip_special_tokens)
        except (RequestError, ValueError) as e:
            raise APIError(400, str(e)) from e
        except QueueFull as e:
            raise APIError(503, str(e), headers={"Retry-After": str(RETRY_AFTER_S)}) from e
        except EngineDown as e:
            raise APIError(503, str(e)) from e

    @v1.post("/completions")
    async def completions(req: CompletionRequest, raw: Request):
        check_model(req.model)
        prompts = [checked_ids(tok.encode(p, add_special_tokens=False) if isinstance(p, str) else p,
                               req.max_tokens, "prompt") for p in req.prompts()]
        gen = start(req, prompts, req.max_tokens, req.logprobs)
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
        ids = checked_ids(tok.encode(text, add_special_tokens=False), req.max_new_tokens, "messages")
        gen = start(req, [ids], req.max_new_tokens, req.num_logprobs)
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

    app.include_router(v1)
    return app


async def _transform(fn, *args) -> dict:
    try:
        return await run_in_threadpool(fn, *args)
    except (ValueError, KeyError) as e:
        raise APIError(400, f"cannot do that: {e}") from e


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
