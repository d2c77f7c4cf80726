import torch

from gyges.engine.batch import SampleSpec
from gyges.engine.sampler import filter_logits, sample


def spec(t=1.0, p=1.0, k=0, seed=1, step=0):
    return SampleSpec(t, p, k, seed, step)


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
