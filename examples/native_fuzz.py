"""A coverage-guided fuzz loop over a real C extension: Python blocks and native blocks together.

The target is simplejson's ``loads`` (C scanner ``_speedups`` under a Python front end) or
msgpack's ``unpackb`` (Cython-generated C ``_cmsgpack``; its Python part runs for ext types
such as timestamps).  The package's C code is built from its PyPI sdist with kcovx's flags, the
way a user would build it:

    CFLAGS="<kcovx.sancov.compile_args()>" LDFLAGS="<kcovx.sancov.link_args()>" \\
        pip install --no-binary :all: --no-deps --no-build-isolation --target DIR SDIST

and its Python modules are instrumented at import (``kcovx.instrument_imports``).  Per input the
loop is ``examples/fuzz_loop.py``'s (reset word 0, run, flush, read the PCs); one area holds both
kinds in one trace, and bit 63 of a PC tells them apart (``kcovx.sancov.is_native``), so the
report counts distinct Python blocks and distinct native blocks separately.

    python examples/native_fuzz.py --build                       # simplejson, 10 s
    python examples/native_fuzz.py --build --target msgpack --seconds 30
    python examples/native_fuzz.py --package-dir DIR --target msgpack --execs 20000

``--build`` downloads and builds into a cache folder (``--cache``, default
``$XDG_CACHE_HOME/kcovx/native_fuzz``) once per package version, Python version and kcovx
installation; ``--package-dir`` uses a folder that already holds the built package (a pip
``--target`` folder).  ``build()`` is also what benchmarks/bench_native_ext.py builds with.
Single-threaded: the device is enabled by the main thread.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fuzz_loop import Fuzzer, add_loop_options, loop_args

import kcovx
from kcovx import sancov

PINNED = {"simplejson": "4.3.0", "msgpack": "1.2.4"}
EXTENSION = {"simplejson": "simplejson._speedups", "msgpack": "msgpack._cmsgpack"}
# Build-time environment per package: simplejson falls back to pure Python when its C build
# fails unless told not to.
BUILD_ENV = {"simplejson": {"REQUIRE_SPEEDUPS": "1"}, "msgpack": {}}
PIP_TIMEOUT = 600  # seconds


class BuildError(Exception):
    """A build step failed; ``step`` is "download", "build" or "check"."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step


SEEDS: dict[str, list[bytes]] = {
    "simplejson": [
        b'{"a": [1, 2.5, "x"], "b": {"c": null, "d": true}}',
        b'["\\u00e9\\n", -0.5e10, false, 123456789012345678901234567890]',
        b'{"nested": [[[]], {}], "s": "tab\\there"}',
    ],
    # msgpack: {"k": [1, -1, 2.5, "s", None, True, b"b"]}, a timestamp (ext -1), a uint64.
    "msgpack": [
        b"\x81\xa1k\x97\x01\xff\xcb@\x04\x00\x00\x00\x00\x00\x00\xa1s\xc0\xc3\xc4\x01b",
        b"\xd6\xff\x00\x00\x00\x01",
        b"\xcf\x00\x00\x01\x00\x00\x00\x00\x00",
    ],
}


def build(
    package: str,
    cache: Path,
    *,
    instrumented: bool = True,
    cmp: bool = True,
    version: str | None = None,
) -> Path:
    """The pip ``--target`` folder holding ``package`` (simplejson or msgpack) built from its
    sdist, with kcovx's flags (``cmp``: with comparison tracing) or plainly; built on first
    use, reused after.  Raises
    BuildError (with pip's output) when the download, the build or its check fails."""
    if package not in PINNED:
        raise BuildError("build", f"no recipe for {package!r} (choose from {list(PINNED)})")
    version = version or PINNED[package]
    if instrumented:
        # The flags name this kcovx's runtime folder (the rpath): a build per installation.
        flavour = "kcovx-" + hashlib.sha256(sancov.lib_dir().encode()).hexdigest()[:10]
        flavour += "" if cmp else "-pc"
        flags = {
            "CFLAGS": " ".join(sancov.compile_args(cmp=cmp)),
            "LDFLAGS": " ".join(sancov.link_args()),
        }
    else:
        flavour, flags = "plain", {}
    dest = build_dir(package, version, cache, flavour)
    if not (dest / ".built").exists():
        pip_build(package, download(package, version, cache), dest, flags)
        calls_hooks = "__sanitizer_cov_trace_pc" in undefined_symbols(extension_file(package, dest))
        if calls_hooks != instrumented:
            raise BuildError("check", f"{dest}: calls kcovx's hooks: {calls_hooks}, expected not")
        (dest / ".built").write_text(f"{package}=={version} {flavour}\n", encoding="utf-8")
    return dest


