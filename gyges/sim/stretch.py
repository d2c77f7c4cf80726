"""How many decode steps of a just-scheduled batch will repeat unchanged: the stretch a simulated
device may run as one event. Pure over the scheduler's state; the controller calls it with the
batch `schedule()` returned (after that call's page growth).

Steps 2..k schedule exactly the same batch when: every entry is one decode token (no prefill
chunk, nothing preempted or failed); no sequence reaches max_tokens before step k (it may on
step k); the pool has the blocks every sequence grows into through step k; and no waiting
request can be admitted. The last holds because step 1 admitted none and later steps have the
same token budget and batch size with no more free blocks.
"""
from gyges.engine.scheduler import ScheduledBatch, Scheduler


def decode_stretch(scheduler: Scheduler, batch: ScheduledBatch) -> int:
    if batch.preempted or batch.failed or not batch.seqs:
        return 1
    k = None
    for seq, n in zip(batch.seqs, batch.num_tokens):
        if n != 1 or seq.num_computed < len(seq.prompt_ids) or seq.num_computed + 1 != seq.num_tokens:
            return 1
        left = seq.max_tokens - len(seq.output_ids)  # tokens it still produces, this step's included
        k = left if k is None else min(k, left)
    return max(1, _blocks_allow(scheduler, batch, k))


def _blocks_allow(scheduler: Scheduler, batch: ScheduledBatch, k: int) -> int:
    """The most steps (<= k) whose page growth fits the free blocks: step i grows every sequence to
    its current length + i - 1 tokens (step 1's growth is done)."""
    pool = scheduler.pool
    free = pool.free_blocks

    def need(steps: int) -> int:
        return sum(max(0, pool.blocks_for(s.num_tokens + steps - 1) - s.num_blocks) for s in batch.seqs)

    if need(k) <= free:
        return k
    lo, hi = 1, k  # need(lo) == 0 <= free, need(hi) > free
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid) <= free else (lo, mid)
    return lo
