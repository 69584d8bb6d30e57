"""Instrumented code we did not write, in a fuzz loop: kcovx against plain code and its peers.

Owns: the end-to-end targets of kcovx's instrumentation on pure-Python stdlib parsers
(``tomllib.loads`` over fixed TOML documents, the main workload; ``email`` parsing of fixed
messages with every header and part read; ``shlex.split`` over fixed command lines), each
instrumented at import with ``kcovx.instrument_imports(include=[package])`` and run per input
with the protocol of ``examples/fuzz_loop.py`` (``Fuzzer.run_one``: reset word 0, run the
input, flush, read the PCs view).  Baseline, in the same run: the uninstrumented target on
the same inputs through the same harness (decode, call, catch).  Targets, judged on every
workload:

* per-input coverage, gvisor profile <= 1.5x plain (3.12, 3.13), <= 1.8x (3.11); linux
  profile <= 1.7x (3.12, 3.13), <= 2.0x (3.11);
* ns per recorded block, (t_linux - t_plain) / PCs the linux profile records per exec,
  <= 12 ns on 3.12/3.13 (info on 3.11); printed beside it, from the same run: a C builtin
  call ``abs(i)`` and the probe itself in a loop, net of the empty loop;
* kcovx execs/s >= 2x atheris's (``atheris.instrument_imports``, its defaults: control flow
  and comparisons; inputs run in a plain loop, no libFuzzer), both profiles; "n/a" where
  atheris itself costs < 2x plain (only a kcovx faster than plain code could meet it);
* an import under ``kcovx.instrument_imports`` (creating the hook included) from a warm kcovx
  cache < 3x the plain import of the same modules (normal ``.pyc``).

For information: instrumented code with no device enabled vs plain; coverage.py's C tracer
(``COVERAGE_CORE=ctrace``, line coverage, ``source_pkgs=[package]``, started before the
import) and python-afl's ``settrace`` hook (a private SysV shm map in ``__AFL_SHM_ID``,
``afl.init()`` without a fork server) on the same loop; the import with no kcovx cache (an
empty ``KCOVX_CACHE_DIR``) in ms per 1,000 source lines, and the plain import compiled from
source (no ``.pyc``).

Method.  A module is instrumented when it is imported, so every configuration runs in a fresh
interpreter (``--worker``); the configurations of a workload are launched one after another
in a rotating order, round after round (the machine's 2 cores are shared and noisy).  Each
worker imports the target, builds its harness, warms up (>= 0.15 s), freezes the GC'd heap,
then times REPS repetitions of whole passes over the inputs (~70 ms each) and reports the
median time per exec; the tables show medians over the rounds and the spread (p25-p75) of the
per-round ratios.  Each worker also records each input's outcome (result or exception type),
which must be the same in every configuration, and checks that its coverage is live.  Import
workers pre-import the target's dependencies outside the instrumented package (found by a
probe run), so only the package's own modules are timed.

Threading: single-threaded workers; subprocesses run one at a time.  About 2 minutes.
Usage: ``python benchmarks/bench_instrument.py [--quick]``; needs atheris, coverage and
python-afl for the peer rows (missing ones are reported as skipped).  Exits 0 (targets met),
1 (a target missed) or 2 (a configuration failed).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import gc
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")

QUICK = "--quick" in sys.argv
ROUNDS = 2 if QUICK else 7  # fresh processes per configuration and workload
REPS = 3 if QUICK else 5  # timed repetitions inside one process
REP_SECONDS = 0.03 if QUICK else 0.07  # target duration of one repetition
WARM_SECONDS = 0.05 if QUICK else 0.15
CALIB_N = 200_000  # iterations of the abs / trace_pc / empty loops
IMPORT_ROUNDS = 3 if QUICK else 11
WORKER_TIMEOUT_S = 60

EXEC_CONFIGS = ("plain", "nodev", "gvisor", "linux", "atheris", "ctrace", "afl")
IMPORT_MODES = ("plain", "source", "warm", "cold")
PEER_MODULE = {"atheris": "atheris", "ctrace": "coverage", "afl": "afl"}

# --------------------------------------------------------------------------------------------
# Workloads: fixed inputs for stdlib parsers (deterministic; 2 of each set are invalid).

TOML_DOCS = [
    b"""# a pyproject.toml
[build-system]
requires = ["setuptools>=61", "wheel", "Cython>=3.0"]
build-backend = "setuptools.build_meta"

[project]
name = "example-pkg"
version = "1.2.3"
description = "A small example package"
readme = "README.md"
requires-python = ">=3.11"
license = { text = "MIT" }
authors = [{ name = "A. Person", email = "a@example.org" }, { name = "B. Person" }]
classifiers = [
    "Programming Language :: Python :: 3",
    "License :: OSI Approved :: MIT License",
    "Operating System :: POSIX :: Linux",
]
dependencies = ["numpy>=1.26", "requests[socks]~=2.31"]

[project.optional-dependencies]
test = ["pytest>=8", "hypothesis"]

