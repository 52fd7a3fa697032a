"""Trials on disk: one folder each, a state machine with one current attempt, verified checkpoints.

Plain files, no database: many engines write different trials at once, and a parallel
filesystem (Lustre) handles whole-file renames well but SQLite's locking badly. A trial's
folder holds config.json, status.json, metrics.jsonl (a line per epoch), attempts.jsonl (a line
per attempt's start and end), its checkpoint (weights + optimizer state) and a heartbeat.
The study's change log (changes.log, a trial id per line, appended on every change a table would
show) lets a reader re-read only the trials that changed: on a parallel filesystem every file
operation is a request to one metadata server, so a poll must not touch every trial.

Only the store changes a trial's state, and only along these arrows:

    queued -> running -> completed | stopped | diverged | failed
    queued -> stopped | failed;  running -> running (a new attempt after a dead one)
    running -> queued (a trial trained a slice of its epochs per task waits for its next)
    stopped | failed | diverged -> queued (restart)

Every change is a read-modify-write under the trial's lock (flock). Each attempt gets a token;
once another attempt has taken over (or the trial was stopped by force), a writer whose token is
no longer current cannot change the trial: its writes raise StaleAttempt. A running attempt
renews a heartbeat; one whose heartbeat is older than the lease (or whose process is gone) is
dead, and the next attempt takes over from the last verified checkpoint.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
import warnings
from pathlib import Path

from .files import (
    append_line,
    atomic_write,
    commit,
    locked,
    read_json,
    read_lines,
    sha256_of,
    temp_name,
    write_json,
)

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "completed", "stopped", "diverged", "failed")
ENDED = ("completed", "stopped", "diverged", "failed")
RESTARTABLE = ("stopped", "failed", "diverged")
TRANSITIONS = {
    "queued": {"running", "stopped", "failed"},
    # running -> queued: an attempt that trained its slice of epochs hands the trial back
    "running": {"queued", "running", "completed", "stopped", "diverged", "failed"},
    "stopped": {"queued"},
    "failed": {"queued"},
    "diverged": {"queued"},
    "completed": set(),
}
HEARTBEAT_S = 5.0  # how often a running attempt renews its heartbeat
LEASE_S = 30.0  # a heartbeat older than this means the attempt is dead
TRIAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class TransitionError(ValueError):
    """A state change the state machine does not allow (e.g. restarting a completed trial)."""


class StaleAttempt(RuntimeError):
    """This attempt is no longer the trial's current one: it must stop writing and end."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unrecorded, or does not match its recorded sha256."""


class LockHeld(RuntimeError):
    """Another live driver holds the study's (or PBT run's) lock."""


def check_trial_id(trial_id: str) -> str:
    if not isinstance(trial_id, str) or not TRIAL_ID.fullmatch(trial_id):
        raise ValueError(
            f"invalid trial id {trial_id!r}: expected 1-64 letters, digits, '.', '_' "
            "or '-', not starting with '.' or '-' (it names a folder in the store)"
        )
    return trial_id


def _process_alive(host: str | None, pid: int | None, pid_started: float | None) -> bool | None:
    """True/False when we can tell (same host), None when the process is on another host."""
    if host != socket.gethostname() or pid is None:
        return None
    try:
        import psutil

        return psutil.pid_exists(pid) and (
            pid_started is None or abs(psutil.Process(pid).create_time() - pid_started) < 1.0
        )
    except ImportError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    except Exception:  # the process ended between the two calls
        return False


def _this_process_started() -> float | None:
    try:
        import psutil

        return psutil.Process().create_time()
    except ImportError:
        return None


def _per_epoch(rows: list[dict]) -> list[dict]:
    """The last row written for each epoch, in epoch order."""
    by_epoch = {row["epoch"]: row for row in rows if "epoch" in row}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _frame(rows: list[dict]):
    """Summary rows as a pandas DataFrame indexed by trial."""
    import pandas as pd

    return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()


