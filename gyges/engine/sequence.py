"""Requests as the scheduler sees them."""
import enum
import itertools
import random
from dataclasses import dataclass, field


MAX_LOGPROBS = 20


@dataclass
class SamplingParams:
    """What a request asks of sampling and stopping. `max_tokens=None`: the client set no limit; the
    request runs to a stop or the model's context, and its KV need is estimated (`--output-estimate`).
    Checked once, with the prompt, at admission (gyges/engine/admission.py)."""
    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0                 # EOS and stop_token_ids are masked until this many tokens are out
    presence_penalty: float = 0.0       # subtracted once from every token already in the output
    frequency_penalty: float = 0.0      # subtracted per occurrence in the output
    repetition_penalty: float = 1.0     # > 1 discourages tokens of the prompt and output (vLLM's semantics)
    logprobs: int | None = None         # None: none; k: the sampled token's logprob and the top k
    skip_special_tokens: bool = True    # the text leaves special tokens out (stop strings are matched on it)

    def __post_init__(self):
        if self.seed is None:
            self.seed = random.getrandbits(62)

    @property
    def has_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    def banned_ids(self, num_output: int, eos_ids: set[int]) -> tuple[int, ...]:
        """Token ids the sampler must not pick for output token `num_output` (min_tokens)."""
        if num_output >= self.min_tokens:
            return ()
        return tuple(sorted(set(self.stop_token_ids) | (set() if self.ignore_eos else set(eos_ids))))


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed: int = 0
    pages: list[list[int]] = field(default_factory=list)  # [head group][logical block] -> page
    finish_reason: str | None = None
    error: str | None = None
    text: str = ""
    num_preemptions: int = 0
    max_tokens: int | None = None   # output tokens it may produce (default: params.max_tokens; admission fills it in)
    need_tokens: int | None = None  # KV tokens it may reach: prompt + max_tokens unless an estimate is set
    arrival: float = 0.0            # controller clock at submission
    aborted: bool = False           # the client went away; it ends at its instance's next step
    scheduled: float | None = None  # controller clock when it first ran (queue time = scheduled - arrival)

    def __post_init__(self):
        if self.max_tokens is None:
            self.max_tokens = self.params.max_tokens

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_blocks(self) -> int:
        return len(self.pages[0]) if self.pages else 0

    @property
    def kv_need(self) -> int:
        """KV tokens to plan for: the estimate (or prompt + max_tokens), never less than it holds now."""
        planned = len(self.prompt_ids) + self.max_tokens if self.need_tokens is None else self.need_tokens
        return max(planned, self.num_tokens + 1)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