[project.scripts]
example = "example.__main__:main"

[tool.ruff]
line-length = 100
target-version = "py311"

[tool.ruff.lint]
select = ["E", "F", "I", "UP", "B"]
ignore = []

[tool.pytest.ini_options]
addopts = "--strict-markers -ra"
filterwarnings = ["error", 'ignore:.*:DeprecationWarning']
xfail_strict = true
""",
    b"""# This is a TOML document
title = "TOML Example"

[owner]
name = "Tom Preston-Werner"
dob = 1979-05-27T07:32:00-08:00

[database]
enabled = true
ports = [ 8000, 8001, 8002 ]
data = [ ["delta", "phi"], [3.14] ]
temp_targets = { cpu = 79.5, case = 72.0 }

[servers]

[servers.alpha]
ip = "10.0.0.1"
role = "frontend"

[servers.beta]
ip = "10.0.0.2"
role = "backend"
""",
    b"""int1 = +99
int2 = 42
int3 = 0
int4 = -17
int5 = 1_000_000
hex1 = 0xDEADBEEF
hex2 = 0xdead_beef
oct1 = 0o755
bin1 = 0b11010110
flt1 = +1.0
flt2 = 3.1415
flt3 = -0.01
flt4 = 5e+22
flt5 = 1e06
flt6 = -2E-2
flt7 = 6.626e-34
flt8 = 224_617.445_991_228
sf1 = inf
sf2 = +inf
sf3 = -nan
bool1 = true
bool2 = false
str1 = "I'm a string. \\"You can quote me\\". Name\\tJos\\u00E9\\nLocation\\tSF."
str2 = 'C:\\Users\\nodejs\\templates'
str3 = '<\\i\\c*\\s*>'
str4 = \"\"\"
Roses are red
Violets are blue\"\"\"
str5 = \"\"\"\\
       The quick brown \\
       fox jumps over \\
       the lazy dog.\\
       \"\"\"
str6 = '''
The first newline is
trimmed in raw strings.
   All other whitespace
   is preserved.
'''
odt1 = 1979-05-27T07:32:00Z
odt2 = 1979-05-27T00:32:00.999999-07:00
odt3 = 1979-05-27 07:32:00Z
ldt1 = 1979-05-27T07:32:00
ld1 = 1979-05-27
lt1 = 07:32:00
lt2 = 00:32:00.999999
""",
    b"""name = "Orange"
physical.color = "orange"
physical.shape = "round"
site."google.com" = true
"quoted key" = 1
'literal key' = 2
3 = "numeric key"

[[products]]
name = "Hammer"
sku = 738594937

[[products]]  # empty table within the array

[[products]]
name = "Nail"
sku = 284758393
color = "gray"

[[fruits]]
name = "apple"

[fruits.physical]  # subtable
color = "red"
shape = "round"

[[fruits.varieties]]  # nested array of tables
name = "red delicious"

[[fruits.varieties]]
name = "granny smith"

[[fruits]]
name = "banana"

[[fruits.varieties]]
name = "plantain"
points = [ { x = 1, y = 2, z = 3 },
           { x = 7, y = 8, z = 9 },
           { x = 2, y = 4, z = 8 } ]
""",
    b"""[package]
name = "demo"
version = "0.3.1"
edition = "2021"
authors = ["Alice <alice@example.com>"]
rust-version = "1.70"

[dependencies]
serde = { version = "1.0", features = ["derive"] }
tokio = { version = "1", features = ["rt-multi-thread", "macros"], optional = true }
log = "0.4"

[dev-dependencies]
criterion = "0.5"

[features]
default = ["tokio"]
full = ["tokio", "serde/std"]

[profile.release]
lto = true
codegen-units = 1
opt-level = 3

[[bin]]
name = "demo"
path = "src/main.rs"

[target.'cfg(unix)'.dependencies]
libc = "0.2"
""",
    b'title = "x"\n[owner]\nname = "Tom"\ndob = 1979-05-27T07:32:00-08:00\n',
    b"[a.b]\nc = [1, 2.5, true]\nd = { e = 'f', g = 0x1F }\n",
    b'k = """multi\nline"""\n[[arr]]\nx = 1\n',
    b"[a]\nb = 1\n[a]\nc = 2\n",  # invalid: table declared twice
    b'key = "value"\nbad = [1, 2,\nother = { x = 1 \n',  # invalid: unterminated array
]

_HTML = base64.encodebytes(
    "<html><body><p>Bonjour à tous,</p><p>la réunion est déplacée.</p></body></html>\n".encode()
)
_BLOB = base64.encodebytes(bytes(range(256)) * 2)

EMAIL_MSGS = [
    b"""From: Alice Example <alice@example.org>
To: Bob <bob@example.com>, carol@example.net
Subject: Meeting tomorrow
Date: Tue, 15 Nov 1994 08:12:31 +0100
Message-ID: <1234@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset="us-ascii"
Content-Transfer-Encoding: 7bit

