"""The cluster the server sits on: its controller's loop runs in a thread of its own.

Requests, aborts and operator calls enter through the controller's inbox from any thread; each
request's tokens leave through its own callback, called from the loop's thread (the server hops to
its event loop with `loop.call_soon_threadsafe`). Text and stop strings are the consumer's (the
server's `Generation`): they never run in the loop's thread.
"""
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gyges.cluster.cluster import Cluster, ServedModel
from gyges.cluster.config import ClusterConfig
from gyges.cluster.transitions import TransformRecord
from gyges.cluster.views import ClusterStats
from gyges.engine.admission import Limits, admit
from gyges.engine.sequence import SamplingParams, Sequence
from gyges.heap import freeze_heap
from gyges.policy import POLICIES, make_policy
from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import CostModel, ModelProfile
from gyges.policy.profiles import cpu_profile
from gyges.protocol.answers import WorkerError
from gyges.worker.worker import Worker

log = logging.getLogger("gyges")


class QueueFull(RuntimeError):
    """Too many requests are queued (HTTP 503 with Retry-After)."""


class ClusterDown(RuntimeError):
    """The workers are down or restarting, or the server is shutting down (HTTP 503)."""


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
    policy: str = "gyges"               # a name in gyges.policy.POLICIES
    output_estimate: int = 1024         # KV planned for a request whose client gave no max_tokens
    max_queued_requests: int = 1024     # waiting or held requests before 503
    max_model_len: int | None = None    # default: the model's context
    min_dwell_s: float = 10.0           # a merged instance serves at least this long before it may split
    cost_profile: str | None = None     # the fitted hardware profile (JSON); default: gyges/data/cpu_profile.json
    home_layout: tuple[int, ...] | None = None  # pin the planner's home layout of the host (None: planned)
    router: str = "latency"             # "latency": where a request starts soonest; "freeness": most room

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"--policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.output_estimate < 1 or self.max_queued_requests < 1:
            raise ValueError("--output-estimate and --max-queued-requests must be positive")


def serving_policy(serve: ServeConfig, cfg: ClusterConfig, model: ServedModel):
    """The server's policy, pricing steps with the CPU profile fitted to this engine."""
    cost = CostModel(ModelProfile.from_config(model.config, cfg.max_tp, model.layout.unit.dtype_bytes),
                     cpu_profile(serve.cost_profile))
    return make_policy(serve.policy, cost, PolicyConfig(output_estimate=serve.output_estimate,
                                                        max_num_seqs=cfg.max_num_seqs,
                                                        max_batched_tokens=cfg.max_batched_tokens,
                                                        min_dwell_s=serve.min_dwell_s, home_layout=serve.home_layout,
                                                        router=serve.router))


class ServingCluster:
    def __init__(self, cluster_cfg: ClusterConfig, serve_cfg: ServeConfig | None = None,
                 worker_class: type[Worker] = Worker):
        self.serve = serve_cfg or ServeConfig()
        model = ServedModel.load(cluster_cfg)
        self.tokenizer, self.model_config, self.eos_ids = model.tokenizer, model.config, model.eos_ids
        self.max_model_len = min(self.serve.max_model_len or self.model_config.max_position_embeddings,
                                 self.model_config.max_position_embeddings)
        self._callbacks: dict[int, Callable[[TokenEvent], None]] = {}
        self._watchers: list[Callable[[TransformRecord], None]] = []
        self._lock = threading.Lock()
        self._accepting = True
        self._stop = threading.Event()
        self.cluster = Cluster(cluster_cfg, policy=serving_policy(self.serve, cluster_cfg, model),
                               on_output=self._on_output, worker_class=worker_class, model=model,
                               on_transform=self._transformed)
        self.controller = self.cluster.controller
        freeze_heap()
        self._thread = threading.Thread(target=self._loop, name="gyges-loop", daemon=True)
        self._thread.start()

    # the loop

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.controller.run_once()
            except WorkerError as e:  # gave up: every request has ended with the reason
                log.error("the cluster is down: %s", e)
                self._stop.wait(1.0)

    def _on_output(self, seq: Sequence, tokens: list[int], logprobs, logits):
        with self._lock:
            cb = self._callbacks.pop(seq.id, None) if seq.finished else self._callbacks.get(seq.id)
        if cb is not None:
            first = tokens and len(seq.output_ids) == len(tokens) and seq.scheduled is not None
            cb(TokenEvent(seq.id, tokens, logprobs, seq.finished, seq.finish_reason if seq.finished else None,
                          seq.error, seq.scheduled - seq.arrival if first else None))

    def watch_transformations(self, fn: Callable[[TransformRecord], None]):
        """Call `fn(record)` from the loop's thread whenever a transformation ends."""
        self._watchers.append(fn)

    def _transformed(self, record: TransformRecord):
        for fn in self._watchers:
            fn(record)

    # requests

    def limits(self) -> Limits:
        tokens, why = self.controller.kv_limit
        return Limits(self.model_config.vocab_size, self.max_model_len, tokens, why, self.serve.output_estimate)

    def submit(self, prompt_ids: list[int], params: SamplingParams, on_event: Callable[[TokenEvent], None],
               where: str = "prompt") -> int:
        """Queue a request; raises RequestError (400), QueueFull or ClusterDown (503) at once.
        `where` names the prompt in error messages ("prompt" or "messages")."""
        if self.controller.down:
            raise ClusterDown(f"the cluster is down: {self.controller.down}")
        if not self._accepting:
            raise ClusterDown("the server is shutting down")
        seq = admit(prompt_ids, params, self.limits(), where)
        queued = self.controller.queued + len(self.controller.inbox)
        if queued >= self.serve.max_queued_requests:
            raise QueueFull(f"{queued} requests are queued (--max-queued-requests {self.serve.max_queued_requests})")
        with self._lock:
            self._callbacks[seq.id] = on_event
        self.controller.submit(seq)
        return seq.id

    def abort(self, request_id: int):
        self.controller.abort(request_id)

    # what it reports

    def ask(self, fn: Callable[[], object], timeout: float = 10.0):
        """`fn()` run in the loop's thread between steps (the only safe way to read its state)."""
        return self.controller.call(fn).result(timeout)

    def cluster_info(self) -> dict:
        info = self.ask(self.controller.describe)
        info["policy"] = self.serve.policy
        info["workers"] = [vars(i) for i in self.cluster.worker_info]
        return info

    def stats(self) -> ClusterStats:
        return self.ask(self.controller.stats)

    @property
    def healthy(self) -> bool:
        return (self.controller.down is None and not self.controller.recovery.recovering and self._thread.is_alive()
                and self.cluster.executor.alive)

    # operators

    def merge(self, devices: list[int]) -> dict:
        return self._transform("merge", list(devices), 0)

    def split(self, device: int, parts: int = 2) -> dict:
        return self._transform("split", [device], parts)

    def _transform(self, kind: str, devices: list[int], parts: int, timeout: float = 600.0) -> dict:
        c = self.controller
        pending = self.ask(lambda: c.start_transform(kind, devices, parts, "operator", c.cfg.precopy))
        report = pending.future.result(timeout)
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
                self.ask(lambda: self.controller.end_all(reason))
                settle = time.monotonic() + 10  # steps in flight come back, then their requests end
                while self.controller.has_work and time.monotonic() < settle:
                    time.sleep(0.02)
            except Exception as e:  # the loop is stuck
                log.error("could not end the remaining requests cleanly: %s", e)
        self._stop.set()
        self.controller.inbox.wake()
        self._thread.join(timeout=10)
        self.cluster.shutdown()
