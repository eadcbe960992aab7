"""Grids of runs, the resumable results store, and the executors that run a grid.

- A grid is data: `grid` takes the product of axes over a base `RunConfig`; `concat` joins
  grids (dropping repeats).
- `ResultsStore` keeps one JSON file per finished run, ``<root>/<claim>/<key>.json``,
  written atomically (temp file in the same folder, fsync, `os.replace`): a file is whole
  or absent, whatever kills the process. `load_rows` reads a store into a DataFrame.
- `run_sweep` runs the configs not done yet with an executor, ``local`` (in-process when
  ``jobs == 1``, else a pool of spawned worker processes) or ``ray``, and writes each row
  as it arrives. Workers only compute; the parent process is the only writer.
- The executors hand a worker a *unit* of configs (`studies.stacked.plan`: the configs
  that differ only in their seed, in fixed blocks of seeds, or a config alone) and get its
  rows back (`studies.stacked.run_group`); how the unit trains is the worker's business.
  A block runs whole, so it may store rows of seeds the sweep did not ask for (counted
  as ``extra``); a block killed before its rows arrive reruns whole.

Failed runs are recorded (``status="error"`` with the traceback) and count as done: a rerun
skips them unless asked to retry (``retry_errors=True``, ``--retry-errors``), so a run that
fails for a reason in its config does not cost its time again on every invocation.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import multiprocessing
import os
import sys
import time
import warnings
from pathlib import Path

import pandas

from studies import stacked
from studies.training import RunConfig

EXECUTORS = ("local", "ray")


def grid(base: RunConfig, **axes) -> list[RunConfig]:
    """The product of `axes` (field name -> list of values) applied to `base`, in order
    (the last axis varies fastest). ``grid(base)`` is ``[base]``."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(axes) - fields)
    if unknown:
        raise ValueError(f"grid axes must be RunConfig fields. Unknown: {', '.join(unknown)}")
    names = list(axes)
    values = [list(axes[name]) for name in names]
    return [dataclasses.replace(base, **dict(zip(names, combo))) for combo in itertools.product(*values)]


def concat(*grids) -> list[RunConfig]:
    """The configs of all `grids` in order, each once."""
    seen, out = set(), []
    for config in itertools.chain(*grids):
        if config.key() not in seen:
            seen.add(config.key())
            out.append(config)
    return out


def reseed(configs, seeds) -> list[RunConfig]:
    """`configs` with each arm's seeds replaced by `seeds` (an arm: the configs that differ
    only in their seed), arms in their first order, each config once."""
    arms = concat(dataclasses.replace(c, seed=0) for c in configs)
    return [dataclasses.replace(arm, seed=int(seed)) for arm in arms for seed in seeds]


# ---------------------------------------------------------------------------------------
# The store.

_TEMP_SUFFIX = ".tmp"
#: The sweep's manifest in the store's root, read by `studies.report`.
MANIFEST = "manifest.json"