Hi Bob,

see you tomorrow at 10.

--
Alice
""",
    b"""Return-Path: <bounce@lists.example.org>
Received: from mail.example.org (mail.example.org [192.0.2.1])
\tby mx.example.com (Postfix) with ESMTPS id 4F1A2B3C4D
\tfor <bob@example.com>; Wed, 3 Jan 2024 10:00:00 +0000 (UTC)
From: =?utf-8?q?Ren=C3=A9_Dupont?= <rene@example.fr>
To: "Bob, the builder" <bob@example.com>
Cc: team@example.com (The Team), "Dan" <dan@example.com>
Subject: =?utf-8?b?UsOpdW5pb24gZGUgcHJvamV0?=
Date: Wed, 03 Jan 2024 11:00:00 +0100
Message-ID: <abc.def@example.fr>
In-Reply-To: <xyz@example.com>
References: <xyz@example.com> <uvw@example.com>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="BOUNDARY-1"

This is a multi-part message in MIME format.
--BOUNDARY-1
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

Bonjour =C3=A0 tous,
la r=C3=A9union est d=C3=A9plac=C3=A9e =C3=A0 jeudi.=20
Merci.
--BOUNDARY-1
Content-Type: text/html; charset="utf-8"
Content-Transfer-Encoding: base64

"""
    + _HTML
    + b"""--BOUNDARY-1--
""",
    b"""From: build-bot <bot@ci.example.com>
To: dev-list@example.com
Subject: [CI] build #4711 failed
Date: Fri, 21 Jun 2024 23:59:59 -0000
Message-ID: <ci-4711@ci.example.com>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="==outer=="

--==outer==
Content-Type: text/plain; charset=utf-8
Content-Disposition: inline

The build failed; the log is attached.
--==outer==
Content-Type: application/octet-stream; name="build.log"
Content-Disposition: attachment; filename="build.log"
Content-Transfer-Encoding: base64

"""
    + _BLOB
    + b"""--==outer==
Content-Type: message/rfc822

From: someone@example.com
To: bot@ci.example.com
Subject: original report

The original report.
--==outer==--
""",
    b"""From: nobody
To: <unterminated@example.com
Subject: broken
Date: not a date
Content-Type: multipart/mixed; boundary="XYZ"
X-Weird header without colon

--XYZ
Content-Type: text/plain

part one
--XYZ
Content-Type: text/plain; charset=unknown-8bit
Content-Transfer-Encoding: base64

!!!notbase64
""",
    b"Subject: no body\n",
    b"Content-Type: text/plain; charset=nonexistent-charset\n\n\xff\xfe body\n",
]

SHLEX_LINES = [
    b"""gcc -O2 -Wall -o "my prog" main.c 'util file.c' -DNAME=\\"value\\" -I/usr/include""",
    b"""ls -la /tmp/some\\ dir | grep "foo bar" && echo 'done' || exit 1""",
    b"""find . -name '*.py' -exec grep -l "import os" {} \\; -print""",
    b"""echo "nested 'quotes' and \\"escapes\\" here" 'single "double" inside' plain""",
    b"""python -c 'print("hello world")' --flag=value --other="a b c" -- rest args""",
    b"""rsync -avz --exclude='*.o' --exclude="build dir" src/ user@host:/dest/path/""",
    b"""export PATH="$HOME/bin:$PATH"; cd ~/project && make -j4 CFLAGS='-g -O0'""",
    b"""git commit -m "Fix the \\"quoted\\" case" --author='A U Thor <a@example.org>'""",
    b"""a"b"c'd'e\\ f "unterminated""",  # invalid: no closing quotation
    b"""trailing escape \\""",  # invalid: no escaped character
]


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
    inputs: tuple[bytes, ...]
    target: Callable[[], Callable[[Any], object]]  # built after the imports


WORKLOADS = {
    w.name: w
    for w in (
        Workload("tomllib", ("tomllib",), ("tomllib",), True, tuple(TOML_DOCS), _toml_target),
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
            tuple(EMAIL_MSGS),
            _email_target,
        ),
        Workload("shlex", ("shlex",), ("shlex",), True, tuple(SHLEX_LINES), _shlex_target),
    )
}

# --------------------------------------------------------------------------------------------
# Workers (run in fresh interpreters).


def _under(name: str, include: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in include)


def _import_all(wl: Workload) -> None:
    for m in wl.imports:
        importlib.import_module(m)


def _is_kcovx_instrumented(mod: types.ModuleType) -> bool:
    from kcovx.instrument import PROBE

    # the import hook binds the probe (``__kcovx_pc_<tag>__``) in each module it loads
    return any(k.startswith(PROBE) for k in vars(mod))


def _is_atheris_instrumented(mod: types.ModuleType) -> bool:
    """atheris's probes load the atheris module as a constant of each patched code object
    (a module that defines no function cannot be told apart: True)."""
    codes = [
        v.__code__
        for v in vars(mod).values()
        if isinstance(v, types.FunctionType) and v.__module__ == mod.__name__
    ]
    return not codes or any(
        isinstance(c, types.ModuleType) for code in codes for c in code.co_consts
    )


