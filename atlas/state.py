"""The state store: SQLite in .atlas/state.db (WAL) holding runs, step runs, metrics,
artifacts and log lines. One writer (the runner) with many readers (status, plan).
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field, fields
from functools import cached_property
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY, started REAL NOT NULL, ended REAL, status TEXT NOT NULL,
  targets TEXT NOT NULL, argv TEXT, host TEXT, pid INTEGER, atlas_version TEXT);
CREATE TABLE IF NOT EXISTS step_runs (
  id INTEGER PRIMARY KEY, run_id INTEGER REFERENCES runs(id), task TEXT NOT NULL,
  handler TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, started REAL, ended REAL,
  duration REAL, attempts INTEGER DEFAULT 0, fingerprint TEXT, components TEXT,
  params TEXT, message TEXT, hint TEXT, findings TEXT, devices TEXT, note TEXT);
CREATE INDEX IF NOT EXISTS step_runs_task ON step_runs(task, id);
CREATE INDEX IF NOT EXISTS step_runs_success ON step_runs(task, id) WHERE status = 'succeeded';
CREATE INDEX IF NOT EXISTS step_runs_running ON step_runs(id) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS step_runs_result ON step_runs(id) WHERE status != 'up-to-date';
CREATE INDEX IF NOT EXISTS step_runs_run ON step_runs(run_id);
CREATE TABLE IF NOT EXISTS metrics (
  step_run_id INTEGER REFERENCES step_runs(id), name TEXT NOT NULL, value REAL,
  unit TEXT, step INTEGER, ts REAL);
CREATE INDEX IF NOT EXISTS metrics_step ON metrics(step_run_id);
CREATE TABLE IF NOT EXISTS artifacts (
  step_run_id INTEGER REFERENCES step_runs(id), name TEXT NOT NULL, path TEXT NOT NULL,
  sha256 TEXT NOT NULL, size INTEGER);
CREATE INDEX IF NOT EXISTS artifacts_step ON artifacts(step_run_id);
CREATE TABLE IF NOT EXISTS logs (
  step_run_id INTEGER REFERENCES step_runs(id), ts REAL, line TEXT);
CREATE INDEX IF NOT EXISTS logs_step ON logs(step_run_id);
CREATE TABLE IF NOT EXISTS figures (
  step_run_id INTEGER REFERENCES step_runs(id), name TEXT, spec TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS figures_step ON figures(step_run_id);
CREATE TABLE IF NOT EXISTS run_environment (
  run_id INTEGER PRIMARY KEY REFERENCES runs(id), data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS step_processes (
  step_run_id INTEGER PRIMARY KEY REFERENCES step_runs(id), pid INTEGER NOT NULL, host TEXT NOT NULL,
  started INTEGER);
CREATE TABLE IF NOT EXISTS step_jobs (
  step_run_id INTEGER PRIMARY KEY REFERENCES step_runs(id), executor TEXT NOT NULL, job_id TEXT NOT NULL,
  job_dir TEXT, node TEXT, state TEXT, reason TEXT, exit_code TEXT, submitted REAL, started REAL, ended REAL);
"""
# Tables added after schema 1 are created with IF NOT EXISTS, so older stores gain them
# on open; a store written before them has no figures and no run environment.
# statuses that end a step run; "running" rows left by a killed runner are repaired
FINAL = ("succeeded", "failed", "skipped", "up-to-date", "waiting", "interrupted")


