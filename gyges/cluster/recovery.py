"""When workers fail: restart them, or give up after too many failures in a while."""
import logging
from collections import deque
from collections.abc import Callable

from gyges.protocol.answers import WorkerError
from gyges.protocol.backend import Backend

log = logging.getLogger("gyges")

HISTORY = 200           # failures kept for /v1/cluster
MAX_FAILURES = 3        # worker failures tolerated within FAILURE_WINDOW_S; one more gives up
FAILURE_WINDOW_S = 600.0


class Recovery:
    """`restart(sizes)` starts every device again laid out as `sizes` and returns the new backend
    (None: this kind of device cannot restart)."""

    def __init__(self, restart: Callable[[list[int]], Backend] | None):
        self.restart = restart
        self.failures: deque[tuple[float, str]] = deque(maxlen=HISTORY)
        self.down: str | None = None  # why the cluster stopped serving (gave up after failures)
        self.recovering = False       # workers are restarting after a failure

    def restarted(self, now: float, reason: str, sizes: list[int]) -> Backend:
        """Record the failure and restart the devices; raises WorkerError (and sets `down`) when it
        gives up instead."""
        self.failures.append((now, reason))
        log.error("%s", reason)
        recent = sum(1 for t, _ in self.failures if now - t <= FAILURE_WINDOW_S)
        self.recovering = True
        try:
            if self.restart is None or recent > MAX_FAILURES:
                raise WorkerError(f"gave up after {recent} worker failures within {FAILURE_WINDOW_S:.0f} s")
            return self.restart(sizes)
        except WorkerError as e:
            self.down = f"{reason}; {e}"
            raise WorkerError(self.down) from None
        finally:
            self.recovering = False
