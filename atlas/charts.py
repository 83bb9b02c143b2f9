"""Figures a step hands to the report: a chart (lines or grouped bars) or a table, as data.

A handler describes what to draw (`ctx.chart(Chart(...))`); the state store keeps the spec
with the step run, and the report draws it with matplotlib (HTML) or prints it as a table
(Markdown). Specs are plain pydantic models so a stored one is checked again when read.
"""
from __future__ import annotations

import math
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Cell = Union[float, int, str, None]
NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Series(_Spec):
    label: str
    x: list[Union[float, str]]
    y: list[Union[float, None]]
    style: Literal["solid", "dashed", "dotted"] = "solid"

    @model_validator(mode="after")
    def _same_length(self) -> "Series":
        if len(self.x) != len(self.y):
            raise ValueError(f"series {self.label!r}: {len(self.x)} x values but {len(self.y)} y values")
        self.y = [None if v is None or not math.isfinite(v) else v for v in self.y]
        return self


class Mark(_Spec):
    """A vertical line at `x`, or a shaded span from `x` to `x_end`, with its meaning."""

    x: Union[float, str]
    x_end: Union[float, str, None] = None
    label: str


class Reference(_Spec):
    """A horizontal line: a target, a baseline, an ideal."""

    y: float
    label: str


class Chart(_Spec):
    kind: Literal["chart"] = "chart"
    name: str = Field(pattern=NAME)
    title: str
    plot: Literal["line", "bar"] = "line"      # bar: x values are categories, series side by side
    x_label: str
    y_label: str
    series: list[Series] = Field(min_length=1)
    log_x: int | None = None                   # logarithmic x axis with this base (2 for batch sizes)
    log_y: int | None = None
    marks: list[Mark] = []
    references: list[Reference] = []
    note: str = ""

    @field_validator("log_x", "log_y")
    @classmethod
    def _base(cls, value: int | None) -> int | None:
        if value is not None and value < 2:
            raise ValueError("a logarithm's base is 2 or more")
        return value


class Table(_Spec):
    kind: Literal["table"] = "table"
    name: str = Field(pattern=NAME)
    title: str
    columns: list[str] = Field(min_length=1)
    rows: list[list[Cell]]
    note: str = ""

    @model_validator(mode="after")
    def _widths(self) -> "Table":
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"row {i} has {len(row)} cells for {len(self.columns)} columns")
        return self


Figure = Union[Chart, Table]


def parse(data: dict) -> Figure:
    """A stored spec back as a model (raises pydantic.ValidationError when it is malformed)."""
    return Table.model_validate(data) if data.get("kind") == "table" else Chart.model_validate(data)


def as_table(chart: Chart) -> Table:
    """The chart's numbers as a table: one row per x value, one column per series."""
    xs: list = []
    for s in chart.series:
        xs += [x for x in s.x if x not in xs]
    values = [dict(zip(s.x, s.y)) for s in chart.series]
    rows = [[x, *(v.get(x) for v in values)] for x in xs]
    return Table(name=chart.name, title=chart.title, columns=[chart.x_label, *(s.label for s in chart.series)],
                 rows=rows, note=chart.note)


def cell_text(value: Cell) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)
