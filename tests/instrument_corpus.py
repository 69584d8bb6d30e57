# The corpus of the instrumentation tests: one module with every kind of block kcovx puts a
# probe at (branches, loops, boolean operators, comprehensions, closures, try/with/match,
# generators, coroutines, exception groups, class bodies, decorators, annotations, enum and
# dataclass, comparisons of every kind cmp=True wraps, raising cases).  The tests read it as source text (tests/_instrument_support.py),
# write it to throwaway modules and import them plain and instrumented; each case_* function
# is one comparison.  Its odd spellings are deliberate (formatted lines decide positions):
# the linter and the formatter leave it alone.
# ruff: noqa
# fmt: off

import contextlib
import dataclasses
import enum
import functools
import types

COUNTER = 0
CLOSED = []
MODULE_VAR: (int or None) = 3

if COUNTER:
    MODE = "never"
elif CLOSED:
    MODE = "never either"
else:
    MODE = "module-level else"

try:
    import no_such_module_kcovx_test  # noqa
except ImportError:
    HAVE = False
else:
    HAVE = True


def deco(f):
    @functools.wraps(f)
    def wrapper(*a, **k):
        return ("deco", f(*a, **k))

    return wrapper


def straight(x, y=2, *rest, z=3, **kw):
    """Docstring of straight."""
    total = x + y + z
    total += sum(rest) + sum(kw.values())
    return total


def branches(n):
    if n < 0:
        return "neg"
    elif n == 0:
        out = "zero"
    else:
        out = "pos"
    if n > 100: out += "!"
    return out


def loops(n):
    acc = []
    for i in range(n):
        if i == 3:
            continue
        if i == 7:
            break
        acc.append(i)
    else:
        acc.append("for-else")
    j = 0
    while j < n:
        j += 1
        if j == 5:
            break
    else:
        acc.append("while-else")
    while True:
        j -= 1
        if j <= 0:
            break
    for k in range(2): acc.append(k)
    return acc, j


def boolops(a, b, c):
    x = a and b or c
    y = (a or
         b) and not c
    z = b if a else c
    w = (b
         if a
         else c)
    return x, y, z, w, a and (b or c), [v for v in (a, b, c) if v and v > 1]


def walrus(xs):
    if (n := len(xs)) > 2:
        pass
    ys = [y for x in xs if (y := x * 2) > 2]
    return n, ys, y


def comprehensions(n):
    squares = [fib(i) for i in range(n) if less(i % 2, 1)]
    evens = {i for i in range(n) if not i % 2}
    table = {i: [j for j in range(i)] for i in range(n)}
    gen = sum(x for x in range(n) if x > 1)
    nested = [(i, j) for i in range(n) for j in range(i) if i + j > 1 if j]
    rows = [
        {
            "i": i,
            "sq": i * i,
        }
        for i in range(n)
    ]
    return squares, sorted(evens), table, gen, nested, rows


def closures(n):
    count = 0

    def inc(k=1):
        nonlocal count
        count += k
        return count

    adders = [lambda x, i=i: x + i for i in range(n)]
    return [inc() for _ in range(n)], [f(10) for f in adders], (lambda: count)()


def tries(mode):
    log = []
    try:
        log.append("try")
        if mode == 1:
            raise ValueError("one")
        if mode == 2:
            return log + ["return-in-try"]
    except ValueError as e:
        log.append(f"except {e}")
    except (TypeError, KeyError):
        log.append("never")
    else:
        log.append("else")
    finally:
        log.append("finally")
    return log


@contextlib.contextmanager
def managed(log):
    log.append("enter")
    try:
        yield len(log)
    finally:
        log.append("exit")


def with_suppress(mode):
    log = []
    with managed(log) as n:
        log.append(n)
    with contextlib.suppress(KeyError):
        log.append("body")
        if mode:
            raise KeyError(mode)
        log.append("no-raise")
    log.append("after")
    with contextlib.nullcontext(5) as v, contextlib.nullcontext(6) as w:
        log.append(v + w)
    return log


class Point:
    __match_args__ = ("x", "y")

    def __init__(self, x, y):
        self.x, self.y = x, y


def less(x, y):
    return x < y


def matcher(value):
    match value:
        case 0 | 1:
            return "small"
        case [x, y, *rest] if less(x, y):
            return ("seq", x, y, rest)
        case {"k": v, **others}:
            return ("map", v, others)
        case Point(x=0, y=y):
            return ("point-on-axis", y)
        case str() as s if len(s) > 3:
            return "long-str"
        case _:
            return "other"


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def deep(n):
    return 0 if n == 0 else 1 + deep(n - 1)


def forever(n):
    return forever(n + 1)


