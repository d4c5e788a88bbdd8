"""Moving a hub's data from its SQLite file to PostgreSQL (`outpost-hub db migrate`).

Every table is copied as it is, in one PostgreSQL transaction: the target ends up with
all of it or, on any failure, none of it. The target must hold no data yet (a fresh
database, or one only `init --db` or a replica's start has migrated), so a typo in the
URL cannot merge two fleets. Counts are compared table by table before the commit.
Model files go into the database too (the single hub kept them on disk only), so any
replica can serve a download. The source is only read, and refused before the target is
touched unless it is a hub's database: an older hub's is brought to the newest schema in
a temporary copy, never in place.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hub.store.engine import DatabaseUrlError, describe, open_engine
from hub.store.migrations import MIGRATIONS
from hub.store.sql import Sql
from outpost.modelbundle import MODEL_FILE

# Rows the migrations themselves write: replaced by the source's, not counted as data.
SEEDED = {"policy_seq", "offer_seq", "leadership"}
# Not data: the migration ledger, SQLite's own bookkeeping, who leads right now.
SKIPPED = {"_migrations", "sqlite_sequence", "leadership", "model_files"}
BATCH = 1000
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database


class TransferRefusedError(ValueError):
    """The copy would lose or mix data; the message says what to do instead."""


@dataclass(frozen=True)
class Copied:
    table: str
    rows: int


def copy_sqlite_to_postgres(
    source: Path,
    target_url: str,
    models: Path | None = None,
    agent_releases: Path | None = None,
) -> list[Copied]:
    """Copy every table of the hub database `source` into the PostgreSQL `target_url`,
    each model's file from the folder `models` (name/version/model.tflite), and each
    agent release's files from `agent_releases` (version/NAME): on PostgreSQL every
    replica serves them from the database, the data folder's copies being one's own."""
    with _hub_database(source) as conn:  # refused here: the target not yet touched
        target = open_engine(target_url)
        try:
            # Read on the target's worker thread, inside its transaction.
            return target.run_sync(
                _copy, conn, _tables(conn), describe(target_url), models, agent_releases
            )
        finally:
            target.close()


@contextlib.contextmanager
def _hub_database(source: Path) -> Iterator[sqlite3.Connection]:
    """The hub database `source`, opened read-only, at the newest schema; refused
    (`TransferRefusedError`) when it is not a hub's. Opened as the hub opens it, a
    file given by mistake was made into a hub database, and an older hub's changed."""
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(contextlib.closing(_open_read_only(source)))
        if _behind(conn, source):
            temp = Path(tempfile.gettempdir())
            _check_room(source, temp)
            try:
                scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="outpost-")))
                conn = stack.enter_context(contextlib.closing(_updated_copy(conn, scratch)))
            except (sqlite3.Error, OSError) as exc:
                # The temp folder filled up (or its size limit was met) during the copy
                # or its migration: sqlite3's "disk I/O error" names neither the folder
                # nor TMPDIR, and the CLI would show it as a traceback.
                raise TransferRefusedError(
                    f"{source} is an older hub's database, brought to the newest schema in a "
                    f"temporary copy in {temp}, and that copy failed: {exc}; make room there "
                    "or set TMPDIR to a folder with room (the source was not changed)"
                ) from exc
        yield conn


def _check_room(source: Path, temp: Path) -> None:
    """Refuse before copying when the temp folder `temp` lacks room for a copy of the
    database `source` (its -wal file included, whose pages the copy holds too)."""
    wal = source.with_name(source.name + "-wal")
    needed = source.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    needed += needed // 10 + (1 << 20)  # the migrations grow the copy a little
    try:
        free = shutil.disk_usage(temp).free
    except OSError as exc:
        raise TransferRefusedError(
            f"cannot check the room in the temp folder {temp} (set by TMPDIR): "
            f"{exc.strerror or exc}"
        ) from exc
    if free < needed:
        raise TransferRefusedError(
            f"{source} is an older hub's database: it is brought to the newest schema in a "
            f"temporary copy, which needs about {_mb(needed)} free in {temp}, which has "
            f"{_mb(free)}; make room there or set TMPDIR to a folder with room (the copy is "
            "removed afterwards; the source is not changed)"
        )


def _mb(size: int) -> str:
    return f"{size / (1 << 20):.1f} MB"


def _open_read_only(source: Path) -> sqlite3.Connection:
    if source.is_dir():
        raise TransferRefusedError(
            f"{source} is a folder, not a database: give the hub's database file (its hub.db)"
        )
    if not source.exists():
        raise TransferRefusedError(f"{source} does not exist: nothing to migrate")
    if not source.is_file():
        raise TransferRefusedError(f"{source} is not a file: give the hub's database file")
    with source.open("rb") as file:
        magic = file.read(len(SQLITE_MAGIC))
    if magic != SQLITE_MAGIC:  # SQLite would take an empty file for a new database
        what = "is empty" if not magic else "is not a SQLite database"
        raise TransferRefusedError(f"{source} {what}: give the hub's database file (its hub.db)")
    # A URI, so that SQLite can neither write the file nor make it; as_uri quotes what
    # a path may hold that a URI must not (?, #, %).
    return sqlite3.connect(
        f"{source.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
    )


