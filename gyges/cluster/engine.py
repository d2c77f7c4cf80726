"""The engine the server sits on: a cluster whose controller loop runs in a thread of its own.

Requests, aborts and operator calls enter through the controller's inbox from any thread; each
request's tokens leave through its own callback, called from the engine thread (the server hops to
its event loop with `loop.call_soon_threadsafe`).
"""
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from gyges.cluster.cluster import Cluster
from gyges.cluster.config import ClusterConfig
from gyges.engine.sequence import SamplingParams, Sequence
from gyges.heap import freeze_heap
from gyges.transform.coordinator import TransformReport
from gyges.worker.handle import WorkerError

log = logging.getLogger("gyges")


class RequestError(ValueError):
    """The request cannot be served as asked (HTTP 400)."""


class QueueFull(RuntimeError):
    """Too many requests are queued (HTTP 503 with Retry-After)."""


class EngineDown(RuntimeError):
    """The workers are down or restarting (HTTP 503)."""


@dataclass
class TokenEvent:
    request_id: int
    token_ids: list[int]
    logprobs: list | None
    finished: bool
    finish_reason: str | None
    error: str | None
    queued_s: float | None = None  # on the first token's event: arrival to first scheduled


@dataclass
class ServeConfig:
    policy: str = "gyges"               # "gyges" reshapes; "static" keeps the start-up layout
    output_estimate: int = 1024         # KV planned for a request whose client gave no max_tokens
    max_queued_requests: int = 1024     # waiting or held requests before 503
    max_model_len: int | None = None    # default: the model's context
    host_devices: int = 8
    min_dwell_s: float = 10.0           # a merged instance serves at least this long before it may split
    cost_profile: str | None = None     # the fitted hardware profile (JSON); default: gyges/data/cpu_profile.json

    def __post_init__(self):
        if self.policy not in ("gyges", "static"):
            raise ValueError(f"--policy must be gyges or static, got {self.policy!r}")
        if self.output_estimate < 1 or self.max_queued_requests < 1:
            raise ValueError("--output-estimate and --max-queued-requests must be positive")


@dataclass
class EngineStats:
    running: int
    waiting: int
    kv_usage: dict[int, float]          # device -> fraction of its KV pages in use
    instances_by_tp: dict[int, int]
    transformations: list[dict] = field(default_factory=list)  # kind, duration_s, stall_s
    prompt_tokens: int = 0
    generation_tokens: int = 0


def make_policy(serve: ServeConfig, cluster: Cluster):
    from gyges.policy.policy import GygesPolicy, PolicyConfig, StaticPolicy
    if serve.policy == "static":
        return StaticPolicy()
    from gyges.policy.cost_model import CostModel, ModelProfile
    from gyges.policy.profiles import cpu_profile
    cost = CostModel(ModelProfile.from_config(cluster.model_config, cluster.cfg.max_tp, cluster.layout.unit.dtype_bytes),
                     cpu_profile(serve.cost_profile))
    return GygesPolicy(cost, PolicyConfig(output_estimate=serve.output_estimate, max_num_seqs=cluster.cfg.max_num_seqs,
                                          max_batched_tokens=cluster.cfg.max_batched_tokens,
                                          min_dwell_s=serve.min_dwell_s))


