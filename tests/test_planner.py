"""The planner is pure: graphs of ints, StepFacts built by hand, no state store, no probe."""
from __future__ import annotations

import pytest

from atlas.graph import build_graph
from atlas.planner import Decision, StepFacts, decide, plan
from atlas.probe import CAPABILITIES

ALL_CAPS = {"cuda", "tensorrt", "torch"}


def comps(handler: str = "h@1:abc", params: dict | None = None, inputs: dict | None = None,
          env: dict | None = None) -> dict:
    return {"handler": handler, "params": params if params is not None else {"lr": 0.1},
            "inputs": inputs if inputs is not None else {}, "env": env}


def done(c: dict | None = None, **kw) -> StepFacts:
    """A step whose last success has exactly the current components."""
    c = c or comps()
    return StepFacts(components=c, last=dict(c), last_status="succeeded", **kw)


def never(**kw) -> StepFacts:
    return StepFacts(components=comps(), last=None, **kw)


def changed(old: dict, new: dict, **kw) -> StepFacts:
    return StepFacts(components=new, last=old, last_status="succeeded", **kw)


def actions(p) -> dict:
    return {node: (d.action, d.reason) for node, d in p.decisions.items()}


# -- one step -----------------------------------------------------------------

def test_never_run_runs():
    p = plan(build_graph({1: []}), {1: never()}, ALL_CAPS)
    assert p.decisions[1] == Decision("run", "never run")


def test_up_to_date_when_last_equals_components():
    p = plan(build_graph({1: []}), {1: done()}, ALL_CAPS)
    assert (p.decisions[1].action, p.decisions[1].reason) == ("up-to-date", "nothing changed")


def test_params_changed_names_the_key_and_old_and_new_values():
    facts = changed(comps(params={"lr": 0.1, "epochs": 3}), comps(params={"lr": 0.01, "epochs": 3}))
    d = decide(1, facts, {}, ALL_CAPS)
    assert d.action == "run"
    assert d.reason == "params changed (lr 0.1 -> 0.01)"


def test_params_added_key_shows_null_as_old_value():
    facts = changed(comps(params={}), comps(params={"batch": 32}))
    d = decide(1, facts, {}, ALL_CAPS)
    assert d.action == "run"
    assert d.reason == "params changed (batch null -> 32)"


def test_input_changed_names_the_input():
    facts = changed(comps(inputs={"onnx": "aaa", "profile": "ppp"}),
                    comps(inputs={"onnx": "bbb", "profile": "ppp"}))
    d = decide(1, facts, {}, ALL_CAPS)
    assert (d.action, d.reason) == ("run", "input onnx changed")


def test_handler_code_changed():
    facts = changed(comps(handler="h@1:abc"), comps(handler="h@1:def"))
    assert decide(1, facts, {}, ALL_CAPS) == Decision("run", "handler code changed")


def test_environment_changed_names_what_changed():
    facts = changed(comps(env={"gpu": "H100", "driver": "550.1"}), comps(env={"gpu": "H100", "driver": "560.2"}))
    d = decide(1, facts, {}, ALL_CAPS)
    assert d.action == "run"
    assert d.reason == "environment changed (driver 550.1 -> 560.2)"


def test_last_run_failed_when_no_success_and_last_attempt_failed():
    facts = StepFacts(components=comps(), last=None, last_status="failed")
    assert decide(1, facts, {}, ALL_CAPS) == Decision("run", "last run failed")


def test_never_run_when_last_attempt_was_skipped():
    facts = StepFacts(components=comps(), last=None, last_status="skipped")
    assert decide(1, facts, {}, ALL_CAPS) == Decision("run", "never run")


# -- forced -------------------------------------------------------------------

def test_forced_runs_only_that_node():
    graph = build_graph({1: [], 2: [1], 3: []})
    p = plan(graph, {1: done(), 2: done(), 3: done()}, ALL_CAPS, forced={2})
    assert actions(p) == {1: ("up-to-date", "nothing changed"), 2: ("run", "forced"),
                          3: ("up-to-date", "nothing changed")}