def _plain_runner(target: Callable[[Any], object], text: bool) -> Callable[[bytes], None]:
    """What Fuzzer.run_one does around the target, without the device."""
    if text:

        def run(data: bytes) -> None:
            try:  # noqa: SIM105  (the same try/except as Fuzzer.run_one)
                target(data.decode("utf-8", "replace"))
            except Exception:
                pass

    else:

        def run(data: bytes) -> None:
            try:  # noqa: SIM105
                target(data)
            except Exception:
                pass

    return run


def _timed(run: Callable[[bytes], object], inputs: Sequence[bytes], passes: int) -> float:
    clock = time.perf_counter
    t0 = clock()
    for _ in range(passes):
        for d in inputs:
            run(d)
    return clock() - t0


def _outcomes(target: Callable[[Any], object], wl: Workload) -> list[str]:
    out = []
    for d in wl.inputs:
        try:
            target(d.decode("utf-8", "replace") if wl.text else d)
            out.append("ok")
        except Exception as e:  # the same exception types in every configuration
            out.append(type(e).__name__)
    return out


class _AflMap:
    """A private 64 KiB SysV shm segment handed to python-afl as afl-fuzz would."""

    IPC_PRIVATE, IPC_CREAT, IPC_RMID, MAP_SIZE = 0, 0o1000, 0, 1 << 16

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmget.restype = ctypes.c_int
        libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
        libc.shmat.restype = ctypes.c_void_p
        libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
        libc.shmctl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
        self.shmid = libc.shmget(self.IPC_PRIVATE, self.MAP_SIZE, self.IPC_CREAT | 0o600)
        if self.shmid < 0:
            raise OSError(ctypes.get_errno(), "shmget")
        addr = libc.shmat(self.shmid, None, 0)
        # Removed now: the segment lives until the last detach (process exit), and Linux
        # still lets python-afl attach it by id meanwhile.
        libc.shmctl(self.shmid, self.IPC_RMID, None)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "shmat")
        self.view = (ctypes.c_ubyte * self.MAP_SIZE).from_address(addr)

    def nonzero(self) -> int:
        return sum(1 for b in bytes(self.view) if b)


def _import_target(wl: Workload, config: str, info: dict[str, Any]) -> Any:
    """Import the target's modules the configuration's way; the coverage.py object for
    ctrace (started before the import, as ``coverage run`` would), else None."""
    import kcovx

    already = sorted(m for m in sys.modules if _under(m, wl.include))
    if already:
        raise RuntimeError(f"{already} imported before the target was instrumented")
    cov = None
    if config in ("nodev", "gvisor", "linux"):
        with kcovx.instrument_imports(include=list(wl.include)):
            _import_all(wl)
    elif config == "atheris":
        import atheris

        with atheris.instrument_imports(include=list(wl.include)):
            _import_all(wl)
    elif config == "ctrace":
        import coverage
        import coverage.exceptions

        # coverage.py imports tomllib itself (config files), before it starts: say nothing.
        warnings.simplefilter("ignore", coverage.exceptions.CoverageWarning)
        cov = coverage.Coverage(data_file=None, config_file=False, source_pkgs=list(wl.include))
        cov.start()
        info["core"] = dict(cov.sys_info()).get("core")
        if info["core"] != "CTracer":
            raise RuntimeError(f"coverage.py core is {info['core']!r}, not CTracer")
        _import_all(wl)
    else:
        _import_all(wl)
    return cov


def _time_runs(run: Callable[[bytes], object], inputs: Sequence[bytes]) -> list[float]:
    """Warm up (specialisation, caches), size a repetition, then REPS timed repetitions:
    seconds per exec of each."""
    passes, t = 0, 0.0
    while t < WARM_SECONDS or passes < 3:
        t += _timed(run, inputs, 1)
        passes += 1
    reps_passes = max(1, round(REP_SECONDS / (t / passes)))
    gc.collect()
    gc.freeze()
    times = [_timed(run, inputs, reps_passes) / (reps_passes * len(inputs)) for _ in range(REPS)]
    gc.unfreeze()
    return times


def _check_live(config: str, mods: list[types.ModuleType], cov: Any, amap: _AflMap | None) -> None:
    """Each configuration really observed the target."""
    if amap is not None:
        sys.settrace(None)
        if amap.nonzero() == 0:
            raise RuntimeError("python-afl recorded nothing")
    if cov is not None:
        cov.stop()
        data = cov.get_data()
        if sum(len(data.lines(f) or ()) for f in data.measured_files()) == 0:
            raise RuntimeError("coverage.py measured no line of the target")
    check = {
        "nodev": _is_kcovx_instrumented,
        "gvisor": _is_kcovx_instrumented,
        "linux": _is_kcovx_instrumented,
        "atheris": _is_atheris_instrumented,
    }.get(config)
    bad = [m.__name__ for m in mods if check is not None and not check(m)]
    if bad:
        raise RuntimeError(f"not instrumented by {config}: {bad}")


