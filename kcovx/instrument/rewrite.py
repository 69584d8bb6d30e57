"""The AST rewriter: puts a probe ``__kcovx_pc_<tag>__[i]`` at every basic block of a module.

The probe is a subscript of the unit's ``kcovx._area.Probe`` (bound in module globals and
builtins, see unit.py): recording the unit's i-th PC through the same recorder as
``trace_pc``, it evaluates to None.  In bytecode: a specialised global load, a small
constant, a subscript of a C object and a pop; no call (on 3.11 a call of a builtin would
count against the recursion limit), no Python frame.  Where it goes: a statement before a
statement; inside an expression ``probe[i] or expr``, or where that would change line events
(see Rewriter._expr_probe) ``(probe[i], expr)[1]``, or ``probe[i] is not None or cmp`` before a
comparison whose value is only tested.  Every inserted node carries the position the position
oracle (positions.py) gives, so line events, tracebacks and positions are those of the
original code; annotations are left alone.

Blocks (what gets a probe): the entry of every module, class body, function, lambda and
comprehension; the first statement of each branch (if/elif/else bodies, loop bodies and their
else, each except/except* handler, finally, each match case); the statement after a compound
statement (a join point); the right operands of ``and``/``or``; both arms of ``x if c else
y``; a match guard; an assert's message; and in comprehensions each condition and the
element.  Blocks are named with the qualified names CPython gives the code objects.

Threading: a Rewriter is used by one thread; ``rewrite`` is pure apart from the PCs it reads.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Sequence
from typing import Any, cast

from kcovx.instrument import versions
from kcovx.instrument.compares import CompareSites, Source
from kcovx.instrument.positions import (
    BRANCHY,
    NO_CODE,
    Loc,
    constant,
    first_loc,
    joins_matter,
    jump_loc,
    last_loc,
    loc,
    locate_shallow,
    place,
    pos,
    start,
    unplaced_start,
)
from kcovx.instrument.probes import (
    CLASS,
    COMPREHENSION,
    FUNCTION,
    INLINED,
    MODULE,
    BlockNumbering,
    fix_missing_locations,
    probe_name,
)
from kcovx.instrument.unit import Unit, cmp_names

# Bumped whenever the rewrite changes what it produces: part of the cache key.
REWRITE_VERSION = 4


def _then(probe: ast.expr, expr: ast.expr, tested: bool) -> ast.expr:
    """``(probe, expr)[1]``: ``probe`` then ``expr``'s value, with no jump (see _expr_probe
    for why that matters).  The tuple and the index sit where ``expr`` ends; when ``expr``
    is ``tested``, 3.12+ puts the jump after it at the position of the expression tested,
    the index."""
    end = last_loc(expr)
    pair = place(ast.Tuple(elts=[probe, expr], ctx=ast.Load()), end)
    index = place(ast.Constant(1), end)
    at = loc(expr) if tested and versions.JUMP_AT_TESTED else end
    return place(ast.Subscript(value=pair, slice=index, ctx=ast.Load()), at)


class Rewriter(BlockNumbering, CompareSites, ast.NodeTransformer):
    """Puts a probe at every block of one module's tree, in place, and records the blocks.

    Use: ``Rewriter(module, avoid, probe_name).visit(tree)`` once per tree.  Every visitor
    changes its node in place and returns that same node (so a parent never has to replace a
    child it visited); probes are inserted by the parent, which knows the child's role (a
    branch's first statement, an operand whose value is used or only tested).  Blocks are
    numbered in visiting order, which is source order.  Nesting that can be deeper than the
    recursion limit (elif chains, ``x if c else ...`` chains, operand chains such as
    ``a + b + ...``, attribute and call chains) is walked with loops, not one Python frame
    per level.

    State: the scopes and blocks (see probes.BlockNumbering), and what the visit knows of
    the context of the node at hand:

    * ``tested``: ids of the expressions whose value is only tested for truth (CPython
      compiles them to jumps);
    * ``unplaced_then``: ids of those whose test, when true, goes on to code that may start
      with an instruction without a position (positions.unplaced_start);
    * ``joined``: ids of the expressions whose value is used and followed by a join of jumps;
    * ``joins_ok``: False while visiting a statement where a probe must add no join of jumps
      (positions.joins_matter).

    With ``cmp``, comparisons are instrumented too (compares.CompareSites and its state);
    ``source`` is the text, for the operators' spans.
    """

    def __init__(
        self,
        module: str,
        avoid: set[int],
        probe_name: str,
        cmp: bool = False,
        source: str | None = None,
    ) -> None:
        super().__init__(module, avoid, probe_name)
        self.tested: set[int] = set()
        self.unplaced_then: set[int] = set()
        self.joined: set[int] = set()
        self.joins_ok = True
        self.cmp = cmp
        self.source = Source(source) if cmp and source is not None else None
        self.sites = []
        self.actions = []
        self.site_ordinals = {}
        self.cmp_name, self.held_name = cmp_names(probe_name)

    def generic_visit(self, node: ast.AST) -> ast.AST:
        """Visit the children of a node that has no visitor of its own, depth first in field
        order (the order blocks are numbered in), with a stack instead of recursion: chains
        of such nodes (``a + b + ...``, ``x.f().g()...``) can be deeper than the recursion
        limit.  A child with a visitor of its own is handed to it."""
        todo = [node]
        while todo:
            n = todo.pop()
            if n is not node and type(n) in _OWN_VISITORS:
                self.visit(n)
                continue
            children: list[ast.AST] = []
            for name in n._fields:
                value = getattr(n, name, None)
                if isinstance(value, ast.AST):
                    children.append(value)
                elif isinstance(value, list):
                    children.extend(v for v in value if isinstance(v, ast.AST))
            children.reverse()
            todo += children
        return node

    def _expr_probe(
        self, expr: ast.expr, test: bool = False, joined: bool = False, body_arm: bool = False
    ) -> ast.expr:
        """``expr`` preceded by a probe; ``test``: its value is only tested for truth;
        ``joined``: its value is used and the code after it is a join of jumps (the last
        operand of ``and``/``or``, the ``else`` arm of such an ``x if c else y``);
        ``body_arm``: it is the ``x`` of ``x if c else y``."""
        probe = self._probe_expr(pos(expr), first_loc(expr))
        if test:
            return self._probe_leaf(expr, probe)
        # ``probe[i] or expr`` (cheapest) puts a join of jumps after ``expr``.  CPython can
        # start an extra line event at a join on the same line: 3.12 when it is reached
        # straight after a call into Python code (so only where a join already is), 3.11 and
        # 3.13 when it is followed by the position-less jump that ends a conditional's body.
        if joined if versions.JOIN_AFTER_CALL else (not body_arm and self.joins_ok):
            return place(ast.BoolOp(op=ast.Or(), values=[probe, expr]), jump_loc(probe, expr))
        return self._probe_value(expr, probe)

    def _probe_value(self, expr: ast.expr, probe: ast.expr) -> ast.expr:
        """Put ``probe`` before ``expr``, whose value is used.  It goes in front of the part
        CPython evaluates first when ``expr`` ends with a join of jumps (``x if c else y``,
        ``a or b``): a tuple after such a join would move the position at the join."""
        path: list[ast.BoolOp] = []
        while isinstance(expr, ast.BoolOp):
            path.append(expr)
            expr = expr.values[0]
        new: ast.expr
        if isinstance(expr, ast.IfExp):
            expr.test = self._probe_leaf(expr.test, probe)
            new = expr
        else:
            new = _then(probe, expr, tested=False)
        if not path:
            return new
        path[-1].values[0] = new
        return path[0]

    def _probe_leaf(self, expr: ast.expr, probe: ast.expr) -> ast.expr:
        """Put ``probe`` before the part CPython evaluates first in a tested ``expr`` (the
        first operand of ``and``/``or``, the operand of ``not``, the test of ``x if c else
        y``, followed down as far as they go).  That is ``(probe[i], e)[1]``, which adds no
        jump: the jump after it takes the position of the expression tested (3.12+), or the
        position current in the statement (3.11).  But 3.11 sets the current position at each
        tested comparison and keeps it (across tests of the statement), and both make their
        own jumps for a chain of comparisons: there the probe joins the comparison as
        ``probe[i] is not None or cmp``, so that it is still compiled as tested (the probe's
        jump sits on the probe's line).  That jump gives the code after the test one more way
        in, which matters only where a position-less instruction could follow (see
        joins_ok)."""
        path: list[tuple[ast.expr, str]] = []  # (node, the field followed)
        while True:
            if isinstance(expr, ast.BoolOp):
                path.append((expr, "values"))
                expr = expr.values[0]
            elif isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
                path.append((expr, "operand"))
                expr = expr.operand
            elif isinstance(expr, ast.IfExp):
                path.append((expr, "test"))
                expr = expr.test
            else:
                break
        new: ast.expr
        if (
            isinstance(expr, ast.Compare)
            and (versions.SETS_POSITION or len(expr.ops) > 1)
            and id(expr) not in self.unplaced_then
        ):
            at = jump_loc(probe, expr)
            none = place(ast.Constant(None), at)
            check = place(ast.Compare(left=probe, ops=[ast.IsNot()], comparators=[none]), at)
            new = locate_shallow(ast.BoolOp(op=ast.Or(), values=[check, expr]), expr)
        else:
            new = _then(probe, expr, tested=True)
        if not path:
            return new
        parent, field = path[-1]
        if isinstance(parent, ast.BoolOp):
            parent.values[0] = new
        else:
            setattr(parent, field, new)
        return path[0][0]

    # ---- statement lists ----------------------------------------------------------------
    def _body(
        self, body: list[ast.stmt], entry: bool, skip: int = 0, empty_at: Loc | None = None
    ) -> list[ast.stmt]:
        """Visit ``body``; put a probe at its start (``entry``, after ``skip`` leading
        statements) and after each branching compound statement.  A probe goes before the
        next statement that compiles to code (not before ``global``/``nonlocal``); when no
        statement does, an entry probe goes last, at ``empty_at`` (where the code of an
        empty body is; default: the last statement), and a join point gets none."""
        out: list[ast.stmt] = []
        need = entry
        for i, stmt in enumerate(body):
            if need and i >= skip and not self._no_code(stmt):
                out.append(self._stmt_probe(body, i))
                need = entry = False
            joins_ok, self.joins_ok = self.joins_ok, not joins_matter(stmt)
            visited = self.visit(stmt)
            self.joins_ok = joins_ok
            if isinstance(visited, list):
                out.extend(visited)
            elif visited is not None:
                out.append(visited)
            if isinstance(stmt, BRANCHY):
                need = True
        if entry and body:
            # A body that is only a docstring (or future imports, or global declarations):
            # the entry is still a block.
            last = body[-1]
            out.append(self._probe_stmt(pos(last), empty_at or loc(last)))
        return out

    def _no_code(self, stmt: ast.stmt) -> bool:
        """Whether ``stmt`` compiles to no instruction: a declaration, or in a function a
        bare annotation of a name (``x: int``)."""
        if isinstance(stmt, NO_CODE):
            return True
        return (
            isinstance(stmt, ast.AnnAssign)
            and stmt.value is None
            and isinstance(stmt.target, ast.Name)
            and self.stack[-1][2] == FUNCTION
        )

    def _branch(self, body: list[ast.stmt]) -> list[ast.stmt]:
        return self._body(body, entry=bool(body))

    @staticmethod
    def _docstring_len(body: list[ast.stmt]) -> int:
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            return 1
        return 0

    # ---- scopes -------------------------------------------------------------------------
    def visit_Module(self, node: ast.Module) -> ast.Module:
        self._push("<module>", MODULE)
        skip = self._docstring_len(node.body)
        while (
            skip < len(node.body)
            and isinstance(node.body[skip], ast.ImportFrom)
            and getattr(node.body[skip], "module", None) == "__future__"
        ):
            skip += 1
        node.body = self._body(node.body, entry=True, skip=skip)
        self._pop()
        return node

    def _visit_defaults(self, args: ast.arguments) -> None:
        # Annotations are not instrumented: they are no control flow, and with
        # ``from __future__ import annotations`` their source text is their value.
        args.defaults = [self.visit(d) for d in args.defaults]
        args.kw_defaults = [None if d is None else self.visit(d) for d in args.kw_defaults]

    def _visit_outer_of_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        self._visit_defaults(node.args)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        node.target = self.visit(node.target)
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def _visit_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        self._visit_outer_of_def(node)
        self._push(node.name, FUNCTION, node.body, is_def=True)
        # A body without code (only a docstring) returns from the function's first line.
        first = start(node)[0]
        node.body = self._body(
            node.body,
            entry=True,
            skip=self._docstring_len(node.body),
            empty_at=(first, 0, first, 0),
        )
        self._pop()
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_def

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        self._visit_defaults(node.args)
        self._push("<lambda>", FUNCTION)
        node.body = self._expr_probe(self.visit(node.body))
        self._pop()
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.bases = [self.visit(b) for b in node.bases]
        node.keywords = [self.visit(k) for k in node.keywords]
        self._push(node.name, CLASS, node.body, is_def=True)
        skip = self._docstring_len(node.body)
        # Without a docstring, a class body's first code (storing __module__) is on the
        # class statement's line.
        first = start(node)[0]
        empty_at = None if skip else (first, 0, first, 0)
        body = self._body(node.body, entry=True, skip=skip, empty_at=empty_at)
        # The probe (and the comparison recorders) are looked up as globals, never in the
        # class namespace (a custom __prepare__ mapping must not see or create them).
        names = [self.probe_name, self.cmp_name, self.held_name] if self.cmp else [self.probe_name]
        decl = locate_shallow(ast.Global(names=names), node.body[0])
        node.body = [*body[:skip], decl, *body[skip:]]
        self._pop()
        return node

    def _visit_comp(self, node: Any, name: str, elts: Sequence[str]) -> ast.AST:
        gens: list[ast.comprehension] = node.generators
        # The first iterable is evaluated in the enclosing scope.
        gens[0].iter = self.visit(gens[0].iter)
        inlined = versions.INLINED_COMPS and not isinstance(node, ast.GeneratorExp)
        self._push(name, INLINED if inlined else COMPREHENSION)
        for k, gen in enumerate(gens):
            if k:
                gen.iter = self.visit(gen.iter)
            gen.target = self.visit(gen.target)
            nexts: list[ast.expr] = [*gen.ifs[1:], *(g.iter for g in gens[k + 1 : k + 2])]
            nexts.append(getattr(node, elts[0]))
            gen.ifs = [
                self._expr_probe(self._visit_test(c, nexts[i]), test=True)
                for i, c in enumerate(gen.ifs)
            ]
        for attr in elts:
            setattr(node, attr, self.visit(getattr(node, attr)))
        first = elts[0]
        element = getattr(node, first)
        # A join after an element spanning lines would carry the element's first line to
        # the append after it (a line event of its own on 3.11/3.13): no jump there.
        multi_line = element.lineno != element.end_lineno
        setattr(node, first, self._expr_probe(element, body_arm=multi_line))
        self._pop()
        return cast(ast.AST, node)

    def visit_ListComp(self, node: ast.ListComp) -> ast.AST:
        return self._visit_comp(node, "<listcomp>", ("elt",))

    def visit_SetComp(self, node: ast.SetComp) -> ast.AST:
        return self._visit_comp(node, "<setcomp>", ("elt",))

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> ast.AST:
        return self._visit_comp(node, "<genexpr>", ("elt",))

    def visit_DictComp(self, node: ast.DictComp) -> ast.AST:
        return self._visit_comp(node, "<dictcomp>", ("key", "value"))

    # ---- branches -----------------------------------------------------------------------
    def _visit_test(self, node: ast.expr, then: ast.AST | None = None) -> Any:
        """Visit an expression whose value is only tested for truth; so are the operands of
        ``and``/``or``/``not`` and the arms of ``x if c else y`` in it (CPython compiles them
        to jumps: a probe there must not be a value, see _expr_probe).  ``then``: the code
        the test goes on to when true."""
        todo = [(node, then is not None and unplaced_start(then))]
        while todo:
            e, unplaced = todo.pop()
            self.tested.add(id(e))
            if unplaced:
                self.unplaced_then.add(id(e))
            if isinstance(e, ast.BoolOp):
                for i, v in enumerate(e.values):
                    nxt = e.values[i + 1] if i + 1 < len(e.values) else None
                    and_next = isinstance(e.op, ast.And) and nxt is not None
                    todo.append((v, unplaced_start(nxt) if nxt and and_next else unplaced))
            elif isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
                todo.append((e.operand, unplaced))
            elif isinstance(e, ast.IfExp):
                todo.extend(((e.body, unplaced), (e.orelse, unplaced)))
        return self.visit(node)

    def visit_If(self, node: ast.If) -> ast.AST:
        # An elif chain is an If in the orelse of an If, as deep as the chain is long: walked
        # with a loop, doing for each elif what _branch(orelse) would (probe, then visit).
        outer_joins_ok = self.joins_ok
        n = node
        while True:
            n.test = self._visit_test(n.test, n.body[0])
            n.body = self._branch(n.body)
            orelse = n.orelse
            if not (len(orelse) == 1 and isinstance(orelse[0], ast.If)):
                n.orelse = self._branch(orelse)
                break
            inner = orelse[0]
            n.orelse = [self._stmt_probe(orelse, 0), inner]
            self.joins_ok = not joins_matter(inner)
            n = inner
        self.joins_ok = outer_joins_ok
        return node

    def visit_While(self, node: ast.While) -> ast.AST:
        node.test = self._visit_test(node.test, node.body[0])
        node.body = self._branch(node.body)
        node.orelse = self._branch(node.orelse)
        return node

    def _visit_for(self, node: ast.For | ast.AsyncFor) -> ast.AST:
        node.target = self.visit(node.target)
        node.iter = self.visit(node.iter)
        node.body = self._branch(node.body)
        node.orelse = self._branch(node.orelse)
        return node

    visit_For = visit_AsyncFor = _visit_for

    def _visit_try(self, node: Any) -> ast.AST:
        node.body = self._body(node.body, entry=False)
        for h in node.handlers:
            if h.type is not None:
                h.type = self.visit(h.type)
            h.body = self._branch(h.body)
        node.orelse = self._body(node.orelse, entry=False)
        node.finalbody = self._branch(node.finalbody)
        return cast(ast.AST, node)

    visit_Try = visit_TryStar = _visit_try

    def _visit_with(self, node: ast.With | ast.AsyncWith) -> ast.AST:
        node.items = [self.visit(i) for i in node.items]
        node.body = self._body(node.body, entry=False)
        return node

    visit_With = visit_AsyncWith = _visit_with

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        if not self.cmp:
            return self.generic_visit(node)
        operands = [node.left, *node.comparators]
        locs = [(first_loc(e), last_loc(e)) for e in operands]
        node.left = self.visit(node.left)
        node.comparators = [self.visit(c) for c in node.comparators]
        self.compare_sites(node, locs)
        return node

    def visit_Match(self, node: ast.Match) -> ast.AST:
        subject_locs = (first_loc(node.subject), last_loc(node.subject))
        node.subject = self.visit(node.subject)
        if self.cmp:
            self.match_sites(node, subject_locs)
        for case in node.cases:
            case.pattern = self.visit(case.pattern)
            if case.guard is not None:
                guard = self._visit_test(case.guard, case.body[0])
                case.guard = self._expr_probe(guard, test=True)
            case.body = self._branch(case.body)
        return node

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        node.test = self._visit_test(node.test)
        if node.msg is not None:
            node.msg = self._expr_probe(self.visit(node.msg))
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        test = id(node) in self.tested
        # The join after the last operand is only there if a jump to it is: CPython drops
        # the jumps after operands that are constants.
        if not test and not all(constant(v) for v in node.values[:-1]):
            self.joined.add(id(node.values[-1]))
        joined = [id(v) in self.joined for v in node.values]
        values = [self.visit(v) for v in node.values]
        node.values = [
            values[0],
            *(self._expr_probe(v, test, joined[i]) for i, v in enumerate(values) if i),
        ]
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        # ``a if c else b if d else ...`` nests in the else arm: a loop down the chain visits
        # each test and body arm, then the else arms get their probes innermost first (the
        # order a recursive visit would number them in).
        chain: list[tuple[ast.IfExp, bool, bool]] = []
        n = node
        while True:
            test = id(n) in self.tested
            joined = id(n) in self.joined  # then so is the else arm, which ends it
            if joined:
                self.joined.add(id(n.orelse))
            n.test = self._visit_test(n.test, n.body)
            n.body = self._expr_probe(self.visit(n.body), test, body_arm=True)
            chain.append((n, test, joined))
            if not isinstance(n.orelse, ast.IfExp):
                break
            n = n.orelse
        n.orelse = self.visit(n.orelse)
        for n, test, joined in reversed(chain):
            n.orelse = self._expr_probe(n.orelse, test, joined)
        return node


# The node types Rewriter has a visitor for; generic_visit hands them over.
_OWN_VISITORS = frozenset(
    getattr(ast, name[6:]) for name in vars(Rewriter) if name.startswith("visit_")
)


def rewrite_source(
    source: str | bytes, filename: str, module: str, avoid: set[int], cmp: bool = False
) -> Unit:
    """Instrument ``source`` as module ``module``: parse, rewrite, compile.  ``avoid``: PCs
    other units have (see Rewriter); ``cmp``: comparisons record too.  SyntaxError as
    ``compile`` raises it."""

    return rewrite_tree(ast.parse(source, filename), source, filename, module, avoid, cmp=cmp)


def rewrite_tree(
    tree: ast.Module,
    source: str | bytes,
    filename: str,
    module: str,
    avoid: set[int],
    *,
    cmp: bool = False,
) -> Unit:
    """``rewrite_source`` on a tree already parsed from ``source`` (and possibly rewritten
    by another tool that keeps positions, as pytest's assertion rewriting does); the tree is
    changed in place.  The probe name and PCs depend on ``source``, so the same source and
    tree give the same unit."""
    name = probe_name(source, filename, module)
    text = None
    if cmp:
        text = source if isinstance(source, str) else importlib.util.decode_source(source)
    rw = Rewriter(module, avoid, name, cmp, text)
    rw.visit(tree)
    rw.finish_sites()
    fix_missing_locations(tree)
    code = versions.compile_tree(tree, filename)
    return Unit(
        module, filename, code, rw.blocks, rw.scopes, name, rw.salted, cmp, rw.sites, rw.actions
    )
