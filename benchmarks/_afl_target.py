"""What bench_afl.py fuzzes: one target, a stdlib parser fed stdin, run by either engine.

    KCOVX_BENCH_ENGINE=kcovx       afl-fuzz ... -- kcovx afl --deferred --include tomllib \\
                                       benchmarks/_afl_target.py tomllib [N]
    KCOVX_BENCH_ENGINE=python-afl  py-afl-fuzz ... -- python benchmarks/_afl_target.py tomllib [N]

``tomllib`` (3.11+) parses the input as TOML; ``shlex`` splits it; ``email`` parses it as a
message.  Invalid input raises the parser's own error, which is caught: what is left is a real
finding (a crash to AFL).  The program is the same for both engines but for one import
(python-afl's ``afl`` or ``kcovx.afl``): it calls ``afl.init()`` after its imports or, with
N, ``while afl.loop(N)``, as python-afl's documentation shows.  With
``KCOVX_BENCH_ENGINE=none`` it is a plain program reading one input, for ``kcovx afl
--persistent N``, which needs no API in the program.  ``--replay DIR`` runs each file
in DIR through the target (no engine) under a kcovx device and prints the number of distinct
blocks of the parser's package: the measure bench_afl.py compares both engines' corpora with.
Single-threaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def _tomllib() -> tuple[Callable[[bytes], object], tuple[type[BaseException], ...]]:
    import tomllib

    return (lambda data: tomllib.loads(data.decode())), (tomllib.TOMLDecodeError, ValueError)


def _shlex() -> tuple[Callable[[bytes], object], tuple[type[BaseException], ...]]:
    import shlex

    return (lambda data: shlex.split(data.decode())), (ValueError,)


def _email() -> tuple[Callable[[bytes], object], tuple[type[BaseException], ...]]:
    import email
    import email.policy

    def parse(data: bytes) -> object:
        msg = email.message_from_bytes(data, policy=email.policy.default)
        return [(k, str(v)) for part in msg.walk() for k, v in part.items()]

    return parse, (ValueError, LookupError)


def _noop() -> tuple[Callable[[bytes], object], tuple[type[BaseException], ...]]:
    return len, ()


TARGETS = {"tomllib": _tomllib, "shlex": _shlex, "email": _email, "noop": _noop}


def run(
    fn: Callable[[bytes], object], errors: tuple[type[BaseException], ...], data: bytes
) -> None:
    try:  # noqa: SIM105 (a plain try costs less per input than contextlib.suppress)
        fn(data)
    except errors:  # the parser refusing its input: not a finding (UnicodeDecodeError too)
        pass


def replay(name: str, folder: str) -> int:
    """Distinct blocks of ``name``'s package that the files in ``folder`` reach."""
    import kcovx

    kcovx.instrument_imports([name])
    fn, errors = TARGETS[name]()
    dev = kcovx.open(profile="linux")
    dev.init_trace(1 << 20)
    area = dev.mmap()
    seen: set[int] = set()
    dev.enable()
    try:
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            area[0] = 0
            try:  # noqa: SIM105
                run(fn, errors, data)
            except Exception:  # a crash input: its blocks up to the crash still count
                pass
            seen.update(int(pc) for pc in area[1 : 1 + int(area[0])])
    finally:
        dev.disable()
        dev.close()
    return len(seen)


def main() -> None:
    if sys.argv[1] == "--replay":
        print(replay(sys.argv[2], sys.argv[3]))
        return
    name, engine = sys.argv[1], os.environ.get("KCOVX_BENCH_ENGINE", "kcovx")
    if engine == "none":  # a plain program, one input: for kcovx afl [--persistent N]
        fn, errors = TARGETS[name]()
        run(fn, errors, sys.stdin.buffer.read())
        return
    if engine == "python-afl":
        import afl
    else:
        from kcovx import afl  # type: ignore[no-redef]

    fn, errors = TARGETS[name]()
    if len(sys.argv) > 2:
        while afl.loop(int(sys.argv[2])):
            sys.stdin.seek(0)
            run(fn, errors, sys.stdin.buffer.read())
    else:
        afl.init()
        run(fn, errors, sys.stdin.buffer.read())
    os._exit(0)  # python-afl's advice: skip the interpreter's finalization


if __name__ == "__main__":
    main()
