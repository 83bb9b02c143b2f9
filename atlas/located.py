"""A manifest's plain data and where each of its values stood, as atlas.yamlpos reads them.

Apart from atlas.yamlpos, and free of PyYAML: the process that checks manifests gets them
parsed from the other core (atlas.two_cores) and imports no YAML parser for a valid
project (PyYAML's import, 9-15 ms, compiles a regex of all printable characters).
"""
from __future__ import annotations

from typing import Any

Path_ = tuple[Any, ...]


class Located:
    """Plain data, and the (line, col) of every value, key and duplicate key in it.

    A valid manifest never asks where its values stood, so a plain document (the usual
    one) is built without positions, and they are worked out from its text on first use.
    """

    def __init__(self, data: Any, positions: dict[Path_, tuple[int, int]] | None = None,
                 key_positions: dict[Path_, tuple[int, int]] | None = None,
                 duplicates: list[tuple[Path_, tuple[int, int]]] | None = None, text: str | None = None) -> None:
        self.data = data
        self._text = text               # set: positions not worked out yet
        self._positions = positions if positions is not None else {}
        self._key_positions = key_positions if key_positions is not None else {}
        self.duplicates = duplicates if duplicates is not None else []

    @property
    def positions(self) -> dict[Path_, tuple[int, int]]:
        self._locate()
        return self._positions

    @property
    def key_positions(self) -> dict[Path_, tuple[int, int]]:
        self._locate()
        return self._key_positions

    def _locate(self) -> None:
        if self._text is not None:
            text, self._text = self._text, None
            from atlas.yamlpos import _load_located  # only now: the process that checks needs no YAML

            located = _load_located(text)          # built before from the same text: no error
            self._positions, self._key_positions = located._positions, located._key_positions

    def where(self, path: Path_, key: bool = False) -> tuple[int, int]:
        """Closest known position for a path: the path itself, else its nearest parent."""
        path = tuple(path)
        table = self.key_positions if key else self.positions
        while path:
            if path in table:
                return table[path]
            if not key and path in self.key_positions:
                return self.key_positions[path]
            path = path[:-1]
        return self.positions.get((), (1, 1))
