"""The SQLite state store: runs, step runs, metrics, artifacts, logs; WAL; readers beside a writer."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from atlas.state import StateStore


@pytest.fixture
def store(tmp_path):
    s = StateStore(tmp_path / ".atlas" / "state.db")
    yield s
    s.close()


def test_creates_the_folder_and_uses_wal(tmp_path):
    path = tmp_path / "deep" / ".atlas" / "state.db"
    s = StateStore(path)
    try:
        assert path.exists()
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    finally:
        s.close()
    # a plain connection sees WAL too: the mode is stored in the file
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_reopening_keeps_the_data(tmp_path):
    path = tmp_path / "state.db"
    s = StateStore(path)
    run_id = s.start_run(["A"], ["atlas", "run", "A"], "0.1")
    s.close()
    s = StateStore(path)
    try:
        assert s.run(run_id)["targets"] == ["A"]
    finally:
        s.close()


def test_start_and_end_run(store):
    run_id = store.start_run(["AG-DS-ONNXCONV-001"], ["atlas", "run", "AG-DS-ONNXCONV-001"], "0.1.0")
    run = store.run(run_id)
    assert run["status"] == "running" and run["ended"] is None
    assert run["targets"] == ["AG-DS-ONNXCONV-001"]
    assert run["atlas_version"] == "0.1.0" and isinstance(run["pid"], int)
    store.end_run(run_id, "succeeded")
    run = store.run(run_id)
    assert run["status"] == "succeeded" and run["ended"] >= run["started"]
    assert store.run(run_id + 100) is None


def test_runs_newest_first(store):
    ids = [store.start_run([f"T{i}"], [], "0") for i in range(3)]
    assert [r["id"] for r in store.runs()] == ids[::-1]
    assert [r["id"] for r in store.runs(limit=2)] == ids[:0:-1]


def test_start_and_finish_step_run(store):
    run_id = store.start_run(["A"], [], "0")
    comps = {"handler": "h@1:x", "params": {"lr": 0.1}, "inputs": {}, "env": None}
    sr = store.start_step(run_id, "A", "train", reason="never run", fingerprint="f" * 64,
                          components=comps, params={"lr": 0.1}, devices=[0, 1])
    step = store.step_run(sr)
    assert (step.task, step.handler, step.status, step.reason) == ("A", "train", "running", "never run")
    assert step.components == comps and step.params == {"lr": 0.1} and step.devices == [0, 1]
    assert step.ended is None and step.findings == []

    store.finish_step(sr, "failed", message="CUDA out of memory", hint="lower batch_size",
                      findings=["oom at epoch 2"], attempts=2, note="n")
    step = store.step_run(sr)
    assert (step.status, step.message, step.hint) == ("failed", "CUDA out of memory", "lower batch_size")
    assert step.findings == ["oom at epoch 2"] and step.attempts == 2 and step.note == "n"
    assert step.reason == "never run"  # kept when not given
    assert step.duration is not None and step.duration >= 0
    assert store.steps_of_run(run_id)[0].id == sr


def test_finish_step_rejects_a_non_final_status(store):
    sr = store.start_step(None, "A", "h")
    with pytest.raises(AssertionError):
        store.finish_step(sr, "running")


def test_finish_step_can_replace_the_reason(store):
    sr = store.start_step(None, "A", "h", reason="never run")
    store.finish_step(sr, "skipped", reason="no CUDA device")
    assert store.step_run(sr).reason == "no CUDA device"


def _step(store, task, status, run_id=None):
    sr = store.start_step(run_id, task, "h", components={"status": status})
    store.finish_step(sr, status)
    return sr


def test_last_success_last_step_and_last_steps(store):
    a1 = _step(store, "A", "succeeded")
    b1 = _step(store, "B", "succeeded")
    a2 = _step(store, "A", "succeeded")
    a3 = _step(store, "A", "failed")
    b2 = _step(store, "B", "skipped")

    assert store.last_success("A").id == a2
    assert store.last_step("A").id == a3
    assert store.last_success("C") is None and store.last_step("C") is None
    assert {t: s.id for t, s in store.last_steps().items()} == {"A": a3, "B": b2}
    assert {t: s.id for t, s in store.last_successes().items()} == {"A": a2, "B": b1}
    assert a1 < a2


def test_history_newest_first_filtered_and_limited(store):
    ids = [_step(store, task, "succeeded") for task in ("A", "B", "A", "C", "A")]
    assert [s.id for s in store.history()] == ids[::-1]
    assert [s.id for s in store.history("A")] == [ids[4], ids[2], ids[0]]
    assert [s.id for s in store.history("A", limit=2)] == [ids[4], ids[2]]
    assert [s.id for s in store.history(limit=1)] == [ids[4]]


def test_metrics_round_trip_in_order(store):
    sr = store.start_step(None, "A", "h")
    store.record_metric(sr, "loss", 0.9, "", step=1)
    store.record_metric(sr, "loss", 0.5, "", step=2)
    store.record_metric(sr, "throughput", 1234.5, "img/s")
    store.record_metric(sr, "nan_metric", None)
    other = store.start_step(None, "B", "h")
    store.record_metric(other, "loss", 7.0)
    assert store.metrics(sr) == [
        {"name": "loss", "value": 0.9, "unit": "", "step": 1},
        {"name": "loss", "value": 0.5, "unit": "", "step": 2},
        {"name": "throughput", "value": 1234.5, "unit": "img/s", "step": None},
        {"name": "nan_metric", "value": None, "unit": "", "step": None},
    ]
    assert store.metrics(other) == [{"name": "loss", "value": 7.0, "unit": "", "step": None}]


def test_artifacts_round_trip_sorted_by_name(store):
    sr = store.start_step(None, "A", "h")
    store.record_artifacts(sr, [("model.onnx", ".atlas/out/A/model.onnx", "b" * 64, 10),
                                ("engines/fp16.engine", ".atlas/out/A/engines/fp16.engine", "a" * 64, 20)])
    assert store.artifacts(sr) == [
        {"name": "engines/fp16.engine", "path": ".atlas/out/A/engines/fp16.engine", "sha256": "a" * 64, "size": 20},
        {"name": "model.onnx", "path": ".atlas/out/A/model.onnx", "sha256": "b" * 64, "size": 10},
    ]
    assert store.artifacts(sr + 1) == []


def test_log_tail_returns_the_last_lines_in_order(store):
    sr = store.start_step(None, "A", "h")
    store.record_logs(sr, [(float(i), f"line {i}") for i in range(30)])
    store.record_logs(sr, [])  # nothing to write is fine
    store.record_logs(sr, [(30.0, "line 30")])
    assert store.log_tail(sr, 3) == ["line 28", "line 29", "line 30"]
    assert store.log_tail(sr) == [f"line {i}" for i in range(11, 31)]
    assert store.log_tail(sr + 1) == []


def test_repair_abandoned_turns_running_into_interrupted(store):
    run_id = store.start_run(["A"], [], "0")
    running = store.start_step(run_id, "A", "h")
    finished = store.start_step(run_id, "B", "h")
    store.finish_step(finished, "succeeded")
    assert store.repair_abandoned() == 1
    step = store.step_run(running)
    assert step.status == "interrupted" and step.reason == "runner was killed"
    assert step.ended == step.started
    assert store.step_run(finished).status == "succeeded"
    assert store.run(run_id)["status"] == "interrupted"
    assert store.run(run_id)["ended"] is not None
    assert store.repair_abandoned() == 0  # idempotent


def test_a_failed_transaction_rolls_back(store):
    sr = store.start_step(None, "A", "h")
    with pytest.raises(sqlite3.Error):
        store.record_artifacts(sr, [("only-two-fields", "x")])  # wrong arity
    assert store.artifacts(sr) == []
    store.record_metric(sr, "still", 1.0)  # the store stays usable
    assert store.metrics(sr)[0]["name"] == "still"


def test_writer_thread_and_reader_on_the_same_file(tmp_path):
    path = tmp_path / ".atlas" / "state.db"
    writer, reader = StateStore(path), StateStore(path)
    steps, errors, reads = 60, [], []
    stop = threading.Event()

    def write() -> None:
        try:
            run_id = writer.start_run(["A"], [], "0")
            for i in range(steps):
                sr = writer.start_step(run_id, f"T{i % 5}", "h", components={"i": i})
                writer.record_metric(sr, "loss", 1.0 / (i + 1), step=i)
                writer.record_logs(sr, [(float(i), f"step {i}")])
                writer.record_artifacts(sr, [("out.txt", f"out/{i}", "0" * 64, i)])
                writer.finish_step(sr, "succeeded")
            writer.end_run(run_id, "succeeded")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        while not stop.is_set():
            for step in reader.history(limit=5):
                # a reader never sees a half-written step: finished steps are complete
                if step.status == "succeeded":
                    assert reader.metrics(step.id) and reader.artifacts(step.id)
            reads.append(len(reader.history(limit=1000)))
            reader.last_steps()
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    assert reads == sorted(reads)  # the reader only ever sees the history grow
    assert len(reader.history(limit=1000)) == steps
    assert all(s.status == "succeeded" for s in reader.history(limit=1000))
    assert reader.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert reader.runs()[0]["status"] == "succeeded"
    assert reader.log_tail(reader.last_step("T4").id) == [f"step {steps - 1}"]
    writer.close()
    reader.close()


def test_result_of_an_up_to_date_record_is_the_success_it_repeats(store):
    old = store.start_step(None, "T", "h", fingerprint="fp-old")
    store.finish_step(old, "succeeded")
    ok = store.start_step(None, "T", "h", fingerprint="fp")
    store.finish_step(ok, "succeeded")
    failed = store.start_step(None, "T", "h", fingerprint="fp-new")
    store.finish_step(failed, "failed")
    same = store.start_step(None, "T", "h", "up-to-date", fingerprint="fp")
    store.finish_step(same, "up-to-date")
    assert store.result_of(store.step_run(same)).id == ok           # same fingerprint, not the latest
    assert store.result_of(store.step_run(failed)).id == failed     # any other record stands for itself
    orphan = store.start_step(None, "U", "h", "up-to-date", fingerprint="nowhere")
    store.finish_step(orphan, "up-to-date")
    assert store.result_of(store.step_run(orphan)).id == orphan


def test_decided_steps_are_written_with_the_next_transaction_in_the_order_decided(store, tmp_path):
    run = store.start_run(["B"], [], "0")
    store.record_step(run, "A", "h", "up-to-date", fingerprint="fa", components={"a": 1})
    store.record_step(run, "B", "h", "skipped", reason="no CUDA device")
    other = StateStore(tmp_path / ".atlas" / "state.db", readonly=True)
    try:
        assert other.steps_of_run(run) == []                     # held back: no commit per step
        started = store.start_step(run, "C", "h")                # the next transaction writes them first
        assert [s.task for s in other.steps_of_run(run)] == ["A", "B", "C"]
        assert [s.id for s in other.steps_of_run(run)][-1] == started
        assert other.last_step("A").components == {"a": 1} and other.last_step("B").reason == "no CUDA device"
    finally:
        other.close()


def test_decided_steps_are_written_at_close_and_every_thousand(tmp_path):
    path = tmp_path / ".atlas" / "state.db"
    store = StateStore(path)
    run = store.start_run(["T"], [], "0")
    for i in range(1001):
        store.record_step(run, f"T{i}", "h", "up-to-date")
    reader = StateStore(path, readonly=True)
    assert len(reader.steps_of_run(run)) == 1000
    store.close()
    assert len(reader.steps_of_run(run)) == 1001
    reader.close()


def test_brief_successes_and_statuses_for_planning(store):
    sr = store.start_step(None, "T", "h", fingerprint="fp", components={"x": 1}, params={"p": 2})
    store.finish_step(sr, "succeeded", message="long text")
    failed = store.start_step(None, "T", "h")
    store.finish_step(failed, "failed")
    brief = store.last_successes(brief=True)["T"]
    assert (brief.id, brief.fingerprint, brief.components) == (sr, "fp", {"x": 1})
    assert brief.message is None and brief.params == {}          # left out on purpose
    assert store.last_successes()["T"].message == "long text"
    assert store.last_statuses() == {"T": "failed"}
    assert store.latest_result_id() == failed


def test_components_are_decoded_on_first_use_only(store):
    sr = store.start_step(None, "T", "h", components={"x": 1})
    store.finish_step(sr, "succeeded")
    run = store.step_run(sr)
    assert "components" not in run.__dict__ and run.stored_json["components"] == '{"x": 1}'
    assert run.components == {"x": 1} and "components" in run.__dict__
