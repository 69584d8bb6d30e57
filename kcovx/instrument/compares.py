"""Comparison sites for the rewriter (``cmp=True``): which comparisons record, their PCs, the
actions of ``kcovx._area.Comparisons`` and the calls that carry operands to it.

What records (README.md, "Comparison records"): each link ``a OP b`` of a comparison whose OP
is ``== != < <= > >=``; ``in`` / ``not in`` against a literal container (a str or bytes
literal, or a tuple, list, set or dict display); top-level literal and value patterns of a
``match`` (also inside ``|`` and ``as``).  A link whose operands are both literals, or with a
literal that can give no record (None, a float, ...), records nothing and is left alone.

How (the comparison itself is never touched: CPython still evaluates it, so results,
exceptions, rich comparison calls and tracebacks are the plain code's): each operand that
takes part is wrapped as ``__kcovx_cmp_<tag>__(i, operand)``, a builtin that returns the
operand after action i: compare it with literals (recorded at once, as KCOV_CMP_CONST with
the literal as arg1), with the operand stashed before it (the left operand of its link), and
stash it for the link after it.  A literal operand gets no call.  A match subject is stashed
(and compared with the literal patterns); a value pattern ``a.b`` becomes
``__kcovx_held_<tag>__(j, a.b).v``, which compares ``a.b`` with the stashed subject.  The
inserted names and calls carry the positions of the operand's first and last instructions,
so they start no line and move no traceback.

A site's PC is ``pcs.site_pc`` of its scope and ordinal among that scope's comparison sites
(block PCs do not depend on cmp); its extent is the operator's span in the source (a
pattern's for a match case), found by scanning the source between the operands.

Threading: state per Rewriter, used by one thread.
"""

from __future__ import annotations

import ast
from typing import Any, cast

from kcovx import pcs
from kcovx.instrument.positions import Loc, first_loc, last_loc, loc, place
from kcovx.instrument.unit import BlockRec, CmpAction

_ORDERED = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_IN = (ast.In, ast.NotIn)
# Literals one operand is compared with at most (the items of a literal container after
# these record nothing); the same bound as kcovx._area.CMP_CONSTS_MAX.
MAX_CONSTS = 256
TAKE, PEEK = 1, 2


class _NoRecord:
    """A literal that gives no record (None, a float, an int beyond 64 bits, ...)."""


NO_RECORD = _NoRecord()


def literal(e: ast.expr) -> Any:
    """The value of ``e`` if it is a literal (a constant, or a sign or ``~`` before an int
    constant); NO_RECORD for a literal that cannot be recorded; None if ``e`` is no literal."""
    if isinstance(e, ast.UnaryOp) and isinstance(e.operand, ast.Constant):
        raw = e.operand.value
        if type(raw) not in (int, bool) or not isinstance(e.op, ast.USub | ast.UAdd | ast.Invert):
            return NO_RECORD if isinstance(e.op, ast.USub | ast.UAdd) else None
        v = int(cast(int, raw))
        return _recordable(
            -v if isinstance(e.op, ast.USub) else v if isinstance(e.op, ast.UAdd) else ~v
        )
    if isinstance(e, ast.Constant):
        return _recordable(e.value)
    return None


def _recordable(v: Any) -> Any:
    if type(v) is bool:
        return int(v)
    if type(v) is int:
        return v if -(1 << 63) <= v < 1 << 64 else NO_RECORD
    if type(v) in (str, bytes):
        return v
    return NO_RECORD


def container_items(e: ast.expr) -> list[ast.expr] | None:
    """The items of a container display (tuple, list, set, or a dict's keys), or None."""
    if isinstance(e, ast.Tuple | ast.List | ast.Set):
        if any(isinstance(x, ast.Starred) for x in e.elts):
            return None
        return list(e.elts)
    if isinstance(e, ast.Dict):
        if any(k is None for k in e.keys):  # ``**mapping`` in the display
            return None
        return [k for k in e.keys if k is not None]
    return None


class _Operand:
    """What one operand's action does, while it is being decided."""

    __slots__ = ("consts", "in_each", "in_kind", "in_pc", "in_tag", "out_tag")

    def __init__(self) -> None:
        self.consts: list[tuple[Any, int]] = []
        self.in_kind = 0
        self.in_tag = 0
        self.in_pc = 0
        self.in_each = 0
        self.out_tag = 0

    def used(self) -> bool:
        return bool(self.consts or self.in_kind or self.out_tag)

    def action(self) -> CmpAction:
        return (
            self.in_kind,
            self.in_tag,
            self.in_pc,
            self.in_each,
            self.out_tag,
            tuple(self.consts[:MAX_CONSTS]),
        )