class Engine:
    def __init__(self, cluster_cfg: ClusterConfig, serve_cfg: ServeConfig | None = None):
        self.serve = serve_cfg or ServeConfig()
        self.cluster = Cluster(cluster_cfg, on_output=self._on_output)
        self.controller = self.cluster.controller
        self.controller.policy = make_policy(self.serve, self.cluster)
        self.controller.cfg.host_devices = self.serve.host_devices
        self.tokenizer, self.model_config, self.eos_ids = self.cluster.tokenizer, self.cluster.model_config, self.cluster.eos_ids
        self.max_model_len = min(self.serve.max_model_len or self.model_config.max_position_embeddings,
                                 self.model_config.max_position_embeddings)
        self._callbacks: dict[int, Callable[[TokenEvent], None]] = {}
        self._lock = threading.Lock()
        self._accepting = True
        self._stop = threading.Event()
        freeze_heap()
        self._thread = threading.Thread(target=self._loop, name="gyges-engine", daemon=True)
        self._thread.start()

    # the loop

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.controller.run_once()
            except WorkerError as e:  # gave up: every request has ended with the reason
                log.error("the cluster is down: %s", e)
                self._stop.wait(1.0)

    def _on_output(self, seq: Sequence, tokens: list[int], logprobs):
        with self._lock:
            cb = self._callbacks.pop(seq.id, None) if seq.finished else self._callbacks.get(seq.id)
        if cb is not None:
            first = tokens and len(seq.output_ids) == len(tokens) and seq.scheduled is not None
            cb(TokenEvent(seq.id, tokens, logprobs, seq.finished, seq.finish_reason if seq.finished else None,
                          seq.error, seq.scheduled - seq.arrival if first else None))

    # requests

    def largest_kv_tokens(self) -> int:
        """KV tokens of the largest instance this cluster can ever form under its policy."""
        c = self.controller
        return c.capacity_tokens(c.cfg.max_tp if self.serve.policy == "gyges" else max(self.cluster.cfg.sizes))

    def submit(self, prompt_ids: list[int], params: SamplingParams, on_event: Callable[[TokenEvent], None]) -> int:
        """Queue a request; raises RequestError (400), QueueFull or EngineDown (503) at once."""
        if self.controller.down:
            raise EngineDown(f"the cluster is down: {self.controller.down}")
        if not self._accepting:
            raise EngineDown("the server is shutting down")
        n = len(prompt_ids)
        if n == 0:
            raise RequestError("the prompt is empty")
        vocab = self.model_config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise RequestError(f"prompt token ids must lie in [0, {vocab})")
        given = params.max_tokens is not None
        if given and n + params.max_tokens > self.max_model_len:
            raise RequestError(f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                               f"requested {n + params.max_tokens} tokens ({n} in the messages, {params.max_tokens} "
                               f"in the completion). Please reduce the length of the messages or completion.")
        if n >= self.max_model_len:
            raise RequestError(f"This model's maximum context length is {self.max_model_len} tokens. However, your "
                               f"prompt has {n} tokens, leaving no room for the completion.")
        limit = self.largest_kv_tokens()
        least = n + (params.max_tokens if given else 1)
        if least > limit:
            raise RequestError(f"the request needs {least} tokens of KV cache ({n} prompt + "
                               f"{params.max_tokens if given else 1} completion); the largest instance this cluster "
                               f"can form holds {limit}")
        queued = sum(len(i.scheduler.waiting) for i in self.controller.instances) + len(self.controller.held)
        if queued >= self.serve.max_queued_requests:
            raise QueueFull(f"{queued} requests are queued (--max-queued-requests {self.serve.max_queued_requests})")
        if not given:  # as long as the context and the largest instance allow
            params.max_tokens = min(self.max_model_len, limit) - n
        seq = Sequence(list(prompt_ids), params)
        if not given:
            seq.need_tokens = n + min(self.serve.output_estimate, params.max_tokens)
        with self._lock:
            self._callbacks[seq.id] = on_event
        self.controller.submit(seq)
        return seq.id

    def abort(self, request_id: int):
        self.controller.abort(request_id)

    # what it reports

    def _ask(self, fn, timeout: float = 10.0):
        return self.controller.call(fn).result(timeout)

    def cluster_info(self) -> dict:
        info = self._ask(self.controller.describe)
        info["policy"] = self.serve.policy
        info["workers"] = self.cluster.worker_info
        return info

    def stats(self) -> EngineStats:
        def collect() -> EngineStats:
            c = self.controller
            usage, by_tp = {}, {}
            for inst in c.instances:
                by_tp[inst.tp] = by_tp.get(inst.tp, 0) + 1
                for d, pages in zip(inst.devices, inst.scheduler.pool.devices):
                    usage[d] = 1.0 - pages.num_free / pages.capacity if pages.capacity else 0.0
            return EngineStats(sum(len(i.scheduler.running) for i in c.instances),
                               sum(len(i.scheduler.waiting) for i in c.instances) + len(c.held), usage, by_tp,
                               [{"kind": r.report.kind, "duration_s": r.duration_s, "stall_s": r.stall_s}
                                for r in c.history],
                               c.prompt_tokens, c.generation_tokens)
        return self._ask(collect)

    @property
    def healthy(self) -> bool:
        c = self.controller
        return (c.down is None and not c.recovering and self._thread.is_alive()
                and all(w.proc.is_alive() for w in self.cluster.workers))

    # operators

    def merge(self, devices: list[int]) -> dict:
        return self._transform("merge", list(devices), 0)

    def split(self, device: int, parts: int = 2) -> dict:
        return self._transform("split", [device], parts)

    def _transform(self, kind: str, devices: list[int], parts: int, timeout: float = 600.0) -> dict:
        c = self.controller
        pending = self._ask(lambda: c.start_transform(kind, devices, parts, "operator", c.cfg.precopy))
        report: TransformReport = pending.future.result(timeout)
        return {"kind": report.kind, "from": report.before, "to": report.after, "duration_s": report.total_s,
                "stall_s": report.switch_s, "kv_bytes": report.kv_bytes, "weight_bytes": report.weight_bytes,
                "precopy_bytes": report.precopy_bytes}

    def shutdown(self, timeout: float = 30.0):
        """Stop accepting; let running requests finish for up to `timeout` s; end the rest with an
        error; stop the workers."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        while self.controller.has_work and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        if self._thread.is_alive() and self.controller.has_work:
            reason = "the server shut down before the request finished"
            try:
                self._ask(lambda: self.controller.end_all(reason))
                settle = time.monotonic() + 10  # steps in flight come back, then their requests end
                while self.controller.has_work and time.monotonic() < settle:
                    time.sleep(0.02)
            except Exception as e:  # the loop is stuck
                log.error("could not end the remaining requests cleanly: %s", e)
        self._stop.set()
        self.controller.backend.wake()
        self._thread.join(timeout=10)
        self.cluster.shutdown()