def worker_exec(wl: Workload, config: str) -> dict[str, Any]:
    sys.path.insert(0, EXAMPLES)
    from fuzz_loop import Fuzzer

    info: dict[str, Any] = {}
    cov = _import_target(wl, config, info)
    target = wl.target()
    mods = [sys.modules[m] for m in sorted(sys.modules) if _under(m, wl.include)]
    fz = None
    if config in ("gvisor", "linux"):
        fz = Fuzzer(target, profile=config, text=wl.text)
        run: Callable[[bytes], object] = fz.run_one
    else:
        run = _plain_runner(target, wl.text)
    amap = None
    if config == "afl":
        import afl

        amap = _AflMap()
        os.environ["__AFL_SHM_ID"] = str(amap.shmid)
        afl.init()  # no fork server (fd 199 is closed): attaches the map, sys.settrace(trace)

    times = _time_runs(run, wl.inputs)

    # Untimed: outcomes, live coverage, PCs per exec.
    info["outcomes"] = _outcomes(target, wl)
    _check_live(config, mods, cov, amap)
    if fz is not None:
        counts, distinct = [], []
        for d in wl.inputs:
            pcs = fz.run_one(d)
            counts.append(len(pcs))
            distinct.append(len(set(pcs.tolist())))
        if max(counts) >= fz.device.size - 1:
            raise RuntimeError("the area clipped: raise Fuzzer(size=...)")
        info["pcs_per_exec"] = statistics.fmean(counts)
        info["distinct_per_exec"] = statistics.fmean(distinct)
        fz.close()
    info["modules"] = [m.__name__ for m in mods]
    return {"times": times, **info}


_LOOP_SRC = """
def run(r, f, clock):
    t0 = clock()
    for i in r:
        {body}
    return clock() - t0
"""


def _fresh(body: str) -> Callable[..., int]:
    """A loop running ``body`` once per item of r, in a code object of its own (so CPython's
    specialisation of one loop never sees another's callable)."""
    ns: dict[str, Any] = {}
    exec(compile(_LOOP_SRC.format(body=body), "<bench_instrument>", "exec"), ns)  # fixed source
    return ns["run"]  # type: ignore[no-any-return]


def _probe_carrier(x: int) -> int:
    """Instrumented by the calibration worker, to see what a probe looks like."""
    if x:
        return 1
    return 0


def _probe_shape() -> tuple[Any, str, int]:
    """The object instrumented code records with, how it uses it (``call``: ``P(pc)``,
    ``subscript``: ``P[i]``, i a block's index in its unit) and the constant one probe
    passes."""
    import dis

    import kcovx
    from kcovx import instrument

    kcovx.instrument_func(_probe_carrier)
    ins = list(dis.get_instructions(_probe_carrier))
    for k, x in enumerate(ins):
        if x.opname == "LOAD_GLOBAL" and str(x.argval).startswith(instrument.PROBE):
            const = next(y for y in ins[k + 1 :] if y.opname == "LOAD_CONST")
            after = ins[ins.index(const) + 1 :]
            used = next(y.opname for y in after if y.opname not in ("CACHE", "PUSH_NULL"))
            how = "subscript" if "SUBSCR" in used else "call"
            return _probe_carrier.__globals__[x.argval], how, int(const.argval)
    raise RuntimeError("no probe found in an instrumented function")


