"""The executor: walks the graph, asks the planner's `decide` for each step when its
upstream is done, and hands the steps that must run to a step runner it is given.

It knows nothing of processes, SQLite or handlers (dvc's reproduce takes the same
approach), so tests drive it with plain functions on graphs of ints.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Hashable, Mapping

from atlas.graph import levels as graph_levels
from atlas.planner import Decision

if TYPE_CHECKING:
    from concurrent.futures import Future

    import networkx as nx


@dataclass
class Outcome:
    status: str            # succeeded | failed | skipped | up-to-date | waiting | interrupted
    reason: str = ""
    message: str = ""


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped the run; outcomes so far are attached."""

    def __init__(self, outcomes: dict) -> None:
        super().__init__("interrupted")
        self.outcomes = outcomes


DecideFn = Callable[[Hashable, Mapping[Hashable, str]], Decision]
RunFn = Callable[[Hashable, Decision], Outcome]
NoteFn = Callable[[Hashable, Outcome], None]
_FROM_DECISION = {"skip": "skipped", "up-to-date": "up-to-date", "wait": "waiting"}


def execute(graph: nx.DiGraph, decide: DecideFn, run_step: RunFn, *, jobs: int = 1,
            keep_going: bool = False, note: NoteFn = lambda node, outcome: None,
            cancel: Callable[[], None] = lambda: None) -> dict[Hashable, Outcome]:
    """Run `graph` in dependency order; return every node's outcome.

    `note` is told of steps that end without running (skip, up to date, waiting, or
    not started after a failure); `run_step` records its own. On a failure without
    `keep_going`, nothing new starts; with it, only the failed step's dependents skip.
    """
    order = [n for level in graph_levels(graph) for n in level]
    outcomes: dict[Hashable, Outcome] = {}
    stop_reason: list[str] = []
    lock = threading.Lock()

    def settle(node: Hashable, outcome: Outcome, noted: bool) -> None:
        with lock:
            outcomes[node] = outcome
            if outcome.status in ("failed", "interrupted") and not keep_going and not stop_reason:
                stop_reason.append(f"not started: {node} {outcome.status}")
        if noted:
            note(node, outcome)

    def ready(node: Hashable) -> bool:
        return all(dep in outcomes for dep in graph.predecessors(node))

    def dispatch(node: Hashable) -> Decision | None:
        """Settle a node that won't run; return the decision when it must run."""
        decision = decide(node, {dep: outcomes[dep].status for dep in graph.predecessors(node)})
        if stop_reason and decision.action == "run":
            settle(node, Outcome("skipped", stop_reason[0] + " (use --keep-going to go on)"), True)
            return None
        if decision.action != "run":
            settle(node, Outcome(_FROM_DECISION[decision.action], decision.reason), True)
            return None
        return decision

    pending = list(order)
    try:
        if jobs <= 1:
            for node in order:
                decision = dispatch(node)
                if decision is not None:
                    settle(node, run_step(node, decision), False)
            return outcomes
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait   # -j N only

        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="atlas-step") as pool:
            running: dict[Future, Hashable] = {}
            try:
                while pending or running:
                    for node in [n for n in pending if ready(n)]:
                        if len(running) >= jobs:
                            break
                        pending.remove(node)
                        decision = dispatch(node)
                        if decision is not None:
                            running[pool.submit(run_step, node, decision)] = node
                    if not running:
                        if pending and not any(ready(n) for n in pending):
                            raise RuntimeError(f"executor stalled with {pending}")  # a cycle slipped through
                        continue
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for future in done:
                        settle(running.pop(future), future.result(), False)
            except KeyboardInterrupt:
                cancel()  # kill the steps' processes before the pool waits for them
                raise
        return outcomes
    except KeyboardInterrupt:
        cancel()
        for node in order:
            if node not in outcomes:
                outcomes[node] = Outcome("interrupted", "run interrupted")
        raise Interrupted(outcomes) from None
