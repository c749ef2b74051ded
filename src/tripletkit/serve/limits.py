"""Bounds on the work photos cause: a few decodes and detections at a time, a bounded queue
before them, and memory handed back to the system once a burst is over.

A photo costs memory while it is decoded and detected (a 25-megapixel PNG is 75 to 100 MB
decoded, before it is reduced); the face models take one photo at a time anyway
(``faces/align.py`` holds a lock per model). So :class:`PhotoQueue` lets ``workers`` photo
jobs run at once; up to ``waiting`` more wait their turn in the event loop (holding no thread
and no decoded image: their uploads stay in the spooled files the form parser wrote), and one
more is refused at once with 503 and ``Retry-After``, as is one that waited ``max_wait_s``
without starting. When the last running job ends, the C allocator is asked to give its free
memory back (glibc's ``malloc_trim``): the decoders free their buffers, but glibc keeps freed
memory of its thread arenas mapped unless asked.
"""

from __future__ import annotations

import ctypes
import functools
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class Busy(Exception):
    """The photo queue is full, or a job waited too long for its turn (answered 503).

    Attributes:
        retry_after: seconds the client should wait before trying again.
    """

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PhotoQueue:
    """At most ``workers`` photo jobs at once, at most ``waiting`` waiting for a turn.

    Args:
        workers: jobs that run at once (each in a worker thread).
        waiting: jobs that may wait for a turn; more are refused with :class:`Busy`.
        max_wait_s: a job that has not started after this long is refused with :class:`Busy`.
    """

    def __init__(self, workers: int = 2, waiting: int = 32, max_wait_s: float = 30.0) -> None:
        if workers < 1 or waiting < 0 or max_wait_s <= 0:
            raise ValueError(
                f"need workers >= 1, waiting >= 0 and max_wait_s > 0, got {workers}, {waiting}, "
                f"{max_wait_s}"
            )
        self.workers = workers
        self.waiting = waiting
        self.max_wait_s = max_wait_s
        self._limiter = anyio.CapacityLimiter(workers)
        self._lock = threading.Lock()
        self._running = 0
        self._mean_s = 1.0  # a running mean of job durations, for Retry-After

    @property
    def running(self) -> int:
        """Jobs running now."""
        with self._lock:
            return self._running

    def queued(self) -> int:
        """Jobs waiting for a turn now (read from the event loop)."""
        return int(self._limiter.statistics().tasks_waiting)

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a worker thread once a turn is free.

        Raises:
            Busy: the queue is full, or no turn came within ``max_wait_s``.
        """
        if self._limiter.available_tokens == 0 and self.queued() >= self.waiting:
            raise Busy(
                f"busy: {self.workers} photos are being processed and {self.waiting} are "
                "waiting; try again shortly",
                self._retry_after(self.waiting + 1),
            )
        with anyio.move_on_after(self.max_wait_s) as waited:
            await self._limiter.acquire()
        if waited.cancelled_caught:
            raise Busy(
                f"busy: no turn to process the photo within {self.max_wait_s:.0f} s; try again "
                "shortly",
                self._retry_after(self.queued() + 1),
            )
        try:
            return await anyio.to_thread.run_sync(self._call, fn)
        finally:
            self._limiter.release()

    def _call(self, fn: Callable[[], T]) -> T:
        with self._lock:
            self._running += 1
        start = time.perf_counter()
        try:
            return fn()
        finally:
            took = time.perf_counter() - start
            with self._lock:
                self._running -= 1
                self._mean_s = 0.8 * self._mean_s + 0.2 * took
                idle = self._running == 0
            if idle:
                release_memory()

    def _retry_after(self, ahead: int) -> int:
        """Seconds until ``ahead`` jobs are likely done, at least 1."""
        with self._lock:
            mean = self._mean_s
        return max(1, math.ceil(mean * ahead / self.workers))


def release_memory() -> bool:
    """Give the C allocator's free memory back to the system (glibc's ``malloc_trim(0)``);
    False where there is no such call (another C library)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Any:
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function
