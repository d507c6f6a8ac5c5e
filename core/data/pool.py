"""Worker processes for preparation that survive what ``multiprocessing.Pool`` does not.

``multiprocessing.Pool.imap`` loses a task when its worker dies (a segfault inside RDKit) and then waits
for it forever; it cannot stop one molecule that hangs inside C++; and Ctrl-C leaves its workers running.
:class:`WorkerPool` keeps the ordered-map contract of ``imap`` and adds:

- **Crash isolation**: each worker sends one message per item, so when a worker dies the parent knows the
  exact item it was on. That item becomes a :data:`CRASHED` result (the caller turns it into a named
  failure), the rest of the worker's queue is handed out again and a fresh worker takes its place.
- **Hard time limit**: an item running longer than ``hard_limit_s`` has its worker killed and becomes a
  :data:`HUNG` result; RDKit's own timeout and the per-molecule limit normally end it much sooner.
- **Clean interruption**: workers ignore SIGINT; the parent terminates them on Ctrl-C or any error, so
  nothing keeps running and the shards already written stay (preparation resumes from them).

Workers are spawned (no fork of a parent holding threads or big inputs) and each reads its task pipe from a
thread, so the parent never blocks on a full pipe while the worker blocks on sending a result.
"""

from __future__ import annotations

import collections
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import wait
from typing import Any

CRASHED = "crashed"
HUNG = "hung"
READY = -1  # the position a worker reports once it has started


class WorkerLost:
    """The result for an item whose worker died (``kind`` :data:`CRASHED`) or was killed (:data:`HUNG`)."""

    def __init__(self, kind: str, detail: str):
        self.kind, self.detail = kind, detail

    def __repr__(self) -> str:
        return f"WorkerLost({self.kind!r}, {self.detail!r})"


def _serve(tasks, results, initializer, initargs, work) -> None:  # pragma: no cover - runs in the worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interruption stops
    if initializer is not None:
        initializer(*initargs)
    results.send((READY, None))  # start-up (imports) does not count against an item's time limit
    inbox: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            while True:
                inbox.put(tasks.recv())
        except (EOFError, OSError):
            inbox.put(None)

    threading.Thread(target=read, daemon=True).start()
    while (chunk := inbox.get()) is not None:
        for position, item in chunk:
            results.send((position, work(item)))


class _Worker:
    def __init__(self, ctx, initializer, initargs, work):
        child_tasks, self.tasks = ctx.Pipe(duplex=False)  # the parent writes tasks, the worker reads them
        self.results, child_results = ctx.Pipe(duplex=False)  # the worker writes results, the parent reads
        self.process = ctx.Process(
            target=_serve, args=(child_tasks, child_results, initializer, initargs, work), daemon=True
        )
        self.process.start()
        child_tasks.close()
        child_results.close()
        self.queue: collections.deque[int] = collections.deque()  # positions sent, in the order it runs them
        self.since = time.monotonic()  # when the item at the head of the queue started (about)
        self.ready = False
        self.results_seen = 0

    def send(self, chunk: list[tuple[int, Any]]) -> None:
        if not self.queue and self.ready:
            self.since = time.monotonic()
        self.tasks.send(chunk)
        self.queue.extend(position for position, _ in chunk)

    def drain(self, done: dict[int, Any], on_result) -> None:
        """Every result already in the pipe (also after the worker died)."""
        try:
            while self.results.poll():
                position, result = self.results.recv()
                self.since = time.monotonic()
                if position == READY:
                    self.ready = True
                    continue
                self.queue.remove(position)
                self.results_seen += 1
                done[position] = result
                if on_result:
                    on_result()
        except (EOFError, OSError):
            pass

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            self.tasks.close()  # EOF: the worker finishes its queue and exits
        self.process.join(timeout=None if kill else 10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.results.close()
        self.tasks.close()


class WorkerPool:
    """``map(items)`` yields ``work(item)`` in input order from ``workers`` processes (see module docstring)."""

    def __init__(
        self,
        workers: int,
        work: Callable[[Any], Any],
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
        hard_limit_s: float = 600.0,
        chunksize: int = 4,
        max_restarts: int = 100,
    ):
        self.ctx = multiprocessing.get_context("spawn")
        self.spec = (initializer, initargs, work)
        self.hard_limit_s, self.chunksize, self.max_restarts = hard_limit_s, chunksize, max_restarts
        self.workers = [_Worker(self.ctx, *self.spec) for _ in range(workers)]
        self.restarts = 0

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(kill=exc_type is not None)

    def close(self, kill: bool = False) -> None:
        """Stop every worker: at once with ``kill`` (errors, Ctrl-C), else after their queues empty."""
        for worker in self.workers:
            worker.stop(kill=kill)
        self.workers = []

    def _replace(self, worker: _Worker) -> None:
        if self.restarts >= self.max_restarts or (worker.results_seen == 0 and not worker.queue and self.restarts > 3):
            raise RuntimeError(
                f"preparation workers keep dying ({self.restarts} restarts; the last exited with code "
                f"{worker.process.exitcode}); run with --workers 1 to see the error"
            )
        worker.stop(kill=True)
        self.workers[self.workers.index(worker)] = _Worker(self.ctx, *self.spec)
        self.restarts += 1

    def map(self, items: Sequence[Any], on_result: Callable[[], None] | None = None) -> Iterator[Any]:
        """Results in input order; ``on_result`` is called as each one arrives (for a progress bar)."""
        pending = collections.deque(range(len(items)))
        done: dict[int, Any] = {}
        next_out = 0
        while next_out < len(items):
            for worker in list(self.workers):  # two chunks queued per worker, so none waits for the parent
                while pending and len(worker.queue) < 2 * self.chunksize:
                    take = [pending.popleft() for _ in range(min(self.chunksize, len(pending)))]
                    try:
                        worker.send([(p, items[p]) for p in take])
                    except OSError:  # the worker died before it got these: nobody to blame, send them again
                        pending.extendleft(reversed(take))
                        break
            handles = {w.results: w for w in self.workers} | {w.process.sentinel: w for w in self.workers}
            for worker in {handles[h] for h in wait(list(handles), timeout=1.0)}:
                worker.drain(done, on_result)
                if not worker.process.is_alive():
                    if worker.queue:  # the first item it had not answered is the one it died on
                        code = worker.process.exitcode
                        self._lose(worker, pending, done, CRASHED, f"worker process exited with code {code}")
                        if on_result:
                            on_result()
                    self._replace(worker)
            now = time.monotonic()
            for worker in list(self.workers):
                if worker.ready and worker.queue and now - worker.since > self.hard_limit_s:
                    worker.drain(done, on_result)
                if worker.ready and worker.queue and now - worker.since > self.hard_limit_s:
                    self._lose(worker, pending, done, HUNG, f"worker killed after {self.hard_limit_s:.0f} s")
                    if on_result:
                        on_result()
                    self._replace(worker)
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1

    @staticmethod
    def _lose(worker: _Worker, pending, done, kind: str, detail: str) -> None:
        """The worker's current item gets ``kind``; the rest of its queue goes back to the front of ``pending``."""
        culprit, *rest = worker.queue
        done[culprit] = WorkerLost(kind, detail)
        pending.extendleft(reversed(rest))
        worker.queue.clear()
