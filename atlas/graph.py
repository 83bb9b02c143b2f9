"""The dependency graph: edges run from a dependency to the task that needs it."""
from __future__ import annotations

from typing import Hashable, Iterable, Mapping

import networkx as nx


def build_graph(depends_on: Mapping[Hashable, Iterable[Hashable]]) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(depends_on)
    for node, deps in depends_on.items():
        graph.add_edges_from((dep, node) for dep in deps if dep in depends_on)
    return graph


def find_cycles(graph: nx.DiGraph) -> list[list[Hashable]]:
    """One cycle per strongly connected component that has one (linear time overall)."""
    cycles: list[list[Hashable]] = []
    if nx.is_directed_acyclic_graph(graph):     # the usual case, one linear pass
        return cycles
    for component in nx.strongly_connected_components(graph):
        if len(component) == 1:
            node = next(iter(component))
            if not graph.has_edge(node, node):
                continue
        edges = nx.find_cycle(graph.subgraph(component))
        cycle = [edge[0] for edge in edges]
        # rotate so that the smallest name leads: stable messages
        start = cycle.index(min(cycle, key=str))
        cycles.append(cycle[start:] + cycle[:start])
    return sorted(cycles, key=lambda c: str(c[0]))


def upstream(graph: nx.DiGraph, targets: Iterable[Hashable]) -> nx.DiGraph:
    """The targets and everything they depend on."""
    nodes: set[Hashable] = set()
    for target in targets:
        nodes.add(target)
        nodes |= nx.ancestors(graph, target)
    return graph.subgraph(nodes).copy()


def levels(graph: nx.DiGraph) -> list[list[Hashable]]:
    """Topological generations: every step in a level may run in parallel."""
    return [sorted(level, key=str) for level in nx.topological_generations(graph)]


def order(graph: nx.DiGraph) -> list[Hashable]:
    return [node for level in levels(graph) for node in level]
