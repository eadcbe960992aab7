"""The executors that run a grid, resumably.

`run_sweep` runs the configs not done yet in a `studies.engine.store.ResultsStore` with an
executor, ``local`` (in-process when ``jobs == 1``, else a pool of spawned worker
processes) or ``ray``, and writes each row as it arrives. Workers only compute; the
parent process is the only writer.

The executors hand a worker a *unit* of configs (`studies.engine.worker.plan`: the configs
that differ only in their seed, in fixed blocks of seeds, or a config alone) and get its
rows back (`studies.engine.worker.run_group`, the one seam from configs to rows); how the
unit trains is the worker's business. A block runs whole, so it may store rows of seeds
the sweep did not ask for (counted as ``extra``); a block killed before its rows arrive
reruns whole.

Tasks are registered by the modules that define them; a sweep's caller names a `setup`
function (a module-level function, so that spawned and Ray workers can run it too) that
imports them in every process before its first unit: the command line passes
`studies.claims.register_tasks`.

Failed runs are recorded (``status="error"`` with the traceback) and count as done: a rerun
skips them unless asked to retry (``retry_errors=True``, ``--retry-errors``), so a run that
fails for a reason in its config does not cost its time again on every invocation.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import sys
import time

from studies.engine import worker
from studies.engine.config import concat
from studies.engine.store import ResultsStore

EXECUTORS = ("local", "ray")

class Progress:
    """One line per finished run; on a terminal, one line rewritten in place (``\\r``)
    with the count, the elapsed time and an estimate of the time left."""

    def __init__(self, total, stream=None):
        self.total, self.count, self.errors = total, 0, 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()

    def update(self, row):
        self.count += 1
        self.errors += row["status"] != "ok"
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.count * (self.total - self.count)
        width = len(str(self.total))
        line = (
            f"[{self.count:{width}d}/{self.total}] {row['claim']} {row['key']} {row['status']}"
            f" {row.get('time/total_s', 0.0):.1f}s | elapsed {_clock(elapsed)} eta {_clock(eta)}"
            + (f" | {self.errors} failed" if self.errors else "")
        )
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if self.count == self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _clock(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


# ---------------------------------------------------------------------------------------
# Executors.


def limit_threads(threads):
    """Caps TensorFlow's thread pools at `threads` (in a process that has not run a
    TensorFlow op yet; later it is too late and the call is ignored)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass


def _threads_per_worker(jobs):
    return max(1, (os.cpu_count() or 1) // jobs)


def _start_worker(threads, setup):
    limit_threads(threads)
    if setup is not None:
        setup()


def _run_local(units, jobs, setup):
    """Yields rows as units (`studies.engine.worker.plan`) finish: in this process, or in
    `jobs` spawned processes (spawn: TensorFlow does not survive a fork) that split the
    cores between them."""
    if jobs == 1:
        for unit in units:
            yield from worker.run_group(unit)
        return
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(_threads_per_worker(jobs), setup),
    )
    try:
        futures = [pool.submit(worker.run_group, unit) for unit in units]
        for future in concurrent.futures.as_completed(futures):
            yield from future.result()
    finally:
        # Interrupted (Ctrl-C, a worker killed): runs not started are dropped, not run.
        pool.shutdown(wait=True, cancel_futures=True)


def _ray_run(unit, threads, setup):
    _start_worker(threads, setup)
    return worker.run_group(unit)


def _run_ray(units, jobs, setup):
    """Yields rows from Ray tasks (one CPU and one unit each; Ray reuses its worker
    processes, and with them their compiled models) as they finish. Joins the cluster at
    ``RAY_ADDRESS`` when set, else starts a local one with `jobs` CPUs (a Ray instance
    already running in this process is used as it is)."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            "the ray executor needs Ray: pip install 'kerasnorm[ray]' (or use --executor local)"
        ) from None
    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=jobs, include_dashboard=False)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(_ray_run)
        pending = [remote.remote(unit, 1, setup) for unit in units]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield from ray.get(ready[0])
    finally:
        if started:
            ray.shutdown()


@dataclasses.dataclass
class SweepSummary:
    """What a sweep did: runs planned, already done before it, run now (ok / error), and
    rows stored beyond the plan (the other seeds of a block that ran)."""

    planned: int
    skipped: int
    ok: int = 0
    errors: int = 0
    extra: int = 0


def run_sweep(
    configs,
    store: ResultsStore,
    executor: str = "local",
    jobs: int = 1,
    retry_errors: bool = False,
    progress_stream=None,
    setup=None,
) -> SweepSummary:
    """Runs every config of `configs` not done in `store`, writing each row as it arrives.

    Repeated configs run once. Rerunning after an interruption runs only what is missing.
    `setup`, a module-level function, runs in this process and in every worker before its
    first unit (it registers the tasks the configs name).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor '{executor}'; known: {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1. Received: jobs={jobs}")
    configs = concat(configs)
    store.clean()
    pending = [c for c in configs if not store.done(c, retry_errors)]
    summary = SweepSummary(planned=len(configs), skipped=len(configs) - len(pending))
    if not pending:
        return summary
    if setup is not None:
        setup()
    units = worker.plan(pending)
    progress = Progress(sum(len(unit) for unit in units), progress_stream)
    rows = _run_local(units, jobs, setup) if executor == "local" else _run_ray(units, jobs, setup)
    wanted = {config.key() for config in pending}
    for row in rows:
        store.write(row)
        progress.update(row)
        if row["key"] not in wanted:
            summary.extra += 1
        elif row["status"] == "ok":
            summary.ok += 1
        else:
            summary.errors += 1
    return summary
