"""A fake OpenAI completions server (aiohttp, in a thread, on a random port) so the client is tested
without the engine."""
import asyncio
import json
import threading

from aiohttp import web


MAX_PROMPT = 60  # the fake server rejects longer prompts with HTTP 400
TRACE = [{"timestamp": 0, "input_length": 1024, "output_length": 64, "hash_ids": [0, 1]},
         {"timestamp": 100, "input_length": 1500, "output_length": 32, "hash_ids": [0, 2, 3]},
         {"timestamp": 200, "input_length": 400, "output_length": 16, "hash_ids": [4]},
         {"timestamp": 300, "input_length": 4096, "output_length": 16, "hash_ids": list(range(5, 13))}]


class FakeServer:
    """Streams one chunk per token, 1 ms apart, then the usage chunk; remembers every request. Modes
    for the client's error paths: "no_usage" leaves out the usage chunk, "empty" sends no token,
    "error" sends an error event after the first token, "slow" waits 5 s before the first token."""

    def __init__(self, mode: str = "normal", kv_capacity_by_tp: dict[int, int] | None = None):
        """`kv_capacity_by_tp`: answer /v1/cluster as a Gyges server would (else 404, as others)."""
        self.mode, self.caps = mode, kv_capacity_by_tp
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
        n = {"empty": 0, "error": 1}.get(self.mode, body["max_tokens"])
        if self.mode == "slow":
            await asyncio.sleep(5)
        for i in range(n):
            await asyncio.sleep(0.001)
            await resp.write(f"data: {json.dumps({'choices': [{'index': 0, 'text': f't{i}'}]})}\n\n".encode())
        if self.mode == "error":
            await resp.write(b'data: {"error": {"message": "engine died"}}\n\n')
        if self.mode != "no_usage":
            usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": n}
            await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        self.running -= 1
        return resp

    async def cluster(self, request):
        if self.caps is None:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        return web.json_response({"kv_capacity_by_tp": {str(t): n for t, n in self.caps.items()}})

    async def models(self, request):
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    def _serve(self):
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.add_routes([web.post("/v1/completions", self.completions), web.get("/v1/models", self.models),
                        web.get("/v1/cluster", self.cluster)])
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




def write_trace(path) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in TRACE))
    return str(path)
