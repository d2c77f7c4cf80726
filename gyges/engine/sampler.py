"""Sampling: penalties, min-tokens masking, greedy or seeded draws with temperature, top-k and top-p.

The random draw for a token depends only on (seed, token index), not on which worker samples it
or what ran before, so a request keeps its sampled text across preemption and transformation.
Penalties and masks depend only on the request's own tokens, so they keep that property.
"""
import numpy as np
import torch

from gyges.protocol.answers import TokenLogprob
from gyges.protocol.commands import SampleSpec


def _draw_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63 - 1))


def apply_penalties(logits: torch.Tensor, history: np.ndarray, prompt_len: int, presence: float,
                    frequency: float, repetition: float) -> torch.Tensor:
    """vLLM's semantics on one row [V]: repetition over prompt + output (positive logits divided,
    negative multiplied), presence and frequency over the output only (subtracted)."""
    logits = logits.clone()
    ids = torch.from_numpy(np.asarray(history, dtype=np.int64))
    if repetition != 1.0 and len(ids):
        seen = ids.unique()
        vals = logits[seen]
        logits[seen] = torch.where(vals > 0, vals / repetition, vals * repetition)
    out = ids[prompt_len:]
    if (presence or frequency) and len(out):
        counts = torch.bincount(out, minlength=logits.shape[-1])[:logits.shape[-1]].to(logits.dtype)
        logits -= frequency * counts + presence * (counts > 0).to(logits.dtype)
    return logits


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


def _adjusted(row: torch.Tensor, s: SampleSpec) -> torch.Tensor:
    """The row after min-tokens masking and penalties (vLLM v1's order), before temperature."""
    if s.banned:
        row = row.clone()
        row[list(s.banned)] = float("-inf")
    if s.history is not None:
        row = apply_penalties(row, s.history, s.prompt_len, s.presence_penalty, s.frequency_penalty,
                              s.repetition_penalty)
    return row


def sample(logits: torch.Tensor, specs: list[SampleSpec]) -> list[int]:
    """logits: [n, V] fp32."""
    greedy = logits.argmax(-1).tolist()
    out = []
    for i, s in enumerate(specs):
        plain = not s.banned and s.history is None
        if s.temperature == 0:
            out.append(greedy[i] if plain else int(_adjusted(logits[i], s).argmax()))
            continue
        row = filter_logits((logits[i] if plain else _adjusted(logits[i], s)) / s.temperature, s.top_k, s.top_p)
        probs = row.softmax(-1)
        noise = torch.empty_like(probs).exponential_(generator=_draw_generator(s.seed, s.step))
        out.append(int((probs / noise).argmax()))
    return out


def token_logprobs(logits: torch.Tensor, specs: list[SampleSpec],
                   tokens: list[int]) -> list[TokenLogprob | None] | None:
    """Per row, the sampled token's raw logprob, its rank and the top `logprobs`; None where a row
    did not ask, and None for the whole batch when no row did (the common case costs nothing)."""
    if all(s.logprobs is None for s in specs):
        return None
    out = []
    for i, (s, tok) in enumerate(zip(specs, tokens)):
        if s.logprobs is None:
            out.append(None)
            continue
        lp = logits[i].float().log_softmax(-1)
        chosen = lp[tok]
        top = torch.topk(lp, s.logprobs) if s.logprobs else None
        out.append(TokenLogprob(tok, float(chosen), int((lp > chosen).sum()) + 1,
                                list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []))
    return out
