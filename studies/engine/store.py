"""The results store, and the one atomic writer every stored file goes through.

- `write_json` and `write_text` write a file whole or not at all (a temp file in the same
  folder, flushed and fsynced, renamed over the target, the folder fsynced): whatever kills
  the process, a reader sees the old file or the new one. Rows, the manifest, the seed
  plans, the bench results and the report's pages are all written by them.
- `ResultsStore` keeps one JSON file per finished run, ``<root>/<claim>/<key>.json``;
  `load_rows` reads a store into a DataFrame.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pandas

from studies.engine.config import RunConfig

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
        """Stores `row` (a row of `studies.engine.worker.run_group`) atomically; returns its path."""
        path = self.root / row["claim"] / f"{row['key']}.json"
        write_json(path, row, tag=row["key"])
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
        write_json(path, manifest, tag="manifest")
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


def write_text(path, text: str, tag: str | None = None) -> Path:
    """Writes `text` to `path` whole or not at all: a temp file ``.<tag>.<pid>.tmp`` in the
    same folder (`tag` defaults to the file's name), flushed to disk, then renamed over
    `path`, and the rename made durable. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{tag or path.name}.{os.getpid()}{_TEMP_SUFFIX}"
    try:
        with open(temp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def write_json(path, obj, tag: str | None = None) -> Path:
    """`write_text` of `obj` as indented JSON with sorted keys."""
    return write_text(path, json.dumps(obj, indent=1, sort_keys=True), tag)


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
