"""The policy's knobs, checked once."""
from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyConfig:
    output_estimate: int = 1024   # KV tokens assumed for the output when the client gives no max_tokens
    max_num_seqs: int = 64        # the engine's batch limit: beyond it more KV buys no throughput
    max_batched_tokens: int = 512  # the engine's token budget per step: prompts prefill in chunks of it
    min_dwell_s: float = 10.0     # a merged instance serves at least this long before it may split; also
                                  # the horizon over which a transformation must earn back its stall
    gain_margin: float = 0.1      # a merge must serve this fraction more than the instances it joins
    split_max_utilization: float = 1.0  # a split leaves no part more promised than this (or than the busiest
                                        # other instance). Below 1, a band under merging's 100% that keeps a
                                        # busy merged instance merged; such a band kept devices merged
                                        # through bursts of short requests long after the long one ended
                                        # (measured: docs/benchmarks.md, 'Measurements behind code choices'),
                                        # so by default only the dwell time stops thrashing
    switch_tokens: int = 16       # KV tokens per request left for the switch after pre-copy (about a block)
    refusal_retry_s: float = 5.0  # a refused merge or split is proposed again after this long, or as soon as
                                  # the requests running on its devices change
    # the layout planner (planner.py)
    home_layout: tuple[int, ...] | None = None  # pinned home layout of a host (--home-layout); None: planned
    replan_s: float = 5.0         # how often the home layout is planned again
    plan_window_s: float = 60.0   # the recent arrivals it is planned for ...
    plan_min_requests: int = 32   # ... at least this many of them
    plan_half_life_s: float = 10.0  # a recent request's work weighs 2^(-age / this) (0: all alike)
    home_margin: float = 0.05     # a new home must take this fraction fewer device-seconds than the present one
    home_persistence: int = 2     # ... at this many re-plans in a row
    # the router (router.py)
    soon_factor: float = 2.0      # an instance starts a request soon when its predicted TTFT there is within
                                  # this multiple of the request's own prefill time
    router: str = "latency"       # "latency" (router.py) or "freeness" (room per request only, as before)

    def __post_init__(self):
        if self.output_estimate < 1 or self.max_num_seqs < 1 or self.max_batched_tokens < 1 or self.switch_tokens < 0:
            raise ValueError("output_estimate, max_num_seqs and max_batched_tokens must be positive, "
                             "switch_tokens non-negative")
        if self.min_dwell_s < 0 or self.gain_margin < 0 or self.refusal_retry_s < 0:
            raise ValueError("min_dwell_s, gain_margin and refusal_retry_s must be non-negative")
        if not 0 < self.split_max_utilization <= 1:
            raise ValueError(f"split_max_utilization must be in (0, 1], got {self.split_max_utilization}")
        if self.home_layout is not None and (not self.home_layout or any(s < 1 or s & (s - 1) for s in self.home_layout)):
            raise ValueError(f"a home layout is instance sizes that are powers of two, got {self.home_layout}")
        if self.replan_s <= 0 or self.plan_window_s <= 0 or self.plan_min_requests < 1 or self.home_persistence < 1:
            raise ValueError("replan_s, plan_window_s, plan_min_requests and home_persistence must be positive")
        if not 0 <= self.home_margin < 1 or self.soon_factor < 1:
            raise ValueError("home_margin must be in [0, 1) and soon_factor at least 1")
        if self.router not in ("latency", "freeness"):
            raise ValueError(f"router must be latency or freeness, got {self.router!r}")
