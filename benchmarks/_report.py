"""Result tables and the pass/fail judgement, shared by every benchmark script.

Owns: how a benchmark shows what it measured (fixed-width tables: a header line, a rule of
dashes, one row per measurement, columns separated by one space; medians and the p25-p75
spread of per-round values), how a measurement is judged against its target (PASS or FAIL;
``info``, ``base`` or ``n/a`` where nothing is judged), and the exit status that follows:
EXIT_MET (0) every target met, EXIT_MISSED (1) a target missed, EXIT_BROKEN (2) the benchmark
itself failed; run_all.py summarises by these.  Invariant: a script returns Judge.status(), so
a printed FAIL and the exit status cannot disagree.

Imported from beside the scripts (see _common.py); imports kcovx and numpy only inside
versions(), so a script decides when they load.  Single-threaded; prints to stdout.
"""

from __future__ import annotations

import operator
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

EXIT_MET = 0
EXIT_MISSED = 1
EXIT_BROKEN = 2

median = statistics.median

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


def spread(
    values: Sequence[float], *, method: Literal["exclusive", "inclusive"] = "exclusive"
) -> tuple[float, float]:
    """The 25th and 75th percentiles of values (statistics.quantiles' method); one value is its
    own spread."""
    if len(values) < 2:
        return (values[0], values[0])
    q = statistics.quantiles(values, n=4, method=method)
    return (q[0], q[2])


def spread_cell(q: tuple[float, float], width: int, digits: int) -> str:
    """``p25-p75`` as the tables print it: the low end right-aligned, the high end left."""
    return f"{q[0]:{width}.{digits}f}-{q[1]:<{width}.{digits}f}"


@dataclass(frozen=True)
class Target:
    """A target as the tables print it (``<=1.5``, ``>=0.8``, ``<3``): a comparison and a
    limit.  The text is kept as written, so ``<=2.0`` prints as such."""

    text: str

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"target {self.text!r}: expected <=, >=, < or > and a number")
        self.limit  # noqa: B018  (a limit that is not a number fails here, not when judged)

    @property
    def op(self) -> str:
        return self.text.rstrip("0123456789.")

    @property
    def limit(self) -> float:
        return float(self.text[len(self.op) :])

    def met(self, value: float) -> bool:
        return _OPS[self.op](value, self.limit)

    def __str__(self) -> str:
        return self.text


class Judge:
    """Turns measurements into verdicts and remembers whether a target was missed."""

    def __init__(self) -> None:
        self.missed = False

    def verdict(
        self, value: float, target: Target, *, judged: bool = True, reachable: bool = True
    ) -> str:
        """PASS or FAIL against target; ``info`` where the row is not judged, ``n/a`` where no
        implementation could meet the target there (neither counts as missed)."""
        if not judged:
            return "info"
        if not reachable:
            return "n/a"
        ok = target.met(value)
        self.missed |= not ok
        return "PASS" if ok else "FAIL"

    def status(self) -> int:
        return EXIT_MISSED if self.missed else EXIT_MET


@dataclass(frozen=True)
class Column:
    """One table column: its title, alignment, width and number format (e.g. ``.2f``).  A cell
    that is None prints as ``-``; strings and other objects print as text."""

    title: str
    align: str
    width: int
    fmt: str

    def head(self) -> str:
        return format(self.title, f"{self.align}{self.width}")

    def cell(self, value: object) -> str:
        if value is None:
            value = "-"
        if isinstance(value, int | float):
            return format(value, f"{self.align}{self.width}{self.fmt}")
        return format(str(value), f"{self.align}{self.width}")


_COLUMN = re.compile(r"(?P<title>.+?)(?P<align>[<>])(?P<width>[0-9]+)(?P<fmt>(?:\.[0-9]+)?[a-z]?)")


class Table:
    """A table from a spec like ``"m>8 | method<24 | us/op>9.2f"``: per column its title, then
    alignment, width and number format as in a format spec.  Columns print one space apart,
    each line after indent; a judged table ends with the columns ``target`` and ``result``."""

    def __init__(self, spec: str, *, judged: bool = False, indent: str = "") -> None:
        if judged:
            spec += " | target>7 | result>6"
        self.columns: list[Column] = []
        for part in spec.split("|"):
            m = _COLUMN.fullmatch(part.strip())
            if m is None:
                raise ValueError(f"table column {part.strip()!r}: expected TITLE<WIDTH or >WIDTH")
            self.columns.append(Column(m["title"], m["align"], int(m["width"]), m["fmt"]))
        self.indent = indent

    def print_head(self, *, rule: bool = True) -> None:
        head = " ".join(c.head() for c in self.columns)
        print(self.indent + head)
        if rule:
            print(self.indent + "-" * len(head))

    def print_row(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        print(self.indent + " ".join(c.cell(v) for c, v in zip(self.columns, cells, strict=True)))


def versions(*, numpy: bool = True) -> str:
    """``Python X, numpy Y, kcovx Z from PATH``: what produced the figures."""
    import kcovx

    parts = [f"Python {sys.version.split()[0]}"]
    if numpy:
        import numpy as np

        parts.append(f"numpy {np.__version__}")
    parts.append(f"kcovx {kcovx.__version__} from {kcovx.__file__}")
    return ", ".join(parts)