class Store:
    """A study: `root/trials/<trial_id>/...`; see the module docstring for the state machine."""

    def __init__(self, root):
        self.root = Path(root)
        (self.root / "trials").mkdir(parents=True, exist_ok=True)
        self.change_log = self.root / "changes.log"
        self._next_number = None  # where this process looks for the next free trial-NNNN

    def trial_dir(self, trial_id: str) -> Path:
        return self.root / "trials" / check_trial_id(trial_id)

    # ------------------------------------------------------------------ creating trials
    def create_trial(self, config: dict, trial_id: str | None = None) -> str:
        """A new trial with the next free id (trial-0001, ...); safe against concurrent creators.

        With an explicit `trial_id` (PBT names members g003-m01) an existing trial of that id
        is kept as it is, so re-creating a generation after a crash changes nothing."""
        if trial_id is not None:
            if (self.trial_dir(trial_id) / "config.json").exists():
                return trial_id
            self.trial_dir(trial_id).mkdir(exist_ok=True)
        else:
            if self._next_number is None:  # list the study once, not for every new trial
                numbers = [
                    int(m.group(1))
                    for p in os.scandir(self.root / "trials")
                    if (m := re.fullmatch(r"trial-(\d+)", p.name))
                ]
                self._next_number = max(numbers, default=0) + 1
            while True:
                trial_id = f"trial-{self._next_number:04d}"
                self._next_number += 1
                try:
                    self.trial_dir(trial_id).mkdir()  # atomic: two creators never share an id
                    break
                except FileExistsError:
                    pass
        d = self.trial_dir(trial_id)
        write_json(d / "status.json", {"status": "queued", "updated": time.time(), "attempt": 0})
        write_json(d / "config.json", config)  # last: a trial exists once its config does
        self._changed(trial_id)
        return trial_id

    def update_config(self, trial_id: str, changes: dict) -> dict:
        """Change some hyper-parameters of a trial (before a restart); the old values are kept
        in the config's "history" so the lineage stays visible."""
        with self._lock(trial_id):
            config = self.config(trial_id)
            old = {k: config.get(k) for k in changes}
            config = {
                **config,
                **changes,
                "history": config.get("history", []) + [{"time": time.time(), "was": old}],
            }
            write_json(self.trial_dir(trial_id) / "config.json", config)
            self._changed(trial_id)
        return config

    def trial_ids(self) -> list[str]:
        return sorted(
            p.name
            for p in os.scandir(self.root / "trials")
            if p.is_dir() and (Path(p.path) / "config.json").exists()
        )

    # ------------------------------------------------------------------ the change log
    def _changed(self, trial_id: str) -> None:
        """Note in the study's change log that a trial changed. One small O_APPEND write: a
        line is never interleaved with another writer's, and it needs no fsync, since the log
        only tells readers where to look (a reader that finds it damaged re-reads everything)."""
        fd = os.open(self.change_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{trial_id}\n".encode())
        finally:
            os.close(fd)

    def log_size(self) -> int:
        try:
            return self.change_log.stat().st_size
        except FileNotFoundError:
            return 0

    def changes_since(self, offset: int) -> tuple[int, set[str] | None]:
        """(the log's new offset, the trials changed since byte `offset` of the change log);
        None instead of the set when the log cannot tell (it shrank, or holds a damaged
        line): the caller then re-reads the whole study."""
        try:
            with open(self.change_log, "rb") as f:
                f.seek(0, os.SEEK_END)
                end = f.tell()
                if end < offset:
                    return end, None
                f.seek(offset)
                chunk = f.read(end - offset)
        except FileNotFoundError:
            return 0, (None if offset else set())
        complete = chunk.rfind(b"\n") + 1  # a line still being written is read next time
        ids = chunk[:complete].decode(errors="replace").split()
        if not all(TRIAL_ID.fullmatch(t) for t in ids):
            return offset + complete, None
        return offset + complete, set(ids)

    # ------------------------------------------------------------------ reading
    def config(self, trial_id: str) -> dict:
        return read_json(self.trial_dir(trial_id) / "config.json")

    def status(self, trial_id: str) -> dict:
        return read_json(self.trial_dir(trial_id) / "status.json", {"status": "queued"})

    def metrics(self, trial_id: str) -> list[dict]:
        """Per-epoch metrics, one row per epoch: a resumed trial's re-run epochs replace the old."""
        return _per_epoch(self.metric_rows(trial_id))

    def metric_rows(self, trial_id: str) -> list[dict]:
        """Every metric row ever written for the trial, in order, with the attempt that wrote it."""
        return read_lines(self.trial_dir(trial_id) / "metrics.jsonl")

    def attempts(self, trial_id: str) -> list[dict]:
        """The attempt log: one 'begin' and (unless it died) one 'end' row per attempt."""
        return read_lines(self.trial_dir(trial_id) / "attempts.jsonl")

    def checkpoint(self, trial_id: str, rec: dict | None = None) -> Path:
        """The weights file of the trial's recorded checkpoint (of `rec`, if given)."""
        if rec is None:
            rec = self.status(trial_id).get("checkpoint") or {}
        return self.trial_dir(trial_id) / rec.get("file", "checkpoint.h5")

    def optimizer_state(self, trial_id: str, rec: dict | None = None) -> Path:
        """The optimizer-state file of the trial's recorded checkpoint (of `rec`, if given)."""
        if rec is None:
            rec = self.status(trial_id).get("checkpoint") or {}
        return self.trial_dir(trial_id) / rec.get("optimizer_file", "optimizer.npz")

    def summary(self, trial_id: str) -> dict:
        """One row for the trials table: status, where it runs, progress, best metrics, config."""
        d = str(self.trial_dir(trial_id))  # plain strings: a study's table reads 3 files a trial
        st = read_json(os.path.join(d, "status.json"), {"status": "queued"})
        ms = _per_epoch(read_lines(os.path.join(d, "metrics.jsonl")))
        row = {
            "trial": trial_id,
            **{k: st.get(k) for k in ("status", "host", "engine", "attempt")},
            "epoch": ms[-1]["epoch"] if ms else 0,
        }
        if ms:
            row["loss"] = ms[-1].get("loss")
            row["val_loss"] = min(m.get("val_loss", float("inf")) for m in ms)
            row["val_accuracy"] = max(m.get("val_accuracy", 0.0) for m in ms)
        row["seconds"] = st.get("seconds")
        row.update(read_json(os.path.join(d, "config.json")) or {})
        return row

    def dataframe(self):
        """All trials as a pandas DataFrame, one row each (see `summary`)."""
        return _frame([self.summary(t) for t in self.trial_ids()])

    # ------------------------------------------------------------------ liveness
    def heartbeat_age(self, trial_id: str) -> float | None:
        try:
            return time.time() - (self.trial_dir(trial_id) / "heartbeat").stat().st_mtime
        except FileNotFoundError:
            return None

    def attempt_alive(self, trial_id: str, st: dict | None = None, lease: float = LEASE_S) -> bool:
        """Is the trial's current attempt alive? Its process is checked directly when it runs
        on this host; elsewhere its heartbeat must be younger than the lease."""
        st = st or self.status(trial_id)
        if st.get("status") != "running":
            return False
        alive = _process_alive(st.get("host"), st.get("pid"), st.get("pid_started"))
        if alive is False:
            return False
        age = self.heartbeat_age(trial_id)
        return age is not None and age < lease

    # ------------------------------------------------------------------ the state machine
    def _lock(self, trial_id: str):
        return locked(self.trial_dir(trial_id) / ".lock")

    def _write_status(self, trial_id: str, st: dict) -> dict:
        st = {**st, "updated": time.time()}
        write_json(self.trial_dir(trial_id) / "status.json", st)
        self._changed(trial_id)
        return st

    def _transition(self, trial_id: str, st: dict, to: str, **fields) -> dict:
        """Under the trial's lock: move `st` to `to` if the state machine allows it."""
        now = st.get("status", "queued")
        if to not in TRANSITIONS[now]:
            raise TransitionError(f"{trial_id} is {now}: cannot become {to}")
        if now == "running":
            self._record_checkpoint_row(trial_id, st)
        return self._write_status(trial_id, {**st, **fields, "status": to})

    def _record_checkpoint_row(self, trial_id: str, st: dict) -> None:
        """Under the trial's lock: append the metric row of the recorded checkpoint if its
        attempt died between recording the checkpoint and appending the row."""
        row = (st.get("checkpoint") or {}).get("row")
        if row is None:
            return
        path = self.trial_dir(trial_id) / "metrics.jsonl"
        key = (row.get("epoch"), row.get("attempt"))
        if key not in {(r.get("epoch"), r.get("attempt")) for r in read_lines(path)}:
            append_line(path, row)

    def begin_attempt(self, trial_id: str, engine=None, engine_id=None, **fields) -> Attempt | None:
        """Claim the trial for a new attempt in this process, or None if it must not run here:
        a stop was requested (it becomes "stopped" and never trains), it has ended, or a live
        attempt already runs it (a duplicate submission). A running trial whose attempt is dead
        is taken over; the attempt counter counts every attempt."""
        with self._lock(trial_id):
            st = self.status(trial_id)
            state = st.get("status")
            if state == "running" and self.attempt_alive(trial_id, st):
                return None
            if state not in ("queued", "running"):
                return None
            if self.stop_requested(trial_id):
                self._transition(
                    trial_id, st, "stopped", reason="stop requested before it started", token=None
                )
                return None
            if state == "running":  # its attempt died: record that, then take over
                append_line(
                    self.trial_dir(trial_id) / "attempts.jsonl",
                    {
                        "event": "lost",
                        "attempt": st.get("attempt"),
                        "time": time.time(),
                        "host": st.get("host"),
                        "pid": st.get("pid"),
                    },
                )
            token = secrets.token_hex(8)
            number = st.get("attempt", 0) + 1
            self._heartbeat(trial_id)
            st = self._transition(
                trial_id,
                {k: v for k, v in st.items() if k not in ("reason", "finished")},
                "running",
                token=token,
                attempt=number,
                host=socket.gethostname(),
                pid=os.getpid(),
                pid_started=_this_process_started(),
                engine=None if engine is None else str(engine),
                engine_id=engine_id,
                started=st.get("started") or time.time(),
                attempt_started=time.time(),
                **fields,
            )
            append_line(
                self.trial_dir(trial_id) / "attempts.jsonl",
                {
                    "event": "begin",
                    "attempt": number,
                    "token": token,
                    "time": time.time(),
                    "host": st["host"],
                    "pid": st["pid"],
                    "engine": st["engine"],
                },
            )
        return Attempt(self, trial_id, token, number)

    def request_stop(self, trial_id: str, reason: str = "stopped by request") -> dict:
        """Ask a trial to stop, persistently: a queued trial becomes "stopped" at once and never
        trains; a running one sees the request within a batch and stops itself. Returns the
        status after the request."""
        with self._lock(trial_id):
            st = self.status(trial_id)
            if st.get("status") in ENDED:
                return st
            atomic_write(self.trial_dir(trial_id) / "stop", reason)
            # queued, or its attempt is dead: nobody will see the request, so stop it here
            if st.get("status") == "queued" or not self.attempt_alive(trial_id, st):
                return self._transition(trial_id, st, "stopped", reason=reason, token=None)
            return st

    def stop_requested(self, trial_id: str) -> bool:
        return (self.trial_dir(trial_id) / "stop").exists()

    def force_stop(self, trial_id: str, reason: str) -> dict:
        """End a running trial whose attempt did not answer a stop request: the trial becomes
        "stopped" and that attempt stale, so nothing it writes later counts."""
        with self._lock(trial_id):
            st = self.status(trial_id)
            if st.get("status") in ENDED:
                return st
            atomic_write(self.trial_dir(trial_id) / "stop", reason)
            st = self._transition(trial_id, st, "stopped", reason=reason, token=None)
            append_line(
                self.trial_dir(trial_id) / "attempts.jsonl",
                {
                    "event": "fenced",
                    "attempt": st.get("attempt"),
                    "time": time.time(),
                    "reason": reason,
                },
            )
            return st

    def requeue(self, trial_id: str) -> dict:
        """A stopped, failed or diverged trial back to "queued" (a restart); its stop request
        is cleared and it resumes from its checkpoint when it next runs."""
        with self._lock(trial_id):
            st = self.status(trial_id)
            if st.get("status") not in RESTARTABLE:
                raise TransitionError(
                    f"{trial_id} is {st.get('status')}: only a stopped, failed or "
                    "diverged trial can be restarted (stop it first)"
                )
            (self.trial_dir(trial_id) / "stop").unlink(missing_ok=True)
            return self._transition(trial_id, st, "queued", token=None, reason=None)

    def fail(self, trial_id: str, reason: str, attempt_dead: bool = False) -> dict:
        """Mark a trial that is not running as failed (e.g. its task could not be run at all);
        a trial that has ended, or runs live, is left as it is, unless the caller knows its
        attempt is dead (`attempt_dead`: its allocation ended, on whatever host it ran)."""
        with self._lock(trial_id):
            st = self.status(trial_id)
            if st.get("status") in ENDED or (not attempt_dead and self.attempt_alive(trial_id, st)):
                return st
            return self._transition(trial_id, st, "failed", reason=reason[:500], token=None)

    def _heartbeat(self, trial_id: str) -> None:
        path = self.trial_dir(trial_id) / "heartbeat"
        try:
            os.utime(path)
        except FileNotFoundError:
            path.touch()

    # ------------------------------------------------------------------ checkpoints
    def verify_checkpoint(self, trial_id: str) -> dict:
        """The trial's recorded checkpoint (epoch, files, sha256s) if its files are there and
        match the recorded sha256; CheckpointError saying what is wrong otherwise."""
        rec = self.status(trial_id).get("checkpoint") or {}
        path = self.checkpoint(trial_id, rec)
        if not path.exists():
            raise CheckpointError(f"{path}: missing")
        if not rec.get("sha256"):
            raise CheckpointError(f"{path}: no sha256 recorded for it (never finished writing)")
        actual = sha256_of(path)
        if actual != rec["sha256"]:
            raise CheckpointError(
                f"{path}: sha256 {actual[:12]}… is not the recorded "
                f"{rec['sha256'][:12]}… (corrupt or truncated, "
                f"{path.stat().st_size} bytes)"
            )
        return rec

    def load_checkpoint(self, model, trial_id: str, optimizer: str | None = None) -> dict:
        """Load a trial's verified weights into `model`, and its optimizer state too when
        `optimizer` names the same kind of optimizer that saved it and that state verifies.
        Returns the checkpoint record plus "optimizer_loaded"."""
        rec = self.verify_checkpoint(trial_id)
        model.load_weights(str(self.checkpoint(trial_id, rec)))
        rec = {**rec, "optimizer_loaded": False}
        if optimizer is None or rec.get("optimizer") != optimizer:
            return rec
        path = self.optimizer_state(trial_id, rec)
        if not path.exists() or sha256_of(path) != rec.get("optimizer_sha256"):
            msg = f"{path}: optimizer state missing or corrupt, its moments start afresh"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
            return rec
        import numpy as np

        with np.load(path) as f:
            state = [f[f"arr_{i}"] for i in range(len(f.files))]
        model.optimizer._create_all_weights(model.trainable_variables)  # legacy optimizer: slots
        model.optimizer.set_weights(state)
        rec["optimizer_loaded"] = True
        return rec


class StudyTable:
    """The study's table (one `Store.summary` row per trial), kept current by polling: each poll
    reads the change log's new lines and re-reads only the trials they name, so its file
    operations grow with the trials that changed, not with the study.

    Opening starts from the last table any reader saved (table.json, with the log offset it is
    valid for) and re-reads only the trials changed since. The whole study is re-read when
    there is no such table, when the log cannot tell (see `Store.changes_since`) or names a
    trial that is not there, and now and then (every `rescan` seconds, and at most ~2 % of the
    time): a filesystem without atomic appends (NFS) can lose a line of the log."""

    SNAPSHOT = "table.json"

    def __init__(self, store: Store, rescan: float = 60.0):
        self.store, self.rescan = store, rescan
        self.rows: dict[str, dict] = {}
        snap = read_json(store.root / self.SNAPSHOT) or {}
        if isinstance(snap.get("offset"), int) and snap["offset"] <= store.log_size():
            self.rows, self.offset = snap["rows"], snap["offset"]
            self._loaded, self._reload_s = time.monotonic(), 0.0
            self.poll(save=True)
        else:
            self.reload()

    def reload(self) -> None:
        t = time.monotonic()
        self.offset = self.store.log_size()  # first: a change made while reading is seen next poll
        self.rows = {tid: self.store.summary(tid) for tid in self.store.trial_ids()}
        self._loaded, self._reload_s = time.monotonic(), time.monotonic() - t
        self.save()

    def save(self) -> None:
        """Save the table for the next reader to open from."""
        try:
            write_json(self.store.root / self.SNAPSHOT, {"offset": self.offset, "rows": self.rows})
        except OSError as e:  # a read-only study is still readable
            log.debug("table not saved: %s", e)

    def poll(self, save: bool = False) -> set[str] | None:
        """The ids of the trials whose rows changed (new ones included) since the last poll,
        their rows re-read; None when the whole table was re-read."""
        if time.monotonic() - self._loaded > max(self.rescan, 50 * self._reload_s):
            self.reload()
            return None
        self.offset, changed = self.store.changes_since(self.offset)
        if changed is None:
            self.reload()
            return None
        for t in changed:
            if not (self.store.trial_dir(t) / "config.json").exists():
                self.reload()  # a damaged line that still looks like an id
                return None
            self.rows[t] = self.store.summary(t)
        if save and changed:
            self.save()
        return changed

    def dataframe(self):
        return _frame([self.rows[t] for t in sorted(self.rows)])


class Attempt:
    """One attempt at a trial, the only writer of it while its token is current. Use it as a
    context manager: it renews the heartbeat in a background thread until it ends."""

    def __init__(self, store: Store, trial_id: str, token: str, number: int):
        self.store, self.trial_id, self.token, self.number = store, trial_id, token, number
        self.dir = store.trial_dir(trial_id)
        self._done = threading.Event()
        self._thread = None
        self._last_stop_check = 0.0
        self._stop_seen = False

    def __enter__(self) -> Attempt:
        self._thread = threading.Thread(
            target=self._beat, daemon=True, name=f"heartbeat-{self.trial_id}"
        )
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S + 1)

    def _beat(self):
        while not self._done.wait(HEARTBEAT_S):
            if self.current():
                self.store._heartbeat(self.trial_id)

    def current(self) -> bool:
        st = self.store.status(self.trial_id)
        return st.get("status") == "running" and st.get("token") == self.token

    def _check(self) -> dict:
        """Under the lock: this attempt's status, or StaleAttempt if it is no longer current."""
        st = self.store.status(self.trial_id)
        if st.get("status") != "running" or st.get("token") != self.token:
            raise StaleAttempt(
                f"{self.trial_id}: attempt {self.number} is no longer current "
                f"(the trial is {st.get('status')}, attempt {st.get('attempt')})"
            )
        return st

    def stop_requested(self, every: float = 0.5) -> bool:
        """The persistent stop request, read at most every `every` seconds (one file stat)."""
        now = time.monotonic()
        if not self._stop_seen and now - self._last_stop_check >= every:
            self._last_stop_check = now
            self._stop_seen = self.store.stop_requested(self.trial_id)
        return self._stop_seen

    def update(self, **fields) -> dict:
        """Record fields in the running trial's status (progress, timings)."""
        with self.store._lock(self.trial_id):
            return self.store._write_status(self.trial_id, {**self._check(), **fields})

    def append_metrics(self, row: dict) -> None:
        with self.store._lock(self.trial_id):
            self._check()
            append_line(self.dir / "metrics.jsonl", {**row, "attempt": self.number})
            self.store._changed(self.trial_id)

    def save_checkpoint(
        self, model, epoch: int, optimizer: str | None = None, metrics: dict | None = None
    ) -> dict:
        """Write weights and optimizer state to files of this epoch's own, fsync them, then, if
        this attempt is still current, record them (names, sha256s, the epoch and its metric
        row) in the status, and append the row. The status write is the one commit point: a
        crash before it leaves the last recorded checkpoint whole (its files are not touched),
        and a crash after it loses no row (the next change of state appends it). The files of
        the checkpoint before the last stay a save longer, for a reader that is loading them."""
        import numpy as np

        tag = f"{epoch}-a{self.number}"
        ckpt = self.dir / f"checkpoint-e{tag}.h5"
        opt = self.dir / f"optimizer-e{tag}.npz"
        tmp_w, tmp_o = temp_name(ckpt), temp_name(opt)
        try:
            model.save_weights(str(tmp_w))
            with open(tmp_w, "rb+") as f:
                os.fsync(f.fileno())
            with open(tmp_o, "wb") as f:
                # a model compiled without an optimizer (an evaluation copy) has no state to keep
                np.savez(f, *(model.optimizer.get_weights() if model.optimizer else []))
                f.flush()
                os.fsync(f.fileno())
            rec = {
                "epoch": epoch,
                "file": ckpt.name,
                "sha256": sha256_of(tmp_w),
                "optimizer_file": opt.name,
                "optimizer_sha256": sha256_of(tmp_o),
                "optimizer": optimizer,
                "time": time.time(),
            }
            row = None if metrics is None else {**metrics, "attempt": self.number}
            with self.store._lock(self.trial_id):
                st = self._check()
                commit(tmp_w, ckpt)
                commit(tmp_o, opt)
                self.store._write_status(self.trial_id, {**st, "checkpoint": {**rec, "row": row}})
                if row is not None:
                    append_line(self.dir / "metrics.jsonl", row)
                    self.store._changed(self.trial_id)  # after the row: a reader must see it
                last = st.get("checkpoint") or {}
                keep = {ckpt.name, opt.name, last.get("file"), last.get("optimizer_file")}
                for old in [*self.dir.glob("checkpoint*.h5"), *self.dir.glob("optimizer*.npz")]:
                    if old.name not in keep:
                        old.unlink(missing_ok=True)
            return rec
        finally:
            tmp_w.unlink(missing_ok=True)
            tmp_o.unlink(missing_ok=True)

    def finish(self, status: str, **fields) -> dict:
        """End this attempt with a final state (completed, stopped, diverged, failed), or with
        "queued": its slice of epochs trained and checkpointed, the trial waits for the next."""
        if status not in (*ENDED, "queued"):
            raise ValueError(f"an attempt ends {', '.join(ENDED)} or queued, not {status!r}")
        with self.store._lock(self.trial_id):
            st = self._check()
            if status == "stopped":
                (self.dir / "stop").unlink(missing_ok=True)  # consumed: a restart runs
            if status == "queued":
                fields = {"token": None, **fields}  # no attempt holds a queued trial
            st = self.store._transition(self.trial_id, st, status, **fields)
            append_line(
                self.dir / "attempts.jsonl",
                {
                    "event": "end",
                    "attempt": self.number,
                    "token": self.token,
                    "status": status,
                    "time": time.time(),
                    "reason": fields.get("reason"),
                },
            )
        return st


