"""Stop training before the kernel's out-of-memory killer does.

The OOM killer ends a process with SIGKILL: no message, no checkpoint, the run just vanishes.
`MemoryWatchdog` samples memory on a daemon thread and calls back at two thresholds of the limit:
`soft` (90%) asks the trainer to checkpoint and stop after the current step, `hard` (97%) to stop
now, which `interrupt_main_thread(MemoryLimitReached(...))` does from the watchdog's thread.

    with MemoryWatchdog(limit, source="cgroup v1 limit", on_soft=..., on_hard=...) as watchdog:
        train()
    print(watchdog.peak)
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

from ft_models.ram import tree_rss_bytes


class MemoryLimitReached(BaseException):
    """Training stopped because memory came close to the limit this process may use.

    A BaseException, as KeyboardInterrupt is: an `except Exception` in training code must not
    swallow it on its way up to whoever stops the run.
    """

    def __init__(self, used_bytes: int, limit_bytes: int, source: str) -> None:
        self.used_bytes = used_bytes
        self.limit_bytes = limit_bytes
        self.source = source
        where = f" ({source})" if source else ""
        super().__init__(
            f"training used {used_bytes / 1e9:.1f} GB of the {limit_bytes / 1e9:.1f} GB this "
            f"process may use{where}: stopped before the kernel's out-of-memory killer "
            "would. Resume with less memory per step: `ft train --resume --set "
            "training.gradient_checkpointing=true`; or start again with a smaller "
            "training.batch_size or data.max_seq_length"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # copy.copy and deepcopy rebuild an exception from its args; ours are the numbers.
        return type(self), (self.used_bytes, self.limit_bytes, self.source)


def interrupt_main_thread(exception: type[BaseException] | BaseException) -> None:
    """Raise `exception` in the main thread, from any thread, at its next Python bytecode.

    `exception` is a class (called without arguments when it is raised) or an instance, which
    is raised as it is, message and attributes included. A main thread inside one long C call
    (a matmul, a `time.sleep(60)`) sees it only when that call returns.
    """
    if isinstance(exception, BaseException):
        # CPython raises an asynchronous exception by calling the class it was given with no
        # arguments; a class made for this one raise hands back the instance instead.
        instance = exception
        exception = type(
            type(instance).__name__, (type(instance),), {"__new__": lambda cls: instance}
        )
    main = threading.main_thread().ident
    assert main is not None
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    changed = set_async_exc(ctypes.c_ulong(main), ctypes.py_object(exception))
    if changed > 1:  # never expected: undo rather than interrupt threads we did not mean to
        set_async_exc(ctypes.c_ulong(main), None)
        raise SystemError("PyThreadState_SetAsyncExc changed more than one thread")


class InterruptGate:
    """Lets another thread interrupt the main thread only inside marked regions.

    An asynchronous exception lands at whatever bytecode the main thread runs next: inside a
    training step it is harmless (the weights are not touched until the optimizer steps), but
    between `optimizer.step()` and the step counter, or halfway through a checkpoint, it
    would leave state that cannot be saved. So the training loops mark the forward and
    backward passes (`with gate:`), and `interrupt(exception)` raises there at once, or, when
    the main thread is elsewhere, at its next entry into a marked region. An interruption sent
    but not yet delivered when the region ends is taken back and kept for the next entry.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = False
        self._sent: BaseException | None = None
        self._pending: BaseException | None = None

    def interrupt(self, exception: BaseException) -> None:
        """From any thread: raise `exception` in the main thread inside a marked region."""
        with self._lock:
            if self._active:
                self._sent = exception
                interrupt_main_thread(exception)
            else:
                self._pending = exception

    def reset(self) -> None:
        """Forget an interruption not delivered (the run it was for has ended)."""
        with self._lock:
            self._pending = self._sent = None
            self._active = False

    def __enter__(self) -> InterruptGate:
        with self._lock:
            pending, self._pending = self._pending, None
            self._sent = None
            if pending is None:
                self._active = True
        if pending is not None:
            raise pending
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        with self._lock:
            self._active = False
            sent, self._sent = self._sent, None
            if sent is not None and exc is not sent:
                # Sent but not delivered yet: take it back, raise it at the next entry.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(threading.main_thread().ident or 0), None
                )
                self._pending = sent


GATE = InterruptGate()
"""The gate the training loops mark their steps with and `ft train`'s watchdog interrupts
through."""


class MemoryWatchdog:
    """Samples `read()` (default: the RSS of this process and its descendants) every
    `interval_s` seconds on a daemon thread, against `limit_bytes`.

    The first sample at or above `soft * limit_bytes` calls `on_soft(reading)`; the first at or
    above `hard * limit_bytes` calls `on_hard(reading)` (after `on_soft`, in the same sample,
    when memory jumps past both). Each fires at most once. `peak` is the highest reading seen.
    A reading or a callback that raises is kept in `error` and the watchdog keeps watching:
    a watchdog that died on a vanished child process would let the OOM killer in.
    """

    def __init__(
        self,
        limit_bytes: int,
        *,
        source: str = "",
        on_soft: Callable[[int], object] | None = None,
        on_hard: Callable[[int], object] | None = None,
        soft: float = 0.90,
        hard: float = 0.97,
        interval_s: float = 0.25,
        read: Callable[[], int] = tree_rss_bytes,
    ) -> None:
        if not 0 < soft <= hard:
            raise ValueError(f"the thresholds must be 0 < soft <= hard, not {soft} and {hard}")
        self.limit_bytes = limit_bytes
        self.source = source
        self.soft_bytes = int(soft * limit_bytes)
        self.hard_bytes = int(hard * limit_bytes)
        self.interval_s = interval_s
        self.peak = 0
        self.soft_reached = False
        self.hard_reached = False
        self.error: BaseException | None = None
        self._on_soft = on_soft
        self._on_hard = on_hard
        self._read = read
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def limit_reached(self, used_bytes: int | None = None) -> MemoryLimitReached:
        """The exception that says training stopped at `used_bytes` (default: the peak)."""
        used = self.peak if used_bytes is None else used_bytes
        return MemoryLimitReached(used, self.limit_bytes, self.source)

    def start(self) -> MemoryWatchdog:
        """Start sampling (the first sample is taken at once)."""
        if self._thread is not None:
            raise RuntimeError("this MemoryWatchdog has already started")
        self._thread = threading.Thread(target=self._watch, name="ft-memory-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling and wait for the thread to end."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> MemoryWatchdog:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _watch(self) -> None:
        while True:
            self._sample()
            if self._stopping.wait(self.interval_s):
                return

    def _sample(self) -> None:
        try:
            reading = self._read()
        except Exception as error:
            self.error = error
            return
        self.peak = max(self.peak, reading)
        if reading >= self.soft_bytes and not self.soft_reached:
            self.soft_reached = True
            self._call(self._on_soft, reading)
        if reading >= self.hard_bytes and not self.hard_reached:
            self.hard_reached = True
            self._call(self._on_hard, reading)

    def _call(self, callback: Callable[[int], object] | None, reading: int) -> None:
        if callback is None:
            return
        try:
            callback(reading)
        except Exception as error:
            self.error = error