class Source:
    """The source's lines as UTF-8 bytes (ast columns are UTF-8 byte offsets)."""

    def __init__(self, text: str) -> None:
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self.lines = [x.encode("utf-8", "surrogatepass") for x in lines]

    def _char(self, line: int, col: int) -> bytes:
        if not 1 <= line <= len(self.lines):
            return b""
        return self.lines[line - 1][col : col + 1]

    def operator_span(self, left: ast.expr, right: ast.expr) -> tuple[int, int, int, int]:
        """The span (1-based lines and columns, end exclusive) of the comparison operator
        between ``left`` and ``right``: past closing parentheses, blanks, comments and line
        continuations.  When it cannot be found, the span between the two operands."""
        line, col = left.end_lineno or left.lineno, left.end_col_offset or 0
        stop = (right.lineno, right.col_offset)
        fallback = (line, col + 1, stop[0], stop[1] + 1)
        while (line, col) < stop:
            c = self._char(line, col)
            if c in (b" ", b"\t", b"\x0c", b")"):
                col += 1
            elif c in (b"", b"#", b"\\"):
                line, col = line + 1, 0
            else:
                break
        else:
            return fallback
        text = self.lines[line - 1]
        for op in (b"==", b"!=", b"<=", b">=", b"<", b">", b"in"):
            if text.startswith(op, col):
                return (line, col + 1, line, col + len(op) + 1)
        if text.startswith(b"not", col):
            start = (line, col + 1)
            col += 3
            while (line, col) < stop:
                c = self._char(line, col)
                if c in (b" ", b"\t", b"\x0c"):
                    col += 1
                elif c in (b"", b"#", b"\\"):
                    line, col = line + 1, 0
                elif self.lines[line - 1].startswith(b"in", col):
                    return (*start, line, col + 3)
                else:
                    break
        return fallback


