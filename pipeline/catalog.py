"""catalog.sqlite: the one source of truth of a workspace.

WAL mode, a `schema_version` table and forward-only migrations; every write goes through
`Catalog.transaction()` so a crash mid-command leaves the catalog as it was before the
transaction. Boxes are stored as JSON lists of pixel xyxy in the original image; predictions
and annotations also keep each box's quadrilateral (`quads`, pixel corners, NULL when all boxes
are plain rectangles), so rotated text keeps its shape through push, pull and redact.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Forward-only migrations: (version, SQL). Append new ones; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE images (
            id TEXT PRIMARY KEY,              -- sha256 of the original bytes
            path TEXT NOT NULL,               -- relative to the workspace
            source TEXT NOT NULL,             -- first source it came from
            original_name TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            format TEXT NOT NULL,
            mode TEXT NOT NULL,
            bit_depth INTEGER NOT NULL,
            pages INTEGER NOT NULL DEFAULT 1,
            orientation INTEGER NOT NULL DEFAULT 1,   -- EXIF orientation tag (1 = upright)
            split TEXT NOT NULL CHECK (split IN ('train', 'val', 'test')),
            status TEXT NOT NULL DEFAULT 'new',       -- new | pushed | labelled | verified_empty | skipped | excluded
            created_at REAL NOT NULL
        );
        CREATE INDEX images_status ON images(status);
        CREATE INDEX images_split ON images(split);

        CREATE TABLE image_sources (
            image_id TEXT NOT NULL REFERENCES images(id),
            source TEXT NOT NULL,             -- absolute path or URL
            original_name TEXT NOT NULL,
            size INTEGER,                     -- local files: size and mtime let a rerun skip unchanged files
            mtime REAL,
            metadata TEXT NOT NULL DEFAULT '{}',
            harvested_at REAL NOT NULL,
            PRIMARY KEY (image_id, source)
        );
        CREATE INDEX image_sources_source ON image_sources(source);

        CREATE TABLE rejects (
            source TEXT PRIMARY KEY,
            reason TEXT NOT NULL,             -- short machine-readable reason
            detail TEXT NOT NULL,
            at REAL NOT NULL
        );

        CREATE TABLE predictions (
            id INTEGER PRIMARY KEY,
            image_id TEXT NOT NULL REFERENCES images(id),
            model_version TEXT NOT NULL,
            boxes TEXT NOT NULL,              -- JSON [[x0,y0,x1,y1], ...] original pixels
            scores TEXT NOT NULL,
            labels TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (image_id, model_version)
        );

        CREATE TABLE annotations (
            id INTEGER PRIMARY KEY,
            image_id TEXT NOT NULL REFERENCES images(id),
            source TEXT NOT NULL,             -- 'labelstudio' or 'import:<file>'
            ls_project_id INTEGER,
            ls_task_id INTEGER,
            ls_annotation_id INTEGER,
            boxes TEXT NOT NULL,              -- JSON pixel xyxy
            labels TEXT NOT NULL,
            ignore TEXT NOT NULL DEFAULT '[]',-- JSON bools, don't-care boxes
            state TEXT NOT NULL DEFAULT 'submitted',  -- submitted | empty | skipped
            annotator TEXT,
            updated_at REAL NOT NULL,
            pulled_at REAL NOT NULL,
            UNIQUE (image_id, source, ls_annotation_id)
        );
        CREATE INDEX annotations_image ON annotations(image_id);

        CREATE TABLE models (
            version TEXT PRIMARY KEY,
            parent TEXT,
            kind TEXT NOT NULL,               -- fasterrcnn | ppocr | ...
            path TEXT NOT NULL,               -- bundle.zip relative to the workspace
            trained_on TEXT,                  -- hash of the training data list
            metrics TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            promoted INTEGER NOT NULL DEFAULT 0   -- 1 = the `current` model
        );

        CREATE TABLE tasks (
            image_id TEXT NOT NULL REFERENCES images(id),
            ls_project_id INTEGER NOT NULL,
            ls_task_id INTEGER NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (image_id, ls_project_id)
        );

        CREATE TABLE iterations (
            id INTEGER PRIMARY KEY,
            step TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL,
            status TEXT NOT NULL DEFAULT 'running',   -- running | done | failed
            counts TEXT NOT NULL DEFAULT '{}',
            metrics TEXT NOT NULL DEFAULT '{}'
        );
        """,
    ),
    (
        2,
        """
        -- Label Studio: which model versions' predictions each task already carries (push is
        -- idempotent per version), and task ids by project for pull.
        CREATE TABLE task_predictions (
            ls_project_id INTEGER NOT NULL,
            ls_task_id INTEGER NOT NULL,
            image_id TEXT NOT NULL REFERENCES images(id),
            model_version TEXT NOT NULL,
            n_boxes INTEGER NOT NULL DEFAULT 0,
            pushed_at REAL NOT NULL,
            PRIMARY KEY (ls_project_id, ls_task_id, model_version)
        );
        CREATE INDEX tasks_task ON tasks(ls_project_id, ls_task_id);
        """,
    ),
    (
        3,
        """
        -- The score threshold a predictions row was stored with (its boxes are those scoring at
        -- least this), so a stored row is reused only for an equal or higher threshold.
        ALTER TABLE predictions ADD COLUMN min_score REAL;
        """,
    ),
    (
        4,
        """
        -- The real shape of each box when it is not axis-aligned: JSON [[[x,y] x 4], ...] pixel
        -- corners in the upright original, one per box (same order), or NULL when every box is
        -- its rectangle. DB detectors give quads; Label Studio rectangles may be rotated.
        ALTER TABLE predictions ADD COLUMN quads TEXT;
        ALTER TABLE annotations ADD COLUMN quads TEXT;
        """,
    ),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]