@dataclass
class StepRun:
    id: int
    run_id: int | None
    task: str
    handler: str
    status: str
    reason: str | None
    started: float | None
    ended: float | None
    duration: float | None
    attempts: int
    fingerprint: str | None
    message: str | None
    hint: str | None
    note: str | None
    # components, params, findings and devices as stored (JSON text), decoded on first use:
    # planning 2,000 up-to-date steps compares fingerprints and never needs them
    stored_json: dict = field(default_factory=dict, repr=False)

    @classmethod
    def reader(cls, columns: list[str]) -> Callable[[Any], "StepRun"]:
        """Step runs from rows with these columns, by position: 2,000 rows of a planning
        snapshot cost a third of the time of building each through a dict."""
        pick = itemgetter(*(columns.index(name) for name in _FIELDS))
        stored = [(key, columns.index(key)) for key in _JSON_COLUMNS]
        return lambda row: cls(*pick(row), stored_json={key: row[i] for key, i in stored})

    def _decoded(self, key: str, empty: dict | list) -> Any:
        text = self.stored_json.get(key)
        return json.loads(text) if text else empty

    @cached_property
    def components(self) -> dict:
        return self._decoded("components", {})

    @cached_property
    def params(self) -> dict:
        return self._decoded("params", {})

    @cached_property
    def findings(self) -> list:
        return self._decoded("findings", [])

    @cached_property
    def devices(self) -> list:
        return self._decoded("devices", [])


_JSON_COLUMNS = ("components", "params", "findings", "devices")
_FIELDS = tuple(f.name for f in fields(StepRun) if f.name != "stored_json")    # in order
_BRIEF = ("s.id, s.run_id, s.task, s.handler, s.status, s.started, s.ended, s.duration, s.attempts, s.fingerprint, "
          "s.components, NULL AS reason, NULL AS params, NULL AS message, NULL AS hint, NULL AS findings, "
          "NULL AS devices, NULL AS note")


def hostname() -> str:
    # what gethostname() returns on POSIX, without importing socket (2 ms of every plan)
    try:
        return os.uname().nodename
    except AttributeError:              # Windows
        import socket

        return socket.gethostname()


class LazyComponents(Mapping):
    """A step run's components, decoded the first time something reads them."""

    def __init__(self, step_run: StepRun) -> None:
        self._run = step_run

    def __getitem__(self, key: str) -> Any:
        return self._run.components[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._run.components)

    def __len__(self) -> int:
        return len(self._run.components)


_SORTED = json.JSONEncoder(sort_keys=True)       # built once: json.dumps builds one per call


def _sorted_json(value: dict | None) -> str:
    """A components or params column: "{}" for none (every up-to-date check of a no-op run
    stores that), else the dict as JSON with sorted keys."""
    return _SORTED.encode(value) if value else "{}"


def _open_readonly(path: Path) -> sqlite3.Connection:
    """The store without writing a byte. A WAL database opened read-only still needs its
    -shm file; where the folder forbids creating it, `immutable` reads the file as it is."""
    if not path.exists():
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        for statement in _statements():
            db.execute(statement)
        return db
    uri = path.resolve().as_uri()
    for flags in ("mode=ro", "mode=ro&immutable=1"):
        db = sqlite3.connect(f"{uri}?{flags}", uri=True, timeout=30, check_same_thread=False,
                             isolation_level=None)
        try:
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            break
        except sqlite3.OperationalError:
            db.close()
    else:
        raise sqlite3.OperationalError(f"unable to open {path} read-only")
    # tables newer than this store: empty stand-ins in the connection's temp schema
    for statement in _statements():
        words = statement.split()
        if words[:2] == ["CREATE", "TABLE"] and words[5] not in names:
            db.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
    return db


def _statements() -> list[str]:
    return [s for s in SCHEMA.split(";") if s.strip()]


