"""Turn a scheduled batch into the arrays one rank needs for its step (pure, numpy only).

Every rank gets the same token ids and positions; only page ids differ, since each device has
its own pages. Arrays are small numpy buffers: cheap to pickle over the command channel.
"""
import numpy as np

from gyges.engine.sequence import Sequence
from gyges.protocol.commands import SampleSpec, StepInput


def sample_spec(seq: Sequence, eos_ids: set[int]) -> SampleSpec:
    """What the sampler needs to pick `seq`'s next token; token history only when a penalty needs it."""
    p, n = seq.params, len(seq.output_ids)
    history = np.asarray(seq.tokens, dtype=np.int64) if p.has_penalties else None
    return SampleSpec(p.temperature, p.top_p, p.top_k, p.seed, n, p.presence_penalty, p.frequency_penalty,
                      p.repetition_penalty, history, len(seq.prompt_ids), p.banned_ids(n, eos_ids), p.logprobs)


def rank_table(seq: Sequence, rank: int, m: int) -> np.ndarray:
    """The pages of `seq` that rank `rank` holds: [m, blocks]."""
    return np.asarray(seq.pages[rank * m:(rank + 1) * m], dtype=np.int64)


def build_step(seqs: list[Sequence], num_tokens: list[int], rank: int, m: int, block_tokens: int,
               want_logits: bool = False, eos_ids: set[int] = frozenset()) -> StepInput:
    """`eos_ids`: the model's EOS ids, masked (with stop_token_ids) while a request is under min_tokens."""
    ids, pos, slot_pages, slot_offsets, logit_rows, samples = [], [], [], [], [], []
    decode_rows, decode_tables, decode_lens, prefills = [], [], [], []
    row = 0
    for seq, n in zip(seqs, num_tokens):
        start, end = seq.num_computed, seq.num_computed + n
        table = rank_table(seq, rank, m)
        p = np.arange(start, end)
        ids.append(seq.tokens[start:end])
        pos.append(p)
        slot_pages.append(table[:, p // block_tokens].T)
        slot_offsets.append(p % block_tokens)
        if n == 1 and start > 0:
            decode_rows.append(row)
            decode_tables.append(table[:, :-(-end // block_tokens)])
            decode_lens.append(end)
        else:
            prefills.append((row, n, end, table[:, :-(-end // block_tokens)]))
        row += n
        if end == seq.num_tokens:
            logit_rows.append(row - 1)
            samples.append(sample_spec(seq, eos_ids))
    max_blocks = max((t.shape[1] for t in decode_tables), default=0)
    tables = np.zeros((len(decode_tables), m, max_blocks), dtype=np.int64)
    for i, t in enumerate(decode_tables):
        tables[i, :, :t.shape[1]] = t
    return StepInput(
        input_ids=np.fromiter((t for chunk in ids for t in chunk), dtype=np.int64),
        positions=np.concatenate(pos), slot_pages=np.concatenate(slot_pages),
        slot_offsets=np.concatenate(slot_offsets), decode_rows=np.asarray(decode_rows, dtype=np.int64),
        decode_tables=tables, decode_lens=np.asarray(decode_lens, dtype=np.int64), prefills=prefills,
        logit_rows=np.asarray(logit_rows, dtype=np.int64), samples=samples, want_logits=want_logits)