def dumps(value: Any) -> str:
    """Compact JSON for catalog columns (the one place catalog JSON is written)."""
    return json.dumps(value, separators=(",", ":"))


def quads_column(detections_json: dict[str, Any]) -> str | None:
    """The `quads` column of a `Detections.to_json()` dict: JSON when it has quads, else NULL."""
    quads = detections_json.get("quads")
    return dumps(quads) if quads is not None else None


def load_quads(text: str | None, n_boxes: int) -> list | None:
    """A `quads` column back to a list of N x 4 x 2 corners, or None (NULL, or not one quad per
    box: a row written by hand must not misplace shapes, the boxes still hold)."""
    if not text:
        return None
    quads = json.loads(text)
    if not isinstance(quads, list) or len(quads) != n_boxes:
        return None
    return quads


SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26


def is_damage(exc: BaseException) -> bool:
    """True for SQLite's "the file is damaged" errors (not for locks, full disks, bad SQL)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


class CatalogDamaged(RuntimeError):
    """catalog.sqlite is not a readable SQLite database; str() says which file and how to recover."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(damaged_message(path, cause))
        self.path = path


def damaged_message(path: Path, cause: BaseException) -> str:
    return (f"{path} is damaged ({cause}): restore it from a backup, or move it aside "
            f"(mv {path} {path}.damaged) and rebuild the catalog: `textloop harvest` the sources again "
            "(images already in the workspace are re-adopted) and `textloop pull` the labels from Label Studio")


class Catalog:
    """A connection to catalog.sqlite. Use as a context manager; writes in `transaction()`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.migrate()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            if is_damage(exc):
                raise CatalogDamaged(self.path, exc) from None
            raise

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def schema_version(self) -> int:
        self.conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction. Returns the new version."""
        current = self.schema_version()
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            with self.transaction() as tx:
                for statement in _split_sql(sql):
                    tx.execute(statement)
                tx.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
            current = version
        return current

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # --- small typed helpers used by several stages -------------------------------------

    def image(self, image_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM images WHERE id = ?", (image_id,))
        return rows[0] if rows else None

    def images(self, split: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM images WHERE 1=1", []
        if split:
            sql += " AND split = ?"
            params.append(split)
        if status:
            sql += " AND status = ?"
            params.append(status)
        return self.query(sql + " ORDER BY id", params)

    def images_by_ids(self, image_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Image rows for `image_ids` (duplicates dropped), in the order given; unknown ids are
        left out (compare lengths to find them). Chunked under SQLite's variable limit."""
        ids = list(dict.fromkeys(image_ids))
        found: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            for r in self.query(f"SELECT * FROM images WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                found[r["id"]] = r
        return [found[i] for i in ids if i in found]

    def current_model(self) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM models WHERE promoted = 1 ORDER BY created_at DESC LIMIT 1")
        return rows[0] if rows else None

    def start_iteration(self, step: str) -> int:
        with self.transaction() as tx:
            cur = tx.execute("INSERT INTO iterations(step, started_at) VALUES (?, ?)", (step, time.time()))
            return int(cur.lastrowid)

    def finish_iteration(
        self, iteration_id: int, status: str = "done", counts: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        with self.transaction() as tx:
            tx.execute(
                "UPDATE iterations SET finished_at = ?, status = ?, counts = ?, metrics = ? WHERE id = ?",
                (time.time(), status, dumps(counts or {}), dumps(metrics or {}), iteration_id),
            )


def _split_sql(sql: str) -> list[str]:
    """Split a migration script into statements (executescript would COMMIT on its own)."""
    statements, buf = [], []
    for line in sql.splitlines():
        code = line.split("--", 1)[0]
        buf.append(code)
        if code.rstrip().endswith(";"):
            stmt = "\n".join(buf).strip()
            if stmt.strip(";").strip():
                statements.append(stmt)
            buf = []
    rest = "\n".join(buf).strip()
    if rest:
        statements.append(rest)
    return statements