class StateStore:
    """`readonly=True` (status, show, history, compare, report, plan) writes nothing, not
    even the schema: it works on a project whose .atlas/ the user may not write, and on
    one that never ran (an empty store in memory)."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock = threading.RLock()
        self._decided: list[tuple] = []       # record_step rows not yet written
        if readonly:
            self.db = _open_readonly(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            for statement in _statements():
                self.db.execute(statement)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout=30000")

    def close(self) -> None:
        try:
            if self._decided:
                self.flush()
        finally:
            self.db.close()

    def flush(self) -> None:
        """Write the decisions record_step holds back."""
        with self._tx():
            pass                               # entering the transaction writes them

    # -- transactions ------------------------------------------------------
    class _Tx:
        def __init__(self, store: "StateStore") -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._lock.acquire()
            try:
                self.store.db.execute("BEGIN IMMEDIATE")
                self.store._write_decided()
            except BaseException:
                self.store._lock.release()
                raise
            return self.store.db

        def __exit__(self, exc_type, *rest) -> None:
            try:
                self.store.db.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.store._lock.release()

    def _tx(self) -> "StateStore._Tx":
        return StateStore._Tx(self)

    # -- runs ----------------------------------------------------------------
    def start_run(self, targets: list[str], argv: list[str], version: str,
                  environment: dict | None = None) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs (started, status, targets, argv, host, pid, atlas_version) "
                "VALUES (?, 'running', ?, ?, ?, ?, ?)",
                (time.time(), json.dumps(targets), json.dumps(argv), hostname(), os.getpid(), version))
            run_id = int(cur.lastrowid)
            if environment is not None:
                db.execute("INSERT INTO run_environment VALUES (?, ?)",
                           (run_id, json.dumps(environment, sort_keys=True, default=str)))
            return run_id

    def run_environment(self, run_id: int) -> dict | None:
        row = self.db.execute("SELECT data FROM run_environment WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(row["data"]) if row else None

    def end_run(self, run_id: int, status: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET ended = ?, status = ? WHERE id = ?", (time.time(), status, run_id))

    def record_process(self, step_run_id: int, pid: int, started: int | None = None) -> None:
        """The step's process (the leader of its group) and when it started (see
        atlas.process.start_ticks), so a later run can find what this one left behind."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO step_processes VALUES (?, ?, ?, ?)",
                       (step_run_id, pid, hostname(), started))

    def abandoned_processes(self) -> list[tuple[int, int, int | None]]:
        """(step run, process group, leader's start) of steps a dead runner left 'running'
        on this host."""
        rows = self.db.execute("SELECT p.step_run_id, p.pid, p.started FROM step_processes p JOIN step_runs s "
                               "ON s.id = p.step_run_id WHERE s.status = 'running' AND p.host = ?",
                               (hostname(),)).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def repair_abandoned(self) -> int:
        """Runs and step runs left 'running' by a runner that was killed (SIGKILL, power)."""
        with self._tx() as db:
            n = db.execute("UPDATE step_runs SET status = 'interrupted', reason = 'runner was killed', "
                           "message = CASE WHEN id IN (SELECT step_run_id FROM step_jobs) "
                           "THEN 'the runner died while this step''s batch job ran; the next run takes the job "
                           "over when it is still wanted' "
                           "ELSE 'the runner died while this step ran; its partial outputs were removed' END, "
                           "ended = COALESCE(ended, started), duration = COALESCE(duration, 0) "
                           "WHERE status = 'running'").rowcount
            db.execute("UPDATE runs SET status = 'interrupted', ended = COALESCE(ended, started) "
                       "WHERE status = 'running'")
            return n

    def record_job(self, step_run_id: int, job: dict, job_dir: str | None = None, executor: str = "slurm") -> None:
        """A step run's batch job: its ID at once (so a restarted runner can find it), then
        node, state, Slurm's reason and times as they become known."""
        with self._tx() as db:
            db.execute("INSERT INTO step_jobs (step_run_id, executor, job_id, job_dir) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT(step_run_id) DO NOTHING", (step_run_id, executor, job["job_id"], job_dir))
            db.execute("UPDATE step_jobs SET node = ?, state = ?, reason = ?, exit_code = ?, submitted = ?, "
                       "started = ?, ended = ? WHERE step_run_id = ?",
                       (job.get("node"), job.get("state"), job.get("reason"), job.get("exit_code"),
                        job.get("submitted"), job.get("started"), job.get("ended"), step_run_id))

    def jobs_of(self, step_run_ids: list[int]) -> dict[int, dict]:
        """Batch jobs of many step runs, with queue wait and run time."""
        found: dict[int, dict] = {}
        for row in self._rows_for("SELECT * FROM step_jobs WHERE step_run_id IN ({})", step_run_ids):
            job = dict(row)
            sub, beg, end = job["submitted"], job["started"], job["ended"]
            job["queue_wait_s"] = max(0.0, beg - sub) if sub is not None and beg is not None else None
            job["run_s"] = max(0.0, end - beg) if beg is not None and end is not None else None
            found[job.pop("step_run_id")] = job
        return found

    def job_of(self, step_run_id: int) -> dict | None:
        return self.jobs_of([step_run_id]).get(step_run_id)

    def job_ids_by_dir(self) -> dict[str, str]:
        rows = self.db.execute("SELECT job_dir, job_id FROM step_jobs WHERE job_dir IS NOT NULL").fetchall()
        return {r[0]: r[1] for r in rows}

    def adoptable_job(self, task: str, fingerprint: str) -> dict | None:
        """The job of the task's latest step run, when a killed runner left it and it was
        computing exactly what is wanted now (same fingerprint)."""
        row = self.db.execute("SELECT j.*, s.fingerprint FROM step_runs s JOIN step_jobs j ON j.step_run_id = s.id "
                              "WHERE s.id = (SELECT MAX(id) FROM step_runs WHERE task = ?) "
                              "AND s.status = 'interrupted' AND s.reason = 'runner was killed'", (task,)).fetchone()
        if row is None or row["fingerprint"] != fingerprint:
            return None
        return dict(row)

    def runs(self, limit: int = 20, up_to: int | None = None) -> list[dict]:
        """Newest first, each with how many of its step runs ended in each status."""
        rows = self.db.execute("SELECT * FROM runs WHERE id <= ? ORDER BY id DESC LIMIT ?",
                               (up_to if up_to is not None else 2**62, limit)).fetchall()
        runs = [dict(r) | {"targets": json.loads(r["targets"]), "counts": {}} for r in rows]
        by_id = {r["id"]: r for r in runs}
        if by_id:
            marks = ",".join("?" * len(by_id))
            for row in self.db.execute(f"SELECT run_id, status, COUNT(*) AS n FROM step_runs WHERE run_id IN "
                                       f"({marks}) GROUP BY run_id, status", list(by_id)):
                by_id[row["run_id"]]["counts"][row["status"]] = row["n"]
        return runs

    def last_step_run_of(self, run_id: int) -> int | None:
        """The newest step-run id a run wrote (what "as of that run" reads up to)."""
        row = self.db.execute("SELECT MAX(id) AS id FROM step_runs WHERE run_id <= ?", (run_id,)).fetchone()
        return row["id"]

    def run(self, run_id: int) -> dict | None:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return dict(row) | {"targets": json.loads(row["targets"])} if row else None

    # -- step runs -------------------------------------------------------------
    def start_step(self, run_id: int | None, task: str, handler: str, status: str = "running", *,
                   reason: str = "", fingerprint: str | None = None, components: dict | None = None,
                   params: dict | None = None, devices: list | None = None) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO step_runs (run_id, task, handler, status, reason, started, fingerprint, "
                "components, params, devices) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, task, handler, status, reason, time.time(), fingerprint,
                 _sorted_json(components), _sorted_json(params),
                 json.dumps(devices or [])))
            return int(cur.lastrowid)

    def record_step(self, run_id: int | None, task: str, handler: str, status: str, *, reason: str = "",
                    message: str = "", fingerprint: str | None = None, components: dict | None = None,
                    params: dict | None = None, components_json: str | None = None) -> None:
        """A step run decided without running (up to date, skipped, waiting). The row is
        written with the next transaction, in the order decided (or once 1,000 wait), so
        2,000 up-to-date steps cost a few commits, not 2,000. A runner killed before
        then loses only decisions, which the next run makes again."""
        assert status in FINAL, status
        now = time.time()
        row = (run_id, task, handler, status, reason, now, now, fingerprint,
               components_json or _sorted_json(components), _sorted_json(params), message)
        with self._lock:
            self._decided.append(row)
            full = len(self._decided) >= 1000
        if full:
            self.flush()

    def _write_decided(self) -> None:
        # under the lock, inside a transaction
        if self._decided:
            self.db.executemany(
                "INSERT INTO step_runs (run_id, task, handler, status, reason, started, ended, duration, "
                "fingerprint, components, params, devices, message, hint, findings, attempts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, '[]', ?, '', '[]', 0)", self._decided)
            self._decided.clear()

    def finish_step(self, step_run_id: int, status: str, *, message: str = "", hint: str = "",
                    findings: list | None = None, attempts: int = 0, note: str | None = None,
                    reason: str | None = None) -> None:
        assert status in FINAL, status
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE step_runs SET status = ?, ended = ?, duration = ? - started, message = ?, hint = ?, "
                "findings = ?, attempts = ?, note = COALESCE(?, note), reason = COALESCE(?, reason) WHERE id = ?",
                (status, now, now, message, hint, json.dumps(findings or []), attempts, note, reason,
                 step_run_id))

    def record_metric(self, step_run_id: int, name: str, value: float | None, unit: str = "",
                      step: int | None = None) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                       (step_run_id, name, value, unit, step, time.time()))

    def record_logs(self, step_run_id: int, lines: list[tuple[float, str]]) -> None:
        if not lines:
            return
        with self._tx() as db:
            db.executemany("INSERT INTO logs VALUES (?, ?, ?)", [(step_run_id, ts, line) for ts, line in lines])

    def record_artifacts(self, step_run_id: int, artifacts: list[tuple[str, str, str, int]]) -> None:
        with self._tx() as db:
            db.executemany("INSERT INTO artifacts VALUES (?, ?, ?, ?, ?)",
                           [(step_run_id, *a) for a in artifacts])

    # -- queries -------------------------------------------------------------
    def _steps(self, sql: str, args: tuple) -> list[StepRun]:
        cursor = self.db.execute(sql, args)
        rows = cursor.fetchall()
        if not rows:
            return []
        read = StepRun.reader([d[0] for d in cursor.description])
        return [read(r) for r in rows]

    def step_run(self, step_run_id: int) -> StepRun | None:
        rows = self._steps("SELECT * FROM step_runs WHERE id = ?", (step_run_id,))
        return rows[0] if rows else None

    def last_step(self, task: str, as_of: int | None = None) -> StepRun | None:
        rows = self._steps("SELECT * FROM step_runs WHERE task = ? AND id <= ? ORDER BY id DESC LIMIT 1",
                           (task, as_of if as_of is not None else 2**62))
        return rows[0] if rows else None

    def last_success(self, task: str) -> StepRun | None:
        """The step run whose outputs are current: the latest that succeeded."""
        rows = self._steps("SELECT * FROM step_runs WHERE task = ? AND status = 'succeeded' "
                           "ORDER BY id DESC LIMIT 1", (task,))
        return rows[0] if rows else None

    def result_of(self, step_run: StepRun) -> StepRun:
        """The step run whose outputs and metrics a record stands for: an up-to-date record
        repeats the success with its fingerprint; any other record stands for itself."""
        if step_run.status != "up-to-date":
            return step_run
        rows = self._steps("SELECT * FROM step_runs WHERE task = ? AND status = 'succeeded' AND fingerprint = ? "
                           "AND id < ? ORDER BY id DESC LIMIT 1", (step_run.task, step_run.fingerprint, step_run.id))
        return rows[0] if rows else step_run

    def last_successes(self, brief: bool = False) -> dict[str, StepRun]:
        """The latest success of every task. `brief` (for planning) reads ids, status,
        times, fingerprint and components only; params, message, findings and the other
        texts are left empty."""
        rows = self._steps(f"SELECT {_BRIEF if brief else 's.*'} FROM step_runs s JOIN (SELECT task, MAX(id) AS id "
                           "FROM step_runs WHERE status = 'succeeded' GROUP BY task) m ON s.id = m.id", ())
        return {r.task: r for r in rows}

    def latest_result_id(self) -> int:
        """The newest step run that is not an up-to-date check (0: none)."""
        row = self.db.execute("SELECT MAX(id) FROM step_runs WHERE status != 'up-to-date'").fetchone()
        return int(row[0] or 0)

    def last_statuses(self) -> dict[str, str]:
        """The status of every task's latest step run. A skip scan of the (task, id) index:
        two seeks per task, however many no-op runs the store has recorded (a GROUP BY
        reads them all)."""
        rows = self.db.execute(
            "WITH RECURSIVE t(task) AS (SELECT MIN(task) FROM step_runs UNION ALL "
            "SELECT (SELECT MIN(task) FROM step_runs WHERE task > t.task) FROM t WHERE t.task IS NOT NULL) "
            "SELECT t.task, (SELECT s.status FROM step_runs s WHERE s.task = t.task ORDER BY s.id DESC LIMIT 1) "
            "FROM t WHERE t.task IS NOT NULL").fetchall()
        return {task: status for task, status in rows}

    def last_steps(self, as_of: int | None = None) -> dict[str, StepRun]:
        rows = self._steps("SELECT s.* FROM step_runs s JOIN (SELECT task, MAX(id) AS id FROM step_runs "
                           "WHERE id <= ? GROUP BY task) m ON s.id = m.id", (as_of if as_of is not None else 2**62,))
        return {r.task: r for r in rows}

    def history(self, task: str | None = None, limit: int = 50) -> list[StepRun]:
        if task:
            return self._steps("SELECT * FROM step_runs WHERE task = ? ORDER BY id DESC LIMIT ?", (task, limit))
        return self._steps("SELECT * FROM step_runs ORDER BY id DESC LIMIT ?", (limit,))

    def steps_of_run(self, run_id: int) -> list[StepRun]:
        return self._steps("SELECT * FROM step_runs WHERE run_id = ? ORDER BY id", (run_id,))

    def metrics(self, step_run_id: int) -> list[dict]:
        rows = self.db.execute("SELECT name, value, unit, step FROM metrics WHERE step_run_id = ? "
                               "ORDER BY rowid", (step_run_id,)).fetchall()
        return [dict(r) for r in rows]

    def artifacts(self, step_run_id: int) -> list[dict]:
        rows = self.db.execute("SELECT name, path, sha256, size FROM artifacts WHERE step_run_id = ? "
                               "ORDER BY name", (step_run_id,)).fetchall()
        return [dict(r) for r in rows]

    def artifacts_of(self, step_run_ids: list[int]) -> dict[int, list[dict]]:
        """Artifacts of many step runs in one query (planning thousands of steps)."""
        found: dict[int, list[dict]] = {i: [] for i in step_run_ids}
        for row in self._rows_for("SELECT step_run_id, name, path, sha256, size FROM artifacts "
                                  "WHERE step_run_id IN ({}) ORDER BY name", step_run_ids):
            step_run_id, name, path, sha256, size = row
            found[step_run_id].append({"name": name, "path": path, "sha256": sha256, "size": size})
        return found

    def _rows_for(self, sql: str, ids: list[int]) -> Iterator[sqlite3.Row]:
        """Rows of `sql` (its `{}` the list of ids) in chunks below SQLite's bound-parameter limit."""
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            yield from self.db.execute(sql.format(",".join("?" * len(chunk))), chunk)

    def record_figure(self, step_run_id: int, spec: dict) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO figures VALUES (?, ?, ?)",
                       (step_run_id, str((spec or {}).get("name", "")), json.dumps(spec, sort_keys=True)))

    def figures(self, step_run_id: int) -> list[dict]:
        rows = self.db.execute("SELECT spec FROM figures WHERE step_run_id = ? ORDER BY rowid",
                               (step_run_id,)).fetchall()
        return [json.loads(r["spec"]) for r in rows]

    def log_tail(self, step_run_id: int, lines: int = 20) -> list[str]:
        rows = self.db.execute("SELECT line FROM (SELECT rowid, line FROM logs WHERE step_run_id = ? "
                               "ORDER BY rowid DESC LIMIT ?) ORDER BY rowid", (step_run_id, lines)).fetchall()
        return [r["line"] for r in rows]

    def iter_rows(self, sql: str, args: tuple = ()) -> Iterator[dict[str, Any]]:
        for row in self.db.execute(sql, args):
            yield dict(row)