def gen(n):
    """A generator."""
    total = 0
    for i in range(n):
        got = yield i
        if got:
            total += got
    return total


def delegate(n):
    result = yield from gen(n)
    yield ("result", result)


def closing_gen():
    try:
        yield 1
        yield 2
    finally:
        CLOSED.append("closed")


@types.coroutine
def tick():
    yield "tick"


def run(aw):
    ticks = 0
    while True:
        try:
            aw.send(None)
        except StopIteration as stop:
            return ticks, stop.value
        ticks += 1


class AsyncCM:
    async def __aenter__(self):
        await tick()
        return 100

    async def __aexit__(self, *exc):
        return exc[0] is KeyError


async def agen(n):
    for i in range(n):
        await tick()
        yield i


async def coro(n):
    await tick()
    total = 0
    async for v in agen(n):
        total += v
    async with AsyncCM() as cm:
        total += cm
    async with AsyncCM():
        raise KeyError("swallowed")
    return total, [v async for v in agen(n) if v % 2], {v: v async for v in agen(2)}


def groups(mode):
    log = []
    excs = [ValueError(1), TypeError(2), KeyError(3), OSError(4)][:mode]
    try:
        raise ExceptionGroup("eg", excs)
    except* ValueError as eg:
        log.append(("value", len(eg.exceptions)))
    except* TypeError:
        log.append("type")
    except* KeyError as eg:
        log.append(("key", repr(eg.exceptions[0])))
    return log


def make_class(flag):
    class Local:
        """Local doc."""

        kind = "a" if flag else "b"
        items = [len(str(i)) * 2 for i in range(3) if i]
        kinds = [kind] * 2
        if flag:
            extra = 1
        else:
            extra = 2

        def method(self):
            return (self.kind, self.extra, __class__.__name__)

        @staticmethod
        def smeth(x):
            return x * 2

        @classmethod
        def cmeth(cls):
            return cls.__qualname__

        @property
        def prop(self):
            return self.extra + 1

    obj = Local()
    names = sorted(vars(Local))
    return obj.method(), Local.smeth(3), Local.cmeth(), obj.prop, Local.items, Local.__doc__, names


def raiser(kind):
    data = {"a": 1}
    if kind == "key":
        return data["missing"]
    if kind == "attr":
        return data.missing_attribute
    if kind == "zero":
        return (1 +
                2) // (kind == "never")
    if kind == "nested":
        return [1 / (x - 1) for x in range(3)]
    if kind == "lambda":
        f = lambda v: v.undefined
        return f(3)
    if kind == "gen":
        return list(failing_gen())
    if kind == "group":
        return groups(4)
    if kind == "compare":
        return 1 < Counted(2) < (
            "three")
    if kind == "unhashable":
        return kind in {"a", noted([], []), "b"}
    if kind == "pattern":
        match Counted(9):
            case LOOK.missing_attribute_x:
                return "never"
    assert kind == "ok", ("bad kind", kind)
    return "ok"


def failing_gen():
    yield 1
    raise RuntimeError("in generator")


def multiline():
    x = (
        fib(3)
    )
    d = {
        "a": fib(2),
    }
    return (
        x
        + d["a"]
    )


def only_doc():
    """Only a docstring."""


def only_ellipsis():
    ...


def declares_global():
    global COUNTER
    COUNTER = COUNTER + 1
    return COUNTER


@deco
def decorated(x):
    return x + 1


@functools.lru_cache(maxsize=None)
def cached(x):
    return x * 3


def decorated_inner(x):
    @deco
    @functools.lru_cache(maxsize=None)
    def inner(y):
        return y * x

    return inner(3)


def string_stmt(flag):
    if flag:
        "not a docstring"
        return 1
    return 2


def annotated(x: int | None = None, *args: "Point", key: (int or str) = 1,
              **kw: dict[str, int]) -> list[int] if True else None:
    y: (int or str) = 1
    return [x, y, key]


class Annotated:
    a: int = 1
    b: (str or bytes)
    c: "Point" = None


two_lambdas = (lambda: "first"), (lambda: "second")
square = lambda v: v * v


class Color(enum.Enum):
    RED = 1
    GREEN = 2
    BLUE = enum.auto()

    def describe(self):
        return f"{self.name}={self.value}"

    @classmethod
    def first(cls):
        return next(iter(cls))


@dataclasses.dataclass(order=True)
class Item:
    name: str
    qty: int = 0
    tags: list = dataclasses.field(default_factory=list)

    def total(self, price):
        return self.qty * price


class Outer:
    class Inner:
        class Deepest:
            def where(self):
                return type(self).__qualname__


