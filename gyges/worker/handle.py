"""The controller's end of a worker: start it, send it commands, wait for answers without hanging."""
import logging
import multiprocessing as mp
from multiprocessing import connection as mp_connection

from gyges.protocol.answers import DeviceInfo, WorkerError
from gyges.protocol.commands import Command, Shutdown
from gyges.worker.worker import Worker, WorkerSpec, worker_main

log = logging.getLogger("gyges")


class WorkerHandle:
    def __init__(self, ctx, rank: int, spec: WorkerSpec, worker_class: type[Worker] = Worker):
        self.rank = rank
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(rank, spec, child, worker_class), daemon=True,
                                name=f"gyges-worker-{rank}")
        self.proc.start()
        child.close()

    def send(self, msg: Command):
        """Send a declared command (gyges/protocol/commands.py); the answer comes with `recv`."""
        if not isinstance(msg, Command):
            raise TypeError(f"workers take Command messages, not {type(msg).__name__}")
        try:
            self.conn.send(msg)
        except (BrokenPipeError, OSError) as e:
            raise WorkerError(f"worker {self.rank} is gone ({e})") from None

    def recv(self, timeout: float | None = None):
        """The answer to the last command; raises WorkerError if the worker failed or died."""
        waited = 0.0
        try:
            while not self.conn.poll(1.0):
                waited += 1.0
                if not self.proc.is_alive():
                    raise WorkerError(f"worker {self.rank} exited with code {self.proc.exitcode}")
                if timeout is not None and waited >= timeout:
                    raise WorkerError(f"worker {self.rank} did not answer within {timeout:.0f} s")
            status, value = self.conn.recv()
        except (EOFError, OSError) as e:
            raise WorkerError(f"worker {self.rank} is gone ({type(e).__name__}: {e})") from None
        if status == "error":
            raise WorkerError(f"worker {self.rank} failed:\n{value}")
        return value

    def call(self, msg: Command, timeout: float | None = None):
        self.send(msg)
        return self.recv(timeout)

    def ask_to_stop(self):
        """Ask the worker to exit; it does when it next reads a command (see `stop`)."""
        if self.proc.is_alive():
            try:
                self.conn.send(Shutdown())
            except (BrokenPipeError, OSError):
                pass

    def stop(self, timeout: float = 5.0):
        """Wait up to `timeout` for the worker to exit after `ask_to_stop`, then kill it (one stuck
        in a collective with a dead peer never reads the request)."""
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def recv_all(handles: list[WorkerHandle], timeout: float | None = None) -> list:
    """Answers of several workers, in order; raises as soon as any of them fails or dies, so a
    worker stuck in a collective with a dead peer never blocks the controller."""
    pending = {h.conn: h for h in handles}
    answers, waited = {}, 0.0
    while pending:
        ready = mp_connection.wait(list(pending), timeout=1.0)
        for conn in ready:
            h = pending.pop(conn)
            answers[h.rank] = h.recv()
        if not ready:
            waited += 1.0
            for h in pending.values():
                if not h.proc.is_alive():
                    raise WorkerError(f"worker {h.rank} exited with code {h.proc.exitcode}")
            if timeout is not None and waited >= timeout:
                raise WorkerError(f"workers {sorted(h.rank for h in pending.values())} did not answer within {timeout:.0f} s")
    return [answers[h.rank] for h in handles]


def spawn_context():
    return mp.get_context("spawn")


def fallbacks(infos: list[DeviceInfo]) -> list[str]:
    """One line per fast path that is off on some device, with its reason."""
    kernels = sorted({i.kernels_reason for i in infos if not i.kernels})
    peer_reads = sorted({i.peer_reads_reason for i in infos if not i.peer_reads})
    return ([f"C kernels off, PyTorch path: {why}" for why in kernels]
            + [f"peer reads off, moves through gloo: {why}" for why in peer_reads])


def log_fallbacks(infos: list[DeviceInfo]):
    """Say once, in the start-up log, which fast paths the workers fell back from and why."""
    for line in fallbacks(infos):
        log.warning(line)
