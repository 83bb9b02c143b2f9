"""The executor with plain functions as the step runner, on graphs of ints."""
from __future__ import annotations

import threading

import pytest

from atlas.executor import Interrupted, Outcome, execute
from atlas.graph import build_graph
from atlas.planner import Decision, StepFacts
from atlas.planner import decide as planner_decide

COMPS = {"handler": "h@1:x", "params": {}, "inputs": {}, "env": None}


def always_run(node, upstream):
    return Decision("run", "never run")


def real_decide(facts: dict):
    """The planner's own rules, with the outcomes that really happened upstream."""
    return lambda node, upstream: planner_decide(node, facts[node], upstream, set())


class Recorder:
    """A step runner that records what ran, and fails the nodes it is told to."""

    def __init__(self, fail=(), graph=None):
        self.fail = set(fail)
        self.graph = graph
        self.ran: list = []
        self.lock = threading.Lock()
        self.noted: dict = {}

    def __call__(self, node, decision):
        if self.graph is not None:
            with self.lock:
                missing = [d for d in self.graph.predecessors(node) if d not in self.ran]
            assert not missing, f"{node} started before {missing}"
        with self.lock:
            self.ran.append(node)
        if node in self.fail:
            return Outcome("failed", decision.reason, f"{node} broke")
        return Outcome("succeeded", decision.reason)

    def note(self, node, outcome):
        with self.lock:
            assert node not in self.noted, f"{node} noted twice"
            self.noted[node] = outcome


@pytest.mark.parametrize("jobs", [1, 3])
def test_order_respects_dependencies(jobs):
    graph = build_graph({1: [], 2: [1], 3: [1], 4: [2, 3], 5: [], 6: [5, 4]})
    rec = Recorder(graph=graph)
    outcomes = execute(graph, always_run, rec, jobs=jobs, note=rec.note)
    assert sorted(rec.ran) == [1, 2, 3, 4, 5, 6]
    for a, b in graph.edges:
        assert rec.ran.index(a) < rec.ran.index(b), (a, b)
    assert {n: o.status for n, o in outcomes.items()} == {n: "succeeded" for n in graph}
    assert rec.noted == {}  # steps that ran record themselves; note is for the others


def test_decide_sees_the_real_upstream_outcomes():
    graph = build_graph({1: [], 2: [], 3: [1, 2]})
    seen = {}

    def decide(node, upstream):
        seen[node] = dict(upstream)
        return Decision("skip", "no") if node == 2 else Decision("run", "never run")

    execute(graph, decide, Recorder())
    assert seen == {1: {}, 2: {}, 3: {1: "succeeded", 2: "skipped"}}


@pytest.mark.parametrize("jobs", [1, 2])
def test_failure_without_keep_going_skips_dependents_and_everything_not_started(jobs):
    #  1 -> 2 -> 3     4 -> 5   (4 and 5 are independent, but come later in the order)
    graph = build_graph({1: [], 2: [1], 3: [2], 4: [1], 5: [4]})
    rec = Recorder(fail={1})
    outcomes = execute(graph, always_run, rec, jobs=jobs, note=rec.note)
    assert rec.ran == [1]
    assert outcomes[1].status == "failed" and outcomes[1].message == "1 broke"
    for node in (2, 3, 4, 5):
        assert outcomes[node].status == "skipped"
        assert outcomes[node].reason == "not started: 1 failed (use --keep-going to go on)"
    assert set(rec.noted) == {2, 3, 4, 5}
    assert rec.noted[5].status == "skipped"


def test_failure_without_keep_going_stops_independent_steps_not_yet_started():
    graph = build_graph({1: [], 2: [], 3: [], 4: [2]})
    rec = Recorder(fail={2})
    outcomes = execute(graph, always_run, rec, jobs=1, note=rec.note)
    assert rec.ran == [1, 2]  # 1 ran before the failure; 3 is independent but not started
    assert outcomes[1].status == "succeeded"
    assert outcomes[3].status == "skipped" and outcomes[3].reason.startswith("not started: 2 failed")
    assert outcomes[4].status == "skipped" and "--keep-going" in outcomes[4].reason


@pytest.mark.parametrize("jobs", [1, 2])
def test_keep_going_continues_independent_branches(jobs):
    #  1 -> 2 -> 3      1 fails: 2 and 3 skip
    #  4 -> 5           independent: runs
    #  6 needs 2 and 5: skips because of 2
    graph = build_graph({1: [], 2: [1], 3: [2], 4: [], 5: [4], 6: [2, 5]})
    facts = {n: StepFacts(components=COMPS) for n in graph}
    rec = Recorder(fail={1}, graph=graph)
    outcomes = execute(graph, real_decide(facts), rec, jobs=jobs, keep_going=True, note=rec.note)
    assert sorted(rec.ran) == [1, 4, 5]
    assert {n: (o.status, o.reason) for n, o in outcomes.items() if n not in (1, 4, 5)} == {
        2: ("skipped", "upstream 1 failed"),
        3: ("skipped", "upstream 2 skipped"),
        6: ("skipped", "upstream 2 skipped"),
    }
    assert outcomes[1].status == "failed"
    assert outcomes[4].status == outcomes[5].status == "succeeded"
    assert set(rec.noted) == {2, 3, 6}


