"""HubThread: an OS thread running its own gevent hub, and calls into it from any thread.

A gevent hub belongs to one thread. Code running on ordinary threads cannot
call into it, yet gevent code (a `Cluster`, a `GatewaySimulator`) must run in
one. `HubThread` starts a thread whose hub takes calls from every other
thread:

- `call(func, ...)` becomes a `_Call` handed to the hub thread with
  `loop.run_callback_threadsafe` (which wakes the loop). The hub spawns a
  greenlet that runs it; the calling thread waits on a `threading.Event` for
  the result and re-raises the exception, if any, as its own. The wait has a
  timeout and notices a hub thread that died.
- `post(func, ...)` runs a function that does not block in the hub and
  returns at once.

`gcluster.threaded.ThreadedCluster` runs its `Cluster` in one; tests and
examples run a simulator in another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import gevent
from gevent import GreenletExit
from gevent.pool import Group

from gcluster.errors import HubThreadStopped, InvalidState, ThreadedClusterTimeout

__all__ = ["HubThread"]

T = TypeVar("T")

# How often a waiting thread looks whether the hub thread is still alive.
POLL: Final = 0.25
# Added to a call's own timeout: the time the hub needs to answer once it is done.
GRACE: Final = 5.0


class _Call(Generic[T]):
    """One function to run in the hub thread, and its outcome for the calling thread."""

    __slots__ = ("args", "done", "error", "func", "kwargs", "value")

    def __init__(
        self, func: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """Run in a greenlet of the hub thread."""
        try:
            self.value = self.func(*self.args, **self.kwargs)
        except Exception as err:  # noqa: BLE001 - handed to the calling thread, which raises it
            self.error = err
        except BaseException as err:
            if isinstance(err, GreenletExit):  # killed: the hub thread is stopping
                self.error = HubThreadStopped("the hub thread stopped during the call")
            else:
                self.error = err
            raise
        finally:
            self.done.set()

    def cancel(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


class HubThread:
    """An OS thread running its own gevent hub, and calls into it from any thread.

    `call(func, ...)` runs `func` in a new greenlet of the hub thread and
    returns its result (or raises its exception) in the calling thread.
    `post(func, ...)` runs a non-blocking function in the hub and returns at
    once. `stop()` ends the thread; calls made afterwards raise
    `HubThreadStopped`.

    Args:
        name: the thread's name.
    """

    def __init__(self, name: str = "gcluster-hub") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._closed = False
        self._loop: Any = None
        self._wake: Any = None  # the loop's async watcher that stop() sends, from any thread
        self._greenlets: Any = None  # gevent Group of running calls
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def __repr__(self) -> str:
        state = "alive" if self.alive else "stopped"
        return f"<HubThread {self.name} {state}>"

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def in_hub(self) -> bool:
        """True when called from the hub thread itself."""
        return threading.get_ident() == self._thread.ident

    def start(self, timeout: float = 10.0) -> HubThread:
        """Start the thread and wait until its hub takes calls.

        Raises:
            ThreadedClusterTimeout: the hub did not start within `timeout`.
        """
        self._thread.start()
        if not self._started.wait(timeout):
            raise ThreadedClusterTimeout(f"the hub thread did not start within {timeout} s")
        return self

    def call(self, func: Callable[..., T], *args: Any, timeout: float | None, **kwargs: Any) -> T:
        """Run `func(*args, **kwargs)` in a greenlet of the hub thread; return its result.

        Args:
            timeout: seconds to wait for it; None waits as long as the hub
                thread lives.

        Raises:
            whatever `func` raised, in the calling thread.
            ThreadedClusterTimeout: no answer within `timeout`.
            HubThreadStopped: the hub thread has ended.
        """
        if self.in_hub():
            raise InvalidState("HubThread.call from the hub thread itself would wait for itself")
        call: _Call[T] = _Call(func, args, kwargs)
        self.post(self._spawn, call)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not call.done.wait(POLL if deadline is None else _slice(deadline)):
            if not self._thread.is_alive():
                if call.done.is_set():
                    break
                raise HubThreadStopped("the hub thread ended before answering")
            if deadline is not None and time.monotonic() >= deadline:
                name = getattr(func, "__name__", repr(func))
                raise ThreadedClusterTimeout(f"{name} got no answer within {timeout} s")
        if call.error is not None:
            raise call.error
        return call.value  # type: ignore[return-value]

    def post(self, func: Callable[..., object], *args: Any) -> None:
        """Run `func(*args)` in the hub (not in a greenlet of its own: it must not block).

        Raises:
            HubThreadStopped: the hub thread has ended or is ending.
        """
        with self._lock:
            if self._closed or not self._started.is_set():
                raise HubThreadStopped("the hub thread is not running")
            self._loop.run_callback_threadsafe(func, *args)

    def stop(self, timeout: float = 10.0) -> bool:
        """End the hub thread: running calls are killed, later ones refused.

        Callable from any thread, and idempotent.

        Returns:
            True when the thread has ended (always False from the hub thread itself).
        """
        with self._lock:
            if self._thread.ident is None:
                return True  # never started
            if not self._closed and self._wake is not None:
                self._wake.send()  # thread-safe: wakes the hub thread's main greenlet
        if self.in_hub():
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- in the hub thread ---------------------------------------------------------

    def _main(self) -> None:
        hub = gevent.get_hub()
        self._loop = hub.loop
        self._wake = hub.loop.async_()
        self._greenlets = Group()
        self._started.set()
        try:
            # The active watcher also keeps the loop running while nothing else is.
            hub.wait(self._wake)
        finally:
            with self._lock:
                self._closed = True
            # Callbacks posted before the lock closed run now; _spawn refuses them.
            gevent.sleep(0)
            self._greenlets.kill(block=True, timeout=GRACE)
            self._wake.close()
            hub.destroy(destroy_loop=True)

    def _spawn(self, call: _Call[Any]) -> None:
        if self._closed:
            call.cancel(HubThreadStopped("the hub thread is stopping"))
            return
        self._greenlets.spawn(call.run)


def _slice(deadline: float) -> float:
    return max(0.0, min(POLL, deadline - time.monotonic()))
