"""The worker process of the ``local`` executor (child side).

A worker is a fresh Python interpreter (``sys.executable``), started by
:class:`robench_executors.pool.WorkerPool` with one end of a socket pair.  It ignores SIGINT
(the driver decides when workers stop), moves to its CPU cores when it has some, pins
torch's threads before any work, and then runs
the jobs the driver sends, one at a time, until the driver sends ``None`` or goes away.

Messages, each one pickled object on the connection:

driver -> worker
    ``("job", key, pickled_job)``: run it (the job is pickled separately, so a job that
    cannot be unpickled here is still a failed outcome with its key); ``None``: exit.
worker -> driver
    ``("ready", pid)`` once initialised; ``("progress", label, done, total)`` while a job
    runs; ``("done", outcome)`` when it finished.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

#: seconds between two progress messages of one job (its last step is always sent)
PROGRESS_INTERVAL = 0.1

#: what the interpreter runs: SIGINT ignored and the CPU cores chosen before the slow
#: imports (every thread started later runs on those cores), the driver's sys.path
BOOT = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "import json, os, sys\n"
    "cores = json.loads(sys.argv[4])\n"
    "if cores: os.sched_setaffinity(0, cores)\n"
    "sys.path[:] = json.loads(sys.argv[2])\n"
    "from robench_executors.worker import main\n"
    "main(int(sys.argv[1]), threads=int(sys.argv[3]))\n"
)


def _failed(key: str, error: str, detail: str = "") -> Any:
    from robench.jobs import JobOutcome

    return JobOutcome(key=key, ok=False, result=None, error=error, traceback=detail)


def _run(key: str, payload: bytes) -> Any:
    """The outcome of one job; nothing it does (SystemExit included) ends the worker."""
    try:
        job = pickle.loads(payload)
    except BaseException as exc:  # e.g. its function's module is not importable here
        return _failed(key, f"the worker process could not load the job: "
                            f"{type(exc).__name__}: {exc}", traceback.format_exc())
    try:
        return job.execute()
    except BaseException as exc:  # SystemExit, KeyboardInterrupt raised by the job itself
        return _failed(key, f"{type(exc).__name__}: {exc}", traceback.format_exc())


def main(fd: int, *, threads: int) -> None:
    conn = Connection(fd)
    from robench import jobs

    jobs.pin_threads(threads)
    last: dict[str, float] = {}

    def forward(label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last.get(label, 0.0) < PROGRESS_INTERVAL:
            return
        last[label] = now
        conn.send(("progress", label, done, total))

    jobs.set_progress_callback(forward)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the driver went away
            return
        if message is None:
            return
        _, key, payload = message
        last.clear()
        outcome = _run(key, payload)
        try:
            conn.send(("done", outcome))
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception as exc:  # a result that cannot be pickled
            conn.send(("done", _failed(key, f"the job's result could not be sent to the "
                                            f"driver: {type(exc).__name__}: {exc}")))
        sys.stdout.flush()
        sys.stderr.flush()
