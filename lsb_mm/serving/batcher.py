"""Dynamic batching of concurrent queries into one call of the service (one worker thread runs
the model)."""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any, Optional

from lsb_mm.errors import InputError

__all__ = ["Batcher"]


class Batcher:
    """Dynamic batching: queries submitted from the event loop are grouped (up to ``max_batch``;
    all that are queued, plus, while the last batch held more than one, those arriving within
    ``max_wait`` seconds of the first) and answered by ``run`` in one worker,
    the only thread that runs the model. ``max_batch=1`` turns grouping off. The worker is a
    thread started on the first query, or the caller of :meth:`run_here` (``lsb-mm serve`` runs it
    in the main thread: torch's CPU kernels run fastest there)."""

    def __init__(self, run, max_batch: int = 32, max_wait: float = 0.002):
        if max_batch < 1 or max_wait < 0:
            raise InputError(f"batching: max_batch must be >= 1 and max_wait >= 0, got {max_batch}, {max_wait}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait
        self.stats = {"batches": 0, "queries": 0, "largest": 0}
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._here = False
        self._last = 0  # size of the last batch
        self._start_lock = threading.Lock()

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._thread is None and not self._here:
            with self._start_lock:
                if self._thread is None and not self._here:
                    self._thread = threading.Thread(target=self._work, name="lsb-mm-batcher", daemon=True)
                    self._thread.start()
        self._queue.put((item, loop, future))
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    def run_here(self) -> None:
        """Be the worker in the calling thread until :meth:`close`."""
        self._here = True
        self._work()

    def close(self) -> None:
        """Stop the worker once the queries already queued are answered (safe to call from any thread)."""
        self._queue.put(None)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
            self._thread = None

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            # wait for company only under load (the last batch was shared): a lone client pays no wait
            deadline = time.monotonic() + (self.max_wait if self._last > 1 else 0.0)
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                results = self.run([item for item, _, _ in batch])
            except BaseException as exc:  # run answers per query; this is a bug in it: fail the batch, keep serving
                results = [exc] * len(batch)
            self.stats["batches"] += 1
            self.stats["queries"] += len(batch)
            self.stats["largest"] = max(self.stats["largest"], len(batch))
            self._last = len(batch)
            for (_, loop, future), result in zip(batch, results):
                loop.call_soon_threadsafe(_settle, future, result)



def _settle(future, result) -> None:
    if not future.done():
        future.set_result(result)
