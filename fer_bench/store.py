"""The SQLite results store of a run directory (DESIGN.md section 6).

One file per output directory, in WAL mode, one transaction per state change. Tables:

- ``cells``: id, spec (canonical JSON), status (running | done | failed), error, traceback, timings,
  host, info (JSON: selection rule, dataset fingerprints, noisy-label hash, training history);
- ``metrics``: (cell_id, name, value);
- ``artifacts``: (cell_id, name, path relative to the run directory);
- ``curves``: the learning curve of each finished cell, one row per evaluation point (step, epoch,
  anchor images, training loss, validation accuracy, mean class accuracy and selection score).

The store is the single source of truth: summaries, tables and plots are regenerated from it.
"""
from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    id TEXT PRIMARY KEY, spec TEXT NOT NULL, status TEXT NOT NULL, error TEXT, traceback TEXT,
    started REAL, finished REAL, seconds REAL, host TEXT, info TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    cell_id TEXT NOT NULL REFERENCES cells(id), name TEXT NOT NULL, value REAL,
    PRIMARY KEY (cell_id, name)
);
CREATE TABLE IF NOT EXISTS curves (
    cell_id TEXT NOT NULL REFERENCES cells(id), point INTEGER NOT NULL, step INTEGER NOT NULL, epoch REAL,
    anchor_images INTEGER, train_loss REAL, val_accuracy REAL, val_mean_class_accuracy REAL, val_score REAL,
    PRIMARY KEY (cell_id, point)
);
CREATE TABLE IF NOT EXISTS artifacts (
    cell_id TEXT NOT NULL REFERENCES cells(id), name TEXT NOT NULL, path TEXT NOT NULL,
    PRIMARY KEY (cell_id, name)
);
"""

STORE_NAME = "results.sqlite"


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection; on a read-only folder (where SQLite cannot create the WAL index) the file is
    opened as immutable, which is safe there because nobody can write it either."""
    if not path.is_file():
        raise sqlite3.OperationalError("no such file")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60, isolation_level=None)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        return sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True, isolation_level=None)
def init_label(spec: dict[str, Any]) -> str:
    """A cell's initial weights as tables show them: the method's ``pretrained`` value, "scratch" for random
    init (and for methods with no network)."""
    value = spec.get("params", {}).get("pretrained")
    return "scratch" if value is None else str(value)


CURVE_FIELDS = ("step", "epoch", "anchor_images", "train_loss", "val_accuracy", "val_mean_class_accuracy", "val_score")


def _curve_statements(cell_id: str, curve: Any) -> list[tuple[str, tuple]]:
    """Replace a cell's learning curve with ``curve`` (a list of point dicts)."""
    out: list[tuple[str, tuple]] = [("DELETE FROM curves WHERE cell_id = ?", (cell_id,))]
    for i, point in enumerate(curve):
        out.append((f"INSERT INTO curves (cell_id, point, {', '.join(CURVE_FIELDS)}) VALUES (?, ?{', ?' * len(CURVE_FIELDS)})",
                    (cell_id, i, *(point.get(k) for k in CURVE_FIELDS))))
    return out


class StoreError(ValueError):
    """A results store that cannot be opened: not a SQLite file, damaged, or not writable."""