def test_up_to_date_decisions_are_noted_and_not_run():
    graph = build_graph({1: [], 2: [1], 3: [2]})
    facts = {1: StepFacts(components=COMPS, last=dict(COMPS), last_status="succeeded"),
             2: StepFacts(components=COMPS, last=dict(COMPS), last_status="succeeded"),
             3: StepFacts(components=COMPS)}
    rec = Recorder()
    outcomes = execute(graph, real_decide(facts), rec, note=rec.note)
    assert rec.ran == [3]
    assert {n: (o.status, o.reason) for n, o in rec.noted.items()} == {
        1: ("up-to-date", "nothing changed"), 2: ("up-to-date", "nothing changed")}
    assert outcomes[3] == Outcome("succeeded", "never run")


def test_waiting_manual_step_is_noted_and_skips_its_dependent():
    graph = build_graph({1: [], 2: [1]})
    facts = {1: StepFacts(components=COMPS, manual=True), 2: StepFacts(components=COMPS)}
    rec = Recorder()
    outcomes = execute(graph, real_decide(facts), rec, note=rec.note)
    assert rec.ran == []
    assert (outcomes[1].status, outcomes[1].reason) == ("waiting", "manual step")
    assert (outcomes[2].status, outcomes[2].reason) == ("skipped", "waiting for manual step 1")
    assert set(rec.noted) == {1, 2}


def test_jobs_2_runs_independent_steps_concurrently():
    graph = build_graph({1: [], 2: [], 3: [1, 2]})
    b_started = threading.Event()
    a_saw_b = []

    def run_step(node, decision):
        if node == 1:
            # only possible when 2 runs at the same time; with jobs=1 this would time out
            a_saw_b.append(b_started.wait(timeout=10))
        elif node == 2:
            b_started.set()
        return Outcome("succeeded")

    outcomes = execute(graph, always_run, run_step, jobs=2)
    assert a_saw_b == [True]
    assert {n: o.status for n, o in outcomes.items()} == {1: "succeeded", 2: "succeeded", 3: "succeeded"}


def test_jobs_2_never_runs_more_than_two_at_once():
    graph = build_graph({n: [] for n in range(6)})
    lock = threading.Lock()
    running, peak = [0], [0]
    both = threading.Barrier(2, timeout=10)

    def run_step(node, decision):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        both.wait()  # pairs of steps meet: proves two run at once, and six finish
        with lock:
            running[0] -= 1
        return Outcome("succeeded")

    outcomes = execute(graph, always_run, run_step, jobs=2)
    assert peak[0] == 2
    assert len(outcomes) == 6 and all(o.status == "succeeded" for o in outcomes.values())


def test_jobs_1_runs_one_at_a_time():
    """Every step runs in the caller's own thread, in order: one thread cannot run two steps
    at once, whatever the machine's load (no timed wait decides this)."""
    graph = build_graph({1: [], 2: [], 3: []})
    seen = []

    def run_step(node, decision):
        seen.append((node, threading.current_thread()))
        return Outcome("succeeded")

    execute(graph, always_run, run_step, jobs=1)
    assert [n for n, _ in seen] == [1, 2, 3]
    assert {thread for _, thread in seen} == {threading.current_thread()}


def test_keyboard_interrupt_marks_the_rest_interrupted_and_cancels():
    graph = build_graph({1: [], 2: [1], 3: [2], 4: []})
    cancelled = []

    def run_step(node, decision):
        if node == 2:
            raise KeyboardInterrupt
        return Outcome("succeeded")

    with pytest.raises(Interrupted) as info:
        execute(graph, always_run, run_step, jobs=1, cancel=lambda: cancelled.append(True))
    outcomes = info.value.outcomes
    assert cancelled  # the steps' processes are told to stop
    assert outcomes[1].status == "succeeded"
    assert outcomes[4].status == "succeeded"  # level 0, ran before 2
    for node in (2, 3):
        assert (outcomes[node].status, outcomes[node].reason) == ("interrupted", "run interrupted")


def test_keyboard_interrupt_with_jobs_2_is_interrupted_too():
    graph = build_graph({1: [], 2: [], 3: [1, 2]})
    cancelled = []

    def run_step(node, decision):
        if node == 2:
            raise KeyboardInterrupt
        return Outcome("succeeded")

    with pytest.raises(Interrupted) as info:
        execute(graph, always_run, run_step, jobs=2, cancel=lambda: cancelled.append(True))
    assert cancelled
    assert info.value.outcomes[3].status == "interrupted"
    assert set(info.value.outcomes) == {1, 2, 3}
