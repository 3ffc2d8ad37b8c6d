"""The durable state of the fine-tuning-jobs API: files, jobs and their events, in SQLite
under the jobs dir (`state.db`, write-ahead log, every change committed before it is
answered). A server killed at any moment and started again finds what it had said."""
from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, request TEXT NOT NULL, status TEXT NOT NULL,
    created_at INTEGER NOT NULL, finished_at INTEGER, fine_tuned_model TEXT, error TEXT,
    trained_tokens INTEGER, idempotency_key TEXT UNIQUE);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, data TEXT,
    type TEXT NOT NULL);
"""


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


class Store:
    """One connection, shared by the server's threads under a lock."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.lock = threading.Lock()
        with self.lock:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)

    def _run(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def _next_seq(self, table: str) -> int:
        return self._run(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}")[0][0]

    # ------------------------------------------------------------------------- files
    def add_file(self, file_id: str, filename: str, purpose: str, size: int,
                 path: Path) -> dict:
        self._run("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (file_id, self._next_seq("files"), filename, purpose, size,
                   int(time.time()), str(path)))
        return self.file(file_id)

    def file(self, file_id: str) -> dict | None:
        rows = self._run("SELECT * FROM files WHERE id = ?", (file_id,))
        return dict(rows[0]) if rows else None

    def files(self) -> list[dict]:
        return [dict(r) for r in self._run("SELECT * FROM files ORDER BY seq DESC")]

    def delete_file(self, file_id: str) -> None:
        self._run("DELETE FROM files WHERE id = ?", (file_id,))

    # -------------------------------------------------------------------------- jobs
    def add_job(self, request: dict, idempotency_key: str | None) -> tuple[dict, bool]:
        """(the job, whether it is new): a key seen before returns that key's job."""
        if idempotency_key:
            rows = self._run("SELECT id FROM jobs WHERE idempotency_key = ?",
                             (idempotency_key,))
            if rows:
                return self.job(rows[0]["id"]), False
        job_id = new_id("ftjob")
        self._run("INSERT INTO jobs (id, seq, request, status, created_at, idempotency_key) "
                  "VALUES (?, ?, ?, 'validating_files', ?, ?)",
                  (job_id, self._next_seq("jobs"), json.dumps(request), int(time.time()),
                   idempotency_key))
        return self.job(job_id), True

    def job(self, job_id: str) -> dict | None:
        rows = self._run("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self, statuses: tuple[str, ...] = ()) -> list[dict]:
        """Newest first (the API's order); with `statuses`, only those."""
        rows = self._run("SELECT * FROM jobs ORDER BY seq DESC")
        return [_job(r) for r in rows if not statuses or r["status"] in statuses]

    def update_job(self, job_id: str, expect: tuple[str, ...] = (),
                   **fields: Any) -> dict | None:
        """Set `fields`; with `expect`, only while the job's status is one of those (a job
        cancelled meanwhile stays cancelled): None when it was not."""
        if "error" in fields and fields["error"] is not None:
            fields["error"] = json.dumps(fields["error"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        where = f" AND status IN ({', '.join('?' * len(expect))})" if expect else ""
        with self.lock:
            changed = self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?{where}",
                                      (*fields.values(), job_id, *expect)).rowcount
        return self.job(job_id) if changed else None

    # ------------------------------------------------------------------------ events
    def add_event(self, job_id: str, message: str, level: str = "info",
                  data: dict | None = None, key: str | None = None) -> None:
        """`key` makes an event once only (a metrics row seen again after a restart)."""
        self._run("INSERT OR IGNORE INTO events (id, job_id, created_at, level, message, "
                  "data, type) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (f"ftevent-{job_id[6:]}-{key}" if key else new_id("ftevent"), job_id,
                   int(time.time()), level, message, json.dumps(data) if data else None,
                   "metrics" if data else "message"))

    def events(self, job_id: str) -> list[dict]:
        rows = self._run("SELECT * FROM events WHERE job_id = ? ORDER BY seq DESC", (job_id,))
        return [{**dict(r), "data": json.loads(r["data"]) if r["data"] else None}
                for r in rows]


def _job(row: sqlite3.Row) -> dict:
    job = dict(row)
    job["request"] = json.loads(job["request"])
    job["error"] = json.loads(job["error"]) if job["error"] else None
    return job
