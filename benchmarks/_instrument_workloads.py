"""What bench_instrument.py runs: the targets (pure-Python stdlib parsers) and their inputs.

Owns: the workloads, each a target function, the packages instrumented for it, the modules its
import brings in under the hook, and its corpus, fixed inputs stored byte for byte under
benchmarks/data/ (tomllib/: TOML documents, email/: messages, shlex/lines.txt: command lines;
two of each set are invalid on purpose, so the error paths are covered too).  Invariant: this
module never imports a target package itself (a target is built by its ``target()`` after the
worker imported the packages its own way), so a worker can still instrument them at import.
The driver and the workers (_instrument_worker.py) import it; no state beyond WORKLOADS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from _common import read_corpus


def _email_target() -> Callable[[bytes], object]:
    import email
    import email.policy

    policy = email.policy.default

    def parse_email(data: bytes) -> object:
        msg = email.message_from_bytes(data, policy=policy)
        out = []
        for part in msg.walk():
            for name, value in part.items():
                out.append((name, str(value)))
            if not part.is_multipart():
                out.append(part.get_content())
        return out

    return parse_email


def _toml_target() -> Callable[[str], object]:
    import tomllib

    return tomllib.loads


def _shlex_target() -> Callable[[str], object]:
    import shlex

    return shlex.split


@dataclass(frozen=True)
class Workload:
    name: str
    include: tuple[str, ...]  # the packages instrumented (and measured by coverage.py)
    imports: tuple[str, ...]  # what the target needs, imported under the hook
    text: bool  # inputs are passed as str
    corpus: str  # under benchmarks/data/: a folder (a file per input) or a file (a line each)
    target: Callable[[], Callable[[Any], object]]  # built after the imports

    def inputs(self) -> tuple[bytes, ...]:
        """The corpus, read from disk (at run time, so editing a file changes the inputs)."""
        return read_corpus(self.corpus)


WORKLOADS = {
    w.name: w
    for w in (
        Workload("tomllib", ("tomllib",), ("tomllib",), True, "tomllib", _toml_target),
        Workload(
            "email",
            ("email",),
            # email imports some modules inside functions: import them under the hook.
            (
                "email",
                "email.parser",
                "email.feedparser",
                "email.policy",
                "email.message",
                "email.contentmanager",
                "email.headerregistry",
                "email._header_value_parser",
                "email.iterators",
                "email.quoprimime",
                "email.base64mime",
            ),
            False,
            "email",
            _email_target,
        ),
        Workload("shlex", ("shlex",), ("shlex",), True, "shlex/lines.txt", _shlex_target),
    )
}


def under(name: str, include: Sequence[str]) -> bool:
    """Module name is one of the packages in include or inside one."""
    return any(name == p or name.startswith(p + ".") for p in include)


def import_all(wl: Workload) -> None:
    for m in wl.imports:
        importlib.import_module(m)
