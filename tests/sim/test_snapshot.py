"""The controller's cached snapshot equals one built afresh at every decision of a run with
queueing and merges (the cache is dropped wherever an instance's requests change)."""
from gyges.bench.traces import TraceRequest
from gyges.cluster.controller import Controller, ControllerConfig
from gyges.cluster.views import Views
from gyges.engine.sequence import SamplingParams, Sequence
from gyges.policy.policy import GygesPolicy
from gyges.sim.backend import TOKEN, SimBackend
from gyges.sim.stretch import decode_stretch

from tests.sim.test_run import setup


class Checked:
    """GygesPolicy, after checking that the snapshot it is given equals a fresh one."""

    def __init__(self, inner):
        self.inner, self.ctl, self.checked = inner, None, 0

    def decide(self, snap, event):
        c = self.ctl
        if c is None:  # the controller's first decision, from its constructor
            return self.inner.decide(snap, event)
        fresh = Views(c.instances, c.transitions, c.recovery, c.cfg.host_devices).snapshot(
            c.backend.now(), c.held, snap.recent, c.memory.home)
        assert fresh == snap
        self.checked += 1
        return self.inner.decide(snap, event)

    def limit(self, snap):
        return self.inner.limit(snap)


def test_cached_snapshot_equals_a_fresh_one():
    s = setup(gpus=4, kv_tokens=3000)
    trace = [TraceRequest(0.05 * i, 4000 if i % 7 == 3 else 300 + 13 * i, 30 + i % 11) for i in range(60)]
    backend = SimBackend(s.cost())
    cfg = ControllerConfig(s.max_tp, s.block_tokens, s.max_num_seqs, s.max_batched_tokens, s.host_devices,
                           stretch=decode_stretch)
    policy = Checked(GygesPolicy(s.cost()))
    ctl = policy.ctl = Controller(backend, s.layout(), cfg, policy, set(), [1, 1, 1, 1], lambda *_: None)
    for r in trace:
        while backend.now() < r.arrival_s:
            ctl.run_once(r.arrival_s)
        ctl.submit(Sequence([TOKEN] * r.input_len, SamplingParams(max_tokens=r.output_len, ignore_eos=True)))
    while ctl.has_work:
        ctl.run_once(None)
    assert ctl.transitions.history and policy.checked > len(trace)