def test_forced_upstream_makes_dependents_run():
    graph = build_graph({1: [], 2: [1], 3: []})
    p = plan(graph, {1: done(), 2: done(), 3: done()}, ALL_CAPS, forced={1})
    assert actions(p) == {1: ("run", "forced"), 2: ("run", "upstream 1 will run"),
                          3: ("up-to-date", "nothing changed")}


# -- capabilities ---------------------------------------------------------------

@pytest.mark.parametrize("cap, reason", [("cuda", "no CUDA device"), ("tensorrt", "TensorRT not installed")])
def test_missing_capability_skips_with_the_capability_reason(cap, reason):
    graph = build_graph({1: [], 2: [1], 3: [2]})
    facts = {1: never(requires=(cap,)), 2: never(), 3: never()}
    p = plan(graph, facts, set())
    assert p.decisions[1].action == "skip"
    assert p.decisions[1].reason == reason == CAPABILITIES[cap][0]
    assert p.decisions[1].hint == CAPABILITIES[cap][1]
    assert actions(p)[2] == ("skip", "upstream 1 skipped")
    assert actions(p)[3] == ("skip", "upstream 2 skipped")


def test_missing_capability_wins_over_up_to_date_and_forced():
    facts = done(requires=("cuda",))
    assert decide(1, facts, {}, set(), forced=True).reason == "no CUDA device"


def test_unknown_capability_names_it():
    d = decide(1, never(requires=("quantum",)), {}, set())
    assert (d.action, d.reason) == ("skip", "needs quantum")


def test_every_missing_capability_is_named():
    d = decide(1, never(requires=("cuda", "tensorrt")), {}, set())
    assert d.reason == "no CUDA device; TensorRT not installed"
    assert d.hint == f"{CAPABILITIES['cuda'][1]}; {CAPABILITIES['tensorrt'][1]}"


def test_capabilities_present_do_not_skip():
    d = decide(1, never(requires=("cuda", "tensorrt")), {}, {"cuda", "tensorrt"})
    assert d.action == "run"


def test_optional_dependency_skipped_does_not_skip_the_dependent():
    graph = build_graph({1: [], 2: [], 3: [1, 2]})
    facts = {1: never(requires=("tensorrt",)), 2: never(), 3: never(optional=frozenset({1}))}
    p = plan(graph, facts, {"cuda"})
    assert actions(p)[1] == ("skip", "TensorRT not installed")
    assert actions(p)[2] == ("run", "never run")
    assert actions(p)[3] == ("run", "never run")


def test_required_dependency_skipped_still_skips_next_to_an_optional_one():
    graph = build_graph({1: [], 2: [], 3: [1, 2]})
    facts = {1: never(requires=("cuda",)), 2: never(requires=("tensorrt",)),
             3: never(optional=frozenset({1}))}
    p = plan(graph, facts, set())
    assert actions(p)[3] == ("skip", "upstream 2 skipped")


# -- manual steps -----------------------------------------------------------------

def test_manual_step_waits_until_marked_done():
    d = decide(1, StepFacts(components=comps(), last=None, manual=True), {}, ALL_CAPS)
    assert (d.action, d.reason) == ("wait", "manual step")
    assert "atlas done 1" in d.hint


def test_manual_step_marked_done_is_up_to_date():
    d = decide(1, done(manual=True), {}, ALL_CAPS)
    assert (d.action, d.reason) == ("up-to-date", "marked done")


def test_manual_step_waits_again_when_its_components_changed():
    facts = changed(comps(params={"note": "a"}), comps(params={"note": "b"}), manual=True)
    d = decide(1, facts, {}, ALL_CAPS)
    assert d.action == "wait"
    assert d.reason.startswith("manual step")
    assert d.reason == "manual step changed since marked done"


def test_dependent_of_a_waiting_manual_step_is_skipped_with_the_reason():
    graph = build_graph({1: [], 2: [1], 3: [2]})
    facts = {1: StepFacts(components=comps(), manual=True), 2: never(), 3: never()}
    p = plan(graph, facts, ALL_CAPS)
    assert actions(p)[1] == ("wait", "manual step")
    assert p.decisions[2].action == "skip"
    assert p.decisions[2].reason == "waiting for manual step 1"
    assert "atlas done 1" in p.decisions[2].hint
    assert actions(p)[3] == ("skip", "upstream 2 skipped")