def build_dir(package: str, version: str, cache: Path, flavour: str) -> Path:
    """Where a build of package lives in the cache: per version, Python version and flavour."""
    return cache / f"{package}-{version}-cp{sys.version_info[0]}{sys.version_info[1]}-{flavour}"


def download(package: str, version: str, cache: Path) -> Path:
    """The sdist of package==version from PyPI, kept in cache/sdists."""
    sdists = cache / "sdists"
    found = sorted(sdists.glob(f"{package}-{version}.tar.gz"))
    if not found:
        sdists.mkdir(parents=True, exist_ok=True)
        _pip("download", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d",
             str(sdists), f"{package}=={version}")  # fmt: skip
        found = sorted(sdists.glob(f"{package}-{version}.tar.gz"))
    if not found:
        raise BuildError("download", f"pip download left no {package}-{version}.tar.gz")
    return found[0]


def pip_build(package: str, sdist: Path, dest: Path, flags: dict[str, str]) -> None:
    """``pip install`` sdist into dest (a fresh ``--target`` folder) with the build variables
    in flags (CFLAGS, LDFLAGS, CC, ...) and nothing else of the caller's; no wheel cache, so a
    build with other flags is never reused."""
    shutil.rmtree(dest, ignore_errors=True)  # what a failed or interrupted build left
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CFLAGS", "LDFLAGS", "LDSHARED")}
    env.update(BUILD_ENV[package], **flags)
    _pip(
        "build",
        "install", "-q", "--no-cache-dir", "--no-deps", "--no-binary", ":all:",
        "--no-build-isolation", "--target", str(dest), str(sdist), env=env,
    )  # fmt: skip


def extension_file(package: str, folder: Path) -> Path:
    """The built extension (.so) of package in a pip ``--target`` folder."""
    sub, _, stem = EXTENSION[package].partition(".")
    found = sorted((folder / sub).glob(f"{stem}.*.so"))
    if not found:
        raise BuildError("check", f"no built {EXTENSION[package]} in {folder}")
    return found[0]


def _pip(step: str, *args: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    r = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=PIP_TIMEOUT, check=False
    )
    if r.returncode != 0:
        raise BuildError(step, f"pip {args[0]} failed (exit {r.returncode}):\n{r.stderr[-4000:]}")


