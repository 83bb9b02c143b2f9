"""The dependency graph: edges run from a dependency to the task that needs it.

networkx builds the graph, finds cycles and orders it. `Dag` keeps what it found (the
topological generations and each task's dependencies) as plain data, so the project
cache can hand it back and `atlas plan` need not import networkx when nothing changed.
Checking manifests needs no order, only the knowledge that there is no cycle: `checked`
takes the nodes in Kahn's order (importing networkx is a fifth of a cold
`atlas validate` of 2,000 manifests), and the Dag it gives is ordered by networkx when
an order is first asked for.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Hashable, Iterable, Iterator, Mapping

if TYPE_CHECKING:
    import networkx as nx


class Dag:
    """A graph without cycles: `preds` each node's dependencies (sorted by name), `levels`
    its topological generations (each sorted by name) as networkx finds them, worked out
    when first asked for if they were not given; `on_ordered` is then told them (the
    project cache keeps them). Read only."""

    def __init__(self, levels: list[list[Hashable]] | None, preds: Mapping[Hashable, list[Hashable]]) -> None:
        self._levels = levels
        self.preds = preds
        self.on_ordered: Callable[[list[list[Hashable]]], None] | None = None

    @property
    def levels(self) -> list[list[Hashable]]:
        self.order()
        return self._levels

    def order(self) -> None:
        """Have networkx order the graph, if it has not yet."""
        if self._levels is None:
            self._levels = _nx_levels(build_graph(self.preds))
            if self.on_ordered is not None:
                self.on_ordered(self._levels)

    @property
    def is_ordered(self) -> bool:
        return self._levels is not None

    @classmethod
    def of(cls, graph: "nx.DiGraph") -> "Dag":
        return cls(_nx_levels(graph), {node: sorted(graph.predecessors(node), key=str) for node in graph})

    def __iter__(self) -> Iterator[Hashable]:
        return (node for level in self.levels for node in level)

    def __len__(self) -> int:
        return len(self.preds)

    def __contains__(self, node: object) -> bool:
        return node in self.preds

    @property
    def nodes(self) -> list[Hashable]:
        return list(self)

    def predecessors(self, node: Hashable) -> Iterator[Hashable]:
        return iter(self.preds[node])

    @property
    def edges(self) -> list[tuple[Hashable, Hashable]]:
        return [(dep, node) for node in self for dep in self.preds[node]]

    def copy(self) -> "Dag":
        return self                      # read only: nothing to protect

    def upstream(self, targets: Iterable[Hashable]) -> "Dag":
        """The targets and everything they depend on. A node's generation is the length of
        its longest chain of dependencies, and all of them are kept: the levels of the
        part are the levels of the whole, filtered."""
        keep: set[Hashable] = set()
        todo = list(targets)
        while todo:
            node = todo.pop()
            if node not in keep:
                keep.add(node)
                todo += self.preds[node]
        levels = [[n for n in level if n in keep] for level in self.levels]
        return Dag([level for level in levels if level], {n: self.preds[n] for n in keep})


def build_graph(depends_on: Mapping[Hashable, Iterable[Hashable]]) -> "nx.DiGraph":
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(depends_on)
    for node, deps in depends_on.items():
        graph.add_edges_from((dep, node) for dep in deps if dep in depends_on)
    return graph


def find_cycles(graph: "nx.DiGraph") -> list[list[Hashable]]:
    """One cycle per strongly connected component that has one (linear time overall)."""
    import networkx as nx

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


def checked(depends_on: Mapping[Hashable, Iterable[Hashable]]) -> tuple[Dag | None, list[list[Hashable]]]:
    """A dependency map (dependencies that are not in it left out, as build_graph does) as
    (its Dag, not yet ordered; no cycles) or, with cycles, (None, find_cycles' cycles)."""
    preds = {node: sorted({dep for dep in deps if dep in depends_on}, key=str) for node, deps in depends_on.items()}
    if not _acyclic(preds):
        return None, find_cycles(build_graph(depends_on))
    return Dag(None, preds), []


def _acyclic(preds: Mapping[Hashable, list]) -> bool:
    """Kahn's algorithm: every node can be taken once all it depends on has been (half
    the time of graphlib's prepare(), which also looks for a cycle to show: on a cycle,
    networkx finds them all)."""
    left = {node: len(deps) for node, deps in preds.items()}
    dependents: dict[Hashable, list] = {}
    for node, deps in preds.items():
        for dep in deps:
            dependents.setdefault(dep, []).append(node)
    ready = [node for node, count in left.items() if not count]
    taken = 0
    while ready:
        taken += 1
        for node in dependents.get(ready.pop(), ()):
            left[node] -= 1
            if not left[node]:
                ready.append(node)
    return taken == len(preds)


def upstream(graph: "nx.DiGraph | Dag", targets: Iterable[Hashable]) -> "nx.DiGraph | Dag":
    """The targets and everything they depend on."""
    if isinstance(graph, Dag):
        return graph.upstream(targets)
    import networkx as nx

    nodes: set[Hashable] = set()
    for target in targets:
        nodes.add(target)
        nodes |= nx.ancestors(graph, target)
    return graph.subgraph(nodes).copy()


def _nx_levels(graph: "nx.DiGraph") -> list[list[Hashable]]:
    import networkx as nx

    return [sorted(level, key=str) for level in nx.topological_generations(graph)]


def levels(graph: "nx.DiGraph | Dag") -> list[list[Hashable]]:
    """Topological generations: every step in a level may run in parallel."""
    if isinstance(graph, Dag):
        return [list(level) for level in graph.levels]
    return _nx_levels(graph)


def order(graph: "nx.DiGraph | Dag") -> list[Hashable]:
    return [node for level in levels(graph) for node in level]
