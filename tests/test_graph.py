"""atlas.graph on graphs of ints: edges run from a dependency to the step that needs it."""
from __future__ import annotations

import networkx as nx

from atlas.graph import build_graph, find_cycles, levels, order, upstream


def test_build_graph_edges_run_from_dependency_to_dependent():
    graph = build_graph({1: [], 2: [1], 3: [1, 2]})
    assert set(graph.nodes) == {1, 2, 3}
    assert set(graph.edges) == {(1, 2), (1, 3), (2, 3)}


def test_build_graph_keeps_isolated_nodes_and_ignores_unknown_dependencies():
    # unknown IDs are validation errors reported elsewhere; the graph must not invent nodes
    graph = build_graph({1: [], 2: [99], 3: []})
    assert set(graph.nodes) == {1, 2, 3}
    assert list(graph.edges) == []


def test_find_cycles_none_in_a_dag():
    graph = build_graph({1: [], 2: [1], 3: [1, 2], 4: [3]})
    assert find_cycles(graph) == []


def test_find_cycles_one_per_strongly_connected_component():
    # two separate cycles (1 -> 2 -> 3 -> 1 and 5 <-> 6) plus an acyclic tail
    graph = build_graph({1: [3], 2: [1], 3: [2], 4: [3], 5: [6], 6: [5], 7: [4]})
    cycles = find_cycles(graph)
    assert len(cycles) == 2
    assert [sorted(c) for c in cycles] == [[1, 2, 3], [5, 6]]


def test_find_cycles_rotates_so_the_smallest_node_leads_and_keeps_the_direction():
    # 3 -> 1 -> 2 -> 3 (edges dep -> dependent): 1 needs 3, 2 needs 1, 3 needs 2
    graph = build_graph({3: [2], 1: [3], 2: [1]})
    [cycle] = find_cycles(graph)
    assert cycle == [1, 2, 3]
    for a, b in zip(cycle, cycle[1:] + cycle[:1]):
        assert graph.has_edge(a, b), (a, b)


def test_find_cycles_a_big_component_yields_a_single_real_cycle():
    # one strongly connected component holding two cycles: 1 <-> 2 and 2 <-> 3
    graph = build_graph({1: [2], 2: [1, 3], 3: [2]})
    cycles = find_cycles(graph)
    assert len(cycles) == 1
    cycle = cycles[0]
    assert cycle[0] == min(cycle)
    assert len(set(cycle)) == len(cycle) >= 2
    for a, b in zip(cycle, cycle[1:] + cycle[:1]):
        assert graph.has_edge(a, b), (a, b)


def test_find_cycles_self_loop():
    graph = build_graph({1: [], 2: [2], 3: [2]})
    assert find_cycles(graph) == [[2]]


def test_find_cycles_sorted_by_leading_node():
    graph = build_graph({8: [9], 9: [8], 1: [2], 2: [1], 5: [5]})
    assert [c[0] for c in find_cycles(graph)] == [1, 5, 8]


def test_upstream_holds_targets_and_their_ancestors_only():
    #   1 -> 2 -> 4
    #   3 ------> 4 -> 5
    #   6 (unrelated), 2 -> 7 (a sibling branch)
    graph = build_graph({1: [], 2: [1], 3: [], 4: [2, 3], 5: [4], 6: [], 7: [2]})
    sub = upstream(graph, [4])
    assert set(sub.nodes) == {1, 2, 3, 4}
    assert set(sub.edges) == {(1, 2), (2, 4), (3, 4)}


def test_upstream_of_several_targets_is_the_union_and_a_copy():
    graph = build_graph({1: [], 2: [1], 3: [], 4: [3], 5: []})
    sub = upstream(graph, [2, 4])
    assert set(sub.nodes) == {1, 2, 3, 4}
    sub.add_node(99)
    assert 99 not in graph  # a copy, not a view


def test_upstream_of_a_root_is_the_root():
    graph = build_graph({1: [], 2: [1]})
    assert list(upstream(graph, [1]).nodes) == [1]


def test_levels_group_independent_nodes():
    #   1   2
    #   |\ /
    #   3 4      5 (isolated)
    #    \|
    #     6
    graph = build_graph({1: [], 2: [], 3: [1], 4: [1, 2], 5: [], 6: [3, 4]})
    assert levels(graph) == [[1, 2, 5], [3, 4], [6]]
    assert order(graph) == [1, 2, 5, 3, 4, 6]


def test_levels_put_a_node_after_its_longest_path():
    # 3 depends on 1 directly and through 2: it must wait for level 1
    graph = build_graph({1: [], 2: [1], 3: [1, 2]})
    assert levels(graph) == [[1], [2], [3]]


def test_levels_of_an_empty_graph():
    assert levels(nx.DiGraph()) == []


def test_a_dag_keeps_what_networkx_found_and_cuts_upstream_the_same_way():
    import random

    from atlas.graph import Dag

    rng = random.Random(7)
    for _ in range(30):
        n = rng.randint(1, 40)
        deps = {i: [j for j in range(i) if rng.random() < 0.15] for i in range(n)}
        graph = build_graph(deps)
        dag = Dag.of(graph)
        assert levels(dag) == levels(graph) and order(dag) == order(graph)
        assert sorted(dag.edges) == sorted(graph.edges) and len(dag) == n and set(dag.nodes) == set(graph)
        targets = rng.sample(range(n), rng.randint(1, min(3, n)))
        cut, nx_cut = upstream(dag, targets), upstream(graph, targets)
        assert levels(cut) == levels(nx_cut)
        assert {v: sorted(cut.predecessors(v)) for v in cut} == {v: sorted(nx_cut.predecessors(v)) for v in nx_cut}


def test_checked_finds_what_networkx_finds_and_orders_only_when_asked():
    """Kahn's algorithm answers "any cycle?" for a load; the cycles reported, the dependencies kept
    and the order (worked out when first asked) are networkx's."""
    import random

    from atlas.graph import Dag, checked

    rng = random.Random(11)
    seen_cycles = 0
    for _ in range(200):
        n = rng.randint(1, 30)
        # mostly backwards edges (a DAG), some forwards (cycles), self-loops, repeats and
        # dependencies on nodes that are not in the map (left out, as build_graph does)
        deps = {i: [rng.choice([rng.randrange(max(i, 1)), rng.randrange(n + 5)]) for _ in range(rng.randint(0, 3))]
                for i in range(n)}
        graph = build_graph(deps)
        dag, cycles = checked(deps)
        assert cycles == find_cycles(graph)
        if cycles:
            seen_cycles += 1
            assert dag is None
            continue
        expected = Dag.of(graph)
        assert dag.preds == expected.preds and not dag.is_ordered
        told = []
        dag.on_ordered = told.append
        assert dag.levels == expected.levels and dag.is_ordered and told == [expected.levels]
        assert dag.levels is told[0] and len(told) == 1                 # ordered once
    assert 20 < seen_cycles < 180                                      # both kinds were tried