def undefined_symbols(path: Path) -> set[str]:
    """The undefined dynamic symbols of a shared object (binutils' readelf)."""
    if not shutil.which("readelf"):
        raise BuildError("check", "readelf (binutils) is needed to check the build")
    out = subprocess.run(
        ["readelf", "-W", "--dyn-syms", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return {
        f[7].split("@")[0]
        for f in map(str.split, out.splitlines())
        if len(f) >= 8 and f[6] == "UND"
    }


def load_target(package: str, folder: Path) -> tuple[Callable[[Any], object], bool]:
    """(the function to fuzz, whether it takes str) with package's Python modules
    instrumented at import and its C extension from folder."""
    if package in sys.modules:
        raise SystemExit(f"native_fuzz: {package} is already imported")
    if not (folder / package).is_dir():
        raise SystemExit(f"native_fuzz: no {package} package in {folder} (build it: --build)")
    sys.path.insert(0, str(folder))
    try:
        with kcovx.instrument_imports(include=[package]):
            mod = importlib.import_module(package)
            ext = importlib.import_module(EXTENSION[package])
    finally:
        sys.path.remove(str(folder))
    if not str(ext.__file__).startswith(str(folder)):
        raise SystemExit(f"native_fuzz: {EXTENSION[package]} came from {ext.__file__}")
    if shutil.which("readelf") and "__sanitizer_cov_trace_pc" not in undefined_symbols(
        Path(str(ext.__file__))
    ):
        print(f"native_fuzz: {ext.__file__} was not built with kcovx's flags: no native blocks",
              file=sys.stderr)  # fmt: skip
    if package == "simplejson":
        if mod.decoder.c_scanstring is None:  # the silent fallback to pure Python
            raise SystemExit("native_fuzz: simplejson is not using its C speedups")
        return mod.loads, True
    return mod.unpackb, False


class NativeFuzzer(Fuzzer):
    """fuzz_loop's Fuzzer, reporting Python and native blocks apart."""

    def kinds(self) -> tuple[int, int]:
        """(distinct Python blocks, distinct native blocks) covered so far."""
        native = sum(1 for pc in self.blocks if pc >> 63)
        return len(self.blocks) - native, native

    def run(self, seeds: Sequence[bytes], *, seconds: float | None, execs: int | None) -> float:
        """Fuzz until seconds or execs run out; returns the execs/s of the mutation phase."""
        for s in seeds:
            self.consider(s, self.run_one(s))
        if not self.corpus:
            self.corpus.append(seeds[0] if seeds else b"")
        start = last = time.perf_counter()
        start_execs = self.execs
        while True:
            child = self.mutate(self.rng.choice(self.corpus))
            self.consider(child, self.run_one(child))
            if self.execs & 255 == 0:
                now = time.perf_counter()
                done = (seconds is not None and now - start >= seconds) or (
                    execs is not None and self.execs - start_execs >= execs
                )
                if now - last >= 1.0 or done:
                    last = now
                    py, nat = self.kinds()
                    rate = (self.execs - start_execs) / (now - start)
                    print(
                        f"#{self.execs}  {rate:,.0f} execs/s  python blocks {py}  native "
                        f"blocks {nat}  corpus {len(self.corpus)}  errors {self.errors}",
                        file=sys.stderr,
                        flush=True,
                    )
                if done:
                    return (self.execs - start_execs) / (now - start)


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kcovx" / "native_fuzz"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--target", default="simplejson", choices=sorted(PINNED))
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--package-dir", type=Path, help="folder holding the built package")
    where.add_argument("--build", action="store_true", help="build it (once) into --cache")
    p.add_argument("--cache", type=Path, default=None, help="build cache folder for --build")
    add_loop_options(p)
    args = loop_args(p, argv)
    if args.build:
        t0 = time.perf_counter()
        try:
            folder = build(args.target, args.cache or default_cache())
        except BuildError as exc:
            raise SystemExit(f"native_fuzz: {exc.step} failed: {exc}") from None
        print(f"built in {folder} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    else:
        folder = args.package_dir.resolve()
    target, text = load_target(args.target, folder)
    fuzzer = NativeFuzzer(target, profile=args.profile, size=args.size, text=text, seed=args.seed)
    seeds = SEEDS[args.target]
    try:
        rate = fuzzer.run(seeds, seconds=args.seconds, execs=args.execs)
    finally:
        fuzzer.close()
    py, nat = fuzzer.kinds()
    units = sorted({f"{o.unit:#x} {os.path.basename(o.path)}" for o in sancov.objects()})
    print(f"native objects: {', '.join(units) or 'none'}")
    print(
        f"done: {fuzzer.execs} execs, {rate:,.0f} execs/s, python blocks {py}, native blocks "
        f"{nat}, corpus {len(fuzzer.corpus)} (from {len(seeds)} seeds), errors {fuzzer.errors}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
