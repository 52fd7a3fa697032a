"""Crash-safe file I/O in one place: atomic replace with fsync, tolerant line logs, lock, hashes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import socket
from pathlib import Path

CHUNK = 1 << 20


def temp_name(path: Path) -> Path:
    """A temp file beside `path` that no other writer can share: host, pid and a random part.
    Fixed temp names let two attempts (a retry beside a stale one) interleave their writes."""
    # the suffix stays last: Keras picks the file format (HDF5 for .h5) from it
    return path.with_name(
        f".{path.stem}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}"
    )


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable: without it a crash can leave the old name (or none)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """Rename a fully written (and fsynced) temp file over `path`, durably."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write(path, data: bytes | str) -> None:
    """Replace `path` with `data` so that a reader or a crash sees the old or the new file, never
    half of one: write a unique temp file, fsync it, rename, fsync the folder."""
    path = Path(path)
    tmp = temp_name(path)
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    commit(tmp, path)


def write_json(path, obj, indent: int | None = None) -> None:
    """JSON through a temp file and rename: a crash never leaves half a file."""
    atomic_write(path, json.dumps(obj, indent=indent, default=float))


def read_json(path, default=None):
    """The JSON in `path`, or `default` if it is missing or unreadable (e.g. emptied by a crash
    on a filesystem that lost the data of a rename)."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return default


def append_line(path, obj) -> None:
    """Append one JSON line, fsynced. If the file's last line was cut short by a crash, start on
    a new line first, so the torn line costs only itself and not the good one written after it."""
    line = (json.dumps(obj, default=float) + "\n").encode()
    with open(path, "ab+") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_lines(path) -> list[dict]:
    """Every well-formed JSON object line of `path`; torn or interleaved lines are skipped."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")  # a torn multi-byte character: that line
    except FileNotFoundError:
        return []
    rows = []
    for line in text.split("\n"):
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


@contextlib.contextmanager
def locked(path):
    """An exclusive advisory lock (flock) on `path` for a read-modify-write by several processes.
    flock works across processes on one host and on Lustre mounted with -o flock (NERSC's are)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()
