"""Trials on disk: one directory per trial (config, per-epoch metrics, status, checkpoint).

Plain files, no database: many engines write different trials at once, and a parallel
filesystem (Lustre) handles whole-file renames well but SQLite's locking badly. Every file but
metrics.jsonl is replaced atomically (write a temp file, rename); metrics.jsonl is appended by
the one process that runs the trial, a line per epoch, so a crash loses at most the line being
written. Everything survives the kernel, the controller and the engines.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

STATUSES = ("queued", "running", "stopped", "completed", "failed", "diverged")
FINAL = ("completed", "failed", "diverged")


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, default=float))
    os.replace(tmp, path)


def _read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


class Store:
    """A study: `root/trials/<trial_id>/{config.json,status.json,metrics.jsonl,checkpoint.h5}`."""

    def __init__(self, root):
        self.root = Path(root)
        (self.root / "trials").mkdir(parents=True, exist_ok=True)

    def trial_dir(self, trial_id: str) -> Path:
        return self.root / "trials" / trial_id

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
            n = len(self.trial_ids()) + 1
            while True:
                trial_id = f"trial-{n:04d}"
                try:
                    self.trial_dir(trial_id).mkdir()  # atomic: two creators never share an id
                    break
                except FileExistsError:
                    n += 1
        d = self.trial_dir(trial_id)
        _write_json(d / "config.json", config)
        _write_json(d / "status.json", {"status": "queued", "updated": time.time(), "attempt": 0})
        return trial_id

    def update_config(self, trial_id: str, changes: dict) -> dict:
        """Change some hyper-parameters of a trial (before a restart); the old values are kept
        in the config's "history" so the lineage stays visible."""
        config = self.config(trial_id)
        old = {k: config.get(k) for k in changes}
        config = {**config, **changes,
                  "history": config.get("history", []) + [{"time": time.time(), "was": old}]}
        _write_json(self.trial_dir(trial_id) / "config.json", config)
        return config

    def trial_ids(self) -> list[str]:
        return sorted(p.name for p in (self.root / "trials").iterdir()
                      if p.is_dir() and (p / "config.json").exists())

    # ------------------------------------------------------------------ reading
    def config(self, trial_id: str) -> dict:
        return _read_json(self.trial_dir(trial_id) / "config.json")

    def status(self, trial_id: str) -> dict:
        return _read_json(self.trial_dir(trial_id) / "status.json", {"status": "queued"})

    def metrics(self, trial_id: str) -> list[dict]:
        """Per-epoch metrics, one row per epoch: a resumed trial's re-run epochs replace the old."""
        path = self.trial_dir(trial_id) / "metrics.jsonl"
        by_epoch = {}
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the line a crash cut short
                continue
            by_epoch[row["epoch"]] = row
        return [by_epoch[e] for e in sorted(by_epoch)]

    def checkpoint(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / "checkpoint.h5"

    def summary(self, trial_id: str) -> dict:
        """One row for the trials table: status, where it runs, progress, best metrics, config."""
        st, ms = self.status(trial_id), self.metrics(trial_id)
        row = {"trial": trial_id, **{k: st.get(k) for k in ("status", "host", "engine", "attempt")},
               "epoch": ms[-1]["epoch"] if ms else 0}
        if ms:
            row["loss"] = ms[-1].get("loss")
            row["val_loss"] = min(m.get("val_loss", float("inf")) for m in ms)
            row["val_accuracy"] = max(m.get("val_accuracy", 0.0) for m in ms)
        row["seconds"] = st.get("seconds")
        row.update(self.config(trial_id) or {})
        return row

    def signature(self) -> tuple:
        """Cheap to compute, and it changes whenever any trial's status or metrics change:
        a poller re-reads the study only then."""
        sig = []
        for d in sorted((self.root / "trials").iterdir()):
            for name in ("config.json", "status.json", "metrics.jsonl"):
                try:
                    st = (d / name).stat()
                    sig.append((d.name, name, st.st_mtime_ns, st.st_size))
                except FileNotFoundError:
                    pass
        return tuple(sig)

    def dataframe(self):
        """All trials as a pandas DataFrame, one row each (see `summary`)."""
        import pandas as pd

        rows = [self.summary(t) for t in self.trial_ids()]
        return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()

    # ------------------------------------------------------------------ writing (the trial's runner)
    def set_status(self, trial_id: str, status: str, **fields) -> dict:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
        st = {**self.status(trial_id), **fields, "status": status, "updated": time.time()}
        _write_json(self.trial_dir(trial_id) / "status.json", st)
        return st

    def start_attempt(self, trial_id: str, engine=None, **fields) -> dict:
        """Mark the trial running here (host, pid, engine), counting attempts across retries."""
        st = self.status(trial_id)
        return self.set_status(trial_id, "running", host=socket.gethostname(), pid=os.getpid(),
                               engine=engine, attempt=st.get("attempt", 0) + 1,
                               started=st.get("started") or time.time(), **fields)

    def append_metrics(self, trial_id: str, row: dict) -> None:
        with open(self.trial_dir(trial_id) / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------------ steering
    def request_stop(self, trial_id: str) -> None:
        """Ask the trial to stop: its runner checks this flag after every batch."""
        (self.trial_dir(trial_id) / "stop").touch()

    def stop_requested(self, trial_id: str) -> bool:
        return (self.trial_dir(trial_id) / "stop").exists()

    def clear_stop(self, trial_id: str) -> None:
        (self.trial_dir(trial_id) / "stop").unlink(missing_ok=True)
