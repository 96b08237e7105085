import copy
import threading
import time
from collections.abc import Callable

import pytest

from ft_models.memory_watchdog import (
    InterruptGate,
    MemoryLimitReached,
    MemoryWatchdog,
    interrupt_main_thread,
)

LIMIT = 1000


def _script(readings: list[int]) -> tuple[Callable[[], int], threading.Event]:
    """A reader that returns `readings` one by one, then the last one again; the event is set
    once all of them have been read."""
    done = threading.Event()
    position = 0

    def read() -> int:
        nonlocal position
        value = readings[min(position, len(readings) - 1)]
        position += 1
        if position >= len(readings):
            done.set()
        return value

    return read, done


def _watch(readings: list[int], **options: object) -> tuple[MemoryWatchdog, list[tuple[str, int]]]:
    """Run a watchdog over `readings` until they are all read, and return what fired."""
    fired: list[tuple[str, int]] = []
    read, done = _script(readings)
    with MemoryWatchdog(
        LIMIT,
        source="cgroup v1 limit",
        on_soft=lambda reading: fired.append(("soft", reading)),
        on_hard=lambda reading: fired.append(("hard", reading)),
        interval_s=0.001,
        read=read,
        **options,  # type: ignore[arg-type]
    ) as watchdog:
        assert done.wait(5)
    return watchdog, fired


def test_nothing_fires_below_soft() -> None:
    watchdog, fired = _watch([100, 500, 899, 10])

    assert fired == []
    assert watchdog.peak == 899
    assert not watchdog.soft_reached and not watchdog.hard_reached


def test_soft_fires_once_before_hard_fires_once() -> None:
    watchdog, fired = _watch([500, 900, 950, 800, 920, 970, 990, 960, 980])

    assert fired == [("soft", 900), ("hard", 970)]
    assert watchdog.peak == 990
    assert watchdog.soft_reached and watchdog.hard_reached


def test_a_jump_past_both_fires_soft_then_hard() -> None:
    _, fired = _watch([100, 999])

    assert fired == [("soft", 999), ("hard", 999)]


def test_thresholds_are_fractions_of_the_limit() -> None:
    _, fired = _watch([499, 500, 799, 800], soft=0.5, hard=0.8)

    assert fired == [("soft", 500), ("hard", 800)]
    with pytest.raises(ValueError, match="soft <= hard"):
        MemoryWatchdog(LIMIT, soft=0.9, hard=0.8)


def test_a_failing_reading_or_callback_does_not_stop_the_watch() -> None:
    readings = iter([100, None, 900, 980])

    def read() -> int:
        value = next(readings, 980)
        if value is None:
            raise ProcessLookupError("no process 4242")
        return value

    def on_soft(reading: int) -> None:
        raise RuntimeError("the trainer is gone")

    hard = threading.Event()
    with MemoryWatchdog(
        LIMIT, on_soft=on_soft, on_hard=lambda r: hard.set(), interval_s=0.001, read=read
    ) as watchdog:
        assert hard.wait(5)
    assert isinstance(watchdog.error, RuntimeError)


def test_stop_joins_the_thread_and_the_default_reads_this_process() -> None:
    watchdog = MemoryWatchdog(10**15, interval_s=0.01).start()
    time.sleep(0.05)
    watchdog.stop()

    assert watchdog._thread is not None and not watchdog._thread.is_alive()
    assert watchdog.peak > 10 * 2**20
    assert watchdog.error is None
    with pytest.raises(RuntimeError, match="already started"):
        watchdog.start()


def test_limit_reached_says_what_happened() -> None:
    error = MemoryLimitReached(21_800_000_000, 22_000_000_000, "cgroup v1 limit")

    assert str(error).startswith(
        "training used 21.8 GB of the 22.0 GB this process may use (cgroup v1 limit): "
        "stopped before the kernel's out-of-memory killer would. Resume with less memory per "
        "step: `ft train --resume --set training.gradient_checkpointing=true`"
    )
    assert not isinstance(error, Exception)
    # Copies keep the numbers (the default would call the class with the message alone).
    copied = copy.deepcopy(error)
    assert (copied.used_bytes, copied.limit_bytes, copied.source, str(copied)) == (
        error.used_bytes,
        error.limit_bytes,
        error.source,
        str(error),
    )


def _loop_until_interrupted() -> float:
    """Spin in the main thread as a training loop would; return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < 5:
        time.sleep(0.005)
    return time.monotonic() - start


def test_interrupt_main_thread_with_a_class() -> None:
    assert threading.current_thread() is threading.main_thread()
    threading.Timer(0.05, interrupt_main_thread, args=(KeyboardInterrupt,)).start()

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _loop_until_interrupted()
    assert time.monotonic() - start < 1


def test_hard_threshold_interrupts_the_training_loop() -> None:
    # What the orchestrator does: at the hard threshold, raise MemoryLimitReached in the loop.
    assert threading.current_thread() is threading.main_thread()
    read, _ = _script([100, 200, 500, 990])

    def on_hard(reading: int) -> None:
        interrupt_main_thread(watchdog.limit_reached(reading))

    watchdog = MemoryWatchdog(
        LIMIT, source="MemAvailable", on_hard=on_hard, interval_s=0.01, read=read
    )
    start = time.monotonic()
    with pytest.raises(MemoryLimitReached) as caught, watchdog:
        _loop_until_interrupted()

    assert time.monotonic() - start < 1
    assert type(caught.value) is MemoryLimitReached
    assert (caught.value.used_bytes, caught.value.limit_bytes) == (990, LIMIT)
    assert "(MemAvailable)" in str(caught.value)


def test_the_gate_interrupts_inside_marked_regions_only() -> None:
    """`InterruptGate`: an interruption raised from another thread lands inside a marked
    region (a training step), never between two: sent while the main thread is outside, it
    waits for the next region's start."""
    assert threading.current_thread() is threading.main_thread()
    gate = InterruptGate()
    stop = MemoryLimitReached(990, LIMIT, "test")
    # Inside a region: raised there, within a second.
    threading.Timer(0.05, gate.interrupt, args=(stop,)).start()
    with pytest.raises(MemoryLimitReached) as caught, gate:
        _loop_until_interrupted()
    assert caught.value is stop
    # Outside any region: nothing happens until the next region starts.
    gate.interrupt(stop)
    time.sleep(0.05)  # no exception here, between regions
    with pytest.raises(MemoryLimitReached), gate:
        raise AssertionError("the region's body must not run")
    # Delivered once: the region after runs normally; reset forgets what was not delivered.
    with gate:
        pass
    gate.interrupt(stop)
    gate.reset()
    with gate:
        pass
