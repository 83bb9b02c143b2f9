"""The planner: a pure function of the graph, the stored state and the capabilities.

For each step it decides run / up-to-date / skip / wait and says why. The same `decide`
is used ahead of time (`atlas plan`, with predicted upstream outcomes) and at run time
(by the executor, with the outcomes that really happened), so the two never disagree
about the rules. Nodes can be anything hashable: the tests plan graphs of ints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Container, Hashable, Literal, Mapping

from atlas.fingerprint import what_changed
from atlas.graph import levels as graph_levels
from atlas.probe import CAPABILITIES

if TYPE_CHECKING:
    import networkx as nx

Action = Literal["run", "up-to-date", "skip", "wait"]
# outcomes an upstream step can have: planned actions, or what really happened
DONE_OK = ("up-to-date", "succeeded")


@dataclass(frozen=True)
class StepFacts:
    """What the planner knows about one step, gathered by the caller."""

    requires: tuple[str, ...] = ()
    components: Mapping | None = None         # current fingerprint components
    last: Mapping | None = None               # components of the last success (None: never)
    # their fingerprints, when known: equal ones settle "nothing changed" without
    # comparing (or even decoding) the components
    fingerprint: str | None = None
    last_fingerprint: str | None = None
    components_json: str | None = None        # `components` as canonical JSON, for the store
    last_status: str | None = None            # status of the most recent attempt
    manual: bool = False
    optional: frozenset = field(default_factory=frozenset)  # deps feeding only optional inputs


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    hint: str = ""


def missing_capabilities(requires: tuple[str, ...], capabilities: Container[str]) -> list[str]:
    return [cap for cap in requires if cap not in capabilities]


def capability_reason(missing: list[str], hints: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Every missing capability is named: fixing one should not reveal the next. `hints`
    (the probe's, e.g. the DALI wheel for this machine's CUDA major) override the defaults."""
    pairs = [CAPABILITIES.get(cap, (f"needs {cap}", "")) for cap in missing]
    hints = hints if hints is not None else {}
    texts = [hints.get(cap, hint) for cap, (_, hint) in zip(missing, pairs)]
    return "; ".join(r for r, _ in pairs), "; ".join(h for h in texts if h)


def decide(node: Hashable, facts: StepFacts, upstream: Mapping[Hashable, str],
           capabilities: Container[str], forced: bool = False, hints: Mapping[str, str] | None = None) -> Decision:
    """One step's decision given its upstream outcomes (planned or real)."""
    missing = missing_capabilities(facts.requires, capabilities)
    if missing:
        return Decision("skip", *capability_reason(missing, hints))
    for dep, outcome in sorted(upstream.items(), key=lambda kv: str(kv[0])):
        if outcome in ("run", *DONE_OK) or dep in facts.optional:
            continue
        if outcome in ("wait", "waiting"):
            return Decision("skip", f"waiting for manual step {dep}", f"atlas done {dep} --note '...'")
        return Decision("skip", f"upstream {dep} {_past(outcome)}")
    if facts.manual:
        if facts.last is not None and facts.components is not None and _same(facts):
            return Decision("up-to-date", "marked done")
        why = "manual step" if facts.last is None else "manual step changed since marked done"
        return Decision("wait", why, f"atlas done {node} --note '...'")
    if forced:
        return Decision("run", "forced")
    if facts.last is None:
        return Decision("run", "last run failed" if facts.last_status == "failed" else "never run")
    for dep, outcome in sorted(upstream.items(), key=lambda kv: str(kv[0])):
        if outcome == "run":
            return Decision("run", f"upstream {dep} will run")
    changed = None if _same_fingerprint(facts) else what_changed(dict(facts.last), dict(facts.components or {}))
    if changed:
        return Decision("run", changed)
    return Decision("up-to-date", "nothing changed")


def _same_fingerprint(facts: StepFacts) -> bool:
    return facts.fingerprint is not None and facts.fingerprint == facts.last_fingerprint


def _same(facts: StepFacts) -> bool:
    return _same_fingerprint(facts) or dict(facts.last or {}) == dict(facts.components or {})


def _past(outcome: str) -> str:
    return {"skip": "skipped", "skipped": "skipped", "failed": "failed",
            "interrupted": "was interrupted", "waiting": "is waiting"}.get(outcome, outcome)


@dataclass
class Plan:
    levels: list[list[Hashable]]
    decisions: dict[Hashable, Decision]

    def order(self) -> list[Hashable]:
        return [node for level in self.levels for node in level]

    def count(self, action: Action) -> int:
        return sum(1 for d in self.decisions.values() if d.action == action)


def plan(graph: nx.DiGraph, facts: Mapping[Hashable, StepFacts], capabilities: Container[str],
         forced: set[Hashable] = frozenset(), hints: Mapping[str, str] | None = None) -> Plan:
    """Decide every step of `graph` (already cut to the targets' upstream)."""
    levels = graph_levels(graph)
    decisions: dict[Hashable, Decision] = {}
    for node in (n for level in levels for n in level):
        upstream = {dep: decisions[dep].action for dep in graph.predecessors(node)}
        decisions[node] = decide(node, facts[node], upstream, capabilities, node in forced, hints)
    return Plan(levels, decisions)
