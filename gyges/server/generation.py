"""One HTTP request's choices on the serving cluster: submit them, turn their token events into text
deltas, find stop strings, abort whatever is left when the client goes away.

The cluster calls `on_event` from its loop's thread; events reach this request's asyncio queue
through `loop.call_soon_threadsafe`, in order, and are detokenized here, on the event loop. A stop
string aborts its request in the cluster at once; the tokens after the one that completed it are
neither sent nor counted in usage.
"""
import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gyges.engine.detokenizer import IncrementalDetokenizer
from gyges.engine.sequence import SamplingParams
from gyges.protocol.answers import TokenLogprob
from gyges.server.metrics import ServerMetrics


@dataclass
class Delta:
    """What one choice produced since its last delta."""
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class _Choice:
    index: int
    detok: IncrementalDetokenizer
    request_id: int | None = None
    arrived: float = field(default_factory=time.monotonic)
    last: float | None = None
    num_tokens: int = 0
    done: bool = False


class Generation:
    def __init__(self, cluster, metrics: ServerMetrics, prompts: list[list[int]],
                 params: list[list[SamplingParams]], where: str = "prompt"):
        """`params[i][j]`: choice j of prompt i; its index is i * n + j, as in OpenAI's API. `where`
        names the prompt in error messages."""
        self.cluster, self.metrics = cluster, metrics
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.choices: list[_Choice] = []
        self.prompt_tokens = sum(len(p) for p in prompts)
        try:
            for ids, ps in zip(prompts, params):
                for sp in ps:
                    detok = IncrementalDetokenizer(cluster.tokenizer, ids, sp.stop, sp.skip_special_tokens)
                    c = _Choice(len(self.choices), detok)
                    self.choices.append(c)
                    c.request_id = cluster.submit(ids, sp, self._callback(c), where)
        except BaseException:
            self.abort()
            raise

    def _callback(self, c: _Choice):
        def deliver(event):
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (c, event))
            except RuntimeError:  # the event loop has closed: nobody is listening any more
                pass
        return deliver

    @property
    def completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self.choices)

    def abort(self):
        """End every unfinished choice in the cluster (the client left, or submission failed) and
        stop `deltas`. Called on the event loop."""
        for c in self.choices:
            if not c.done and c.request_id is not None:
                self.cluster.abort(c.request_id)
            c.done = True
        self.queue.put_nowait(None)

    async def deltas(self) -> AsyncIterator[Delta]:
        """Deltas in arrival order until every choice has finished (each ends with a finish_reason)
        or the generation is aborted."""
        while not all(c.done for c in self.choices):
            item = await self.queue.get()
            if item is None:
                return
            c, event = item
            if c.done:
                continue
            delta = self._apply(c, event)
            c.done = delta.finish_reason is not None
            yield delta

    def _apply(self, c: _Choice, event) -> Delta:
        now, m = time.monotonic(), self.metrics
        before = c.detok.used
        text = c.detok.add(event.token_ids)
        n = c.detok.used - before  # the tokens up to a stop string's end; those after it do not count
        tokens, logprobs = list(event.token_ids[:n]), None if event.logprobs is None else event.logprobs[:n]
        if tokens:
            (m.ttft if c.last is None else m.itl).observe(now - (c.arrived if c.last is None else c.last))
            c.last, c.num_tokens = now, c.num_tokens + n
            if event.queued_s is not None:
                m.queue.observe(event.queued_s)
        delta = Delta(c.index, text, tokens, logprobs)
        if c.detok.stopped:
            self.cluster.abort(c.request_id)
            delta.finish_reason = "stop"
        elif event.finished:
            delta.text += c.detok.finish() if event.error is None else ""
            delta.finish_reason, delta.error = event.finish_reason, event.error
        if delta.finish_reason is not None:
            m.e2e.observe(now - c.arrived)
        return delta