def worker_calib() -> dict[str, Any]:
    """Net ns per iteration of abs(i) and of the probe (as instrumented code uses it, with a
    small int and with a real PC), linux device enabled, in a loop."""
    import kcovx

    probe, how, pc = _probe_shape()
    use = "f[{}]" if how == "subscript" else "f({})"
    r = list(range(CALIB_N))
    dev = kcovx.open("linux")
    dev.init_trace((CALIB_N + 1 + 511) // 512 * 512)
    words = dev.mmap()
    dev.enable()
    if how == "subscript":
        # probe[i] for every i of the loop: a Probe of CALIB_N PCs (the real PC each time).
        from kcovx._area import Probe

        wide = Probe([probe.pcs[pc]] * CALIB_N)
        loops = {
            "empty": (_fresh("pass"), None),
            "abs": (_fresh("f(i)"), abs),
            "probe_i": (_fresh(use.format("i")), wide),
            "probe_pc": (_fresh(use.format(pc)), probe),
        }
    else:
        loops = {
            "empty": (_fresh("pass"), None),
            "abs": (_fresh("f(i)"), abs),
            "probe_i": (_fresh(use.format("i")), probe),
            "probe_pc": (_fresh(use.format(hex(pc))), probe),
        }
    clock = time.perf_counter_ns
    names = list(loops)
    res: dict[str, list[float]] = {name: [] for name in names}
    gc.disable()
    for k in range(2 + 2 * REPS):
        t = {}
        for name in names[k % len(names) :] + names[: k % len(names)]:
            words[0] = 0
            f, arg = loops[name]
            t[name] = f(r, arg, clock)
        if k >= 2:
            for name in names:
                net = t[name] - (0 if name == "empty" else t["empty"])
                res[name].append(net / CALIB_N)
    gc.enable()
    dev.disable()
    dev.close()
    out: dict[str, Any] = {k: statistics.median(v) for k, v in res.items()}
    out["how"] = f"{use.format('pc')} with {_name_of(probe)}"
    return out


def _name_of(probe: Any) -> str:
    return getattr(probe, "__qualname__", None) or type(probe).__qualname__


def worker_import(wl: Workload, mode: str, deps: list[str]) -> dict[str, Any]:
    import kcovx

    for d in deps:
        with contextlib.suppress(Exception):
            importlib.import_module(d)
    already = sorted(m for m in sys.modules if _under(m, wl.include))
    if already:
        raise RuntimeError(f"{already} imported before the timed import")
    if mode == "source":
        # No .pyc found (an empty prefix): the import compiles from source.
        sys.pycache_prefix = os.environ["BENCH_PYCACHE_PREFIX"]
    clock = time.perf_counter
    hook = 0.0
    if mode in ("warm", "cold"):
        t0 = clock()
        with kcovx.instrument_imports(include=list(wl.include)):
            hook = clock() - t0  # creating and installing the hook
            _import_all(wl)
        t = clock() - t0
    else:
        t0 = clock()
        _import_all(wl)
        t = clock() - t0
    mods = [sys.modules[m] for m in sorted(sys.modules) if _under(m, wl.include)]
    if mode in ("warm", "cold"):
        bad = [m.__name__ for m in mods if not _is_kcovx_instrumented(m)]
        if bad:
            raise RuntimeError(f"not instrumented by kcovx: {bad}")
    lines = 0
    for m in mods:
        with open(m.__file__ or "", "rb") as f:
            lines += len(f.read().splitlines())
    return {"seconds": t, "hook": hook, "lines": lines, "modules": [m.__name__ for m in mods]}


def worker_deps(wl: Workload) -> dict[str, Any]:
    """The modules importing the target brings in, outside its packages."""
    import kcovx  # noqa: F401  (the same starting set as the import workers)

    before = set(sys.modules)
    _import_all(wl)
    return {"deps": sorted(m for m in set(sys.modules) - before if not _under(m, wl.include))}


def worker_main(argv: list[str]) -> int:
    kind = argv[0]
    if kind == "exec":
        out = worker_exec(WORKLOADS[argv[1]], argv[2])
    elif kind == "calib":
        out = worker_calib()
    elif kind == "import":
        out = worker_import(WORKLOADS[argv[1]], argv[2], argv[3].split(",") if argv[3] else [])
    elif kind == "deps":
        out = worker_deps(WORKLOADS[argv[1]])
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    print("RESULT " + json.dumps(out))
    return 0


# --------------------------------------------------------------------------------------------
# The driver.


class WorkerError(RuntimeError):
    pass


def spawn(args: list[str], env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    for k in ("COVERAGE_PROCESS_START", "COVERAGE_CORE", "__AFL_SHM_ID", "PYTHON_AFL_SIGNAL"):
        env.pop(k, None)
    env.update(env_extra or {})
    quick = ["--quick"] if QUICK else []
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *quick, "--worker", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=WORKER_TIMEOUT_S,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])  # type: ignore[no-any-return]
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise WorkerError(f"worker {' '.join(args)} failed (exit {proc.returncode}): {tail}")


def available(module: str) -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, check=False
    )
    return probe.returncode == 0


def _q(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0])
    q = statistics.quantiles(values, n=4, method="inclusive")
    return (q[0], q[2])


@dataclass
class ExecResult:
    us: list[float]  # per round: median us per exec
    info: dict[str, Any]


def measure_workload(
    wl: Workload, configs: list[str], env: dict[str, str]
) -> dict[str, ExecResult]:
    res: dict[str, ExecResult] = {c: ExecResult([], {}) for c in configs}
    for k in range(ROUNDS):
        order = configs[k % len(configs) :] + configs[: k % len(configs)]
        for c in order:
            extra = dict(env)
            if c == "ctrace":
                extra["COVERAGE_CORE"] = "ctrace"
            out = spawn(["exec", wl.name, c], extra)
            res[c].us.append(statistics.median(out.pop("times")) * 1e6)
            res[c].info = out
    base = res["plain"].info["outcomes"]
    for c in configs:
        if res[c].info["outcomes"] != base:
            raise WorkerError(
                f"{wl.name}/{c}: outcomes differ from plain: {res[c].info['outcomes']} vs {base}"
            )
    return res