class ResultsStore:
    """Rows on disk, one JSON file per run: ``<root>/<claim>/<key>.json``.

    Writes are atomic; temp files (``.<key>.<pid>.tmp``) are never read as results, and
    those left by a process that no longer runs are removed by `clean`.
    """

    def __init__(self, root):
        self.root = Path(root)

    def path(self, config: RunConfig) -> Path:
        return self.root / config.claim / f"{config.key()}.json"

    def read(self, config: RunConfig) -> dict | None:
        """The stored row of `config`, or None when absent or not a valid row of it."""
        return _read_row(self.path(config), config.key())

    def status(self, config: RunConfig) -> str | None:
        """``ok``, ``error``, or None (not run)."""
        row = self.read(config)
        return None if row is None else row["status"]

    def done(self, config: RunConfig, retry_errors: bool = False) -> bool:
        """True if `config` has a stored row (an error row counts unless `retry_errors`)."""
        status = self.status(config)
        return status == "ok" or (status == "error" and not retry_errors)

    def write(self, row: dict) -> Path:
        """Stores `row` (a row of `studies.training.run`) atomically; returns its path."""
        path = self.root / row["claim"] / f"{row['key']}.json"
        _write_json(path, row, tag=row["key"])
        return path

    def read_manifest(self) -> dict | None:
        """The manifest of the last sweep (`MANIFEST`), or None."""
        try:
            return json.loads((self.root / MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    def write_manifest(self, manifest: dict) -> Path:
        """Stores the sweep's manifest (profile, executor, jobs, wall time...) atomically."""
        path = self.root / MANIFEST
        _write_json(path, manifest, tag="manifest")
        return path

    def clean(self) -> list[Path]:
        """Removes temp files whose writing process has died; returns them."""
        removed = []
        temps = [*self.root.glob(f".*{_TEMP_SUFFIX}"), *self.root.glob(f"*/.*{_TEMP_SUFFIX}")]
        for temp in temps:
            pid = temp.name[: -len(_TEMP_SUFFIX)].rsplit(".", 1)[-1]
            if not (pid.isdigit() and _alive(int(pid))):
                temp.unlink(missing_ok=True)
                removed.append(temp)
        return removed


def _write_json(path, obj, tag):
    """Writes `obj` to `path` whole or not at all: a temp file ``.<tag>.<pid>.tmp`` in the
    same folder, flushed to disk, then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{tag}.{os.getpid()}{_TEMP_SUFFIX}"
    with open(temp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder):
    """Makes a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _read_row(path, key=None):
    try:
        with open(path) as f:
            row = json.load(f)
    except (OSError, ValueError):
        return None
    valid = (
        isinstance(row, dict)
        and row.get("status") in ("ok", "error")
        and row.get("key") == (key or Path(path).stem)
    )
    return row if valid else None


def load_rows(root, claims=None) -> pandas.DataFrame:
    """All stored rows (of `claims`, default all) as a DataFrame, one row per run.

    List-valued columns (per-epoch metrics, widths) hold tuples, so they can be compared
    and grouped. A file that is not a valid row is skipped with a warning."""
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if claims is not None:
        folders = [p for p in folders if p.name in set(claims)]
    rows = []
    for path in sorted(p for folder in folders for p in folder.glob("*.json")):
        row = _read_row(path)
        if row is None:
            warnings.warn(f"Skipping {path}: not a valid result row.", stacklevel=2)
            continue
        rows.append({k: tuple(v) if isinstance(v, list) else v for k, v in row.items()})
    return pandas.DataFrame(rows)


# ---------------------------------------------------------------------------------------
# Progress.


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


def _run_local(units, jobs):
    """Yields rows as units (`studies.stacked.plan`) finish: in this process, or in `jobs`
    spawned processes (spawn: TensorFlow does not survive a fork) that split the cores
    between them."""
    if jobs == 1:
        for unit in units:
            yield from stacked.run_group(unit)
        return
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=limit_threads,
        initargs=(_threads_per_worker(jobs),),
    )
    try:
        futures = [pool.submit(stacked.run_group, unit) for unit in units]
        for future in concurrent.futures.as_completed(futures):
            yield from future.result()
    finally:
        # Interrupted (Ctrl-C, a worker killed): runs not started are dropped, not run.
        pool.shutdown(wait=True, cancel_futures=True)


def _ray_run(unit, threads):
    limit_threads(threads)
    return stacked.run_group(unit)


def _run_ray(units, jobs):
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
        pending = [remote.remote(unit, 1) for unit in units]
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
) -> SweepSummary:
    """Runs every config of `configs` not done in `store`, writing each row as it arrives.

    Repeated configs run once. Rerunning after an interruption runs only what is missing.
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
    units = stacked.plan(pending)
    progress = Progress(sum(len(unit) for unit in units), progress_stream)
    rows = _run_local(units, jobs) if executor == "local" else _run_ray(units, jobs)
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
