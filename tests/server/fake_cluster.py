"""A stand-in for `gyges.cluster.serving.ServingCluster` with the same contract: the real admission
check, then a fixed script of tokens 'generated' from a thread of its own, so the HTTP layer is tested
without workers."""
import threading
import time
from dataclasses import dataclass, field

from gyges.cluster.serving import ClusterDown, QueueFull, TokenEvent
from gyges.cluster.views import ClusterStats
from gyges.engine.admission import Limits, admit
from gyges.protocol.answers import TokenLogprob

SCRIPT = "Hello there! The answer is 42. 世界 🙂 END and more words after the end of it all"


@dataclass
class FakeModelConfig:
    vocab_size: int
    max_position_embeddings: int = 256


@dataclass
class FakeCluster:
    tokenizer: object
    max_model_len: int = 256
    delay_s: float = 0.0
    burst: int = 1              # tokens per event (a simulated stretch, or a client that falls behind)
    queue_full: bool = False
    down: bool = False
    submitted: list = field(default_factory=list)
    aborted: set = field(default_factory=set)
    watchers: list = field(default_factory=list)

    def __post_init__(self):
        self.model_config = FakeModelConfig(len(self.tokenizer))
        self.eos_ids = {self.tokenizer.eos_token_id}
        self.script = self.tokenizer.encode(SCRIPT, add_special_tokens=False)
        self._next = 0
        self._lock = threading.Lock()

    def submit(self, prompt_ids, params, on_event, where="prompt") -> int:
        if self.down:
            raise ClusterDown("the cluster is down: test")
        admit(prompt_ids, params, Limits(len(self.tokenizer), self.max_model_len, 200, "the largest instance (TP2)"),
              where)
        if self.queue_full:
            raise QueueFull("1 requests are queued (--max-queued-requests 1)")
        with self._lock:
            rid, self._next = self._next, self._next + 1
        self.submitted.append((rid, list(prompt_ids), params))
        threading.Thread(target=self._run, args=(rid, params, on_event), daemon=True).start()
        return rid

    def _run(self, rid, params, on_event):
        n = params.max_tokens or len(self.script)
        for i in range(0, n, self.burst):
            time.sleep(self.delay_s)
            if rid in self.aborted:
                return on_event(TokenEvent(rid, [], None, True, "abort", None))
            toks = [self.script[j % len(self.script)] for j in range(i, min(i + self.burst, n))]
            lps = None if params.logprobs is None else [
                TokenLogprob(t, -0.25, 1, [(t, -0.25), (3, -2.0)][:params.logprobs]) for t in toks]
            last = i + len(toks) == n
            on_event(TokenEvent(rid, toks, lps, last, "length" if last else None, None))

    def abort(self, request_id: int):
        self.aborted.add(request_id)

    def cluster_info(self) -> dict:
        return {"devices": 2, "instances": [{"id": 0, "devices": [0], "tp": 1}], "transformations": []}

    def stats(self) -> ClusterStats:
        return ClusterStats(1, 2, {0: 0.5, 1: 0.25}, {1: 2}, 10, 20)

    def watch_transformations(self, fn):
        self.watchers.append(fn)

    def merge(self, devices):
        if devices != [0, 1]:
            raise ValueError(f"devices {devices} do not cover whole instances")
        return {"kind": "merge", "from": [[0], [1]], "to": [[0, 1]]}

    def split(self, device, parts):
        return {"kind": "split", "from": [[0, 1]], "to": [[0], [1]]}

    @property
    def healthy(self) -> bool:
        return not self.down
