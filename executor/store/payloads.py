"""The payload store: arguments and results above a size, out of the journal rows, stored once
by content where that pays.

Three tiers, by the size of the encoded payload:

    inline  up to INLINE_MAX_BYTES: in the row itself, as always (small values cost nothing more)
    table   a row of `payloads`, written in the same transaction as the row that refers to it;
            compressed with zlib from COMPRESS_MIN_BYTES when that saves enough
    file    from FILE_MIN_BYTES: a file in the folder `<database>.payloads/` beside the database,
            written and fsynced (file and folder) before the transaction that refers to it

A row that holds a stored payload holds a reference instead: the byte 0x00, then the payload's id
in decimal digits. Arguments are a JSON array, and one large argument (a system prompt) is often
passed along with small ones that differ per call: when an argument is over INLINE_MAX_BYTES, each
such argument is stored on its own, and the row holds the byte 0x01 and a JSON array with one item
per argument: a string holding the argument's JSON, or the id of its stored payload. JSON never
starts with 0x00 or 0x01, so rows written before the store read as they always did (codec.py
names the format bytes). Arguments (and results from SHARE_MIN_BYTES) are addressed by the
digest of their encoded bytes: the same system prompt passed to 100,000 steps is stored once.
Smaller results, read back once if at all, get a row of their own under a unique key instead
(`put`). A fork or a retry that copies a journal row copies only its references. Reference counts
are kept by triggers on the tables that hold payloads (sqlite migrations 0006 and 0011), so no
writer can forget one; a reference to a missing payload aborts its statement.

Files get a unique name each time one is written, never reused: deleting the row of a file makes
the file unreachable for good, so it can be unlinked after the commit with no race. A crash
between writing a file and committing its row leaves an orphan file, which `sweep` removes once
it is older than a grace period; never a row without its file.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import time
import weakref
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, cast, overload

import orjson
from lru import LRU

from executor import codec, errors
from executor.store.conn import Conn, Cursor
from executor.store.database import transaction

# Chosen from `scripts/bench.py --result-bytes` (docs/PERFORMANCE.md, "Payload sizes").
INLINE_MAX_BYTES = 1024
FILE_MIN_BYTES = 1024 * 1024
# zlib level 1: JSON text shrinks 3-5x at ~100 MB/s; higher levels gain a few percent at 2-5x the
# time. Kept only when it saves at least an eighth. Not below COMPRESS_MIN_BYTES: an LLM's 2.5 KB
# of prose shrinks by 40% (1 KB) for 19 us to compress and 8 us to read back, about the whole CPU
# per step of a plain asyncio program doing the same calls (docs/PERFORMANCE.md, issue 15, third
# round); a kilobyte more in the file costs far less than that. Large payloads (documents, files)
# are where the bytes add up, and where the time per byte is the same share of far fewer steps.
ZLIB_LEVEL = 1
COMPRESS_MIN_BYTES = 4 * 1024
# Results below this are stored unshared (see `put`); arguments are always stored by content.
SHARE_MIN_BYTES = 64 * 1024
_SAVE_FRACTION = 0.875
# Orphan files (a crash between a file's write and its commit) are swept only when older.
ORPHAN_GRACE_S = 3600.0
_REF_PREFIX = b"\x00"
_SPLIT_PREFIX = b"\x01"
# Resolved payloads kept in memory, by digest (their content, so never stale), so no decompress or
# file read for a payload many rows share (a system prompt), and no read of its row for a step's
# arguments just stored (put_args). Bounded in entries and in bytes.
_CACHE_ENTRIES = 8192
_CACHE_BYTES = 16 * 1024 * 1024
_CACHE_MAX_BYTES = 256 * 1024


class _Resolved:
    """A least-recently-used map of digest -> payload bytes, at most `entries` entries and
    `budget` bytes of payloads; one larger than `largest` is not kept."""

    def __init__(self, entries: int, budget: int, largest: int) -> None:
        self._lru: LRU[bytes, bytes] = LRU(entries, callback=self._evicted)
        self._budget = budget
        self._largest = largest
        self.bytes = 0

    def _evicted(self, _key: bytes, value: bytes) -> None:
        self.bytes -= len(value)

    def __len__(self) -> int:
        return len(self._lru)

    def get(self, key: bytes) -> bytes | None:
        return self._lru.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        if len(value) > self._largest:
            return
        old = self._lru.get(key)
        if old is not None:
            return  # same digest, same bytes; the get made it the most recent
        self._lru[key] = value
        self.bytes += len(value)
        while self.bytes > self._budget:
            # Not popitem: lru-dict 1.4.1's keeps a reference to each item it pops (measured: the
            # llm benchmark's peak RSS 3x, every evicted argument kept).
            last = self._lru.peek_last_item()
            if last is None:  # pragma: no cover (bytes over the budget: there are entries)
                break
            del self._lru[last[0]]
            self.bytes -= len(last[1])

    def clear(self) -> None:
        self._lru.clear()
        self.bytes = 0


_cache = _Resolved(_CACHE_ENTRIES, _CACHE_BYTES, _CACHE_MAX_BYTES)


def is_ref(blob: bytes | None) -> bool:
    """Whether a row's payload is (or has parts) in the store."""
    return blob is not None and blob[:1] in (_REF_PREFIX, _SPLIT_PREFIX)


