"""``kcovx report``: what a run covered, as a text table of blocks and through coverage.py's data
file and reporters (HTML, XML, JSON, lcov).

Owns: finding and merging cover files and PC tables (a run's own plus its children's
per-process ``FILE.<pid>`` siblings), refusing files whose words are not PCs of the tables,
the block table (text), and the conversion of blocks into coverage.py's model of lines and
arcs (``write_coverage_data``, also used by the pytest plugin).

The conversion, for one source file (all of it needs coverage.py's parser for that file):

- A block's *lines* are the statement lines (as coverage.py numbers statements: a multi-line
  statement is its first line) from the statement holding the block's start to the one holding
  its end.  A block is the straight-line run of statements up to a compound statement's
  header, so lines no block starts (``def``, a ``for`` header after a statement, the code
  after a ``def`` at module level) are reached from a block without a probe of their own.
- Unordered data (the gvisor profile, or any run not known to be an ordered trace): a line is
  executed when a covered block's lines hold it, or when it follows, as the only successor
  coverage.py's parser gives (exception edges into handlers aside), an executed line that is
  not the start of a block of its own.
- An ordered trace (the linux profile) is replayed as the calls it records: a function's entry
  block opens a frame; any other block continues the innermost open frame of its code object
  from which it is reachable (frames above it have returned or raised; a generator frame that
  was left is found again when it resumes).  Each step A -> B of a frame becomes the arcs of the
  cheapest path, among coverage.py's possible arcs, from A's last line to B's first line
  through lines that hold no probe (loop headers are allowed: a loop's back edge jumps to its
  header, whose probe ran before the loop); an arc into an ``except`` line costs far more than
  one the code falls through, unless it leaves a ``raise`` (and less the later it leaves a try
  body: which line raised is not recorded), so a path through an exception is chosen only when
  nothing else reaches.  Entry arcs are ``(-first, line)``; a frame's exit is the cheapest path
  from its last line to an arc ``(line, -first)``, or the arc ``(last line, -first)`` itself
  when it raised: when a step went through an exception edge, the innermost frame it closed
  raised, and the others did unless they are module or class bodies or their way out passes
  only statements that call nothing (those had returned: returns are not recorded).

Without coverage.py the text report works; everything else raises ``CoverageMissing`` (one
line, naming the extra to install).  coverage.py and ast load only when needed.  Cover files
and tables are untrusted input, read through ``kcovx.cover`` and ``kcovx.pcs``.  Stateless
between calls; one call runs on one thread.
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, NamedTuple, TextIO, TypeVar

from kcovx.errors import UnusableFileError, read_input
from kcovx.pcs import Block

if TYPE_CHECKING:
    import ast

    from kcovx.sancov import NativeObject

__all__ = [
    "CoverageMissing",
    "FileRow",
    "Inputs",
    "Outputs",
    "ReportError",
    "family",
    "format_text",
    "is_ordered",
    "load_inputs",
    "report",
    "write_coverage_data",
]

_T = TypeVar("_T")

INSTALL_HINT: Final = "this needs coverage.py: pip install 'kcovx[report]'"

# Comprehensions run as code objects of their own on 3.11, inline from 3.12 (PEP 709).
_COMPREHENSIONS: Final = frozenset(("<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"))
# What an arc into an except line costs on a path, unless it leaves a raise statement.
_EXCEPTION_COST: Final = 1000
# A path search gives up after visiting this many lines (a bound on a pathological file).
_MAX_VISITS: Final = 100_000


class ReportError(Exception):
    """A problem with the inputs or outputs of a report: one line to print, exit status 2."""


class CoverageMissing(ReportError, ImportError):
    """coverage.py is not installed."""


def _coverage() -> None:
    try:
        import coverage  # noqa: F401
    except ImportError:
        raise CoverageMissing(INSTALL_HINT) from None


# -- inputs -------------------------------------------------------------------------------------

_PID_SUFFIX = re.compile(r"\.[0-9]+")


def family(path: str) -> list[str]:
    """``path`` (when it exists) and its per-process siblings ``path.<pid>``, sorted."""
    folder, name = os.path.split(path)
    out = [path] if os.path.lexists(path) else []
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return out
    siblings = [e for e in entries if e.startswith(name) and _PID_SUFFIX.fullmatch(e[len(name) :])]
    siblings.sort(key=lambda e: int(e[len(name) + 1 :]))
    return out + [os.path.join(folder, e) for e in siblings]


@dataclass
class Inputs:
    """The merged PC tables and the cover files read with them."""

    blocks: dict[int, Block]
    objects: list[NativeObject]
    sites: frozenset[int]
    covers: list[tuple[str, list[int]]] = field(default_factory=list)  # (path, PCs)
    warnings: list[str] = field(default_factory=list)

    def covered(self) -> set[int]:
        return {pc for _, pcs in self.covers for pc in pcs}


def _read(load: Callable[[str], _T], path: str, what: str) -> _T:
    try:
        return read_input(load, path, what)
    except UnusableFileError as e:
        raise ReportError(str(e)) from None


def load_inputs(covers: Sequence[str], tables: Sequence[str]) -> Inputs:
    """Read and merge ``tables``, then read ``covers`` against them.  ReportError when a file
    is missing or malformed, two tables give one PC different blocks, or a cover file's words
    are mostly not PCs of the tables."""
    from kcovx.cover import read_cover
    from kcovx.pcs import read_pcs_table

    if not tables:
        raise ReportError("no PC table (kcovx run writes kcovx.pcs; see --pcs-table)")
    if not covers:
        raise ReportError("no cover file (kcovx run writes kcovx.cover)")
    blocks: dict[int, Block] = {}
    objects: dict[tuple[str, str, int], NativeObject] = {}
    sites: set[int] = set()
    for path in tables:
        table = _read(read_pcs_table, path, "PC table")
        for pc, block in table.blocks.items():
            have = blocks.setdefault(pc, block)
            if have != block:
                raise ReportError(
                    f"PC tables disagree on PC {pc:#x} ({_where(have)} and {_where(block)}): "
                    "they are not of one program (was the source changed between runs?)"
                )
        sites |= table.sites
        for obj in table.objects:
            objects.setdefault((obj.path, obj.build_id, obj.unit), obj)
    for pc in sites:
        blocks.pop(pc, None)
    units = {obj.unit for obj in objects.values()}
    out = Inputs(blocks, list(objects.values()), frozenset(sites))
    for path in covers:
        pcs = list(_read(read_cover, path, "cover file"))
        known = sum(1 for pc in pcs if pc in blocks or (pc >> 63 and pc >> 32 in units))
        # A cover file does not say what it holds.  A run with --cmp leaves comparison records
        # (type, operands, site PC) where PCs would be; a table from another run gives other
        # PCs.  Either way most words are not PCs of the tables, and counting them as
        # coverage would be wrong: refuse.  A few unknown PCs (a table written before the
        # process died) are left out with a warning.
        if pcs and known * 2 < len(pcs):
            cmp = sum(1 for pc in pcs if pc in sites)
            why = (
                "it holds comparison records (a kcovx run --cmp file), not PCs"
                if cmp
                else "is it from another run than the PC table(s)?"
            )
            raise ReportError(
                f"{path}: {len(pcs) - known} of its {len(pcs)} words are not PCs of the PC "
                f"table(s): {why}"
            )
        if known < len(pcs):
            out.warnings.append(
                f"{path}: {len(pcs) - known} PCs are not in the PC table(s), left out"
            )
        out.covers.append((path, pcs))
    return out


def _where(block: Block) -> str:
    return f"{block.file}:{block.start_line}.{block.start_col}"


def is_ordered(pcs: Sequence[int]) -> bool:
    """Whether a cover file is taken for an ordered trace (the linux profile): some PC comes
    twice.  The gvisor profile gives each block once per flush and ``kcovx run`` flushes once,
    so a repeat means linux; a linux trace without a repeat (straight-line code) is taken as
    unordered, which gives its lines and no arcs."""
    return len(set(pcs)) < len(pcs)


# -- the text report ----------------------------------------------------------------------------


class FileRow(NamedTuple):
    file: str
    covered: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.covered / self.total if self.total else 100.0

    @property
    def shown(self) -> str:
        """The percentage with one decimal, never rounded to 100.0 or 0.0 when not all or
        none is covered."""
        pct = self.percent
        if self.covered < self.total:
            pct = min(pct, 99.9)
        if self.covered > 0:
            pct = max(pct, 0.1)
        return f"{pct:5.1f}%"


def _shown(file: str, cwd: str) -> str:
    if file.startswith(cwd + os.sep):
        return file[len(cwd) + 1 :]
    return file


def file_rows(blocks: Mapping[int, Block], covered: set[int]) -> list[FileRow]:
    """Blocks covered / known per file, every file of the tables, sorted by file."""
    total: dict[str, int] = defaultdict(int)
    hit: dict[str, int] = defaultdict(int)
    for pc, block in blocks.items():
        total[block.file] += 1
        hit[block.file] += pc in covered
    return [FileRow(f, hit[f], total[f]) for f in sorted(total)]


def total_percent(rows: Sequence[FileRow]) -> float:
    return FileRow("", sum(r.covered for r in rows), sum(r.total for r in rows)).percent


def format_text(inputs: Inputs, *, show_missing: bool = False, cwd: str | None = None) -> str:
    """The text report: per file blocks covered / total and percent, sorted by file, totals
    last; native blocks by C file (covered only: native code has no list of its blocks);
    with ``show_missing`` every uncovered block as ``file:line.col,line.col``."""
    cwd = cwd if cwd is not None else os.getcwd()
    covered = inputs.covered()
    rows = file_rows(inputs.blocks, covered)
    names = [_shown(r.file, cwd) for r in rows]
    width = max([len("File"), len("TOTAL"), *map(len, names)])
    lines = [f"{'File':<{width}}  {'Blocks':>7}  {'Covered':>7}  {'Cover':>6}"]
    lines.append("-" * len(lines[0]))
    for name, row in zip(names, rows, strict=True):
        lines.append(f"{name:<{width}}  {row.total:7d}  {row.covered:7d}  {row.shown}")
    lines.append("-" * len(lines[0]))
    total = FileRow("TOTAL", sum(r.covered for r in rows), sum(r.total for r in rows))
    lines.append(f"{'TOTAL':<{width}}  {total.total:7d}  {total.covered:7d}  {total.shown}")
    native = _native_lines(inputs, covered)
    if native:
        lines.append("")
        lines.append("Native blocks covered (no totals: native code has no list of its blocks):")
        for file, hits in sorted(native.items()):
            lines.append(f"  {len(hits):7d}  {_shown(file, cwd)}")
    if show_missing:
        missing = sorted(
            (b for pc, b in inputs.blocks.items() if pc not in covered),
            key=lambda b: (b.file, b.start_line, b.start_col, b.end_line, b.end_col),
        )
        lines.append("")
        lines.append(f"Missing blocks ({len(missing)}):")
        for b in missing:
            lines.append(
                f"{_shown(b.file, cwd)}:{b.start_line}.{b.start_col},{b.end_line}.{b.end_col}"
            )
    return "\n".join(lines)


def _native_lines(inputs: Inputs, covered: set[int]) -> dict[str, dict[int, int]]:
    """Covered native PCs by C file: {file: {pc: line}}.  PCs whose object is gone or
    changed are left out (``kcovx symbolize`` says why)."""
    from kcovx.errors import UnknownPCError
    from kcovx.pcs import symbolize_native

    out: dict[str, dict[int, int]] = defaultdict(dict)
    for pc in sorted(covered):
        if pc in inputs.blocks or not pc >> 63:
            continue
        try:
            block = symbolize_native(pc, inputs.objects)
        except UnknownPCError:
            continue
        out[block.file][pc] = block.start_line
    return dict(out)


def append_native_lcov(path: str, inputs: Inputs) -> int:
    """Append the covered native lines to the lcov file ``path``, one record per C file (lines
    found = lines hit: native code has no list of its blocks).  Returns the records written."""
    native = _native_lines(inputs, inputs.covered())
    with open(path, "a", encoding="utf-8", errors="surrogateescape") as f:
        for file, hits in sorted(native.items()):
            lines = sorted({line for line in hits.values() if line > 0})
            if not lines:
                continue
            f.write(f"SF:{file}\n")
            for line in lines:
                f.write(f"DA:{line},1\n")
            f.write(f"LF:{len(lines)}\nLH:{len(lines)}\nend_of_record\n")
    return len(native)


# -- coverage.py's model ------------------------------------------------------------------------

Arc = tuple[int, int]


class _FileModel:
    """coverage.py's view of one source file (its statements and possible arcs) and kcovx's
    blocks in it."""

    def __init__(self, path: str, blocks: Iterable[Block], cov: object) -> None:
        import ast

        from coverage.python import PythonFileReporter

        reporter = PythonFileReporter(path, cov)  # type: ignore[arg-type]
        self.statements: set[int] = set(reporter.lines())
        self.multiline: dict[int, int] = dict(reporter.multiline_map())
        possible: set[Arc] = set(reporter.arcs())
        self.succ: dict[int, set[int]] = defaultdict(set)
        for a, b in possible:
            self.succ[a].add(b)
        self._scan(ast.parse(reporter.source()))
        ordered = sorted(self.statements)
        self.lines: dict[int, tuple[int, ...]] = {}
        for block in blocks:
            lo, hi = self.first(block.start_line), self.first(block.end_line)
            self.lines[block.pc] = tuple(s for s in ordered if lo <= s <= hi)
        # Blocks inside a statement (an operand, a conditional expression's arm): running one
        # does not move its frame to another line.
        self.inner: set[int] = set()
        for block in blocks:
            lines = self.lines[block.pc]
            if not lines or (block.start_line, block.start_col) > (
                lines[0],
                self._cols.get(lines[0], 0),
            ):
                self.inner.add(block.pc)
        # Lines where a probe runs first: a path without that block cannot pass them.
        self.probes = {ls[0] for pc, ls in self.lines.items() if ls and pc not in self.inner}
        self._paths: dict[tuple[int, int], tuple[list[Arc], int] | None] = {}
        self._block_arcs: dict[int, list[Arc]] = {}
        self._pred: dict[int, set[int]] | None = None

    def _scan(self, tree: ast.Module) -> None:
        """What the syntax tree tells: loops, handlers, raises, code objects, try bodies."""
        import ast

        self.loops: set[int] = set()
        self.handlers: set[int] = set()
        self.raises: set[int] = set()
        # Code objects as (first line of body, last line, co_firstlineno, the line of its
        # first line event when it is not that of its first block: a class body's is the
        # class line); the innermost one holding a line runs a frame at that line.
        self.codes: list[tuple[int, int, int, tuple[int, ...]]] = []
        tries: list[tuple[int, int, list[int]]] = []  # (body start, body end, handler lines)
        # (body start, body end, handlers' first line, handlers' last line)
        self.tries: list[tuple[int, int, int, int]] = []
        cols: dict[int, int] = {}
        self._cols = cols  # line -> 1-based byte column of its first statement
        # Statements that raise only in pathological cases (definitions, imports, ``pass``,
        # ``try:``, simple statements and tests without a call): a frame whose way out passes
        # only these and loop headers is taken to have returned before an exception in its
        # caller (see _Models._returns).
        self.quiet: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.stmt):
                cols[node.lineno] = min(cols.get(node.lineno, 1 << 32), node.col_offset + 1)
                if _quiet(node):
                    self.quiet.update(self.first(n) for n in [node.lineno, *_decorator_lines(node)])
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                end = node.end_lineno or node.lineno
                head = node.body[0]
                body = min([head.lineno, *(d.lineno for d in getattr(head, "decorator_list", ()))])
                # A class body's first line event is its class line, then its docstring's.
                entry = [node.lineno] if isinstance(node, ast.ClassDef) else []
                if entry and ast.get_docstring(node, clean=False) is not None:
                    entry.append(node.body[0].lineno)
                self.codes.append((body, end, first, tuple(entry)))
            elif isinstance(node, ast.Lambda):
                line = node.lineno
                self.codes.append((line, node.end_lineno or line, line, ()))
            if isinstance(node, ast.For | ast.AsyncFor | ast.While):
                self.loops.add(self.first(node.lineno))
            elif isinstance(node, ast.Try | ast.TryStar):
                handlers = [self.first(h.lineno) for h in node.handlers]
                tries.append((node.body[0].lineno, node.body[-1].end_lineno or 0, handlers))
                if node.handlers:
                    self.tries.append(
                        (
                            node.body[0].lineno,
                            node.body[-1].end_lineno or 0,
                            node.handlers[0].lineno,
                            node.handlers[-1].end_lineno or 0,
                        )
                    )
            elif isinstance(node, ast.ExceptHandler):
                self.handlers.add(self.first(node.lineno))
            elif isinstance(node, ast.Raise):
                self.raises.add(self.first(node.lineno))
        # coverage.py's possible arcs reach a handler from raise statements only; any line of
        # a try body may raise into its handlers: add those edges (they cost
        # _EXCEPTION_COST, see _cost).
        # Which line of a try body raised is not recorded: a path leaving it later costs less
        # (so the body's lines before the raising call are taken to have run, as the
        # straight-line rule of unordered data takes them).
        self._exc_cost: dict[Arc, int] = {}
        for lo, hi, handlers in tries:
            for line in self.statements:
                if lo <= line <= hi:
                    self.succ[line].update(handlers)
                    for h in handlers:
                        self._exc_cost.setdefault((line, h), _EXCEPTION_COST + 2 * (hi - line))
        # A module's first line event is its docstring's, if it has one.
        doc = ast.get_docstring(tree, clean=False) is not None
        self.module_entry: tuple[int, ...] = (tree.body[0].lineno,) if doc else ()

    def code_first(self, line: int) -> tuple[int, tuple[int, ...], bool]:
        """co_firstlineno of the innermost function, class body or lambda holding ``line``
        (1: the module), the lines of its line events before its first block (a class line,
        a docstring), and whether it is a module or class body."""
        best: tuple[int, int, tuple[int, ...]] = (0, 1, self.module_entry)
        for start, end, first, entry in self.codes:
            if start <= line <= end and start > best[0]:
                best = (start, first, entry)
        return best[1], best[2], best[0] == 0 or bool(best[2])

    def first(self, line: int) -> int:
        return self.multiline.get(line, line)

    def _passable(self, line: int) -> bool:
        return line not in self.probes or line in self.loops

    def _cost(self, a: int, b: int) -> int:
        if b in self.handlers and a not in self.raises:
            return self._exc_cost.get((a, b), _EXCEPTION_COST)
        return 1

    def path(self, a: int, b: int) -> tuple[list[Arc], int] | None:
        """The cheapest path of possible arcs from line ``a`` to line ``b`` (``b`` < 0: to
        any exit ``(x, b)``) through lines without a probe: (arcs, cost), or None."""
        key = (a, b)
        if key in self._paths:
            return self._paths[key]
        best: dict[int, int] = {}
        back: dict[int, int] = {}
        heap: list[tuple[int, int]] = []

        def reach(line: int, nxt: int, cost: int) -> None:
            if nxt < 0 and nxt != b:
                return
            c = cost + (0 if nxt < 0 else self._cost(line, nxt))
            if c < best.get(nxt, c + 1):
                best[nxt] = c
                back[nxt] = line
                heapq.heappush(heap, (c, nxt))

        for nxt in self.succ.get(a, ()):
            reach(a, nxt, 0)
        found: int | None = None
        visits = 0
        while heap and visits < _MAX_VISITS:
            cost, line = heapq.heappop(heap)
            visits += 1
            if cost > best[line]:
                continue
            if line == b:
                found = line
                break
            if line < 0 or not self._passable(line):
                continue
            for nxt in self.succ.get(line, ()):
                reach(line, nxt, cost)
        result: tuple[list[Arc], int] | None = None
        if found is not None:
            arcs: list[Arc] = []
            node = found
            while True:
                prev = back[node]
                arcs.append((prev, node))
                node = prev
                if node == a:
                    break
            arcs.reverse()
            result = (arcs, best[found])
        self._paths[key] = result
        return result

    def block_arcs(self, pc: int) -> list[Arc]:
        """The arcs inside a block: between its consecutive lines."""
        have = self._block_arcs.get(pc)
        if have is None:
            have = []
            lines = self.lines.get(pc, ())
            for a, b in itertools.pairwise(lines):
                step = self.path(a, b)
                have.extend(step[0] if step else [(a, b)])
            self._block_arcs[pc] = have
        return have

    def implied(self, executed: set[int]) -> set[int]:
        """``executed`` and the lines it implies ran (when no exception stopped the code):
        a line without a probe that is the only successor of an executed line (exception
        edges aside), and a line without a probe that is the only predecessor of an
        executed line (a loop header before its body, an ``except`` line before its
        handler's body).  When a handler of a try ran, its body's lines imply nothing past
        the body (its ``else``): the exception may have left the body at any of them."""
        if self._pred is None:
            self._pred = defaultdict(set)
            for a, nexts in self.succ.items():
                for b in nexts:
                    if a > 0 and b > 0:
                        self._pred[b].add(a)
        caught = [
            (lo, hi)
            for lo, hi, h_lo, h_hi in self.tries
            if any(h_lo <= line <= h_hi for line in executed)
        ]
        out = set(executed)
        todo = list(executed)
        while todo:
            line = todo.pop()
            nxt = {n for n in self.succ.get(line, ()) if n > 0 and n not in self.handlers}
            stop = line in self.raises or any(
                lo <= line <= hi and not all(lo <= n <= hi for n in nxt) for lo, hi in caught
            )
            prev = self._pred.get(line, set())
            for group in (set() if stop else nxt, prev):
                if len(group) != 1:
                    continue
                (n,) = group
                if n not in out and n not in self.probes and n in self.statements:
                    out.add(n)
                    todo.append(n)
        return out


def _decorator_lines(node: ast.stmt) -> list[int]:
    return [d.lineno for d in getattr(node, "decorator_list", ())]


def _quiet(node: ast.stmt) -> bool:
    """Whether running ``node`` (its header, for a compound statement) raises only in
    pathological cases."""
    import ast

    if isinstance(
        node,
        ast.FunctionDef
        | ast.AsyncFunctionDef
        | ast.ClassDef
        | ast.Import
        | ast.ImportFrom
        | ast.Pass
        | ast.Global
        | ast.Nonlocal
        | ast.Try
        | ast.TryStar,
    ):
        return True
    if isinstance(
        node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Expr | ast.Return | ast.Delete
    ):
        parts: list[ast.AST] = [node]
    elif isinstance(node, ast.If | ast.While):
        parts = [node.test]
    else:
        return False
    # No call: attribute and operator special methods aside, nothing to raise from.
    calls = ast.Call | ast.Await | ast.Yield | ast.YieldFrom
    return not any(isinstance(n, calls) for part in parts for n in ast.walk(part))


class _Frame:
    __slots__ = ("body", "first", "key", "last", "model", "raised")

    def __init__(self, key: tuple[str, str], model: _FileModel, first: int | None) -> None:
        self.key = key
        self.model = model
        self.first = first  # the code object's first line (entry and exit arcs), if known
        self.last: int | None = None  # the line the frame is at
        self.raised = False
        self.body = False  # a module or class body


class _Models:
    """The file models of a set of blocks, made on first use; files coverage.py cannot read
    (gone, not Python, not parseable) are left out."""

    def __init__(self, blocks: Mapping[int, Block]) -> None:
        self.blocks = blocks
        self.by_file: dict[str, list[Block]] = defaultdict(list)
        self.entry: set[int] = set()
        by_code: dict[tuple[str, str], Block] = {}
        for pc, block in blocks.items():
            if pc >> 63:
                continue
            self.by_file[block.file].append(block)
            key = (block.file, block.function)
            have = by_code.get(key)
            if have is None or (block.start_line, block.start_col) < (
                have.start_line,
                have.start_col,
            ):
                by_code[key] = block
        self.entry = {b.pc for b in by_code.values()}
        self._models: dict[str, _FileModel | None] = {}
        self._cov: object = None

    def model(self, file: str) -> _FileModel | None:
        if file not in self._models:
            if self._cov is None:
                import coverage

                # Its configuration (no config file: coverage.py's defaults) decides what the
                # parser excludes (# pragma: no cover), as for its own reporters.
                self._cov = coverage.Coverage(data_file=None, config_file=False)
            try:
                self._models[file] = _FileModel(file, self.by_file[file], self._cov)
            except Exception:  # any file coverage.py cannot read (gone, not Python) is left out
                self._models[file] = None
        return self._models[file]

    def files(self) -> list[str]:
        return [f for f in sorted(self.by_file) if self.model(f) is not None]

    def lines(self, covered: Iterable[int]) -> dict[str, set[int]]:
        hit: dict[str, set[int]] = defaultdict(set)
        for pc in set(covered):
            block = self.blocks.get(pc)
            model = self.model(block.file) if block is not None else None
            if block is not None and model is not None:
                hit[block.file].update(model.lines.get(pc, ()))
        out = {}
        for file, lines in hit.items():
            model = self.model(file)
            assert model is not None
            out[file] = model.implied(lines)
        return out

    def arcs(self, trace: Iterable[int]) -> dict[str, set[Arc]]:
        """Replay an ordered trace as calls (see the module docstring): the arcs per file."""
        out: dict[str, set[Arc]] = defaultdict(set)
        stack: list[_Frame] = []
        # Frames no longer open, as counts of their (line, first line, raised): a generator's
        # may resume; the others only wait for their exit arcs.  Counted, not kept, so that
        # memory does not grow with the number of calls.
        left: dict[tuple[str, str], Counter[tuple[int | None, int | None, bool]]] = defaultdict(
            Counter
        )
        seen: set[int] = set()
        for pc in trace:
            block = self.blocks.get(pc)
            if block is None:
                continue
            model = self.model(block.file)
            lines = model.lines.get(pc, ()) if model is not None else ()
            if model is None:
                continue
            key = (block.file, block.function)
            arcs = out[block.file]
            if pc not in seen:
                seen.add(pc)
                arcs.update(model.block_arcs(pc))
            if block.function.rsplit(".", 1)[-1] in _COMPREHENSIONS:
                # Its lines are those of the statement holding it, which a block of the
                # enclosing code covers; coverage.py gives its code object (3.11) no branches.
                continue
            if pc in self.entry:
                frame = _Frame(key, model, None)
                stack.append(frame)
                if lines:
                    self._enter(frame, lines[0], arcs)
                    frame.last = lines[-1]
                continue
            if pc in model.inner:
                continue  # a block inside one statement: the frame stays on its line
            frame, closing, cost = self._frame_for(stack, left, key, model, lines[0])
            closed = stack[len(stack) - closing :] if closing else []
            for done in closed:
                # The step went through an exception edge: the innermost closed frame raised
                # it; the others either passed it on or had returned before (returns are not
                # recorded).  One that had returned is at a line from which its way out
                # passes no line but loop headers and quiet statements; a module or class
                # body (an import, a class statement) is taken to have finished.
                done.raised = cost >= _EXCEPTION_COST and (
                    done is closed[-1] or not (done.body or self._returns(done))
                )
                left[done.key][(done.last, done.first, done.raised)] += 1
            if closing:
                del stack[len(stack) - closing :]
            if frame.last is None:
                self._enter(frame, lines[0], arcs)
            else:
                step = model.path(frame.last, lines[0])
                if step is not None:
                    arcs.update(step[0])
            frame.last = lines[-1]
        for frame in stack:
            self._exit(frame, out[frame.key[0]])
        for key, states in left.items():
            model = self.model(key[0])
            assert model is not None
            for (last, first, raised), n in states.items():
                if n > 0:
                    frame = _Frame(key, model, first)
                    frame.last, frame.raised = last, raised
                    self._exit(frame, out[key[0]])
        return {f: a for f, a in out.items() if a}

    @staticmethod
    def _returns(frame: _Frame) -> bool:
        """Whether the frame's way out from its line passes only loop headers and statements
        that do not raise (definitions, imports, ...)."""
        if frame.last is None or frame.first is None:
            return False
        step = frame.model.path(frame.last, -frame.first)
        model = frame.model
        return step is not None and all(
            b < 0 or b in model.loops or b in model.quiet for _, b in step[0]
        )

    @staticmethod
    def _enter(frame: _Frame, line: int, arcs: set[Arc]) -> None:
        frame.first, entry, frame.body = frame.model.code_first(line)
        chain = [-frame.first, *(e for e in entry if e != line)]
        arcs.update(itertools.pairwise(chain))
        step = frame.model.path(chain[-1], line) if len(chain) > 1 else None
        arcs.update(step[0] if step else [(chain[-1], line)])

    @staticmethod
    def _exit(frame: _Frame, arcs: set[Arc]) -> None:
        if frame.last is None or frame.first is None:
            return
        step = None if frame.raised else frame.model.path(frame.last, -frame.first)
        arcs.update(step[0] if step else [(frame.last, -frame.first)])

    @staticmethod
    def _frame_for(
        stack: list[_Frame],
        left: dict[tuple[str, str], Counter[tuple[int | None, int | None, bool]]],
        key: tuple[str, str],
        model: _FileModel,
        line: int,
    ) -> tuple[_Frame, int, int]:
        """The frame a non-entry block at ``line`` continues, how many frames above it close,
        and the cost of the step (exception edges cost ``_EXCEPTION_COST``)."""
        fallback: int | None = None
        for i in range(len(stack) - 1, -1, -1):
            frame = stack[i]
            if frame.key != key:
                continue
            if fallback is None:
                fallback = i
            step = model.path(frame.last, line) if frame.last is not None else ([], 0)
            if step is not None:
                return frame, len(stack) - 1 - i, step[1]
        states = left.get(key)
        for state, n in (states or {}).items():  # a generator resumed
            last, first, _ = state
            if n > 0 and last is not None and model.path(last, line) is not None:
                assert states is not None
                states[state] -= 1
                frame = _Frame(key, model, first)
                frame.last = last
                stack.append(frame)
                return frame, 0, 0
        if fallback is not None:
            return stack[fallback], len(stack) - 1 - fallback, 0
        frame = _Frame(key, model, None)  # the trace began inside this frame
        stack.append(frame)
        return frame, 0, 0


def write_coverage_data(
    path: str | os.PathLike[str],
    runs: Iterable[tuple[str, Sequence[int], bool]],
    blocks: Mapping[int, Block],
) -> None:
    """Write a coverage.py data file at ``path`` (replacing one there) through its public
    ``CoverageData`` API.  Each run is (context name, "" for none; the PCs recorded; whether
    they are an ordered linux trace).  PCs not in ``blocks`` are ignored.  A data file holds
    lines or arcs, not both: arcs when every run is ordered, else lines.  Every Python file of
    ``blocks`` that coverage.py can read is in the file, covered or not.  CoverageMissing
    without coverage.py."""
    _coverage()
    from coverage import CoverageData

    runs = [(context, pcs, ordered) for context, pcs, ordered in runs]
    use_arcs = bool(runs) and all(ordered for _, _, ordered in runs)
    models = _Models(blocks)
    data = CoverageData(basename=os.fspath(path))
    data.erase()
    if use_arcs:
        data.add_arcs({})
    else:
        data.add_lines({})
    for context, pcs, _ in runs:
        data.set_context(context or None)
        if use_arcs:
            data.add_arcs(models.arcs(pcs))
        else:
            data.add_lines(models.lines(pcs))
    data.set_context(None)
    data.touch_files(models.files())
    data.write()


# -- reports through coverage.py ----------------------------------------------------------------


@dataclass
class Outputs:
    html: str | None = None
    lcov: str | None = None
    xml: str | None = None
    json: str | None = None
    coverage_data: str | None = None

    def any(self) -> bool:
        return any((self.html, self.lcov, self.xml, self.json, self.coverage_data))


def _write_outputs(
    inputs: Inputs, outputs: Outputs, err: TextIO, ordered: bool | None = None
) -> None:
    import tempfile

    _coverage()
    import coverage
    from coverage.exceptions import NoDataError

    runs = [("", pcs, is_ordered(pcs) if ordered is None else ordered) for _, pcs in inputs.covers]
    with tempfile.TemporaryDirectory(prefix="kcovx-report-") as tmp:
        data_file = outputs.coverage_data or os.path.join(tmp, ".coverage")
        try:
            write_coverage_data(data_file, runs, inputs.blocks)
        except OSError as e:
            raise ReportError(f"cannot write the coverage data {data_file!r}: {e}") from None
        except coverage.CoverageException as e:
            raise ReportError(f"cannot write the coverage data {data_file!r}: {e}") from None
        if not (outputs.html or outputs.lcov or outputs.xml or outputs.json):
            return
        cov = coverage.Coverage(data_file=data_file, config_file=False)
        cov.load()
        todo: list[tuple[str, str | None, Callable[[str], object]]] = [
            ("HTML", outputs.html, lambda d: cov.html_report(directory=d, ignore_errors=True)),
            ("lcov", outputs.lcov, lambda f: cov.lcov_report(outfile=f, ignore_errors=True)),
            ("XML", outputs.xml, lambda f: cov.xml_report(outfile=f, ignore_errors=True)),
            ("JSON", outputs.json, lambda f: cov.json_report(outfile=f, ignore_errors=True)),
        ]
        for what, where, make in todo:
            if where is None:
                continue
            try:
                try:
                    make(where)
                except NoDataError:
                    if what != "lcov" or not inputs.covers:
                        raise
                    with open(where, "w", encoding="utf-8"):  # native records only
                        pass
            except (OSError, coverage.CoverageException) as e:
                raise ReportError(f"cannot write the {what} report {where!r}: {e}") from None
            if what == "lcov":
                append_native_lcov(where, inputs)
            print(f"kcovx report: {what} report -> {where}", file=err)


def report(
    covers: Sequence[str],
    tables: Sequence[str],
    *,
    outputs: Outputs | None = None,
    show_missing: bool = False,
    fail_under: float | None = None,
    ordered: bool | None = None,
    out: TextIO,
    err: TextIO,
) -> int:
    """``kcovx report``: print the text table to ``out``, write the ``outputs``; the exit
    status: 0, or 2 for any problem (one line on ``err``) and for a total below
    ``fail_under``.  ``ordered``: whether the cover files are ordered traces (arcs), None to
    tell from each file (``is_ordered``)."""
    outputs = outputs or Outputs()
    try:
        inputs = load_inputs(covers, tables)
        for warning in inputs.warnings:
            print(f"kcovx report: {warning}", file=err)
        print(format_text(inputs, show_missing=show_missing), file=out)
        if outputs.any():
            _write_outputs(inputs, outputs, err, ordered)
    except ReportError as e:
        print(f"kcovx report: {e}", file=err)
        return 2
    if fail_under is not None:
        pct = total_percent(file_rows(inputs.blocks, inputs.covered()))
        if pct < fail_under:
            print(
                f"kcovx report: total {pct:.2f}% of blocks covered is below --fail-under "
                f"{fail_under:g}",
                file=err,
            )
            return 2
    return 0