class Tool:
    """Tool doc."""

    def __init__(self, v):
        self._v = v

    @staticmethod
    def s(x):
        return x + 1

    @classmethod
    def c(cls, x):
        return (cls.__name__, x)

    @property
    def v(self):
        return self._v

    @v.setter
    def v(self, value):
        self._v = value * 10

    @v.deleter
    def v(self):
        self._v = None

    def m(self, y):
        return self._v + y


# ---- the cases -------------------------------------------------------------------------------

def case_straight():
    return straight(1), straight(1, 2, 3, 4, z=5, extra=6), straight.__doc__


def case_branches():
    return [branches(n) for n in (-1, 0, 1, 101)]


def case_loops():
    return loops(2), loops(5), loops(10)


def case_boolops():
    return [boolops(a, b, c) for a in (0, 2) for b in (0, 3) for c in (0, 1)]


def case_walrus():
    return walrus([1, 2, 3]), walrus([0])


def case_comprehensions():
    return comprehensions(5)


def case_closures():
    return closures(3)


def case_tries():
    return tries(0), tries(1), tries(2)


def case_with():
    return with_suppress(0), with_suppress(1)


def case_match():
    values = [0, [1, 2, 3], [3, 2], {"k": 1, "z": 2}, Point(0, 5), Point(1, 5), "long!", "ab"]
    return [matcher(v) for v in values]


def case_recursion():
    return fib(12), deep(300)


def case_generators():
    g = gen(4)
    out = [next(g), g.send(5), g.send(0)]
    try:
        while True:
            out.append(next(g))
    except StopIteration as stop:
        out.append(("stop", stop.value))
    out.extend(delegate(3))
    g2 = gen(10)
    next(g2)
    try:
        g2.throw(ValueError("thrown"))
    except ValueError as e:
        out.append(str(e))
    g3 = closing_gen()
    next(g3)
    g3.close()
    out.append(CLOSED[-1])
    return out


def case_coroutines():
    async def collect():
        return [v async for v in agen(3)]

    return run(coro(4)), run(collect())


def case_groups():
    return groups(1), groups(2), groups(3)


def case_class_bodies():
    return make_class(True), make_class(False)


def case_multiline():
    return multiline()


def case_empty_bodies():
    return only_doc(), only_doc.__doc__, only_ellipsis(), string_stmt(1), string_stmt(0)


def case_globals():
    return declares_global() - declares_global()


def case_decorators():
    return decorated(1), decorated.__name__, decorated_inner(2), cached(2), cached(2)


def case_lambdas():
    return [f() for f in two_lambdas], (lambda *a, k=3: (a, k))(1, 2), square(4)


def case_annotations():
    return annotated(5), annotated.__annotations__, Annotated.__annotations__


def case_enum_dataclass():
    items = sorted([Item("b", 2), Item("a", 1, ["t"])])
    return (
        [c.describe() for c in Color], Color.first().name, Color(2).name,
        repr(items), items[0] == Item("a", 1, ["t"]), items[1].total(3),
        Outer.Inner.Deepest().where(),
    )


def case_methods():
    t = Tool(2)
    out = [Tool.s(1), Tool.c(2), t.v, t.m(3)]
    t.v = 4
    out.append(t.v)
    del t.v
    out.append(t.v)
    return out


class Counted:
    """Logs every rich comparison it takes part in."""
    log = []

    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        Counted.log.append(("eq", self.v, getattr(other, "v", other)))
        if isinstance(other, str) and other == "boom":
            raise ValueError("eq raised")
        return self.v == getattr(other, "v", other)

    def __lt__(self, other):
        Counted.log.append(("lt", self.v, getattr(other, "v", other)))
        if isinstance(other, str):
            return NotImplemented
        return self.v < getattr(other, "v", other)

    def __gt__(self, other):
        Counted.log.append(("gt", self.v, getattr(other, "v", other)))
        return NotImplemented

    __hash__ = None


class Lookups:
    """Counts the attribute lookups of value patterns."""
    count = 0

    def __getattr__(self, name):
        if name.startswith("missing"):
            raise AttributeError(name)
        Lookups.count += 1
        return len(name)


LOOK = Lookups()


def noted(v, log):
    log.append(v)
    return v


def cmp_gen(log):
    x = yield
    r = noted(x, log) == (yield "second")
    got = yield r
    yield (got < (yield "fourth")) in [True, noted(False, log)]


def with_default(a, b=(COUNTER == 0), c=MODULE_VAR in (3, 4)):
    return a, b, c


@(deco if MODULE_VAR == 3 else None)
def compared_decorated(x):
    return x >= 2


class Compared:
    same = MODULE_VAR == 3
    inside = [n for n in range(5) if n >= 2 != n]
    if MODULE_VAR in (1, 2, 3):
        branch = "in"