def folder(database: str | Path) -> Path:
    """Where the files of a database's large payloads live."""
    return Path(f"{database}.payloads")


# A connection's database file never changes: read once (a PRAGMA per payload was 0.5% of the
# database thread), forgotten with the connection.
_paths: weakref.WeakKeyDictionary[Conn, str] = weakref.WeakKeyDictionary()


def _database_path(conn: Conn) -> str:
    """The SQLite file (its payload folder is beside it); on PostgreSQL, what messages call it."""
    if not has_files(conn):
        return "the PostgreSQL database"
    path = _paths.get(conn)
    if path is not None:
        return path
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            _paths[conn] = str(file)
            return str(file)
    raise errors.StoreError("the connection has no main database")  # pragma: no cover


def has_files(conn: Conn) -> bool:
    """Whether large payloads go to files beside the database: on SQLite. PostgreSQL keeps every
    payload in its table (TOASTed): daemons on other machines must read them, and a folder on
    one machine is not theirs."""
    return conn.dialect == "sqlite"


# hashlib lets go of the GIL for inputs of 2048 bytes or more; on the database thread each release
# may cost a wait of a switch interval (5 ms) for the event loop to hand it back, so payloads are
# hashed in smaller pieces (codec.blake2b_keeping_gil, as fingerprints are on the loop's thread).
# Large payloads are hashed whole: those are staged in a thread of their own (`stage`).
_HASH_WHOLE = 64 * 1024


def digest(blob: bytes) -> bytes:
    if len(blob) >= _HASH_WHOLE:
        return hashlib.blake2b(blob, digest_size=16).digest()
    return codec.blake2b_keeping_gil(blob, 16).digest()


@dataclass(slots=True)
class Staged:
    """A payload made ready outside any transaction: its digest, and for a large one the file
    it was written to (fsynced). `put` then only inserts or references its row."""

    blob: bytes
    digest: bytes
    file: str | None = None  # our file, written for this payload (None if the row exists)
    codec: str = "json"


def _compress(blob: bytes, min_bytes: int | None) -> tuple[str, bytes]:
    """zlib when the payload is at least `min_bytes` (None: never) and that saves enough."""
    if min_bytes is None or len(blob) < min_bytes:
        return "json", blob
    packed = zlib.compress(blob, ZLIB_LEVEL)
    if len(packed) <= len(blob) * _SAVE_FRACTION:
        return "zlib", packed
    return "json", blob


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_mode(directory: Path) -> int:
    """The database file's permissions (0600, or 0640 with database.group_readable): payload
    files get the same, so whoever may read the database may read its payloads, nobody else."""
    database = Path(str(directory).removesuffix(".payloads"))
    try:
        return database.stat().st_mode & 0o666
    except OSError:
        return 0o600