def measure_imports(wl: Workload, root: str) -> dict[str, Any]:
    deps = spawn(["deps", wl.name], {"KCOVX_CACHE_DIR": os.path.join(root, "deps-cache")})["deps"]
    dep_arg = ",".join(deps)
    warm = os.path.join(root, f"warm-{wl.name}")
    spawn(["import", wl.name, "cold", dep_arg], {"KCOVX_CACHE_DIR": warm})  # fill the cache
    modes = list(IMPORT_MODES)
    secs: dict[str, list[float]] = {m: [] for m in modes}
    hook: list[float] = []
    info: dict[str, Any] = {}
    for k in range(IMPORT_ROUNDS):
        for m in modes[k % len(modes) :] + modes[: k % len(modes)]:
            tmp = tempfile.mkdtemp(dir=root)
            env = {"KCOVX_CACHE_DIR": warm if m == "warm" else tmp, "BENCH_PYCACHE_PREFIX": tmp}
            out = spawn(["import", wl.name, m, dep_arg], env)
            secs[m].append(out["seconds"] * 1e3)
            if m == "warm":
                hook.append(out["hook"] * 1e3)
            info = out
            shutil.rmtree(tmp, ignore_errors=True)
    return {"ms": secs, "hook_ms": hook, "lines": info["lines"], "modules": info["modules"]}


@dataclass
class Row:
    measure: str
    workload: str
    value: float
    spread: tuple[float, float] | None  # p25-p75 of the per-round values
    target: str  # "<=1.5", ">=2", "<3" or "info"
    reachable: bool = True  # False: no kcovx could meet the target here (judged "n/a")


