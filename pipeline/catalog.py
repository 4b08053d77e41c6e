"""catalog.sqlite: the one source of truth of a workspace.

WAL mode, a `schema_version` table and forward-only migrations; every write goes through
`Catalog.transaction()` so a crash mid-command leaves the catalog as it was before the
transaction. This module holds every SQL statement of the package: stages call the typed
methods of `Catalog` (`latest_annotations`, `set_status`, `record_predictions`, ...). A method
that writes opens its own transaction, which joins the caller's when there is one
(`with cat.transaction(): cat.set_status(...); cat.set_split(...)` is all or nothing). Boxes are stored as JSON lists of pixel xyxy in the original image; predictions
and annotations also keep each box's quadrilateral (`quads`, pixel corners, NULL when all boxes
are plain rectangles), so rotated text keeps its shape through push, pull and redact.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pipeline.io import describe_error


class ImageStatus(str, Enum):
    """Where an image is in the loop (`images.status`; migration 5 constrains the column to these)."""

    NEW = "new"                        # harvested, never sent to Label Studio
    PUSHED = "pushed"                  # a Label Studio task exists, no label yet
    LABELLED = "labelled"              # a human drew boxes
    VERIFIED_EMPTY = "verified_empty"  # a human said: no text here
    SKIPPED = "skipped"                # the labeller skipped (cancelled) the task
    NEEDS_REVIEW = "needs_review"      # curation suspects the label; `iterate` reopens the task
    EXCLUDED = "excluded"              # out of the dataset: push, predict and training skip it

    def __str__(self) -> str:
        return self.value


HUMAN_LABELLED = (ImageStatus.LABELLED, ImageStatus.VERIFIED_EMPTY)

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
            status TEXT NOT NULL DEFAULT 'new',       -- ImageStatus; constrained by migration 5
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
    (
        5,
        """
        -- images.status may only hold an ImageStatus: new | pushed | labelled | verified_empty |
        -- skipped | needs_review | excluded. SQLite cannot add a CHECK to a column, so the table
        -- is rebuilt (foreign keys are off while migrating and checked before the commit).
        CREATE TABLE images_v5 (
            id TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            source TEXT NOT NULL,
            original_name TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            format TEXT NOT NULL,
            mode TEXT NOT NULL,
            bit_depth INTEGER NOT NULL,
            pages INTEGER NOT NULL DEFAULT 1,
            orientation INTEGER NOT NULL DEFAULT 1,
            split TEXT NOT NULL CHECK (split IN ('train', 'val', 'test')),
            status TEXT NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'pushed', 'labelled', 'verified_empty',
                                                               'skipped', 'needs_review', 'excluded')),
            created_at REAL NOT NULL
        );
        INSERT INTO images_v5(id, path, source, original_name, bytes, width, height, format, mode, bit_depth,
                              pages, orientation, split, status, created_at)
            SELECT id, path, source, original_name, bytes, width, height, format, mode, bit_depth,
                   pages, orientation, split, status, created_at FROM images;
        DROP TABLE images;
        ALTER TABLE images_v5 RENAME TO images;
        CREATE INDEX images_status ON images(status);
        CREATE INDEX images_split ON images(split);
        """,
    ),
    (
        6,
        """
        -- The transcription of each box: JSON ["text", ...], one per box (same order), or NULL
        -- when none is known. Imported label files carry them (devset `texts`, COCO-Text
        -- `utf8_string`); before, import dropped them and export wrote "" for every box.
        ALTER TABLE annotations ADD COLUMN texts TEXT;
        """,
    ),
    (
        7,
        """
        -- When curation last sent an image's label back for review (`curate --apply`, label
        -- action review): a label a person submitted after that is their answer, and is not sent
        -- back again for the same suspicion (a confirmed label was reopened every round).
        CREATE TABLE review_requests (
            image_id TEXT PRIMARY KEY REFERENCES images(id),
            requested_at REAL NOT NULL,
            issues TEXT
        );
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


def quads_as_polys(text: str | None, n_boxes: int) -> tuple[tuple[float, ...], ...]:
    """A `quads` column as a record's `polys` (x1, y1, ..., x4, y4 per box, the devset's form),
    or () when the row has none: what training, evaluation and export read."""
    quads = load_quads(text, n_boxes)
    return tuple(tuple(float(v) for pt in q for v in pt) for q in quads) if quads else ()


SQLITE_CORRUPT, SQLITE_NOTADB, SQLITE_READONLY, SQLITE_CANTOPEN = 11, 26, 8, 14