class DriverLock:
    """One driver per study or PBT run: a lock file naming its holder, host, pid and heartbeat.
    A second driver is refused with the holder's name; a lock whose holder is dead (process
    gone on this host, or heartbeat older than the lease) is taken over."""

    def __init__(self, root, holder: str, lease: float = LEASE_S):
        self.path = Path(root) / "driver.lock"
        self.holder, self.lease = holder, lease
        self.token = secrets.token_hex(8)
        self._done = threading.Event()
        self._thread = None

    def info(self) -> dict | None:
        return read_json(self.path)

    def _alive(self, rec: dict) -> bool:
        alive = _process_alive(rec.get("host"), rec.get("pid"), rec.get("pid_started"))
        if alive is False:
            return False
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        return age < self.lease

    def acquire(self) -> DriverLock:
        with locked(self.path.with_name(".driver.lock.guard")):
            rec = self.info()
            if rec and rec.get("token") != self.token and self._alive(rec):
                raise LockHeld(
                    f"{self.path.parent} is already driven by {rec.get('holder')} "
                    f"(host {rec.get('host')}, pid {rec.get('pid')}, since "
                    f"{time.strftime('%H:%M:%S', time.localtime(rec.get('since', 0)))}); "
                    "stop that one first, or wait: a dead holder's lock expires after "
                    f"{self.lease:.0f} s"
                )
            if rec and rec.get("token") != self.token:
                log.warning(
                    "taking over the lock of %s, whose holder %s (pid %s on %s) is gone",
                    self.path.parent,
                    rec.get("holder"),
                    rec.get("pid"),
                    rec.get("host"),
                )
            write_json(
                self.path,
                {
                    "holder": self.holder,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "pid_started": _this_process_started(),
                    "since": time.time(),
                    "token": self.token,
                },
            )
        self._done.clear()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="driver-lock")
        self._thread.start()
        return self

    def _beat(self):
        while not self._done.wait(HEARTBEAT_S):
            try:
                if (self.info() or {}).get("token") == self.token:
                    os.utime(self.path)
            except FileNotFoundError:
                pass

    def release(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S + 1)
        with locked(self.path.with_name(".driver.lock.guard")):
            if (self.info() or {}).get("token") == self.token:
                self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
