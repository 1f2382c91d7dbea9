"""Worker processes of the ``local`` executor (driver side).

Each worker is a fresh interpreter (:data:`robench_executors.worker.BOOT`, run with
``sys.executable``), the same clean start as multiprocessing's ``spawn`` (torch and ``fork``
do not mix), but without re-importing the caller's ``__main__``: a script that calls
``robench.run_grid`` at top level, without an ``if __name__ == "__main__"`` guard, works.
It gets the driver's ``sys.path``, environment and working directory, so job functions of
any importable module run there, and plugins come from the installed entry points (with
``ROBENCH_PLUGINS`` / ``ROBENCH_DISABLE_PLUGINS``), as on a Ray worker.

The driver talks to each worker over a socket pair, and waits on all of them at once
(:func:`multiprocessing.connection.wait`): a worker that dies (SIGKILL, a segfault, the OOM
killer) closes its end, which fails the job it was running and starts a fresh worker.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait

from robench.jobs import Job, JobOutcome
from robench_executors.worker import BOOT

#: consecutive workers that may die before they are ready before the pool gives up
START_ATTEMPTS = 3
#: seconds a worker gets to exit after being asked to (then SIGTERM, then SIGKILL)
EXIT_GRACE = 5.0
#: environment variables that size thread pools of the libraries torch and numpy use
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def describe_exit(returncode: int | None) -> str:
    """Why a worker process ended, in words."""
    if returncode is None:
        return "the worker process stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory, or `kill -9`)" if name == "SIGKILL" else ""
        return f"the worker process was killed by {name}{hint}"
    return f"the worker process exited with code {returncode}"


@dataclass
class Worker:
    """One worker process: its connection, the GPU it sees, and the job it runs."""

    process: subprocess.Popen
    conn: Connection
    gpu: str | None
    #: the CPU cores it runs on (None: wherever the kernel puts it)
    cores: tuple[int, ...] | None = None
    ready: bool = False
    job: Job | None = None

    def stop(self, *, grace: float = EXIT_GRACE, ask: bool = True) -> None:
        """End the process: ask it to exit (when idle), then SIGTERM, then SIGKILL."""
        if ask and self.process.poll() is None:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
        for step in (None, self.process.terminate, self.process.kill):
            if step is not None and self.process.poll() is None:
                try:
                    step()
                except OSError:  # exited in between
                    pass
            try:
                self.process.wait(timeout=grace if step is None else EXIT_GRACE)
                break
            except subprocess.TimeoutExpired:
                continue
        self.conn.close()


def start_worker(threads: int, gpu: str | None,
                 cores: tuple[int, ...] | None = None) -> Worker:
    """Start one worker process with ``threads`` torch threads, seeing GPU ``gpu`` only
    (``CUDA_VISIBLE_DEVICES``; its GPU is then ``cuda``/``cuda:0`` inside), or every GPU
    this process sees when ``gpu`` is None; pinned to the CPU ``cores`` when given (before
    it imports anything, so every thread it starts inherits them)."""
    mine, theirs = Pipe(duplex=True)
    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", BOOT, str(theirs.fileno()), json.dumps(sys.path),
             str(threads), json.dumps(list(cores or ()))],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
        )
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    return Worker(process=process, conn=mine, gpu=gpu, cores=cores)


class WorkerPool:
    """Runs jobs in ``len(gpus)`` worker processes, ``gpus[i]`` being the GPU worker ``i``
    sees (None: no restriction) and ``cores[i]`` the CPU cores it is pinned to (None, or
    ``cores`` left out: not pinned), and yields the outcomes as they finish.  A worker that
    dies is replaced by one with the same GPU and cores.

    ``next_job()`` gives the next job to start (None: none can start now) and
    ``finished(outcome)`` the outcomes that one makes impossible (see
    :class:`robench.jobs.Dependencies`); ``on_progress`` receives the workers' progress.
    """

    def __init__(self, gpus: list[str | None], *, threads: int,
                 on_progress: Callable[[str, int, int], None],
                 cores: list[tuple[int, ...] | None] | None = None) -> None:
        if cores is not None and len(cores) != len(gpus):
            raise ValueError(f"{len(gpus)} workers, but cores for {len(cores)}")
        self.slots = gpus
        self.cores = cores or [None] * len(gpus)
        self.threads = threads
        self.on_progress = on_progress
        self.workers: list[Worker] = []
        self.start_failures = 0

    def _start(self, gpu: str | None, cores: tuple[int, ...] | None) -> None:
        self.workers.append(start_worker(self.threads, gpu, cores))

    def close(self) -> None:
        """Stop every worker: idle ones are asked to exit, busy ones are terminated."""
        workers, self.workers = self.workers, []
        for worker in workers:
            if worker.job is not None and worker.process.poll() is None:
                worker.process.terminate()
        for worker in workers:
            worker.stop(ask=worker.job is None)

    def run(self, next_job: Callable[[], Job | None],
            finished: Callable[[JobOutcome], list[JobOutcome]],
            more: Callable[[], bool]) -> Iterator[JobOutcome]:
        for gpu, cores in zip(self.slots, self.cores, strict=True):
            self._start(gpu, cores)
        try:
            while True:
                for worker in self.workers:
                    while worker.ready and worker.job is None:
                        job = next_job()
                        if job is None:
                            break
                        failure = self._send(worker, job)
                        if failure is not None:
                            yield failure
                            yield from finished(failure)
                busy = [w for w in self.workers if w.job is not None]
                if not busy and not more():
                    return
                if not busy and all(w.ready for w in self.workers):
                    return  # defensive: nothing runs and nothing can start
                by_conn = {id(w.conn): w for w in self.workers}
                for conn in wait([w.conn for w in self.workers]):
                    worker = by_conn[id(conn)]
                    for outcome in self._receive(worker, more):
                        yield outcome
                        yield from finished(outcome)
        finally:
            self.close()

    def _send(self, worker: Worker, job: Job) -> JobOutcome | None:
        """Hand ``job`` to an idle worker; a job that cannot be pickled fails here."""
        try:
            payload = pickle.dumps(job)
        except Exception as exc:
            return JobOutcome(key=job.key, ok=False, result=None,
                              error=f"the job cannot be sent to a worker process (its function "
                                    f"and arguments must be picklable): "
                                    f"{type(exc).__name__}: {exc}")
        try:
            worker.conn.send(("job", job.key, payload))
        except OSError:
            pass  # the worker died: _receive sees its end closed and fails the job
        worker.job = job
        return None

    def _receive(self, worker: Worker, more: Callable[[], bool]) -> list[JobOutcome]:
        """Read one message of ``worker``; a dead worker fails its job and is replaced."""
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            return self._lost(worker, more)
        except Exception as exc:  # a result this process cannot unpickle
            job, worker.job = worker.job, None
            if job is None:
                raise
            return [JobOutcome(key=job.key, ok=False, result=None,
                               error=f"the job's result could not be read from the worker "
                                     f"process: {type(exc).__name__}: {exc}")]
        kind = message[0]
        if kind == "ready":
            worker.ready = True
            self.start_failures = 0
        elif kind == "progress":
            self.on_progress(*message[1:])
        elif kind == "done":
            job, worker.job = worker.job, None
            outcome = message[1]
            if job is not None and (not isinstance(outcome, JobOutcome)
                                    or outcome.key != job.key):
                outcome = JobOutcome(key=job.key, ok=False, result=None,
                                     error=f"the worker process answered "
                                           f"{type(outcome).__name__}, not the outcome of "
                                           f"job {job.key}")
            return [outcome]
        return []

    def _lost(self, worker: Worker, more: Callable[[], bool]) -> list[JobOutcome]:
        """``worker`` died: fail its job, and start a fresh worker if work remains."""
        try:
            returncode = worker.process.wait(timeout=EXIT_GRACE)
        except subprocess.TimeoutExpired:  # its end closed, yet it runs: end it
            worker.process.kill()
            returncode = worker.process.wait()
        worker.conn.close()
        self.workers.remove(worker)
        reason = describe_exit(returncode)
        if not worker.ready:
            self.start_failures += 1
            if self.start_failures >= START_ATTEMPTS:
                raise RuntimeError(
                    f"The local executor's worker processes could not start: {reason} "
                    f"before it was ready, {self.start_failures} times in a row (its error "
                    f"is printed above). Run with [executor.local] workers = 1 to run jobs in "
                    f"this process."
                )
        outcomes = []
        if worker.job is not None:
            outcomes.append(JobOutcome(
                key=worker.job.key, ok=False, result=None,
                error=f"{reason} while it ran this job; the other jobs went on in a fresh "
                      f"worker"))
        if more():
            self._start(worker.gpu, worker.cores)
        return outcomes
