"""Continuous batching for one instance: decode and chunked prefill in one token budget,
preemption by recompute when KV pages run out.

Order within a step (vLLM v1's): running requests in the order they were admitted, then waiting
ones. A prompt takes at most `long_prefill_tokens` of a step (vLLM's
`--long-prefill-token-threshold`), so a long document's prefill leaves room for short prompts
beside it instead of holding them back for its whole length. With a TPOT target, a step that
carries decodes takes only the prompt tokens that keep it within the target (`step_tokens`)."""
from collections import deque
from dataclasses import dataclass, field

from gyges.engine.kv_pool import KVPool
from gyges.engine.sequence import Sequence, Status
from gyges.engine.step_time import prefill_budget


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)  # tokens computed for each seq this step
    preempted: list[Sequence] = field(default_factory=list)
    failed: list[Sequence] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, pool: KVPool, max_num_seqs: int = 64, max_batched_tokens: int = 512,
                 long_prefill_tokens: int = 0):
        self.pool = pool
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.long_prefill_tokens = long_prefill_tokens  # a prompt's most tokens in one step; 0: the budget
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence):
        self.waiting.append(seq)

    def take_waiting(self) -> list[Sequence]:
        """Give up every queued request (none holds pages), oldest first."""
        out = list(self.waiting)
        self.waiting.clear()
        return out

    def adopt_running(self, seq: Sequence):
        """Take over a running request whose KV pages a transformation already placed in this pool."""
        self.running.append(seq)

    @property
    def requests(self) -> list[Sequence]:
        """Every unfinished request: running first, then waiting."""
        return self.running + list(self.waiting)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def load_tokens(self) -> int:
        return sum(s.num_tokens for s in self.running) + sum(s.num_tokens for s in self.waiting)

    def fits_alone(self, seq: Sequence) -> bool:
        """Whether the request, as far as it may grow, fits this instance's KV pages."""
        return self.pool.blocks_for(seq.kv_need) <= self.pool.total_blocks

    def _chunk(self, seq: Sequence, budget: int, prompt_budget: int) -> int:
        """Tokens of `seq` this step: a decode's one, or a prompt's next chunk, within the step's
        budget, the part of it left to prompts, and the long-prompt threshold."""
        left = seq.num_tokens - seq.num_computed
        if left == 1:
            return min(1, budget)
        cap = self.long_prefill_tokens or budget
        return min(left, budget, prompt_budget, cap)

    def _preempt(self, seq: Sequence, batch: ScheduledBatch):
        self.running.remove(seq)
        self.pool.release(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)

    def schedule(self, admit: bool = True, step_tokens: int | None = None) -> ScheduledBatch:
        """The next step's batch: running requests first, in the order they were admitted (preempting
        the newest when KV runs out), then, if `admit`, waiting ones while the token budget and KV last.
        `step_tokens`: the most tokens of a step that carries decodes (None: the whole budget)."""
        batch = ScheduledBatch()
        budget = self.max_batched_tokens
        decodes = sum(s.num_tokens - s.num_computed == 1 for s in self.running)
        prompt_budget = prefill_budget(step_tokens, decodes, budget, self.pool.block_tokens)
        for seq in list(self.running):
            if budget == 0:
                break
            if seq not in self.running:
                continue
            decode = seq.num_tokens - seq.num_computed == 1
            n = self._chunk(seq, budget, prompt_budget)
            if n == 0:  # a prompt beyond what the target leaves prompts: it waits a step
                continue
            while not self.pool.can_grow(seq, seq.num_computed + n):
                victim = next(s for s in reversed(self.running) if s not in batch.seqs)
                self._preempt(victim, batch)
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                continue
            self.pool.grow(seq, seq.num_computed + n)
            batch.seqs.append(seq)
            batch.num_tokens.append(n)
            budget -= n
            prompt_budget -= 0 if decode else n
        # blocks the running prompts still take before their first token: a prompt is admitted only
        # if what is free covers its whole prompt beside those, so that no prefill is started that
        # must be preempted, and recomputed, to let another finish
        debt = sum(self.pool.blocks_for(s.num_tokens) - s.num_blocks for s in self.running if s.num_computed < s.num_tokens - 1)
        while admit and self.waiting and min(budget, prompt_budget) > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.fits_alone(seq):
                self.waiting.popleft()
                seq.error = (f"request needs {seq.kv_need} tokens of KV cache; "
                             f"this instance holds at most {self.pool.total_blocks * self.pool.block_tokens}")
                batch.failed.append(seq)
                continue
            n = self._chunk(seq, budget, prompt_budget)
            whole = self.pool.blocks_for(seq.num_tokens)
            if (not self.pool.can_grow(seq, n) or whole > self.pool.free_blocks - debt
                    or (batch.preempted and seq in batch.preempted)):
                break
            debt += whole - self.pool.blocks_for(n)
            self.waiting.popleft()
            self.pool.grow(seq, n)
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_tokens.append(n)
            budget -= n
            prompt_budget -= n
        return batch

    def requeue_all(self):
        """Drop every running request's KV and queue it for recompute (how a restart resumes)."""
        batch = ScheduledBatch()
        for seq in reversed(list(self.running)):
            self._preempt(seq, batch)

    def finish(self, seq: Sequence, reason: str):
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.pool.release(seq)
