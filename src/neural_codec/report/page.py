"""The page model: sections of paragraphs, tables and figures, rendered by `report.render`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from neural_codec.report.metrics import Num

#: one table cell or paragraph: text (with `code` and **bold** marks), a cited number, or a list
#: mixing both
Cell: TypeAlias = "str | Num | list[Cell]"
Row: TypeAlias = list[Cell]


@dataclass
class Table:
    header: list[str]
    rows: list[Row]
    css: str = ""


@dataclass
class Figure:
    name: str  # file name under report/figures/
    png: bytes
    caption: str


Block: TypeAlias = "Cell | Table | Figure"


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    anchor: str = ""


@dataclass
class Report:
    title: str
    verdict: Table
    sections: list[Section]
    controls: Table | None = None  # the positive-control table the page opens with
    controls_intro: str = ""  # what the control rows are, for this source

    @property
    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]