def _behind(conn: sqlite3.Connection, source: Path) -> bool:
    """Whether the hub database `source` lacks migrations this version applies."""
    try:
        ledger = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"
        ).fetchone()
        applied = {r[0] for r in conn.execute("SELECT name FROM _migrations")} if ledger else set()
    except sqlite3.DatabaseError as exc:  # damaged, or its folder unreadable
        raise TransferRefusedError(f"{source} cannot be read as a SQLite database: {exc}") from exc
    known = [name for name, _ in MIGRATIONS]
    if known[0] not in applied:  # none, or another program's (an agent's store)
        raise TransferRefusedError(
            f"{source} is not a hub's database (it has no hub schema): give the hub's "
            "database file (its hub.db); nothing was copied"
        )
    if newer := sorted(applied.difference(known)):
        raise TransferRefusedError(
            f"{source} was made by a newer outpost-hub (its schema has {', '.join(newer)}): "
            "migrate it with that version"
        )
    return len(applied) < len(known)


def _updated_copy(conn: sqlite3.Connection, scratch: Path) -> sqlite3.Connection:
    """A copy of `conn`'s database in the folder `scratch`, migrated to the newest schema
    (as a hub start would migrate the database itself), for the target has that schema."""
    copy = scratch / "hub.db"
    with contextlib.closing(sqlite3.connect(copy)) as made:
        conn.backup(made)
    open_engine(copy).close()
    return sqlite3.connect(copy, check_same_thread=False)


def _tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    ).fetchall()
    return [r[0] for r in rows if r[0] not in SKIPPED]


def _copy(
    db: Sql,
    source: sqlite3.Connection,
    tables: list[str],
    target: str,
    models: Path | None,
    agent_releases: Path | None,
) -> list[Copied]:
    # One long transaction by an operator, not a replica's unit: between its statements
    # it reads the source and the files, which may take longer than a unit's bound.
    db.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
    for table in tables:
        if table in SEEDED:
            continue
        (held,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # noqa: S608 - names from the schema
        if held:
            raise TransferRefusedError(
                f"{target} already holds data ({held} rows in {table}): migrate into an "
                "empty database"
            )
    copied = []
    for table in tables:
        if table in SEEDED:
            db.execute(f"DELETE FROM {table}")  # noqa: S608
        columns, batches = _read(source, table)
        names = ", ".join(columns)
        marks = ", ".join("?" * len(columns))
        insert = f"INSERT INTO {table} ({names}) VALUES ({marks})"  # noqa: S608
        count = sum(db.executemany(insert, batch) for batch in batches)
        (held,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # noqa: S608
        (expected,) = source.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # noqa: S608
        if held != expected or count != expected:
            raise DatabaseUrlError(f"{table}: {expected} rows read but {held} stored; rolled back")
        copied.append(Copied(table, held))
    _move_identities_past(db, _sqlite_sequences(source))
    if models is not None:
        copied.append(Copied("(model files)", _copy_model_files(db, models)))
    if agent_releases is not None:
        copied.append(Copied("(agent files)", _copy_agent_files(db, agent_releases)))
    return copied


def _copy_agent_files(db: Sql, folder: Path) -> int:
    copied = 0
    for (version,) in db.execute("SELECT version FROM agent_releases").fetchall():
        release = folder / version
        if not release.is_dir():
            raise TransferRefusedError(
                f"agent release {version}: its files ({release}) are missing; nothing was copied"
            )
        for path in sorted(p for p in release.iterdir() if p.suffix == ".whl" and p.is_file()):
            db.execute(
                "INSERT INTO agent_release_files (version, name, content) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (version, path.name, path.read_bytes()),
            )
            copied += 1
    return copied


def _copy_model_files(db: Sql, models: Path) -> int:
    copied = 0
    for name, version in db.execute("SELECT name, version FROM models").fetchall():
        path = models / name / version / MODEL_FILE
        if not path.is_file():
            raise TransferRefusedError(
                f"model {name} {version}: its file {path} is missing; nothing was copied"
            )
        db.execute(
            "INSERT INTO model_files (name, version, content) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (name, version, path.read_bytes()),
        )
        copied += 1
    return copied


def _read(
    source: sqlite3.Connection, table: str
) -> tuple[list[str], Iterator[list[tuple[object, ...]]]]:
    # api_tokens pages on SQLite's implicit rowid; PostgreSQL has it as a column.
    select = "rowid, *" if table == "api_tokens" else "*"
    cursor = source.execute(f"SELECT {select} FROM {table}")  # noqa: S608
    columns = [d[0] for d in cursor.description]

    def batches() -> Iterator[list[tuple[object, ...]]]:
        while rows := cursor.fetchmany(BATCH):
            yield rows

    return columns, batches()


def _sqlite_sequences(source: sqlite3.Connection) -> dict[str, int]:
    """The highest id each AUTOINCREMENT table of the source ever gave (rows since deleted
    included): what its sequence on PostgreSQL must start past."""
    try:
        return {
            name: int(seq) for name, seq in source.execute("SELECT name, seq FROM sqlite_sequence")
        }
    except sqlite3.OperationalError:  # no AUTOINCREMENT table was ever written
        return {}


def _move_identities_past(db: Sql, given: dict[str, int]) -> None:
    """Identity columns were given the source's values: start their sequences after them,
    and after every id the source ever gave. The sinks' delivered events are deleted
    from the outbox, whose cursors stay at their ids: a sequence that started after
    the rows left would number new events below a cursor, never to be delivered."""
    rows = db.execute(
        """SELECT table_name, column_name FROM information_schema.columns
           WHERE table_schema = current_schema()
             AND (is_identity = 'YES' OR column_default LIKE 'nextval%')"""
    ).fetchall()
    for table, column in rows:
        db.execute(
            f"""SELECT setval(pg_get_serial_sequence('{table}', '{column}'),
                       GREATEST(COALESCE(MAX({column}), 0), ?) + 1, false) FROM {table}""",  # noqa: S608
            (given.get(table, 0),),
        )