def is_damage(exc: BaseException) -> bool:
    """True for SQLite's "the file is damaged" errors (not for locks, full disks, bad SQL)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def is_read_only(exc: BaseException) -> bool:
    """True for SQLite's "no write access" errors: a read-only file, folder or mount."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (SQLITE_READONLY, SQLITE_CANTOPEN):
        return True
    text = str(exc).lower()
    return "readonly database" in text or "unable to open database" in text


class CatalogUnwritable(RuntimeError):
    """The catalog cannot be written (opening it writes: WAL mode, migrations); str() names it."""


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes, for a workspace on a read-only mount or folder (a team's
    shared workspace: `status`, `export`, `models list`, redact's `current` model). A WAL
    database opens read-only only where SQLite can make its `-shm` file; where it cannot (the
    folder is read-only too), nothing else can write it either, so it is opened immutable."""
    from urllib.parse import quote

    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    conn = None
    try:
        for extra in ("", "&immutable=1"):
            try:
                conn = sqlite3.connect(uri + extra, uri=True, timeout=30.0, isolation_level=None,
                                       check_same_thread=False)
                conn.row_factory = sqlite3.Row
                version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if conn is not None:
                    conn.close()
                    conn = None
                if extra or not is_read_only(exc):
                    raise
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            raise CatalogDamaged(path, exc) from None
        raise CatalogUnwritable(f"{path}: cannot read the catalog ({exc})") from None
    assert conn is not None
    if int(version or 0) < SCHEMA_VERSION:
        conn.close()
        raise CatalogUnwritable(f"{path}: the catalog is read-only and at schema {version}, older than this "
                                f"textloop's {SCHEMA_VERSION}; open it once with write access to migrate it")
    conn.execute("PRAGMA query_only=ON")
    return conn


class CatalogDamaged(RuntimeError):
    """catalog.sqlite is not a readable SQLite database; str() says which file and how to recover."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(damaged_message(path, cause))
        self.path = path


def damaged_message(path: Path, cause: BaseException) -> str:
    return (f"{path} is damaged ({cause}): restore it from a backup, or move it aside "
            f"(mv {path} {path}.damaged) and rebuild the catalog: `textloop harvest` the sources again "
            "(images already in the workspace are re-adopted), `textloop pull` the labels from Label Studio and "
            "`textloop import` your label files again")


Row = dict[str, Any]
Statuses = Collection["ImageStatus | str"]


def _marks(items: Sequence[Any]) -> str:
    return ",".join("?" * len(items))


def _chunks(items: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    """Slices under SQLite's bound-variable limit."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass
class Iteration:
    """One `iterations` row while its step runs (see `Catalog.iteration`). Set `counts` and
    `metrics` as the step goes; they are written when the block ends. `save()` writes the counts
    so far, so a long round shows its progress in `textloop status`."""

    catalog: "Catalog"
    id: int
    step: str
    counts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        self.catalog.set_iteration_counts(self.id, self.counts)


class Catalog:
    """A connection to catalog.sqlite. Use as a context manager; writes in `transaction()`."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self._depth = 0  # open transaction() blocks: > 0 means the next one is a savepoint
        self.read_only = read_only
        if read_only:
            self.conn = _connect_read_only(self.path)
            return
        if str(path) != ":memory:" and not self.path.exists():
            # made by us, so it follows the umask (SQLite's own 0644 ignored a group-writable
            # umask: group members could not harvest into a shared workspace); SQLite takes an
            # empty file as a new database, and gives its -wal/-shm files the same mode
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o666))
            except OSError:
                pass   # sqlite3.connect names the problem
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
            if is_read_only(exc):
                raise CatalogUnwritable(f"{self.path}: cannot write to the catalog ({exc}); this command needs "
                                        "write access to the workspace (status, models list, export and redact "
                                        "only read it)") from None
            raise

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception. Nested inside another one it
        is a SAVEPOINT: its writes are undone alone if it raises, and become durable only when
        the outermost block commits. So every writing method opens one, and a caller groups
        several methods into one atomic change with an outer `with cat.transaction():`."""
        nested = self._depth > 0
        name = f"tl_{self._depth}"
        self.conn.execute(f"SAVEPOINT {name}" if nested else "BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield self.conn
        except BaseException:
            if nested:
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
            else:
                self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute(f"RELEASE {name}" if nested else "COMMIT")
        finally:
            self._depth -= 1

    def schema_version(self) -> int:
        self.conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction. Returns the new version.

        Foreign keys are off while migrating (SQLite's way to rebuild a table others reference)
        and checked before each commit, so a migration cannot leave a dangling reference."""
        current = self.schema_version()
        pending = [(v, sql) for v, sql in MIGRATIONS if v > current]
        if not pending:
            return current
        self.conn.execute("PRAGMA foreign_keys=OFF")
        try:
            for version, sql in pending:
                with self.transaction() as tx:
                    for statement in _split_sql(sql):
                        tx.execute(statement)
                    bad = tx.execute("PRAGMA foreign_key_check").fetchall()
                    if bad:
                        raise sqlite3.IntegrityError(f"migration {version} leaves {len(bad)} dangling references, "
                                                     f"e.g. {tuple(bad[0])}")
                    tx.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
                current = version
        finally:
            self.conn.execute("PRAGMA foreign_keys=ON")
        return current

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Raw SQL, for this module and for tests' assertions; stages use the methods below."""
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # --- images ----------------------------------------------------------------------------

    def image(self, image_id: str) -> Row | None:
        rows = self.query("SELECT * FROM images WHERE id = ?", (image_id,))
        return rows[0] if rows else None

    def has_image(self, image_id: str) -> bool:
        return self.scalar("SELECT 1 FROM images WHERE id = ?", (image_id,)) is not None

    def images(self, split: str | None = None, status: ImageStatus | str | None = None, *,
               include_excluded: bool = True) -> list[Row]:
        """Image rows by id; `include_excluded=False` leaves out what push, predict and training skip."""
        sql, params = "SELECT * FROM images WHERE 1=1", []
        if split:
            sql += " AND split = ?"
            params.append(split)
        if status:  # not validated: an unknown status simply matches no image
            sql += " AND status = ?"
            params.append(status.value if isinstance(status, ImageStatus) else str(status))
        if not include_excluded:
            sql += " AND status != ?"
            params.append(ImageStatus.EXCLUDED.value)
        return self.query(sql + " ORDER BY id", params)

    def images_by_ids(self, image_ids: Sequence[str]) -> list[Row]:
        """Image rows for `image_ids` (duplicates dropped), in the order given; unknown ids are
        left out (compare lengths to find them). Chunked under SQLite's variable limit."""
        ids = list(dict.fromkeys(image_ids))
        found: dict[str, Row] = {}
        for chunk in _chunks(ids):
            for r in self.query(f"SELECT * FROM images WHERE id IN ({_marks(chunk)})", chunk):
                found[r["id"]] = r
        return [found[i] for i in ids if i in found]

    def add_image(self, image_id: str, path: str, source: str, original_name: str, size: int, width: int,
                  height: int, format: str, mode: str, bit_depth: int, pages: int, orientation: int,
                  split: str, created_at: float | None = None) -> None:
        """A newly harvested image (status `new`)."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO images(id, path, source, original_name, bytes, width, height, format, mode, bit_depth,"
                " pages, orientation, split, status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (image_id, path, source, original_name, size, width, height, format, mode, bit_depth, pages,
                 orientation, split, ImageStatus.NEW.value, time.time() if created_at is None else created_at),
            )

    def set_first_source(self, image_id: str, source: str, original_name: str) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE images SET source = ?, original_name = ? WHERE id = ?", (source, original_name, image_id))

    def set_split(self, image_id: str, split: str) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE images SET split = ? WHERE id = ?", (split, image_id))

    def set_status(self, image_id: str, status: ImageStatus | str, *, only_from: Statuses | None = None,
                   never_from: Statuses = ()) -> ImageStatus | None:
        """Set an image's status; returns the status it had when it changed, None when nothing
        changed (unknown image, already `status`, or its status is not in `only_from` / is in
        `never_from`: e.g. pull never revives an `excluded` image)."""
        new = ImageStatus(status)
        with self.transaction() as tx:
            row = tx.execute("SELECT status FROM images WHERE id = ?", (image_id,)).fetchone()
            if row is None or row[0] == new.value:
                return None
            old = ImageStatus(row[0])
            if (only_from is not None and old not in {ImageStatus(s) for s in only_from}) \
                    or old in {ImageStatus(s) for s in never_from}:
                return None
            tx.execute("UPDATE images SET status = ? WHERE id = ?", (new.value, image_id))
            return old

    # --- sources and rejects ---------------------------------------------------------------

    def source_records(self, source: str) -> list[Row]:
        """What `source` was harvested as: its (size, mtime) stamp and the stored image's
        (path, bytes), one row per image; empty if it never was."""
        return self.query("SELECT s.size, s.mtime, i.path, i.bytes FROM image_sources s JOIN images i"
                          " ON i.id = s.image_id WHERE s.source = ?", (source,))

    def has_source(self, image_id: str, source: str) -> bool:
        """Whether `source` is already recorded as a source of `image_id`."""
        return bool(self.query("SELECT 1 FROM image_sources WHERE image_id = ? AND source = ? LIMIT 1",
                               (image_id, source)))

    def record_source(self, image_id: str, source: str, original_name: str, size: int | None, mtime: float | None,
                      metadata: dict[str, Any], at: float | None = None) -> None:
        """One (image, source) pair; a rerun updates size, mtime and metadata. Clears the source's reject."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO image_sources(image_id, source, original_name, size, mtime, metadata, harvested_at)"
                " VALUES (?,?,?,?,?,?,?) ON CONFLICT(image_id, source) DO UPDATE SET size=excluded.size,"
                " mtime=excluded.mtime, metadata=excluded.metadata",
                (image_id, source, original_name, size, mtime, dumps(metadata), time.time() if at is None else at),
            )
            tx.execute("DELETE FROM rejects WHERE source = ?", (source,))

    def images_of_source(self, source: str) -> list[str]:
        """Ids of the images `source` was harvested as (more than one: the file changed since)."""
        return [r["image_id"] for r in self.query("SELECT image_id FROM image_sources WHERE source = ?"
                                                  " ORDER BY harvested_at", (source,))]

    def forget_source(self, image_id: str, source: str) -> None:
        """`source` no longer holds `image_id` (rewritten since): the image stays, the pair goes."""
        with self.transaction() as tx:
            tx.execute("DELETE FROM image_sources WHERE image_id = ? AND source = ?", (image_id, source))

    def image_ids_by_source(self, sources: Sequence[str]) -> dict[str, str]:
        """source -> image id, for the given sources that were harvested."""
        out: dict[str, str] = {}
        for chunk in _chunks(list(sources)):
            for r in self.query(f"SELECT source, image_id FROM image_sources WHERE source IN ({_marks(chunk)})", chunk):
                out[r["source"]] = r["image_id"]
        return out

    def image_names(self) -> dict[str, str]:
        """Each image's file name as people know it: byte-identical copies harvested under other
        names are one image, so those names follow ("a.png (also b.png)"): a report that named
        only the first one seen pointed at a file the user had not labelled."""
        out: dict[str, str] = {}
        others: dict[str, list[str]] = {}
        for r in self.query("SELECT i.id, i.original_name AS name, s.original_name AS other FROM images i "
                            "LEFT JOIN image_sources s ON s.image_id = i.id AND s.original_name != i.original_name "
                            "ORDER BY s.harvested_at, s.source"):
            out[r["id"]] = r["name"] or ""
            if r["other"] and r["other"] not in others.setdefault(r["id"], []):
                others[r["id"]].append(r["other"])
        for iid, more in others.items():
            if more:
                out[iid] = f"{out[iid]} (also {', '.join(more[:3])}{', ...' if len(more) > 3 else ''})"
        return out

    def sources_of(self, image_ids: Sequence[str]) -> dict[str, list[str]]:
        """Every source (absolute path or URL) each image was harvested from, first seen first."""
        out: dict[str, list[str]] = {}
        for chunk in _chunks(list(image_ids)):
            for r in self.query(f"SELECT image_id, source FROM image_sources WHERE image_id IN ({_marks(chunk)}) "
                                "ORDER BY harvested_at, source", chunk):
                out.setdefault(r["image_id"], []).append(r["source"])
        return out

    def record_reject(self, source: str, reason: str, detail: str) -> None:
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO rejects(source, reason, detail, at) VALUES (?,?,?,?) ON CONFLICT(source) DO UPDATE SET"
                " reason=excluded.reason, detail=excluded.detail, at=excluded.at",
                (source, reason, detail[:500], time.time()),
            )

    def rejects_under(self, folder: str) -> list[str]:
        """Sources of the rejects inside `folder` (an absolute path)."""
        return self.rejects_starting(folder.rstrip("/") + "/")

    def rejects_starting(self, prefix: str) -> list[str]:
        """Sources of the rejects whose key starts with `prefix` (a folder's, a list file's lines)."""
        return [r["source"] for r in self.query("SELECT source FROM rejects WHERE substr(source, 1, ?) = ?",
                                                (len(prefix), prefix))]

    def forget_rejects(self, sources: Sequence[str]) -> None:
        with self.transaction() as tx:
            for chunk in _chunks(list(sources)):
                tx.execute(f"DELETE FROM rejects WHERE source IN ({_marks(chunk)})", chunk)

    def reject(self, source: str) -> Row | None:
        rows = self.query("SELECT reason, detail FROM rejects WHERE source = ?", (source,))
        return rows[0] if rows else None

    # --- annotations -----------------------------------------------------------------------

    def latest_annotations(self, *, include_excluded: bool, image_ids: Sequence[str] | None = None,
                           split: str | None = None, sources: Sequence[str] | None = None) -> dict[str, Row]:
        """The latest human annotation per image: image id -> the annotation row (state
        `submitted` or `empty`) plus the image's path, width, height, split, orientation, format
        and status, ordered by image id. "Latest" is the greatest `updated_at`, ties to the row
        stored last. `include_excluded` is explicit because callers differ: training, evaluation
        and export leave `excluded` images out; a redaction waiting on its review takes the
        reviewed boxes whatever the image's status. `sources` filters annotation sources
        ('labelstudio', 'import:<file>')."""
        sql = ("SELECT a.*, i.path, i.width, i.height, i.split, i.orientation, i.format, i.status"
               " FROM annotations a JOIN images i ON i.id = a.image_id WHERE a.state IN ('submitted', 'empty')")
        params: list[Any] = []
        if not include_excluded:
            sql += " AND i.status != ?"
            params.append(ImageStatus.EXCLUDED.value)
        if split:
            sql += " AND i.split = ?"
            params.append(split)
        if sources:
            sql += f" AND a.source IN ({_marks(sources)})"
            params += list(sources)
        rows: list[Row] = []
        if image_ids is None:
            rows = self.query(sql, params)
        else:
            for chunk in _chunks(list(dict.fromkeys(image_ids))):
                rows += self.query(sql + f" AND a.image_id IN ({_marks(chunk)})", [*params, *chunk])
        latest: dict[str, Row] = {}
        for r in sorted(rows, key=lambda r: (r["updated_at"], r["id"])):
            latest[r["image_id"]] = r  # later (newer) rows win
        return {k: latest[k] for k in sorted(latest)}

    def first_annotated_at(self) -> dict[str, float]:
        """image id -> when its first annotation (any state, any source) was made."""
        return {r["image_id"]: r["t"] for r in self.query(
            "SELECT image_id, MIN(updated_at) AS t FROM annotations GROUP BY image_id")}

    def labelled_count(self, at: float) -> int:
        """How many images had a human label (submitted or empty) by time `at`."""
        return int(self.scalar("SELECT COUNT(DISTINCT image_id) FROM annotations WHERE updated_at <= ?"
                               " AND state IN ('submitted', 'empty')", (at,)) or 0)

    def images_annotated_empty(self) -> set[str]:
        """Images some human annotation says hold no text."""
        return {r["image_id"] for r in self.query("SELECT image_id FROM annotations WHERE state = 'empty'")}

    def annotation_states(self, image_id: str) -> dict[str, str]:
        """source -> state of every annotation of one image (e.g. which label files give it boxes)."""
        return {r["source"]: r["state"] for r in self.query(
            "SELECT source, state FROM annotations WHERE image_id = ? ORDER BY id", (image_id,))}

    def imported_annotation(self, image_id: str, source: str) -> Row | None:
        """The annotation a label file (`source` 'import:<file>') gave an image, if any."""
        rows = self.query("SELECT * FROM annotations WHERE image_id = ? AND source = ? AND ls_annotation_id IS NULL",
                          (image_id, source))
        return rows[0] if rows else None

    def rekey_imported_annotation(self, image_id: str, old_source: str, new_source: str) -> Row | None:
        """Move an imported annotation from an older source key to `new_source` and return it
        (None if there is none): labels imported when keys were `import:<file name>` are then
        updated by re-importing their file, not kept beside a second copy under the new key."""
        old = self.imported_annotation(image_id, old_source)
        if old is None or self.imported_annotation(image_id, new_source) is not None:
            return None
        with self.transaction() as tx:
            tx.execute("UPDATE annotations SET source = ? WHERE id = ?", (new_source, old["id"]))
        return self.imported_annotation(image_id, new_source)

    def studio_annotations(self, source: str, project_id: int) -> dict[str, Row]:
        """image id -> the annotation row pulled from Label Studio project `project_id`."""
        return {r["image_id"]: r for r in self.query(
            "SELECT * FROM annotations WHERE source = ? AND ls_project_id = ?", (source, project_id))}

    def latest_studio_annotation_ids(self, source: str = "labelstudio") -> dict[str, int]:
        """image id -> the Label Studio id of its most recently updated pulled annotation."""
        return {r["image_id"]: r["ls_annotation_id"] for r in self.query(
            "SELECT image_id, ls_annotation_id FROM annotations WHERE source = ? AND ls_annotation_id IS NOT NULL"
            " ORDER BY updated_at, id", (source,))}

    def record_review_requests(self, issues: dict[str, str], at: float | None = None) -> None:
        """Curation sent these images' labels back for review now (image id -> the suspicion)."""
        at = time.time() if at is None else at
        with self.transaction() as tx:
            tx.executemany("INSERT INTO review_requests(image_id, requested_at, issues) VALUES (?, ?, ?) "
                           "ON CONFLICT(image_id) DO UPDATE SET requested_at = excluded.requested_at, "
                           "issues = excluded.issues", [(i, at, v) for i, v in issues.items()])

    def answered_reviews(self) -> set[str]:
        """Images sent back for review whose label a person submitted (or imported) since, and
        that are out of review (one still waiting is not answered, whatever its timestamps)."""
        return {r["image_id"] for r in self.query(
            "SELECT DISTINCT r.image_id FROM review_requests r JOIN annotations a ON a.image_id = r.image_id "
            "JOIN images i ON i.id = r.image_id WHERE a.updated_at > r.requested_at AND i.status != ?",
            (ImageStatus.NEEDS_REVIEW.value,))}

    _ANNOTATION_FIELDS = ("ls_project_id", "ls_task_id", "ls_annotation_id", "boxes", "labels", "ignore", "state",
                          "annotator", "updated_at", "pulled_at", "quads", "texts")

    def add_annotation(self, image_id: str, source: str, **fields: Any) -> int:
        """Insert an annotation; `fields` are columns of `annotations` (boxes etc. as JSON text)."""
        bad = set(fields) - set(self._ANNOTATION_FIELDS)
        if bad:
            raise TypeError(f"not annotation columns: {sorted(bad)}")
        cols = ["image_id", "source", *fields]
        with self.transaction() as tx:
            cur = tx.execute(f"INSERT INTO annotations({', '.join(cols)}) VALUES ({_marks(cols)})",
                             (image_id, source, *fields.values()))
            return int(cur.lastrowid)

    def update_annotation(self, annotation_id: int, **fields: Any) -> None:
        bad = set(fields) - set(self._ANNOTATION_FIELDS)
        if bad or not fields:
            raise TypeError(f"not annotation columns: {sorted(bad)}")
        with self.transaction() as tx:
            tx.execute(f"UPDATE annotations SET {', '.join(f'{k}=?' for k in fields)} WHERE id = ?",
                       (*fields.values(), annotation_id))

    def delete_annotation(self, annotation_id: int) -> None:
        with self.transaction() as tx:
            tx.execute("DELETE FROM annotations WHERE id = ?", (annotation_id,))

    # --- predictions -----------------------------------------------------------------------

    def record_predictions(self, model_version: str, items: Iterable[tuple[str, dict[str, Any]]],
                           min_score: float | None = None) -> int:
        """Upsert one predictions row per (image, model_version); items are (image id,
        `Detections.to_json()`). `min_score` is the threshold the boxes were filtered with."""
        now = time.time()
        n = 0
        with self.transaction() as tx:
            for image_id, j in items:
                tx.execute(
                    "INSERT INTO predictions(image_id, model_version, boxes, scores, labels, created_at, min_score, quads)"
                    " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(image_id, model_version) DO UPDATE SET"
                    " boxes=excluded.boxes, scores=excluded.scores, labels=excluded.labels,"
                    " created_at=excluded.created_at, min_score=excluded.min_score, quads=excluded.quads",
                    (image_id, model_version, dumps(j["boxes"]), dumps(j["scores"]), dumps(j["labels"]), now, min_score,
                     quads_column(j)),
                )
                n += 1
        return n

    def predictions(self, model_version: str, image_ids: Sequence[str] | None = None,
                    usable_at: float | None = None) -> dict[str, dict[str, Any]]:
        """image id -> {boxes, scores, labels, quads} (decoded) of one model version. With
        `usable_at`, only rows stored with a threshold <= it (they hold every box scoring >= it)."""
        sql = "SELECT image_id, boxes, scores, labels, quads FROM predictions WHERE model_version = ?"
        params: list[Any] = [model_version]
        if usable_at is not None:
            sql += " AND min_score IS NOT NULL AND min_score <= ?"
            params.append(usable_at + 1e-9)
        wanted = None if image_ids is None else set(image_ids)
        out: dict[str, dict[str, Any]] = {}
        for r in self.query(sql, params):
            if wanted is None or r["image_id"] in wanted:
                boxes = json.loads(r["boxes"])
                out[r["image_id"]] = {"boxes": boxes, "scores": json.loads(r["scores"]),
                                      "labels": json.loads(r["labels"]), "quads": load_quads(r["quads"], len(boxes))}
        return out

    def prediction_history(self) -> dict[str, list[Row]]:
        """image id -> every stored predictions row (raw JSON columns), newest first."""
        out: dict[str, list[Row]] = {}
        for r in self.query("SELECT image_id, model_version, boxes, scores, labels, created_at FROM predictions"
                            " ORDER BY image_id, created_at DESC"):
            out.setdefault(r["image_id"], []).append(r)
        return out

    def prediction_versions(self) -> list[str]:
        """Model versions with at least one stored prediction, sorted."""
        return [r["model_version"] for r in self.query(
            "SELECT DISTINCT model_version FROM predictions ORDER BY model_version")]

    # --- Label Studio tasks ----------------------------------------------------------------

    def tasks(self, project_id: int) -> dict[str, int]:
        """image id -> task id in Label Studio project `project_id`."""
        return {r["image_id"]: r["ls_task_id"] for r in self.query(
            "SELECT image_id, ls_task_id FROM tasks WHERE ls_project_id = ?", (project_id,))}

    def record_task(self, image_id: str, project_id: int, task_id: int, at: float | None = None) -> None:
        with self.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO tasks(image_id, ls_project_id, ls_task_id, created_at) VALUES (?,?,?,?)",
                       (image_id, project_id, task_id, time.time() if at is None else at))

    def forget_task(self, image_id: str, project_id: int, task_id: int) -> None:
        """A task gone from the server: its row and the predictions it carried."""
        with self.transaction() as tx:
            tx.execute("DELETE FROM tasks WHERE image_id = ? AND ls_project_id = ?", (image_id, project_id))
            tx.execute("DELETE FROM task_predictions WHERE ls_project_id = ? AND ls_task_id = ?", (project_id, task_id))

    def record_task_prediction(self, project_id: int, task_id: int, image_id: str, model_version: str, n_boxes: int,
                               at: float | None = None) -> None:
        with self.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO task_predictions(ls_project_id, ls_task_id, image_id, model_version,"
                       " n_boxes, pushed_at) VALUES (?,?,?,?,?,?)",
                       (project_id, task_id, image_id, model_version, n_boxes, time.time() if at is None else at))

    def tasks_with_prediction(self, project_id: int, model_version: str) -> set[int]:
        """Task ids that already carry `model_version`'s prediction."""
        return {r["ls_task_id"] for r in self.query(
            "SELECT ls_task_id FROM task_predictions WHERE ls_project_id = ? AND model_version = ?",
            (project_id, model_version))}

    # --- models ----------------------------------------------------------------------------

    def current_model(self) -> Row | None:
        rows = self.query("SELECT * FROM models WHERE promoted = 1 ORDER BY created_at DESC LIMIT 1")
        return rows[0] if rows else None

    def model(self, version: str) -> Row | None:
        rows = self.query("SELECT * FROM models WHERE version = ?", (version,))
        return rows[0] if rows else None

    def models(self) -> list[Row]:
        """Every registered model, oldest first."""
        return self.query("SELECT * FROM models ORDER BY created_at")

    def add_model(self, version: str, parent: str | None, kind: str, path: str, trained_on: str | None,
                  metrics: dict[str, Any]) -> None:
        with self.transaction() as tx:
            tx.execute("INSERT INTO models(version, parent, kind, path, trained_on, metrics, created_at, promoted)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                       (version, parent, kind, path, trained_on, dumps(metrics), time.time()))

    def set_model_metrics(self, version: str, metrics: dict[str, Any]) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE models SET metrics = ? WHERE version = ?", (dumps(metrics), version))

    def promote(self, version: str) -> None:
        """Make `version` the one `current` model (all others demoted); KeyError if unknown."""
        with self.transaction() as tx:
            if not tx.execute("SELECT 1 FROM models WHERE version = ?", (version,)).fetchone():
                known = [r[0] for r in tx.execute("SELECT version FROM models ORDER BY created_at").fetchall()]
                raise KeyError(f"unknown model version {version!r}; registered: {', '.join(known) or 'none'}")
            tx.execute("UPDATE models SET promoted = CASE WHEN version = ? THEN 1 ELSE 0 END", (version,))

    def demote_all(self) -> str | None:
        """No model is current (`current` means stock ppocr again); returns the one that was."""
        with self.transaction() as tx:
            row = tx.execute("SELECT version FROM models WHERE promoted = 1").fetchone()
            tx.execute("UPDATE models SET promoted = 0 WHERE promoted = 1")
        return row[0] if row else None

    # --- iterations ------------------------------------------------------------------------

    @contextmanager
    def iteration(self, step: str) -> Iterator[Iteration]:
        """Log one run of `step` in `iterations`: started now, `done` with the `counts` and
        `metrics` set on the yielded Iteration when the block ends, `failed` (metrics.error says
        why, the counts so far kept) when it raises -- including Ctrl-C."""
        it = Iteration(self, self.start_iteration(step), step)
        try:
            yield it
        except BaseException as exc:
            error = describe_error(exc)
            self.finish_iteration(it.id, "failed", counts=it.counts, metrics={**it.metrics, "error": error})
            raise
        self.finish_iteration(it.id, "done", counts=it.counts, metrics=it.metrics)

    def start_iteration(self, step: str) -> int:
        """A new `running` row that names its process (pid, host) until it finishes, so a row
        whose process was killed (SIGKILL, power loss) can be told from one still at work."""
        self.close_abandoned_iterations()
        with self.transaction() as tx:
            cur = tx.execute("INSERT INTO iterations(step, started_at, metrics) VALUES (?, ?, ?)",
                             (step, time.time(), dumps({"pid": os.getpid(), "host": socket.gethostname()})))
            return int(cur.lastrowid)

    def close_abandoned_iterations(self) -> list[int]:
        """Mark `failed` the `running` rows of this host whose process is gone: after a SIGKILL
        (`kill -9`, the OOM killer) a row stayed `running` for ever and `status` showed a stage
        at work that no process was doing. Rows of other hosts, and rows made before rows named
        their process, are left alone. Returns the ids closed."""
        host, closed = socket.gethostname(), []
        if self.read_only:
            return closed    # shown as they are: a read-only catalog is nobody's to mend
        for row in self.iterations("running"):
            m = json.loads(row["metrics"] or "{}")
            pid = m.get("pid")
            if m.get("host") != host or not isinstance(pid, int) or _process_alive(pid):
                continue
            self.finish_iteration(int(row["id"]), "failed", counts=json.loads(row["counts"] or "{}"),
                                  metrics={"error": f"its process ({pid}) ended without finishing it (killed?)"})
            closed.append(int(row["id"]))
        return closed

    def finish_iteration(
        self, iteration_id: int, status: str = "done", counts: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        with self.transaction() as tx:
            tx.execute(
                "UPDATE iterations SET finished_at = ?, status = ?, counts = ?, metrics = ? WHERE id = ?",
                (time.time(), status, dumps(counts or {}), dumps(metrics or {}), iteration_id),
            )

    def set_iteration_counts(self, iteration_id: int, counts: dict[str, Any]) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE iterations SET counts = ? WHERE id = ?", (dumps(counts), iteration_id))

    def iterations(self, status: str | None = None) -> list[Row]:
        """Iteration rows by id (all, or those with `status`: running | done | failed)."""
        if status is None:
            return self.query("SELECT * FROM iterations ORDER BY id")
        return self.query("SELECT * FROM iterations WHERE status = ? ORDER BY id", (status,))

    def last_iteration(self, done: bool = False) -> Row | None:
        """The latest iteration row (`done`: the latest that finished, not a failed or running one)."""
        where = " WHERE status = 'done'" if done else ""
        rows = self.query(f"SELECT * FROM iterations{where} ORDER BY id DESC LIMIT 1")
        return rows[0] if rows else None

    # --- what the workspace holds ----------------------------------------------------------

    def row_counts(self) -> dict[str, int]:
        """Rows per table: images, image_sources, annotations, predictions, tasks."""
        return {t: int(self.scalar(f"SELECT COUNT(*) FROM {t}") or 0)
                for t in ("images", "image_sources", "annotations", "predictions", "tasks")}

    def tasks_by_project(self) -> dict[int, int]:
        """Label Studio project id -> tasks recorded for it (a deleted project's stay listed)."""
        return {int(r["p"]): int(r["n"]) for r in self.query(
            "SELECT ls_project_id AS p, COUNT(*) AS n FROM tasks GROUP BY ls_project_id ORDER BY ls_project_id")}

    def holds_records(self) -> bool:
        """Whether any table but the schema's version holds a row (a workspace that was only
        created holds none: `cli.common.discard_unused_workspaces`)."""
        tables = [r["name"] for r in self.query("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return any(self.scalar(f'SELECT 1 FROM "{t}" LIMIT 1') for t in tables if t != "schema_version")

    def image_counts(self) -> dict[str, dict[str, int]]:
        """status -> split -> number of images."""
        out: dict[str, dict[str, int]] = {}
        for r in self.query("SELECT status, split, COUNT(*) AS n FROM images GROUP BY status, split"):
            out.setdefault(r["status"], {})[r["split"]] = r["n"]
        return out

    def reject_counts(self) -> dict[str, int]:
        """reason -> number of rejected sources."""
        return {r["reason"]: r["n"] for r in self.query(
            "SELECT reason, COUNT(*) AS n FROM rejects GROUP BY reason ORDER BY reason")}


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


def _process_alive(pid: int) -> bool:
    """True if a process with this pid exists (or cannot be signalled: someone else's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