def case_compare_chain():
    log = []
    a = noted(1, log) < noted(2, log) <= noted(2, log) != noted(5,
        log) == noted(3, log) < noted(9, log)
    b = (noted("x", log)
         == "x"  # a comment between the operands
         in noted(("x", "y"), log))
    c = noted(3, log) \
        > noted(4, log) > noted(0, log)
    d = noted(1, log) in (noted(1, log),) == (1,)
    e = noted(2, log) not in (noted(3, log), 4, "z") != noted(1, log)
    return a, b, c, d, e, log


def case_compare_counted():
    Counted.log.clear()
    x, y = Counted(1), Counted(2)
    out = [x == y, x < y, y > x, x != 1, 1 == x, x == x, Counted(0) < x < Counted(5),
           x in [y, Counted(1)], x not in (y, 2), x in (x,), 2 > x, x > y]
    out.append(x == "x")
    return out, list(Counted.log)


def case_compare_containers():
    log = []
    out = [noted(2, log) in (1, noted(2, log), 3),
           noted("ab", log) in ["a", noted("ab", log)],
           noted(3, log) in {noted(1, log), 3},
           noted("k", log) in {"j": 1, noted("k", log): 2},
           noted("bc", log) in "abcd", b"x" not in noted(b"xyz", log),
           noted(7, log) not in [noted(6, log), *(7, 8)],
           [1] in [[1], noted([2], log)], (1, 2) == (noted(1, log), 2)]
    return out, log


def case_compare_match():
    Counted.log.clear()
    Lookups.count = 0
    out = []
    for v in (0, 1, 3, 4, 5, "abc", b"abc", -1, Color.RED, Color.GREEN, Counted(4),
              [1, 3, 9], [1, 2], {"k": 5}, 2.5, None, True):
        match v:
            case 0 | 1:
                out.append("small")
            case LOOK.abc | LOOK.abcd as got:
                out.append(("look", getattr(got, "v", got)))
            case "abc" | b"abc":
                out.append("text")
            case Color.RED:
                out.append("red")
            case [1, (2 | 3) as second, *rest] if second == 3:
                out.append(("list", rest))
            case {"k": 5 | 6}:
                out.append("dict")
            case -1:
                out.append("neg")
            case x if x == Color.GREEN or x == 2.5:
                out.append("guard")
            case None:
                out.append("none")
            case _:
                out.append("other")
    return out, Lookups.count, list(Counted.log)


def case_compare_scopes():
    log = []
    g, h = cmp_gen(log), cmp_gen(log)
    next(g)
    next(h)
    # suspended between the operands of a comparison, while others compare in between
    steps = [g.send(4) == "second", h.send("x"), g.send(4), h.send("x") != 1, g.send(1),
             h.send(5), g.send(2) in (True, False), h.send(3)]
    comp = [i for i in range(6) if i % 2 == 1 if (j := i * 2) != 6]
    lam = (lambda q, w=len("ab") == 2: (q < 3, w))(2)
    fs = f"{noted(1, log) == 1}-{'a' < noted('b', log)!r:>6}-{3 > 2 if log else 0}"
    d = {k: v for k, v in zip("abc", range(3)) if k != "b" and v in (0, 2)}
    ge = sum(1 for i in range(10) if 3 <= i < 7)
    if (n := len(log)) > 2 and (m := n * 2) >= 6:
        walrus = (n, m)
    else:
        walrus = None
    return (steps, comp, j, lam, fs, d, ge, walrus, log, with_default(1),
            compared_decorated(3), Compared.same, Compared.inside, Compared.branch)


def case_compare_eq_raises():
    Counted.log.clear()
    out = []
    for probe in (lambda: Counted(1) == "boom", lambda: "boom" in (Counted(1), 2),
                  lambda: Counted(1) < Counted(2) == "boom", lambda: Counted(1) < "s"):
        try:
            out.append(probe())
        except (ValueError, TypeError) as e:
            out.append((type(e).__name__, str(e)))
    return out, list(Counted.log)


def case_raise_key():
    return raiser("key")


def case_raise_attr():
    return raiser("attr")


def case_raise_zero():
    return raiser("zero")


def case_raise_nested():
    return raiser("nested")


def case_raise_lambda():
    return raiser("lambda")


def case_raise_gen():
    return raiser("gen")


def case_raise_group():
    return raiser("group")


def case_raise_assert():
    return raiser("assert")


def case_raise_compare():
    return raiser("compare")


def case_raise_unhashable():
    return raiser("unhashable")


def case_raise_pattern():
    return raiser("pattern")


def case_raise_recursion():
    return forever(0)