def _write_file(directory: Path, dig: bytes, data: bytes) -> str:
    """Write `data` to a new file of its own in `directory`, fsync it and the folder; its name."""
    mode = _file_mode(directory)
    name = f"{dig.hex()}.{secrets.token_hex(4)}"
    tmp = directory / f".{name}.tmp"
    try:
        if not directory.exists():
            directory.mkdir(exist_ok=True)
            # The folder: the file's mode plus search where it has read (0700, 0750).
            os.chmod(directory, mode | ((mode & 0o444) >> 2))
            _fsync_dir(directory.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with open(fd, "wb", buffering=0) as f:
            os.fchmod(fd, mode)  # exactly the database's, whatever the umask
            view = memoryview(data)
            while view:
                written = f.write(view)
                view = view[written or 0 :]
            os.fsync(f.fileno())
        os.replace(tmp, directory / name)
        _fsync_dir(directory)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise errors.StoreWriteError(f"{directory}: cannot write a payload file: {exc}") from exc
    return name


def stage(
    directory: Path, blob: bytes, compress_min_bytes: int | None = COMPRESS_MIN_BYTES
) -> bytes | Staged:
    """Make a payload ready before the transaction that stores it (in any thread): a large one is
    compressed (from `compress_min_bytes`, the connection's setting) and written to a file of its
    own now, outside the write lock. If the same bytes turn out to be stored already, `put`
    references those and removes this file."""
    if len(blob) < FILE_MIN_BYTES:
        return blob
    dig = digest(blob)
    codec, data = _compress(blob, compress_min_bytes)
    return Staged(blob, dig, _write_file(directory, dig, data), codec)


def _split(blob: bytes) -> list[bytes] | None:
    """The JSON of each argument of an encoded argument list, if one of them is large."""
    if blob[:1] != b"[" or len(blob) >= FILE_MIN_BYTES:
        return None
    try:
        items = orjson.loads(blob)
    except orjson.JSONDecodeError:
        return None
    parts = [orjson.dumps(x) for x in items]
    if not any(len(p) > INLINE_MAX_BYTES for p in parts):
        return None
    if b"[" + b",".join(parts) + b"]" != blob:  # not our own compact encoding: keep it whole
        return None
    return parts


def put_args(conn: Conn, blob: bytes | None, now: float) -> bytes | None:
    """`put` for an argument list: each large argument stored on its own (see the docstring)."""
    if blob is None or len(blob) <= INLINE_MAX_BYTES:
        return blob
    parts = _split(blob)
    if parts is None:
        if len(blob) >= FILE_MIN_BYTES:
            return put(conn, blob, now)
        return _REF_PREFIX + str(_insert(conn, _remembered(blob), now)).encode()
    layout: list[str | int] = [
        p.decode() if len(p) <= INLINE_MAX_BYTES else _insert(conn, _remembered(p), now)
        for p in parts
    ]
    return _SPLIT_PREFIX + orjson.dumps(layout)


def _remembered(blob: bytes) -> Staged:
    """A step's argument, staged and kept in the cache of resolved payloads: the claim that runs
    the step reads it back, usually within the second, and then finds it there (no read of its
    row). Results are not: they are read back only by a replay that lost its instance."""
    item = Staged(blob, digest(blob))
    _cache.put(item.digest, blob)
    return item


def is_inline(item: bytes | Staged | None) -> bool:
    """Whether `put` would keep this payload in the row itself, without touching the store."""
    return item is None or (not isinstance(item, Staged) and len(item) <= INLINE_MAX_BYTES)


def put(conn: Conn, item: bytes | Staged | None, now: float) -> bytes | None:
    """Inside a write transaction: what the row should hold for a result (itself when small,
    else a reference to its stored copy). The reference counts itself when the row is written
    (the triggers).

    A result up to SHARE_MIN_BYTES is stored as its own row under a unique key: results are
    read back once if at all, rarely equal to another payload, and a content digest in the
    unique index is a write to a random page of it per payload (15% of the CPU per step of the
    llm benchmark). Larger results are stored by content, once, like arguments."""
    if item is None:
        return None
    if not isinstance(item, Staged):
        if len(item) <= INLINE_MAX_BYTES:
            return item
        if len(item) < SHARE_MIN_BYTES:
            return _REF_PREFIX + str(_insert_unshared(conn, bytes(item), now)).encode()
        item = Staged(bytes(item), digest(item))
    return _REF_PREFIX + str(_insert(conn, item, now)).encode()


class _Keys:
    """Unique keys for unshared payloads, in the `digest` column: 8 random bytes drawn once per
    process (again in a forked child) and a counter, so each process appends at one place of
    the unique index. A repeat (two processes drawing the same 64 bits) fails its insert on the
    unique constraint: never a reference to another payload."""

    def __init__(self) -> None:
        self._fresh()
        os.register_at_fork(after_in_child=self._fresh)

    def _fresh(self) -> None:
        self._prefix = os.urandom(8)
        self._n = 0

    def next(self) -> bytes:
        self._n += 1
        return self._prefix + self._n.to_bytes(8, "big")


_keys = _Keys()


def _insert_unshared(conn: Conn, blob: bytes, now: float) -> int:
    codec, data = _compress(blob, conn.compress_min_bytes)
    row = {"key": _keys.next(), "size": len(blob), "codec": codec, "data": data, "now": now}
    if conn.dialect == "sqlite":  # no RETURNING there (payloads.sql, insert_payload_new)
        return _rowid(conn.execute(conn.q["insert_payload_row"], row))
    (pid,) = conn.execute(conn.q["insert_payload_unshared"], row).fetchone()
    return int(pid)


def _rowid(cursor: Cursor) -> int:
    """The id of the row a SQLite INSERT just stored."""
    pid = cast(sqlite3.Cursor, cursor).lastrowid
    if pid is None or cursor.rowcount != 1:  # pragma: no cover (an INSERT that stored a row)
        raise errors.StoreError("a payload insert stored no row")
    return pid


def _insert_row(conn: Conn, row: dict[str, object]) -> tuple[int, str | None]:
    """Insert or get the payload of `row` (by its digest): its id and file."""
    if conn.dialect != "sqlite":
        pid, file = conn.execute(conn.q["insert_payload"], row).fetchone()
        return int(pid), file
    cursor = conn.execute(conn.q["insert_payload_new"], row)
    if cursor.rowcount == 1:
        return _rowid(cursor), cast("str | None", row["file"])
    pid, file = conn.execute(conn.q["payload_by_digest_file"], (row["digest"],)).fetchone()
    return int(pid), file


def _insert(conn: Conn, item: Staged, now: float) -> int:
    """The id of the stored payload with these bytes, inserted now if there is none.

    One statement (insert or get: `_insert_row`) for a payload that needs no work before its
    insert; one that would be compressed or written to a file is looked up first, so the same
    bytes stored already cost no compression and no file."""
    file = item.file
    compress = conn.compress_min_bytes
    if file is not None or (compress is not None and len(item.blob) >= compress):
        row = conn.execute(conn.q["payload_by_digest"], (item.digest,)).fetchone()
        if row is not None:
            if file is not None:  # stored meanwhile by someone else: ours is an orphan now
                _unlink_later(conn, file)
            return int(row[0])
    codec = item.codec
    data: bytes | None
    if file is None and len(item.blob) >= FILE_MIN_BYTES and has_files(conn):
        # Not staged: write it now, under the write lock (callers stage large ones first).
        codec, packed = _compress(item.blob, compress)
        file = _write_file(folder(_database_path(conn)), item.digest, packed)
    if file is not None:
        if not (folder(_database_path(conn)) / file).exists():
            raise errors.StoreError(f"payload file {file} vanished before its commit")
        data = None
    else:
        codec, data = _compress(item.blob, compress)
    pid, stored_file = _insert_row(
        conn,
        {
            "digest": item.digest,
            "size": len(item.blob),
            "codec": codec,
            "data": data,
            "file": file,
            "now": now,
        },
    )
    if file is not None and stored_file != file:  # the same bytes were stored under another
        _unlink_later(conn, file)
    return pid


def _unlink_later(conn: Conn, name: str) -> None:
    # A file we wrote that no row will name: harmless to remove now (unique name, unreferenced).
    try:
        (folder(_database_path(conn)) / name).unlink(missing_ok=True)
    except OSError:
        pass  # swept later


# --- reading -------------------------------------------------------------------------------------


@overload
def resolve(conn: Conn, blob: bytes) -> bytes: ...
@overload
def resolve(conn: Conn, blob: None) -> None: ...
@overload
def resolve(conn: Conn, blob: bytes | None) -> bytes | None: ...


def resolve(conn: Conn, blob: bytes | None) -> bytes | None:
    """The encoded payload a row holds: itself, or rebuilt from the store."""
    if blob is None:
        return None
    first = blob[:1]
    if first == _REF_PREFIX:
        return _load(conn, _database_path(conn), int(blob[1:]))
    if first == _SPLIT_PREFIX:
        database = _database_path(conn)
        layout = orjson.loads(blob[1:])
        parts = [p.encode() if isinstance(p, str) else _load(conn, database, p) for p in layout]
        return b"[" + b",".join(parts) + b"]"
    return blob


def _load(conn: Conn, database: str, pid: int) -> bytes:
    row = conn.execute(conn.q["payload_digest"], (pid,)).fetchone()
    if row is None:
        raise errors.StoreError(f"{database}: payload {pid} is referenced but missing")
    # By content: the same bytes whichever file or id they come from, and never stale.
    hit = _cache.get(row[0])
    if hit is not None:
        return hit
    codec, data, file, size, dig = conn.execute(conn.q["select_payload"], (pid,)).fetchone()
    if file is not None:
        path = folder(database) / file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise errors.StoreError(
                f"{database}: payload file {path} cannot be read: {exc}"
            ) from exc
    if codec == "zlib":
        data = zlib.decompress(data)
    elif codec != "json":
        raise errors.StoreError(f"{database}: payload {pid} has unknown codec {codec!r}")
    if len(data) != size:
        raise errors.StoreError(f"{database}: payload {pid} is {len(data)} bytes, not {size}")
    _cache.put(dig, data)
    return bytes(data)


# --- retention -----------------------------------------------------------------------------------


class Collected(NamedTuple):
    payloads: int  # rows deleted
    files: int  # files unlinked (theirs and orphans)
    bytes: int  # encoded bytes freed


def delete_unreferenced(conn: Conn, now: float) -> tuple[int, int, list[str]]:
    """Inside a write transaction (a purge's own, say): delete every payload no row refers to.
    Returns (rows, bytes, files to unlink once the transaction has committed)."""
    files: list[str] = []
    rows = 0
    freed = 0
    for pid, file in conn.execute(conn.q["unreferenced_payloads"], {"before": now}).fetchall():
        deleted = conn.execute(conn.q["delete_payload"], (pid,)).fetchone()
        if deleted is not None:
            rows += 1
            freed += deleted[0]
            if file is not None:
                files.append(file)
    return rows, freed, files


def unlink(database: str | Path, files: Iterable[str]) -> int:
    """Remove the files of deleted payload rows (after their commit: no row names them)."""
    directory = folder(database)
    removed = 0
    for name in files:
        try:
            (directory / name).unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def orphan_files(
    conn: Conn, database: str | Path | None = None, older_than: float | None = None
) -> list[str]:
    """Files in the payload folder that no payload row names (in this read snapshot); with
    `older_than`, only those last modified before it."""
    if database is None and not has_files(conn):
        return []
    directory = folder(database or _database_path(conn))
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    known = {f for (f,) in conn.execute(conn.q["payload_files"])}
    out = []
    for name in names:
        if name in known:
            continue
        if older_than is not None:
            try:
                if (directory / name).stat().st_mtime >= older_than:
                    continue
            except FileNotFoundError:
                continue
        out.append(name)
    return sorted(out)


def missing_files(conn: Conn, database: str | Path | None = None) -> list[str]:
    """Payload rows whose file is not there (what `executor check` reports)."""
    if database is None and not has_files(conn):
        return []
    directory = folder(database or _database_path(conn))
    return [f for (f,) in conn.execute(conn.q["payload_files"]) if not (directory / f).exists()]


def collect(conn: Conn, now: float | None = None) -> Collected:
    """Retention of payloads: delete the rows no run references, unlink their files, and sweep
    orphan files older than ORPHAN_GRACE_S. Runs its own transactions (not inside another)."""
    now = time.time() if now is None else now
    rows, freed, files = transaction(delete_unreferenced)(conn, now)
    if not has_files(conn):
        return Collected(rows, 0, freed)
    database = _database_path(conn)
    unlinked = unlink(database, files)
    # Under the write lock: a writer checks its file exists inside its own write transaction,
    # so a file seen here without a row cannot gain one before we unlink it.
    conn.execute(conn.q["begin_write"])
    try:
        orphans = orphan_files(conn, database, older_than=now - ORPHAN_GRACE_S)
        unlinked += unlink(database, orphans)
    finally:
        conn.execute("COMMIT")
    return Collected(rows, unlinked, freed)
