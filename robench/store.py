"""The run store: ``results.sqlite``, one transaction per finished task or shard.

A task (training a model, a clean pass, an attack over its eps list) is keyed by a hash of
everything that determines its numbers; rerunning the same grid skips the keys already here,
so a killed run resumes where it stopped and never duplicates a row.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from robench.errors import UsageError

SCHEMA_VERSION = 1


def task_key(payload: dict[str, Any]) -> str:
    """A stable hash of a JSON-able description of a task."""
    blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


class Store:
    """SQLite (WAL) store of finished tasks.  Only the driver process writes to it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            with self.db:
                self.db.execute(
                    "CREATE TABLE IF NOT EXISTS tasks (key TEXT PRIMARY KEY, kind TEXT NOT NULL,"
                    " label TEXT NOT NULL, status TEXT NOT NULL, payload TEXT NOT NULL,"
                    " finished REAL NOT NULL)"
                )
                self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                                (str(SCHEMA_VERSION),))
            (schema,) = self.db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise UsageError(
                f"The store {str(self.path)!r} is not a readable robench store ({exc}). "
                f"Move it away, or rerun with --fresh to start the run over."
            ) from None
        if int(schema) != SCHEMA_VERSION:
            raise UsageError(
                f"The store {str(self.path)!r} has schema {schema}; this robench writes "
                f"{SCHEMA_VERSION}. Rerun with --fresh."
            )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT payload FROM tasks WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def status(self, key: str) -> str | None:
        row = self.db.execute("SELECT status FROM tasks WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, *, kind: str, label: str, status: str,
            payload: dict[str, Any]) -> None:
        """Record a finished task in one transaction (replacing a failed earlier attempt).

        ``kind`` is the task's type (``Job.task``: train, load, clean, attack), written to the
        store's ``kind`` column (the on-disk schema keeps its name)."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?)",
                (key, kind, label, status, json.dumps(payload, default=str), time.time()),
            )

    def close(self) -> None:
        self.db.close()


# --------------------------------------------------------------------------- masks


def pack_mask(mask: Any) -> str:
    """A bool tensor (or array) packed 8 per byte, as hex text for the store."""
    array = mask.cpu().numpy() if hasattr(mask, "cpu") else np.asarray(mask)
    return np.packbits(array.astype(np.uint8)).tobytes().hex()


def unpack_mask(text: str, n: int) -> np.ndarray:
    """The ``n`` bools that :func:`pack_mask` packed."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)
