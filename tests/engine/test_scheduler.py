"""Continuous batching decisions, tested without any model."""
import pytest

from gyges.engine.kv_pool import DevicePages, KVPool
from gyges.engine.scheduler import Scheduler
from gyges.engine.sequence import SamplingParams, Sequence, Status


def make(pages=16, tp=1, max_tp=1, budget=8, block=4, max_seqs=8, long_prefill=0):
    pool = KVPool(list(range(tp)), [DevicePages(list(range(pages))) for _ in range(tp)], max_tp, block)
    return Scheduler(pool, max_seqs, budget, long_prefill)


def seq(n, max_tokens=4):
    return Sequence(list(range(3, 3 + n)), SamplingParams(max_tokens=max_tokens))


def advance(sched, batch, token=7):
    """What the controller does after a step: count computed tokens, append a sampled token."""
    for s, n in zip(batch.seqs, batch.num_tokens):
        s.num_computed += n
        if s.num_computed == s.num_tokens:
            s.output_ids.append(token)


def test_long_prompt_is_prefilled_in_chunks_beside_decodes():
    sched = make(budget=8)
    short, long = seq(3), seq(20)
    sched.add(short)
    advance(sched, sched.schedule())
    sched.add(long)
    b = sched.schedule()
    assert b.seqs == [short, long] and b.num_tokens == [1, 7]
    advance(sched, b)
    b = sched.schedule()
    assert b.num_tokens == [1, 7]
    advance(sched, b)
    b = sched.schedule()
    assert b.num_tokens == [1, 6] and long.num_computed + 6 == long.num_tokens


def test_a_long_prompt_takes_at_most_its_threshold_so_a_short_one_prefills_beside_it():
    capped, whole = make(budget=8, long_prefill=4), make(budget=8)
    for sched in (capped, whole):
        long, short = seq(20), seq(3)
        sched.add(long)
        b = sched.schedule()
        assert b.seqs == [long]
        advance(sched, b)
        sched.add(short)
        b = sched.schedule()
        if sched is capped:
            assert b.seqs == [long, short] and b.num_tokens == [4, 3]
        else:  # without the threshold the long prompt fills the step and the short one waits
            assert b.seqs == [long] and b.num_tokens == [8] and list(sched.waiting) == [short]


def test_a_step_with_decodes_takes_only_the_prompt_tokens_its_target_leaves():
    sched = make(budget=64)
    decoding, long, short = seq(3), seq(40), seq(6)
    sched.add(decoding)
    advance(sched, sched.schedule())
    sched.add(long)
    sched.add(short)
    b = sched.schedule(step_tokens=13)  # 1 decode + 12 prompt tokens
    assert b.seqs == [decoding, long] and b.num_tokens == [1, 12]
    advance(sched, b)
    b = sched.schedule(step_tokens=2)  # past the target already: prompts still get one block
    assert b.seqs == [decoding, long] and b.num_tokens == [1, 4]
    advance(sched, b)
    sched.finish(decoding, "stop")
    b = sched.schedule(step_tokens=13)  # no decode: the whole budget
    assert b.seqs == [long, short] and b.num_tokens == [24, 6]


def test_a_prompt_the_target_leaves_no_tokens_sits_the_step_out():
    sched = make(pages=128, budget=64, long_prefill=20)
    decoding, first, second = seq(3), seq(100), seq(100)
    sched.add(decoding)
    advance(sched, sched.schedule())
    sched.add(first)
    sched.add(second)
    advance(sched, sched.schedule())  # no target: both prompts start, 20 tokens each
    assert first.num_computed == second.num_computed == 20
    b = sched.schedule(step_tokens=5)  # one decode and one block of prompt: the second prompt waits
    assert b.seqs == [decoding, first] and b.num_tokens == [1, 4]


def test_preempts_the_newest_when_pages_run_out_and_requeues_it_first():
    sched = make(pages=4, budget=16, block=4)
    a, b = seq(4), seq(4)
    sched.add(a)
    sched.add(b)
    advance(sched, sched.schedule())  # 1 block each
    advance(sched, sched.schedule())  # decode: 2 blocks each -> pool full
    assert sched.pool.free_blocks == 0
    for _ in range(3):
        advance(sched, sched.schedule())
    batch = sched.schedule()  # both need a third block: b is preempted, a continues
    assert batch.preempted == [b] and batch.seqs == [a]
    assert b.status is Status.WAITING and b.num_computed == 0 and b.pages == [] and sched.waiting[0] is b
    assert b.output_ids  # generated tokens are kept and recomputed with the prompt


def test_request_larger_than_the_instance_fails_with_a_reason():
    sched = make(pages=2, block=4)
    big = seq(6, max_tokens=10)
    sched.add(big)
    batch = sched.schedule()
    assert batch.failed == [big] and "KV cache" in big.error and not batch.seqs


def test_tp_instance_takes_pages_for_its_head_groups_on_every_device():
    sched = make(pages=8, tp=2, max_tp=4, block=4)
    s = seq(5)
    sched.add(s)
    sched.schedule()
    assert len(s.pages) == 4 and all(len(g) == 2 for g in s.pages)  # 4 head groups, 2 blocks
    assert [round(u, 2) for u in sched.pool.usage().values()] == [0.5, 0.5]  # each device: 2 groups x 2 blocks
    sched.finish(s, "stop")
    assert list(sched.pool.usage().values()) == [0.0, 0.0]


def test_without_admit_only_running_requests_step():
    """The first step after a transformation: what ran through the switch steps, nothing new joins."""
    sched = make(budget=8)
    running, waiting = seq(3), seq(5)
    sched.add(running)
    advance(sched, sched.schedule())
    sched.add(waiting)
    b = sched.schedule(admit=False)
    assert b.seqs == [running] and list(sched.waiting) == [waiting]
    advance(sched, b)
    assert sched.schedule().seqs == [running, waiting]


def test_reserving_pages_takes_exactly_those_off_the_free_list():
    pages = DevicePages(list(range(10)))
    assert pages.take(2) == [0, 1]
    pages.reserve([2, 3, 7])
    assert pages.num_free == 5 and pages.free_pages().tolist() == [4, 5, 6, 8, 9]
    with pytest.raises(ValueError, match="not free"):
        pages.reserve([3])
    pages.give([4])  # a page given back while free: the reservation says so rather than hide it
    with pytest.raises(ValueError, match="more than once"):
        pages.reserve([4])
