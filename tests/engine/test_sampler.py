import numpy as np
import pytest
import torch

from gyges.engine.batch import sample_spec
from gyges.protocol.commands import SampleSpec
from gyges.engine.sampler import apply_penalties, filter_logits, sample, token_logprobs
from gyges.engine.sequence import SamplingParams, Sequence


def spec(t=1.0, p=1.0, k=0, seed=1, step=0, **kw):
    return SampleSpec(t, p, k, seed, step, **kw)


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 1.0, 0.0]])
    assert sample(logits, [spec(t=0), spec(t=0)]) == [1, 0]


def test_same_seed_and_step_give_the_same_token_different_steps_vary():
    logits = torch.zeros(1, 1000)
    a = [sample(logits, [spec(seed=3, step=s)])[0] for s in range(20)]
    b = [sample(logits, [spec(seed=3, step=s)])[0] for s in range(20)]
    assert a == b and len(set(a)) > 10


def test_top_k_and_top_p_restrict_the_choice():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [False, False, True, True, True]
    probs = logits.softmax(-1)  # 0.64, 0.24, 0.09, ...
    kept = ~torch.isinf(filter_logits(logits, 0, 0.8))
    assert kept.tolist() == [True, True, False, False, False] and probs[:2].sum() >= 0.8
    draws = {sample(logits[None], [spec(k=2, seed=s)])[0] for s in range(50)}
    assert draws == {0, 1}


def test_temperature_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    counts = torch.bincount(torch.tensor([sample(logits, [spec(seed=s)])[0] for s in range(2000)]), minlength=3)
    assert abs(counts[0].item() / 2000 - 0.7) < 0.05 and abs(counts[2].item() / 2000 - 0.1) < 0.04


def test_repetition_penalty_follows_vllm_over_prompt_and_output():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    out = apply_penalties(logits, np.array([0, 1, 0]), prompt_len=2, presence=0, frequency=0, repetition=2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]  # positive divided, negative multiplied, unseen unchanged


def test_presence_and_frequency_count_the_output_only():
    logits = torch.zeros(4)
    out = apply_penalties(logits, np.array([3, 1, 1, 2]), prompt_len=1, presence=0.5, frequency=0.25, repetition=1)
    assert out.tolist() == [0.0, -1.0, -0.75, 0.0]  # token 3 is only in the prompt


def test_penalties_change_greedy_choice_and_negative_ones_encourage():
    logits = torch.tensor([[3.0, 2.9, 0.0]])
    hist = np.array([2, 0])  # prompt [2], output [0]
    assert sample(logits, [spec(t=0)]) == [0]
    assert sample(logits, [spec(t=0, presence_penalty=0.5, history=hist, prompt_len=1)]) == [1]
    assert sample(logits, [spec(t=0, frequency_penalty=-2.0, history=np.array([1]), prompt_len=0)]) == [1]


def test_banned_ids_are_never_drawn():
    logits = torch.tensor([[10.0, 0.0, 0.0]])
    assert sample(logits, [spec(t=0, banned=(0,))]) in ([1], [2])
    assert all(sample(logits, [spec(seed=s, banned=(0, 2))]) == [1] for s in range(20))


def test_min_tokens_bans_eos_and_stop_ids_until_reached():
    p = SamplingParams(max_tokens=8, min_tokens=2, stop_token_ids=[7])
    assert p.banned_ids(0, {2}) == (2, 7) and p.banned_ids(1, {2}) == (2, 7) and p.banned_ids(2, {2}) == ()
    assert SamplingParams(min_tokens=1, ignore_eos=True).banned_ids(0, {2}) == ()


def test_sample_spec_sends_history_only_with_a_penalty():
    seq = Sequence([5, 6], SamplingParams(min_tokens=3, seed=9))
    seq.output_ids = [7]
    s = sample_spec(seq, {2})
    assert s.history is None and s.banned == (2,) and s.step == 1 and s.seed == 9
    seq.params = SamplingParams(repetition_penalty=1.3)
    s = sample_spec(seq, {2})
    assert s.history.tolist() == [5, 6, 7] and s.prompt_len == 2 and s.banned == ()


def test_seeded_sampling_with_penalties_is_deterministic_across_batches():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    specs = [spec(seed=4, step=2, presence_penalty=1.0, repetition_penalty=1.5, history=np.array([1, 2, 3]),
                  prompt_len=1), spec(t=0.7, seed=5), spec(t=0)]
    alone = sample(logits[:1], specs[:1])
    assert sample(logits, specs)[:1] == alone and sample(logits[[0, 2]], [specs[0], specs[2]])[:1] == alone


def test_logprobs_are_raw_model_logprobs_with_rank_and_top():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    specs = [spec(t=0.5, seed=1, logprobs=2, presence_penalty=2.0, history=np.array([1]), prompt_len=0), spec(t=0)]
    toks = sample(logits, specs)
    lps = token_logprobs(logits, specs, toks)
    raw = logits[0].log_softmax(-1)
    first = lps[0]
    assert lps[1] is None and first.token_id == toks[0]
    assert abs(first.logprob - raw[toks[0]].item()) < 1e-6
    assert first.rank == int((raw > raw[toks[0]]).sum()) + 1
    assert [t for t, _ in first.top] == [1, 2] and abs(first.top[0][1] - raw[1].item()) < 1e-6
    zero = token_logprobs(logits, [spec(t=0, logprobs=0)] * 2, [1, 3])
    assert zero[0].top == [] and zero[0].rank == 1 and zero[1].rank == 1  # ties share the best rank
    assert token_logprobs(logits, [spec(), spec()], [0, 0]) is None
