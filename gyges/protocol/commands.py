"""The messages a device accepts, as plain dataclasses (numpy arrays of ids, never weight or KV
tensors). A worker runs only the commands its class declares (`Worker.HANDLERS`); anything else
is refused with an error. Tests and benchmarks declare their extra commands in Worker subclasses of
their own, handed to the executor."""
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Command:
    """Base of every declared message."""


class Move(NamedTuple):
    """`count` consecutive pages from `src_page` on `src` to `dst_page` on `dst`. A named tuple, not
    a dataclass: a plan makes thousands in the loop's thread, and a frozen dataclass costs much more
    to make (measured: docs/benchmarks.md, 'Measurements behind code choices')."""
    src: int
    dst: int
    src_page: int
    dst_page: int
    count: int = 1


@dataclass
class SampleSpec:
    """What the sampler needs to pick one request's next token."""
    temperature: float
    top_p: float
    top_k: int
    seed: int
    step: int  # index of the token being sampled, so a seed gives the same draw wherever it runs
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    history: np.ndarray | None = None  # prompt + output ids, sent only when a penalty is set
    prompt_len: int = 0
    banned: tuple[int, ...] = ()       # EOS and stop ids while the output is under min_tokens
    logprobs: int | None = None


@dataclass
class StepInput:
    """One rank's part of a step: every rank gets the same tokens and positions; page ids differ,
    since each device has its own pages."""
    input_ids: np.ndarray
    positions: np.ndarray
    slot_pages: np.ndarray      # [T, m]
    slot_offsets: np.ndarray    # [T]
    decode_rows: np.ndarray     # [nd]
    decode_tables: np.ndarray   # [nd, m, max_blocks]
    decode_lens: np.ndarray     # [nd]
    prefills: list[tuple[int, int, int, np.ndarray]]  # (start, q_len, ctx_len, table [m, blocks])
    logit_rows: np.ndarray      # [n]
    samples: list[SampleSpec]
    want_logits: bool = False


@dataclass(frozen=True)
class Step(Command):
    """Run one forward step; rank 0 of the instance answers a `StepResult`, the others None."""
    batch: StepInput


@dataclass(frozen=True)
class CopyPages(Command):
    """Pre-copy page runs (tagged by plan index) while serving at the current degree; answers `CopyDone`."""
    moves: list[tuple[int, Move]]


@dataclass(frozen=True)
class Transform(Command):
    """This device's part of a merge or split, then serve as rank `rank` of the TP-`tp` instance on
    the aligned group starting at `group_start`; `involved`: (start, size) of every device taking
    part. Answers `TransformStats`."""
    kv_moves: list[tuple[int, Move]]
    weight_moves: list[tuple[int, Move]]
    tp: int
    rank: int
    group_start: int
    involved: tuple[int, int]


@dataclass(frozen=True)
class Info(Command):
    """What the device reports about itself; answers `DeviceInfo`."""


@dataclass(frozen=True)
class Shutdown(Command):
    """Answer, then exit."""
