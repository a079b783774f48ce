"""Where ``polyroute serve`` keeps tasks: a local SQLite file, so async results and
idempotency keys survive a restart.

A task that was ``running`` when the server stopped is marked ``failed`` the next time the
store is opened (it is not re-run: a re-run would spend the money a second time without the
client asking). The client sees why in the task's ``error`` and can submit it again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from polyroute.api import TaskState, TaskStatus
from polyroute.errors import InputError
from polyroute.schema import RunResult

DB_NAME = "tasks.sqlite3"
STORE_SCHEMA_VERSION = 1
INTERRUPTED_ERROR = (
    "the server stopped while this task was running; it was not re-run (submit it again to run it)"
)
ORPHANED_ERROR = (
    "this task is recorded as running, but no run of it is going on in this server (the server"
    " that started it stopped); it was not re-run (submit it again to run it)"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    idempotency_key TEXT UNIQUE,
    request_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""


def default_store_dir() -> Path:
    """The user's data folder for polyroute (``$XDG_DATA_HOME/polyroute`` or
    ``~/.local/share/polyroute``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "polyroute"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredTask:
    """One row of the store."""

    task_id: str
    status: TaskState
    result: RunResult | None
    error: str | None
    idempotency_key: str | None
    request_sha256: str
    created_at: datetime
    updated_at: datetime

    def to_status(self) -> TaskStatus:
        """The API's view of this task."""
        return TaskStatus(
            task_id=self.task_id,
            status=self.status,
            result=self.result,
            error=self.error,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


class TaskStore:
    """Tasks by id, and idempotency keys, in one SQLite file (thread-safe)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False)
            self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(STORE_SCHEMA_VERSION),),
            )
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise InputError(f"task store {self.path}: cannot open: {exc}") from None
        self._lock = threading.Lock()

    @classmethod
    def in_dir(cls, directory: str | Path | None) -> TaskStore:
        """The store in ``directory`` (default: the user's data folder)."""
        base = Path(directory) if directory is not None else default_store_dir()
        return cls(base / DB_NAME)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # --- reads ------------------------------------------------------------------------------

    def get(self, task_id: str) -> StoredTask | None:
        """The task with this id, or None."""
        return self._one("SELECT * FROM tasks WHERE task_id = ?", (task_id,))

    def by_idempotency_key(self, key: str) -> StoredTask | None:
        """The task first created with this Idempotency-Key, or None."""
        return self._one("SELECT * FROM tasks WHERE idempotency_key = ?", (key,))

    def _one(self, sql: str, params: tuple[Any, ...]) -> StoredTask | None:
        with self._lock:
            cur = self._db.execute(sql, params)
            cols = [d[0] for d in cur.description]
            row = cur.fetchone()
        if row is None:
            return None
        rec = dict(zip(cols, row, strict=True))
        result = RunResult.model_validate(json.loads(rec["result"])) if rec["result"] else None
        return StoredTask(
            task_id=rec["task_id"],
            status=rec["status"],
            result=result,
            error=rec["error"],
            idempotency_key=rec["idempotency_key"],
            request_sha256=rec["request_sha256"],
            created_at=datetime.fromisoformat(rec["created_at"]),
            updated_at=datetime.fromisoformat(rec["updated_at"]),
        )

    # --- writes -----------------------------------------------------------------------------

    def create(self, task_id: str, request_sha256: str, idempotency_key: str | None) -> bool:
        """Record a new running task. False if the id or the key is already taken."""
        now = _now().isoformat()
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO tasks(task_id, status, idempotency_key, request_sha256,"
                    " created_at, updated_at) VALUES (?, 'running', ?, ?, ?, ?)",
                    (task_id, idempotency_key, request_sha256, now, now),
                )
            except sqlite3.IntegrityError:
                self._db.rollback()
                return False
            self._db.commit()
        return True

    def finish(
        self, task_id: str, status: TaskState, result: RunResult | None, error: str | None
    ) -> None:
        """Record a task's outcome."""
        payload = json.dumps(result.to_wire()) if result is not None else None
        with self._lock:
            self._db.execute(
                "UPDATE tasks SET status = ?, result = ?, error = ?, updated_at = ?"
                " WHERE task_id = ?",
                (status, payload, error, _now().isoformat(), task_id),
            )
            self._db.commit()

    def fail_if_running(self, task_id: str, error: str) -> bool:
        """Mark one task failed if it is still ``running`` (a finished one is left as it is);
        True if it was marked."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE tasks SET status = 'failed', error = ?, updated_at = ?"
                " WHERE task_id = ? AND status = 'running'",
                (error, _now().isoformat(), task_id),
            )
            self._db.commit()
            return cur.rowcount > 0

    def fail_interrupted(self, error: str = INTERRUPTED_ERROR) -> int:
        """Mark every task still ``running`` as failed; the number marked."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE tasks SET status = 'failed', error = ?, updated_at = ?"
                " WHERE status = 'running'",
                (error, _now().isoformat()),
            )
            self._db.commit()
            return cur.rowcount