class CompareSites:
    """The comparison sites of one unit (a base of rewrite.Rewriter, with BlockNumbering).

    State: ``cmp`` (whether comparisons are instrumented at all), ``source``, ``cmp_name`` and
    ``held_name`` (the unit's two recorder names), ``sites`` (one BlockRec per site, in PC
    order of creation: the result), ``actions`` (one CmpAction per wrapped operand: the
    result), ``site_ordinals`` (next site ordinal per scope).  Uses BlockNumbering's
    ``stack``, ``unit``, ``_occurrence`` and ``_take_pc``."""

    cmp: bool
    source: Source | None
    sites: list[BlockRec]
    actions: list[CmpAction]
    site_ordinals: dict[int, int]
    cmp_name: str
    held_name: str

    def _new_site(self, extent: tuple[int, int, int, int]) -> int:
        """A new comparison site of the current scope with this extent: its number.  Actions
        name sites by number until ``finish_sites`` gives them PCs (after every block is
        numbered, so that sites change no block's PC)."""
        self_: Any = self
        index, qual, _, _ = self_.stack[-1]
        ordinal = self.site_ordinals.get(index, 0)
        self.site_ordinals[index] = ordinal + 1
        self.sites.append(BlockRec(index, qual, 0, ordinal, extent, 0))
        return len(self.sites) - 1

    def finish_sites(self) -> None:
        """Give every site its PC and put the PCs in the actions."""
        self_: Any = self
        for s in self.sites:
            s.occurrence = self_._occurrence(s.scope)
            s.pc = self_._take_pc(
                lambda salt, s=s: pcs.site_pc(self_.unit, s.function, s.occurrence, s.ordinal, salt)
            )
        pc_of = [s.pc for s in self.sites]
        tag = [0, *pc_of]  # tags are site numbers + 1 (0: none)
        self.actions = [
            (
                kind,
                tag[in_tag],
                pc_of[in_pc] if kind else 0,
                each,
                tag[out_tag],
                tuple((v, pc_of[c]) for v, c in consts),
            )
            for kind, in_tag, in_pc, each, out_tag, consts in self.actions
        ]

    def _wrap(self, name: str, op: _Operand, expr: ast.expr, first: Loc, last: Loc) -> ast.expr:
        """``name(i, expr)`` for a new action i: the name and index at ``first`` (where
        ``expr``'s first instruction is), the call at ``last`` (its last)."""
        i = len(self.actions)
        self.actions.append(op.action())
        func = place(ast.Name(name, ast.Load()), first)
        index = place(ast.Constant(i), first)
        return place(ast.Call(func=func, args=[index, expr], keywords=[]), last)

    def _span(self, left: ast.expr, right: ast.expr) -> tuple[int, int, int, int]:
        if self.source is not None:
            return self.source.operator_span(left, right)
        a, b = loc(left), loc(right)
        return (a[2], a[3] + 1, b[0], b[1] + 1)

    def compare_sites(self, node: ast.Compare, locs: list[tuple[Loc, Loc]]) -> None:
        """Wrap the operands of ``node`` (already visited) that take part in a recorded link;
        ``locs``: each operand's first and last instruction positions, taken before the
        visit."""
        operands = [node.left, *node.comparators]
        ops = [_Operand() for _ in operands]
        for k, op in enumerate(node.ops):
            a, b = operands[k], operands[k + 1]
            la, lb = literal(a), literal(b)
            if isinstance(op, _IN):
                if la is not None:
                    continue  # a literal looked up in something: nothing to compare it with
                if lb is not None:  # ``x in "text"``: a substring test, compared whole
                    if lb is not NO_RECORD and type(lb) is not int:
                        ops[k].consts.append((lb, self._new_site(self._span(a, b))))
                    continue
                items = container_items(b)
                if items is None:
                    continue
                values = [literal(x) for x in items]
                if all(v is not None for v in values):
                    kept = [v for v in values if v is not NO_RECORD]
                    if kept:
                        pc = self._new_site(self._span(a, b))
                        ops[k].consts += [(v, pc) for v in kept]
                    continue
                pc = self._new_site(self._span(a, b))
                ops[k].out_tag = pc + 1
                ops[k + 1].in_kind, ops[k + 1].in_tag, ops[k + 1].in_pc = TAKE, pc + 1, pc
                ops[k + 1].in_each = 1
                if isinstance(b, ast.List) and k + 1 == len(node.ops):
                    # A tuple, as CPython makes it of the last operand of a comparison (a list
                    # in the middle of a chain is compared again, as a list).
                    operands[k + 1] = ast.Tuple(elts=b.elts, ctx=ast.Load())
                    ast.copy_location(operands[k + 1], b)
                continue
            if not isinstance(op, _ORDERED):
                continue  # ``is`` / ``is not``
            if (la is not None and lb is not None) or NO_RECORD in (la, lb):
                continue
            pc = self._new_site(self._span(a, b))
            if la is not None:
                ops[k + 1].consts.append((la, pc))
            elif lb is not None:
                ops[k].consts.append((lb, pc))
            else:
                ops[k].out_tag = pc + 1
                ops[k + 1].in_kind, ops[k + 1].in_tag, ops[k + 1].in_pc = TAKE, pc + 1, pc
        wrapped = [
            self._wrap(self.cmp_name, op, e, *locs[k]) if op.used() else e
            for k, (op, e) in enumerate(zip(ops, operands, strict=True))
        ]
        node.left, node.comparators = wrapped[0], wrapped[1:]

    def match_sites(self, node: ast.Match, subject_locs: tuple[Loc, Loc]) -> None:
        """Record a match: the subject against each top-level literal pattern (at once, when
        the subject is evaluated) and against each top-level value pattern (when CPython
        evaluates the pattern's value)."""
        subject = _Operand()
        values: list[ast.MatchValue] = []
        for case in node.cases:
            todo: list[ast.pattern] = [case.pattern]
            while todo:
                p = todo.pop()
                if isinstance(p, ast.MatchOr):
                    todo.extend(reversed(p.patterns))
                elif isinstance(p, ast.MatchAs) and p.pattern is not None:
                    todo.append(p.pattern)
                elif isinstance(p, ast.MatchValue):
                    v = literal(p.value)
                    if v is None and isinstance(p.value, ast.Attribute):
                        values.append(p)
                    elif v is not None and v is not NO_RECORD:
                        pc = self._new_site(_extent(p))
                        if len(subject.consts) < MAX_CONSTS:
                            subject.consts.append((v, pc))
        if values:
            tag = 0
            for j, p in enumerate(values):
                pc = self._new_site(_extent(p))
                tag = tag or pc + 1
                held = _Operand()
                held.in_kind = TAKE if j == len(values) - 1 else PEEK
                held.in_tag, held.in_pc = tag, pc
                value = p.value
                call = self._wrap(self.held_name, held, value, first_loc(value), last_loc(value))
                attr = ast.Attribute(value=call, attr="v", ctx=ast.Load())
                p.value = place(attr, loc(value))
            subject.out_tag = tag
        if subject.used():
            node.subject = self._wrap(self.cmp_name, subject, node.subject, *subject_locs)


def _extent(node: ast.AST) -> tuple[int, int, int, int]:
    line, col, end_line, end_col = loc(node)
    return (line, col + 1, end_line, end_col + 1)
