"""The only way into the controller from other threads: typed messages, taken by the loop's thread
between steps."""
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from gyges.engine.sequence import Sequence


@dataclass(frozen=True)
class Submit:
    seq: Sequence


@dataclass(frozen=True)
class Abort:
    seq_id: int


@dataclass(frozen=True)
class Call:
    """Run `fn` in the loop's thread; its result or exception lands in `future`."""
    fn: Callable[[], object]
    future: Future = field(default_factory=Future)


Message = Submit | Abort | Call


class Inbox:
    """`wake()` interrupts the loop's wait, so a message is taken at once, not at the next step."""

    def __init__(self, wake: Callable[[], None]):
        self.wake = wake
        self._items: deque[Message] = deque()
        self._lock = threading.Lock()

    def post(self, msg: Message):
        with self._lock:
            self._items.append(msg)
        self.wake()

    def take(self) -> Message | None:
        """The oldest message, or None."""
        with self._lock:
            return self._items.popleft() if self._items else None

    def deliver(self, submit: Callable[[Sequence], None], abort: Callable[[int], None]):
        """Hand every message posted so far to the loop's thread: requests to `submit`, aborts to
        `abort`; calls run here, their result or exception landing in their future."""
        while (msg := self.take()) is not None:
            if isinstance(msg, Submit):
                submit(msg.seq)
            elif isinstance(msg, Abort):
                abort(msg.seq_id)
            else:
                try:
                    msg.future.set_result(msg.fn())
                except BaseException as e:  # handed to the caller's thread
                    msg.future.set_exception(e)

    def __len__(self) -> int:
        return len(self._items)