def main() -> int:
    if "--worker" in sys.argv:
        return worker_main(sys.argv[sys.argv.index("--worker") + 1 :])

    from importlib.metadata import PackageNotFoundError, version

    import kcovx

    sys.path.insert(0, HERE)
    from _common import cpu_model

    old = sys.version_info < (3, 12)
    versions: dict[str, str | None] = {}
    for mod, dist in (("atheris", "atheris"), ("coverage", "coverage"), ("afl", "python-afl")):
        try:
            versions[mod] = version(dist) if available(mod) else None
        except PackageNotFoundError:
            versions[mod] = None
    configs = [c for c in EXEC_CONFIGS if c not in PEER_MODULE or versions[PEER_MODULE[c]]]
    print(
        f"bench_instrument: instrumented stdlib parsers in a fuzz loop; {ROUNDS} rounds x "
        f"{REPS} reps per configuration, a fresh process each"
    )
    print(
        f"Python {sys.version.split()[0]}, kcovx {kcovx.__version__} from {kcovx.__file__}; "
        + ", ".join(f"{k} {v or 'not installed (skipped)'}" for k, v in versions.items())
    )
    print(f"cpu {cpu_model()}, {os.cpu_count()} logical CPUs")
    print()
    t_start = time.perf_counter()
    root = tempfile.mkdtemp(prefix="kcovx-bench-instrument-")
    rows: list[Row] = []
    try:
        env = {"KCOVX_CACHE_DIR": os.path.join(root, "exec-cache")}  # never the user's cache
        calib = [spawn(["calib"], env) for _ in range(3 if QUICK else 5)]
        cal = {k: statistics.median(c[k] for c in calib) for k in ("empty", "abs", "probe_i")}
        cal["probe_pc"] = statistics.median(c["probe_pc"] for c in calib)
        print(
            f"in a loop, net of the empty loop ({cal['empty']:.2f} ns/iter): a C builtin call "
            f"abs(i) {cal['abs']:.2f} ns; the probe, {calib[0]['how']}, linux device: "
            f"{cal['probe_i']:.2f} ns with pc = i, {cal['probe_pc']:.2f} ns with a real PC"
        )
        print()
        rows.append(Row("C builtin call abs(i) in a loop, ns", "-", cal["abs"], None, "info"))
        rows.append(Row("probe with a real PC in a loop, ns", "-", cal["probe_pc"], None, "info"))
        for wl in WORKLOADS.values():
            res = measure_workload(wl, configs, env)
            rows.extend(report_workload(wl, res, configs, old))
            rows.extend(report_imports(wl, measure_imports(wl, root)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ok = summary(rows)
    print(f"\nwall time {time.perf_counter() - t_start:.0f} s")
    return 0 if ok else 1


def _ratios(num: list[float], den: list[float]) -> tuple[float, float]:
    return _q([a / b for a, b in zip(num, den, strict=True)])


def report_workload(
    wl: Workload, res: dict[str, ExecResult], configs: list[str], old: bool
) -> list[Row]:
    med = statistics.median
    plain = res["plain"].us
    p = med(plain)
    lin = res["linux"].info
    failing = sum(o != "ok" for o in res["plain"].info["outcomes"])
    print(f"== {wl.name}: {len(wl.inputs)} inputs ({failing} raise); {len(lin['modules'])} modules")
    print(
        f"   PCs per exec: linux {lin['pcs_per_exec']:.0f} (distinct "
        f"{lin['distinct_per_exec']:.0f}), gvisor {res['gvisor'].info['pcs_per_exec']:.0f}"
    )
    print(f"   {'config':<10} {'us/exec':>9} {'execs/s':>9} {'x plain':>8} {'p25-p75':>11}")
    ratio: dict[str, float] = {}
    for c in configs:
        m = med(res[c].us)
        ratio[c] = m / p
        q = _ratios(res[c].us, plain)
        print(f"   {c:<10} {m:9.2f} {1e6 / m:9.0f} {m / p:8.2f} {q[0]:5.2f}-{q[1]:<5.2f}")
    print()
    n = wl.name
    pcs = lin["pcs_per_exec"]
    per_round = [(a - b) * 1e3 / pcs for a, b in zip(res["linux"].us, plain, strict=True)]
    rows = [
        Row(
            "gvisor per-input / plain",
            n,
            ratio["gvisor"],
            _ratios(res["gvisor"].us, plain),
            "<=1.8" if old else "<=1.5",
        ),
        Row(
            "linux per-input / plain",
            n,
            ratio["linux"],
            _ratios(res["linux"].us, plain),
            "<=2.0" if old else "<=1.7",
        ),
        Row(
            "ns per recorded block (linux)",
            n,
            (med(res["linux"].us) - p) * 1e3 / pcs,
            _q(per_round),
            "info" if old else "<=12",
        ),
        Row("no device / plain", n, ratio["nodev"], _ratios(res["nodev"].us, plain), "info"),
    ]
    if "atheris" in res:
        for prof in ("gvisor", "linux"):
            rows.append(
                Row(
                    f"{prof} execs/s / atheris execs/s",
                    n,
                    med(res["atheris"].us) / med(res[prof].us),
                    _ratios(res["atheris"].us, res[prof].us),
                    ">=2",
                    # >= 2x atheris needs kcovx faster than plain when atheris costs < 2x.
                    reachable=ratio["atheris"] >= 2,
                )
            )
    for c, label in (("atheris", "atheris"), ("ctrace", "coverage.py ctrace"), ("afl", "afl")):
        if c in res:
            rows.append(Row(f"{label} / plain", n, ratio[c], _ratios(res[c].us, plain), "info"))
    return rows


def report_imports(wl: Workload, imp: dict[str, Any]) -> list[Row]:
    med = statistics.median
    ms = imp["ms"]
    kloc = imp["lines"] / 1000
    print(
        f"   import of {len(imp['modules'])} module(s), {imp['lines']} lines; ms, median of "
        f"{len(ms['plain'])}: plain (.pyc) {med(ms['plain']):.2f}, compiled from source "
        f"{med(ms['source']):.2f}, kcovx warm cache {med(ms['warm']):.2f} (of which creating "
        f"the hook {med(imp['hook_ms']):.2f}), kcovx no cache {med(ms['cold']):.2f}"
    )
    print()
    n = wl.name
    return [
        Row(
            "import, warm kcovx cache / plain",
            n,
            med(ms["warm"]) / med(ms["plain"]),
            _ratios(ms["warm"], ms["plain"]),
            "<3",
        ),
        Row(
            "  the same without creating the hook",
            n,
            med([w - h for w, h in zip(ms["warm"], imp["hook_ms"], strict=True)])
            / med(ms["plain"]),
            None,
            "info",
        ),
        Row("import, no kcovx cache, ms/kLOC", n, med(ms["cold"]) / kloc, None, "info"),
        Row("import from source (no .pyc), ms/kLOC", n, med(ms["source"]) / kloc, None, "info"),
    ]


def _judge(value: float, target: str, reachable: bool) -> str:
    if target == "info":
        return "info"
    if not reachable:
        return "n/a"
    op = target.rstrip("0123456789.")
    limit = float(target[len(op) :])
    ok = {"<=": value <= limit, ">=": value >= limit, "<": value < limit}[op]
    return "PASS" if ok else "FAIL"


def summary(rows: list[Row]) -> bool:
    head = (
        f"{'measure':<38} {'workload':<8} {'value':>8} {'p25-p75':>13} {'target':>7} {'result':>6}"
    )
    print("summary: ratios of medians over rounds; p25-p75: spread of the per-round ratios")
    print(head)
    print("-" * len(head))
    ok = True
    for r in rows:
        verdict = _judge(r.value, r.target, r.reachable)
        ok &= verdict != "FAIL"
        qs = f"{r.spread[0]:6.2f}-{r.spread[1]:<6.2f}" if r.spread else ""
        print(f"{r.measure:<38} {r.workload:<8} {r.value:8.2f} {qs:>13} {r.target:>7} {verdict:>6}")
    if any(not r.reachable for r in rows):
        print(
            "n/a: atheris itself costs < 2x plain on that workload, so 2x its execs/s would "
            "need kcovx to run faster than the uninstrumented target"
        )
    return ok


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WorkerError as e:  # a broken configuration is not a missed target (exit 1)
        print(f"bench_instrument: {e}", file=sys.stderr)
        sys.exit(2)