def test_dependent_of_a_done_manual_step_is_up_to_date():
    graph = build_graph({1: [], 2: [1]})
    p = plan(graph, {1: done(manual=True), 2: done()}, ALL_CAPS)
    assert actions(p) == {1: ("up-to-date", "marked done"), 2: ("up-to-date", "nothing changed")}


# -- propagation, run-time outcomes -------------------------------------------------

def test_upstream_will_run_propagates_down_a_chain():
    graph = build_graph({1: [], 2: [1], 3: [2], 4: [3], 5: []})
    c_old, c_new = comps(params={"x": 1}), comps(params={"x": 2})
    facts = {1: changed(c_old, c_new), 2: done(), 3: done(), 4: done(), 5: done()}
    p = plan(graph, facts, ALL_CAPS)
    assert actions(p) == {1: ("run", "params changed (x 1 -> 2)"), 2: ("run", "upstream 1 will run"),
                          3: ("run", "upstream 2 will run"), 4: ("run", "upstream 3 will run"),
                          5: ("up-to-date", "nothing changed")}
    assert p.count("run") == 4 and p.count("up-to-date") == 1


def test_decide_with_real_outcomes():
    facts = done()
    assert decide(2, facts, {1: "succeeded"}, ALL_CAPS).action == "up-to-date"
    assert decide(2, facts, {1: "failed"}, ALL_CAPS) == Decision("skip", "upstream 1 failed")
    assert decide(2, facts, {1: "skipped"}, ALL_CAPS) == Decision("skip", "upstream 1 skipped")
    assert decide(2, facts, {1: "interrupted"}, ALL_CAPS) == Decision("skip", "upstream 1 was interrupted")
    assert decide(2, facts, {1: "waiting"}, ALL_CAPS).reason == "waiting for manual step 1"


def test_decide_names_the_first_bad_upstream_in_sorted_order():
    d = decide(9, never(), {3: "failed", 1: "up-to-date", 2: "skipped"}, ALL_CAPS)
    assert d == Decision("skip", "upstream 2 skipped")


def test_levels_group_independent_nodes():
    graph = build_graph({1: [], 2: [], 3: [1], 4: [1, 2], 5: [3, 4]})
    p = plan(graph, {n: done() for n in graph}, ALL_CAPS)
    assert p.levels == [[1, 2], [3, 4], [5]]
    assert p.order() == [1, 2, 3, 4, 5]


def test_plan_does_not_touch_its_inputs():
    graph = build_graph({1: [], 2: [1]})
    facts = {1: never(), 2: done()}
    before = (set(graph.edges), dict(facts))
    first = plan(graph, facts, ALL_CAPS)
    second = plan(graph, facts, ALL_CAPS)
    assert (set(graph.edges), dict(facts)) == before
    assert first.decisions == second.decisions


class Undecodable(dict):
    """Components that must not be read: equal fingerprints settle the decision."""

    def __iter__(self):
        raise AssertionError("components were compared although the fingerprints are equal")

    keys = items = __iter__


def test_equal_fingerprints_are_up_to_date_without_comparing_components():
    facts = StepFacts(components=comps(), last=Undecodable(), last_status="succeeded",
                      fingerprint="fp", last_fingerprint="fp")
    assert decide(1, facts, {}, ALL_CAPS) == Decision("up-to-date", "nothing changed")


def test_different_fingerprints_fall_back_to_the_components():
    same = StepFacts(components=comps(), last=comps(), last_status="succeeded", fingerprint="a", last_fingerprint="b")
    assert decide(1, same, {}, ALL_CAPS).action == "up-to-date"     # e.g. an older encoding of equal values
    moved = StepFacts(components=comps(params={"lr": 0.2}), last=comps(), last_status="succeeded",
                      fingerprint="a", last_fingerprint="b")
    assert decide(1, moved, {}, ALL_CAPS).reason.startswith("params changed (lr 0.1 -> 0.2)")
