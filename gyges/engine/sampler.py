"""Greedy and seeded random sampling with temperature, top-k and top-p.

The random draw for a token depends only on (seed, token index), not on which worker samples it
or what ran before, so a request keeps its sampled text across preemption and transformation.
"""
import torch

from gyges.engine.batch import SampleSpec


def _draw_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63 - 1))


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """logits: [V] fp32, temperature applied; returns logits with excluded tokens at -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


def sample(logits: torch.Tensor, specs: list[SampleSpec]) -> list[int]:
    """logits: [n, V] fp32."""
    greedy = logits.argmax(-1).tolist()
    out = []
    for i, s in enumerate(specs):
        if s.temperature == 0:
            out.append(greedy[i])
            continue
        row = filter_logits(logits[i] / s.temperature, s.top_k, s.top_p)
        probs = row.softmax(-1)
        noise = torch.empty_like(probs).exponential_(generator=_draw_generator(s.seed, s.step))
        out.append(int((probs / noise).argmax()))
    return out
