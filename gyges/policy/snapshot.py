"""What the policy sees and what it may do: plain data, built by the controller (real or simulated).

The policy never touches processes, clocks or randomness: `decide(snapshot, event) -> actions` is a
pure function of these values, so it is tested on hand-made snapshots and shared by `gyges serve`
and `gyges simulate`.
"""
from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class RequestView:
    id: int
    prompt_tokens: int
    need_tokens: int          # KV tokens it may need: prompt + max_tokens (or + the output estimate)
    computed_tokens: int = 0  # KV tokens it holds now (0 while waiting)
    arrived: float = 0.0      # seconds, on the controller's clock


@dataclass(frozen=True)
class InstanceView:
    id: int                       # the instance's first device; stable while its devices do not change
    devices: tuple[int, ...]      # aligned: len is a power of two and devices[0] % len == 0
    kv_capacity_tokens: int       # KV tokens it holds with nothing running
    kv_free_tokens: int           # KV tokens free now
    running: tuple[RequestView, ...] = ()
    waiting: tuple[RequestView, ...] = ()
    formed_at: float = 0.0        # when it took its present devices (for the split dwell time)
    transforming: bool = False    # part of the pending transformation: takes only requests that
                                  # ride along with a merge's pre-copy (reshape.ride_along)
    draining: bool = False        # admits nothing new, so that it can split (see SetDraining)

    @property
    def tp(self) -> int:
        return len(self.devices)

    # sums over its requests, computed once per view (the controller keeps a view while nothing in it changes)

    @cached_property
    def growth_tokens(self) -> int:
        """KV tokens its requests take before they reach their needs: running ones' remainders, queued
        ones' whole needs."""
        return sum(r.need_tokens - r.computed_tokens for r in self.running) + sum(r.need_tokens for r in self.waiting)

    @cached_property
    def prefill_tokens(self) -> int:
        """Prompt tokens still to compute: waiting requests' whole prompts, running ones' remainders."""
        return (sum(max(0, r.prompt_tokens - r.computed_tokens) for r in self.running)
                + sum(r.prompt_tokens for r in self.waiting))

    @cached_property
    def decodes(self) -> tuple[int, int]:
        """(requests past their prompt, the KV tokens they read each step)."""
        lens = [r.computed_tokens for r in self.running if r.computed_tokens >= r.prompt_tokens]
        return len(lens), sum(lens)


@dataclass(frozen=True)
class PendingTransform:
    kind: str                          # "merge" | "split"
    devices: tuple[int, ...]           # every device taking part
    started: float
    switching: bool = False            # past the pre-copy: its instances no longer step


@dataclass(frozen=True)
class Refusal:
    """A merge or split the planner refused (no room for the KV it must move): proposing it again
    before anything on its devices changed would only repeat the planner's work."""
    devices: tuple[int, ...]           # every device it would have involved
    time: float
    running: frozenset[int]            # ids of the requests running on those devices then


@dataclass(frozen=True)
class HomeLayout:
    """The planner's state, which the controller keeps for it between decisions: the layout each host
    should have for the recent traffic, and how it was chosen."""
    sizes: tuple[int, ...]                     # instance sizes of one host, largest first
    since: float                               # when it became the home layout
    planned_at: float                          # the last re-plan
    reason: str = ""
    priced: tuple[tuple[tuple[int, ...], float], ...] = ()  # candidates and their device-seconds, best first
    challenger: tuple[int, ...] | None = None  # a layout that beat it at the last re-plans, not yet adopted
    streak: int = 0                            # re-plans in a row the challenger won
    pinned: bool = False                       # set by the operator (--home-layout): never re-planned


@dataclass(frozen=True)
class Snapshot:
    time: float
    devices: int
    max_tp: int
    host_devices: int                          # merges stay inside a host of this many devices
    kv_capacity_by_tp: dict[int, int]          # KV tokens of an empty instance at each TP degree
    instances: tuple[InstanceView, ...]
    held: tuple[RequestView, ...] = ()         # requests the policy held (waiting for a merge)
    pending: PendingTransform | None = None
    refused: tuple[Refusal, ...] = ()          # the latest refusal of each group, oldest first
    recent: tuple[RequestView, ...] = ()       # the latest arrivals, oldest first (the planner's window)
    home: HomeLayout | None = None             # the planner's state (None: not planned yet)


# events

@dataclass(frozen=True)
class Arrival:
    request: RequestView


@dataclass(frozen=True)
class StepDone:
    instance: int


@dataclass(frozen=True)
class Finished:
    request: int
    instance: int


@dataclass(frozen=True)
class TransformDone:
    kind: str
    devices: tuple[int, ...]
    ok: bool = True


@dataclass(frozen=True)
class Tick:
    """Periodic re-evaluation (about once a second of controller time) when nothing else happened."""


Event = Arrival | StepDone | Finished | TransformDone | Tick


# actions

@dataclass(frozen=True)
class Route:
    request: int
    instance: int


@dataclass(frozen=True)
class Hold:
    request: int
    reason: str


@dataclass(frozen=True)
class Reject:
    request: int
    reason: str


@dataclass(frozen=True)
class Merge:
    devices: tuple[int, ...]   # an aligned group covering whole instances
    reason: str


@dataclass(frozen=True)
class Split:
    instance: int
    parts: int
    reason: str


@dataclass(frozen=True)
class SetDraining:
    """`on`: the instance admits no new request and its queued ones go back to the policy, so that its
    running requests finish and it can split; off: it admits again."""
    instance: int
    on: bool
    reason: str


@dataclass(frozen=True)
class SetHome:
    """Keep this planner state for the next decisions (the controller stores it and shows it)."""
    home: HomeLayout


Action = Route | Hold | Reject | Merge | Split | SetDraining | SetHome
