"""One simulation: a trace's requests submitted to the real controller, policy and schedulers at
their arrival times, on simulated devices (SimBackend), and what each request saw."""
import gc
import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from gyges.bench.traces import TraceRequest
from gyges.cluster.controller import Controller, ControllerConfig
from gyges.engine.sequence import SamplingParams, Sequence
from gyges.memory.layout import DeviceLayout, device_layout
from gyges.model.config import ModelConfig
from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import CostModel, HardwareProfile, ModelProfile, StepLoad
from gyges.policy.snapshot import HomeLayout, RequestView, Snapshot
from gyges.sim.backend import TOKEN, SimBackend
from gyges.sim.layouts import aligned
from gyges.sim.stretch import decode_stretch


@dataclass(frozen=True)
class Setup:
    """The simulated cluster. Engine limits are vLLM's GPU defaults (256 sequences, 8,192 batched
    tokens with chunked prefill); block size 16 as in vLLM."""
    model: ModelConfig
    hw: HardwareProfile
    gpus: int = 8
    host_devices: int = 8
    max_tp: int = 8
    block_tokens: int = 16
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    target_tpot_s: float = 0.0  # gyges serve --target-tpot-ms, in seconds (0: off)
    stretch: bool = True
    max_stretch_s: float = 1.0
    cost_model: type[CostModel] = CostModel  # a peer's variant (gyges.sim.peers)
    dtype_bytes: int = 2  # bf16 on GPUs; a CPU run in fp32 has 4

    def __post_init__(self):
        if self.gpus % min(self.gpus, self.host_devices):
            raise ValueError(f"{self.gpus} GPUs do not fill hosts of {self.host_devices}")

    @property
    def host(self) -> int:
        return min(self.gpus, self.host_devices)

    def cost(self) -> CostModel:
        return self.cost_model(ModelProfile.from_config(self.model, self.max_tp, self.dtype_bytes), self.hw)

    def policy_config(self) -> PolicyConfig:
        """The policy prices layouts with this engine's limits."""
        return PolicyConfig(max_num_seqs=self.max_num_seqs, max_batched_tokens=self.max_batched_tokens)

    def kv_capacities(self) -> dict[int, int]:
        """TP degree -> KV tokens of one instance, in whole blocks (the cost model's view)."""
        cost = self.cost()
        return {t: cost.kv_capacity_tokens(t, self.block_tokens) for t in (1, 2, 4, 8) if t <= self.max_tp}

    def layout(self) -> DeviceLayout:
        return device_layout(self.model, self.max_tp, self.block_tokens, self.dtype_bytes, self.hw.memory_bytes,
                             self.cost_model.WHOLE_WEIGHTS)

    def sizes(self, per_host: tuple[int, ...]) -> list[int]:
        """Instance sizes over every host, each host cut as `per_host` (aligned, largest first)."""
        return [len(i) for _ in range(self.gpus // self.host) for i in aligned(per_host)]


@dataclass
class Outcome:
    prompt_len: int
    output_len: int
    arrival_s: float
    first_token_s: float | None = None
    finish_s: float | None = None
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None or self.error else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.finish_s is None or self.output_len < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_len - 1)


@dataclass
class SimResult:
    outcomes: list[Outcome]
    end_s: float
    transformations: int
    layouts: list[tuple[float, list[list[int]]]]  # (time, instances' devices) at each change
    tokens: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens out then)
    wall_s: float = 0.0
    steps: int = 0
    launches: int = 0
    gave_up: bool = False


@dataclass(frozen=True)
class GiveUp:
    """Stop a run once more than `max_misses` requests have surely missed the SLO: a rate probe whose
    attainment can no longer reach the target is settled, and overloaded runs (growing queues) are
    the slow ones. `limits(prompt, output)` gives a request's TTFT and TPOT limits in seconds. The
    requests not yet finished then count as misses."""
    limits: Callable[[int, int], tuple[float, float]]
    max_misses: int