class Store:
    """Results of the cells of one run directory. ``readonly``: open for reading only (another run's store
    given to ``--reuse``, possibly on a read-only filesystem); nothing is written to it or next to it."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path, self.readonly = Path(path), readonly
        try:
            if readonly:
                self._db = _connect_readonly(self.path)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(SCHEMA)
            self._db.execute("SELECT count(*) FROM cells").fetchone()
        except (sqlite3.DatabaseError, OSError) as exc:
            what = "read" if readonly else "open for writing"
            hint = ("move the file away (it may be damaged: 'sqlite3 FILE .recover' can rescue rows) or choose "
                    "another folder" if "not a database" in str(exc) or "malformed" in str(exc) or "no such table"
                    in str(exc) else "check the folder's permissions or choose another folder")
            raise StoreError(f"cannot {what} the results store {self.path} ({exc}); {hint}.") from None

    def close(self) -> None:
        if not self.readonly:
            try:  # fold the write-ahead log back into the file so the store is one self-contained file
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:  # another process holds it: it will checkpoint on its close
                pass
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _transaction(self, statements: list[tuple[str, tuple]]) -> None:
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                cur.execute(sql, args)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    # -- state changes -------------------------------------------------------------------------------
    def mark_running(self, cell_id: str, spec_json: str) -> None:
        self._transaction([(
            "INSERT INTO cells (id, spec, status, started, host) VALUES (?, ?, 'running', ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET status='running', started=excluded.started, host=excluded.host, "
            "error=NULL, traceback=NULL", (cell_id, spec_json, time.time(), socket.gethostname()))])

    def record_done(self, cell_id: str, spec_json: str, metrics: dict[str, float], artifacts: dict[str, str],
                    seconds: float, info: dict[str, Any], host: str | None = None,
                    curve: list[dict[str, float]] = ()) -> None:
        statements: list[tuple[str, tuple]] = [
            ("INSERT INTO cells (id, spec, status, finished, seconds, host, info) VALUES (?, ?, 'done', ?, ?, ?, ?) "
             "ON CONFLICT(id) DO UPDATE SET status='done', finished=excluded.finished, seconds=excluded.seconds, "
             "host=excluded.host, info=excluded.info, error=NULL, traceback=NULL",
             (cell_id, spec_json, time.time(), seconds, host or socket.gethostname(), json.dumps(info, default=str))),
            ("DELETE FROM metrics WHERE cell_id = ?", (cell_id,)),
            ("DELETE FROM artifacts WHERE cell_id = ?", (cell_id,)),
        ]
        statements += [("INSERT INTO metrics VALUES (?, ?, ?)", (cell_id, k, float(v))) for k, v in metrics.items()]
        statements += [("INSERT INTO artifacts VALUES (?, ?, ?)", (cell_id, k, v)) for k, v in artifacts.items()]
        statements += _curve_statements(cell_id, curve)
        self._transaction(statements)

    def record_failed(self, cell_id: str, spec_json: str, error: str, traceback: str, seconds: float,
                      host: str | None = None) -> None:
        self._transaction([(
            "INSERT INTO cells (id, spec, status, error, traceback, finished, seconds, host) "
            "VALUES (?, ?, 'failed', ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET status='failed', "
            "error=excluded.error, traceback=excluded.traceback, finished=excluded.finished, "
            "seconds=excluded.seconds, host=excluded.host",
            (cell_id, spec_json, error, traceback, time.time(), seconds, host or socket.gethostname()))])

    def import_cell(self, source: "Store", cell_id: str, spec_json: str, origin: str) -> None:
        """Copy a finished cell (its row, metrics and artifact paths) from another run directory's store.

        Cell ids hash the full configuration, so a finished cell with the same id elsewhere is this cell's
        result; ``origin`` (that run directory) is recorded in the cell's info as ``imported_from``.
        """
        cell = source.cell(cell_id)
        if cell is None or cell["status"] != "done":
            raise ValueError(f"cell {cell_id} is not finished in {source.path}; only finished cells can be imported.")
        info = {**cell["info"], "imported_from": origin}
        statements: list[tuple[str, tuple]] = [
            ("INSERT OR REPLACE INTO cells (id, spec, status, started, finished, seconds, host, info) "
             "VALUES (?, ?, 'done', ?, ?, ?, ?, ?)",
             (cell_id, spec_json, cell["started"], cell["finished"], cell["seconds"],
              cell["host"], json.dumps(info, default=str))),
            ("DELETE FROM metrics WHERE cell_id = ?", (cell_id,)),
            ("DELETE FROM artifacts WHERE cell_id = ?", (cell_id,)),
        ]
        statements += [("INSERT INTO metrics VALUES (?, ?, ?)", (cell_id, k, v)) for k, v in source.metrics(cell_id).items()]
        statements += [("INSERT INTO artifacts VALUES (?, ?, ?)", (cell_id, k, v))
                       for k, v in source.artifacts(cell_id).items()]
        statements += _curve_statements(cell_id, source.curve(cell_id))
        self._transaction(statements)

    # -- reading -------------------------------------------------------------------------------------
    def status(self, cell_id: str) -> str | None:
        row = self._db.execute("SELECT status FROM cells WHERE id = ?", (cell_id,)).fetchone()
        return row[0] if row else None

    def cell(self, cell_id: str) -> dict[str, Any] | None:
        cur = self._db.execute("SELECT * FROM cells WHERE id = ?", (cell_id,))
        row = cur.fetchone()
        if row is None:
            return None
        out = dict(zip([d[0] for d in cur.description], row))
        out["spec"] = json.loads(out["spec"])
        out["info"] = json.loads(out["info"]) if out["info"] else {}
        return out

    def cells(self, ids: list[str] | None = None) -> Iterator[dict[str, Any]]:
        for (cell_id,) in self._db.execute("SELECT id FROM cells ORDER BY id").fetchall():
            if ids is None or cell_id in ids:
                yield self.cell(cell_id)  # type: ignore[misc]

    def metrics(self, cell_id: str) -> dict[str, float]:
        return dict(self._db.execute("SELECT name, value FROM metrics WHERE cell_id = ? ORDER BY name", (cell_id,)))

    def artifacts(self, cell_id: str) -> dict[str, str]:
        return dict(self._db.execute("SELECT name, path FROM artifacts WHERE cell_id = ? ORDER BY name", (cell_id,)))

    def curve(self, cell_id: str) -> list[dict[str, float]]:
        """The learning-curve points of a cell, in order (empty for cells recorded before curves existed)."""
        cur = self._db.execute(f"SELECT {', '.join(CURVE_FIELDS)} FROM curves WHERE cell_id = ? ORDER BY point",
                               (cell_id,))
        return [{k: v for k, v in zip(CURVE_FIELDS, row) if v is not None} for row in cur.fetchall()]

    def curves_frame(self, ids: list[str] | None = None) -> pd.DataFrame:
        """Long table of the finished cells' learning curves (all, or ``ids``) with method, dataset and seed."""
        rows = []
        for cell in self.cells(ids):
            if cell["status"] != "done":
                continue
            spec = cell["spec"]
            for point in self.curve(cell["id"]):
                rows.append({"cell_id": cell["id"], "method": spec["method"], "dataset": spec["dataset_label"],
                             "seed": spec["seed"], "label_noise": spec["label_noise"],
                             "overrides": spec["overrides_label"], "init": init_label(spec), **point})
        return pd.DataFrame(rows, columns=["cell_id", "method", "dataset", "seed", "label_noise", "overrides", "init",
                                           *CURVE_FIELDS])

    def metrics_frame(self, ids: list[str] | None = None) -> pd.DataFrame:
        """Long table: one row per (finished cell, metric) with the cell's grid coordinates."""
        rows = []
        for cell in self.cells(ids):
            if cell["status"] != "done":
                continue
            spec = cell["spec"]
            coords = {"cell_id": cell["id"], "method": spec["method"], "dataset": spec["dataset_label"],
                      "seed": spec["seed"], "label_noise": spec["label_noise"], "profile": spec["profile"],
                      "overrides": spec["overrides_label"], "init": init_label(spec)}
            for name, value in self.metrics(cell["id"]).items():
                rows.append({**coords, "metric": name, "value": value})
        columns = ["cell_id", "method", "dataset", "seed", "label_noise", "profile", "overrides", "init", "metric", "value"]
        return pd.DataFrame(rows, columns=columns)

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
