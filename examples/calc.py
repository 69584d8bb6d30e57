"""A small calculator: tokenizer, recursive-descent parser and evaluator.

The example program of ``kcovx run`` and the default target of ``fuzz_loop.py``: ordinary,
branchy pure-Python code with nothing kcovx-specific in it.

    python -m kcovx run examples/calc.py "1 + 2 * x" "max(3, 4) ** 2"
"""

from __future__ import annotations

import contextlib
import math
import sys

FUNCS = {"max": max, "min": min, "abs": abs, "sqrt": math.sqrt}


class CalcError(ValueError):
    pass


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c.isdigit() or c == ".":
            j = i
            while j < len(text) and (text[j].isdigit() or text[j] == "."):
                j += 1
            tokens.append(("num", text[i:j]))
            i = j
        elif c.isalpha() or c == "_":
            j = i
            while j < len(text) and (text[j].isalnum() or text[j] == "_"):
                j += 1
            tokens.append(("name", text[i:j]))
            i = j
        elif text.startswith("**", i):
            tokens.append(("op", "**"))
            i += 2
        elif c in "+-*/%(),=":
            tokens.append(("op", c))
            i += 1
        else:
            raise CalcError(f"unexpected character {c!r} at {i}")
    tokens.append(("end", ""))
    return tokens


class Parser:
    def __init__(self, text: str, env: dict[str, float]) -> None:
        self.tokens = tokenize(text)
        self.pos = 0
        self.env = env

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos]

    def take(self, kind: str, value: str | None = None) -> str:
        k, v = self.tokens[self.pos]
        if k != kind or (value is not None and v != value):
            raise CalcError(f"expected {value or kind}, got {v or k!r}")
        self.pos += 1
        return v

    def statement(self) -> float:
        if self.peek()[0] == "name" and self.tokens[self.pos + 1] == ("op", "="):
            name = self.take("name")
            self.take("op", "=")
            value = self.expr()
            self.env[name] = value
        else:
            value = self.expr()
        self.take("end")
        return value

    def expr(self) -> float:
        value = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take("op")
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> float:
        value = self.power()
        while self.peek() in (("op", "*"), ("op", "/"), ("op", "%")):
            op = self.take("op")
            rhs = self.power()
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise CalcError("division by zero")
            elif op == "/":
                value /= rhs
            else:
                value %= rhs
        return value

    def power(self) -> float:
        base = self.unary()
        if self.peek() == ("op", "**"):
            self.take("op")
            exp = self.power()
            if abs(exp) > 64:
                raise CalcError("exponent too large")
            return base**exp
        return base

    def unary(self) -> float:
        if self.peek() == ("op", "-"):
            self.take("op")
            return -self.unary()
        return self.atom()

    def atom(self) -> float:
        kind, value = self.peek()
        if kind == "num":
            self.take("num")
            try:
                return float(value)
            except ValueError:
                raise CalcError(f"bad number {value!r}") from None
        if kind == "name":
            self.take("name")
            if self.peek() == ("op", "("):
                return self.call(value)
            if value not in self.env:
                raise CalcError(f"unknown variable {value!r}")
            return self.env[value]
        if self.peek() == ("op", "("):
            self.take("op")
            inner = self.expr()
            self.take("op", ")")
            return inner
        raise CalcError(f"unexpected {value or kind!r}")

    def call(self, name: str) -> float:
        if name not in FUNCS:
            raise CalcError(f"unknown function {name!r}")
        self.take("op", "(")
        args = [self.expr()]
        while self.peek() == ("op", ","):
            self.take("op")
            args.append(self.expr())
        self.take("op", ")")
        try:
            return float(FUNCS[name](*args))
        except (TypeError, ValueError) as e:
            raise CalcError(f"{name}: {e}") from None


def evaluate(text: str, env: dict[str, float] | None = None) -> float:
    """Evaluate one statement (``expr`` or ``name = expr``); CalcError on bad input."""
    return Parser(text, env if env is not None else {}).statement()


def fuzz_one(data: bytes) -> None:
    """Fuzz target: evaluate ``data`` as calculator input; CalcError is an expected outcome."""
    with contextlib.suppress(CalcError):
        evaluate(data.decode("utf-8", "replace"), {"x": 2.0, "y": 0.5})


SAMPLES = ["1 + 2 * x", "max(3, 4) ** 2", "y = 7 % 3", "-(1.5 - x) / 2", "sqrt(2", "1 / 0"]


def main(argv: list[str]) -> int:
    env = {"x": 2.0}
    status = 0
    for text in argv or SAMPLES:
        try:
            print(f"{text} = {evaluate(text, env):g}")
        except CalcError as e:
            print(f"{text}: error: {e}")
            status = 1 if argv else 0
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