def simulate(trace: list[TraceRequest], setup: Setup, policy, per_host: tuple[int, ...] | None = None,
             progress: bool = False, give_up: GiveUp | None = None) -> SimResult:
    """`per_host`: each host's instance sizes at the start; None: the policy's `start_layout` for the
    trace's first window (a policy that plans its layout). The cyclic garbage collector is off while
    it runs: thousands of live prompts (lists of up to 100k token ids) made each full collection scan
    them all, for no garbage (the run makes few cycles)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _simulate(trace, setup, policy, per_host, progress, give_up)
    finally:
        if enabled:
            gc.enable()


class _Misses:
    """Requests that surely miss: a first token after its TTFT limit (or none by then), a TPOT over
    its limit, or an error."""

    def __init__(self, give_up: GiveUp):
        self.give_up, self.missed, self.deadlines, self.tpot = give_up, set(), [], {}

    def arrived(self, sid: int, o: "Outcome") -> None:
        ttft, self.tpot[sid] = self.give_up.limits(o.prompt_len, o.output_len)
        heapq.heappush(self.deadlines, (o.arrival_s + ttft, sid))

    def finished(self, sid: int, o: "Outcome") -> None:
        if o.error or (o.tpot_s is not None and o.tpot_s > self.tpot[sid]):
            self.missed.add(sid)

    def over(self, now: float, out: dict[int, "Outcome"]) -> bool:
        """Whether more than the allowed requests have missed by `now`."""
        while self.deadlines and self.deadlines[0][0] < now:
            deadline, sid = heapq.heappop(self.deadlines)
            first = out[sid].first_token_s
            if first is None or first > deadline:
                self.missed.add(sid)
        return len(self.missed) > self.give_up.max_misses


def _simulate(trace: list[TraceRequest], setup: Setup, policy, per_host: tuple[int, ...], progress: bool,
              give_up: GiveUp | None) -> SimResult:
    t_wall = time.perf_counter()
    backend = SimBackend(setup.cost(), setup.max_stretch_s)
    cfg = ControllerConfig(setup.max_tp, setup.block_tokens, setup.max_num_seqs, setup.max_batched_tokens,
                           setup.host_devices, tpot_target_s=setup.target_tpot_s,
                           stretch=decode_stretch if setup.stretch else None)
    out: dict[int, Outcome] = {}
    tokens: list[tuple[float, int]] = []
    misses = _Misses(give_up) if give_up else None
    bar = tqdm(total=len(trace), desc="simulate", unit="req", disable=not progress, leave=False)

    def on_output(seq: Sequence, new: list[int], _logprobs, _logits):
        o, now = out[seq.id], backend.now()
        if new:
            tokens.append((now, len(new)))
            if o.first_token_s is None:
                o.first_token_s = now
        if seq.finished:
            o.finish_s, o.error = now, seq.error
            bar.update(1)
            if misses:
                misses.finished(seq.id, o)

    layout = setup.layout()
    home = None
    if per_host is None:
        per_host = policy.start_layout(start_snapshot(setup, layout), first_window(trace, policy.config))
        home = HomeLayout(per_host, 0.0, 0.0, "the start layout, planned for the first requests")
    ctl = Controller(backend, layout, cfg, policy, set(), setup.sizes(per_host), on_output, home=home)
    layouts = [(0.0, [list(i.devices) for i in ctl.instances])]

    def run(until: float | None):
        ctl.run_once(until)
        now = [list(i.devices) for i in ctl.instances]
        if now != layouts[-1][1]:
            layouts.append((backend.now(), now))

    def stop() -> bool:
        return misses is not None and misses.over(backend.now(), out)

    gave_up = False
    for r in trace:
        while backend.now() < r.arrival_s and not gave_up:
            run(r.arrival_s)
            gave_up = stop()
        if gave_up:
            break
        seq = Sequence([TOKEN] * r.input_len, SamplingParams(max_tokens=r.output_len, ignore_eos=True, seed=0))
        out[seq.id] = o = Outcome(r.input_len, r.output_len, r.arrival_s)
        if misses:
            misses.arrived(seq.id, o)
        ctl.submit(seq)
    while ctl.has_work and not gave_up:
        run(None)
        gave_up = stop()
    bar.close()
    outcomes = list(out.values())
    if gave_up:
        for o in outcomes:
            if o.finish_s is None:
                o.error = "not finished: the run gave up"
        outcomes += [Outcome(r.input_len, r.output_len, r.arrival_s, error="not run: the run gave up")
                     for r in trace[len(outcomes):]]
    return SimResult(outcomes, backend.now(), len(ctl.transitions.history), layouts, tokens,
                     time.perf_counter() - t_wall, backend.steps_run, backend.launches, gave_up)


def start_snapshot(setup: Setup, layout: DeviceLayout) -> Snapshot:
    """The cluster before anything runs, as a policy choosing the start layout sees it."""
    caps = {t: layout.kv_tokens(t) for t in (1 << k for k in range(setup.max_tp.bit_length()))}
    return Snapshot(0.0, setup.gpus, setup.max_tp, setup.host, caps, ())


def first_window(trace: list[TraceRequest], config: PolicyConfig) -> tuple[RequestView, ...]:
    """The trace's first `plan_window_s` of arrivals (at least `plan_min_requests` of them)."""
    if not trace:
        return ()
    end = trace[0].arrival_s + config.plan_window_s
    n = max(config.plan_min_requests, sum(r.arrival_s < end for r in trace))
    return tuple(RequestView(i, r.input_len, r.input_len + r.output_len, 0, r.arrival_s) for i, r in enumerate(trace[:n]))


def unloaded(cost: CostModel, capacity_by_tp: dict[int, int], prompt: int, output: int,
             max_batched_tokens: int) -> tuple[float, float]:
    """TTFT and mean TPOT of a request alone on the smallest instance that holds it (the SLO's
    reference): chunked prefill in `max_batched_tokens` chunks, then decodes over a growing context."""
    tp = min((t for t, cap in capacity_by_tp.items() if cap >= prompt + output), default=max(capacity_by_tp))
    ttft, done = 0.0, 0
    while done < prompt:
        n = min(max_batched_tokens, prompt - done)
        ttft += cost.step_time(tp, StepLoad.of([(n, done)]))
        done += n
    mid = prompt + output / 2  # decode time is linear in context: the mean step is at the middle one
    tpot = cost.step_time(tp, StepLoad.of(decode_lens=[round(mid)])) if output > 1 else 0.0
    return ttft, tpot
