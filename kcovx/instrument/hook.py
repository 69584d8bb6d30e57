"""The import hook: ``ImportHook`` (a meta path finder that picks the modules to instrument),
``InstrumentingLoader`` (their loader) and ``instrument_imports`` (the hook as a context
manager).

Invariants: only modules whose spec the standard path finder would load from ``.py`` source
with a SourceFileLoader are instrumented; kcovx itself never; modules already imported are
not re-imported.  Threading: the hook relies on the import system's per-module locks; the
site/stdlib folder lists are computed before the hook is installed (or, lazily, at most
twice by racing threads, with the same result).
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.abc
import importlib.machinery
import os
import sys
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from kcovx.instrument.source import instrument_source
from kcovx.instrument.unit import Unit


def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _folder(path: str) -> str:
    """path normalised with one trailing separator, as a prefix of the files under it ("/"
    stays "/", not "//")."""
    return os.path.join(_norm(path), "")


def _site_dirs() -> list[str]:
    import site  # only the no-include rule needs these (slow on 3.13)
    import sysconfig

    dirs = set()
    for key in ("purelib", "platlib"):
        with contextlib.suppress(KeyError):
            dirs.add(sysconfig.get_paths()[key])
    with contextlib.suppress(AttributeError):
        dirs.update(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        dirs.add(site.getusersitepackages())
    return sorted(_folder(d) for d in dirs if d)


def _stdlib_dirs() -> list[str]:
    import sysconfig

    paths = sysconfig.get_paths()
    return sorted({_folder(paths[k]) for k in ("stdlib", "platstdlib") if k in paths})


# kcovx's own folder (this file is in kcovx/instrument/): never instrumented.
_KCOVX_DIR = _folder(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _name_matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


@dataclass
class ImportHook(importlib.abc.MetaPathFinder):
    """A meta path finder that instruments the source modules it matches.

    A module matches when its name matches an ``include`` pattern (fnmatch on the dotted
    name; ``pkg`` also matches ``pkg.sub``), or, with no ``include``, when its file lies under
    ``directory`` (default: the current directory) but not in a site-packages folder; and no
    ``exclude`` pattern matches.  The standard library is instrumented only when an include
    pattern names it, kcovx itself never.  Only modules loaded from ``.py`` sources are
    instrumented; extension modules and sourceless ``.pyc`` are left alone."""

    include: Sequence[str] | None = None
    exclude: Sequence[str] = ()
    directory: str | None = None
    always: Sequence[str] = ()  # names instrumented whatever include says (kcovx run's main)
    cmp: bool = False  # comparisons record too
    _dir: str = field(init=False, default="")
    _site: list[str] | None = field(init=False, default=None)
    _stdlib: list[str] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if isinstance(self.include, str) or isinstance(self.exclude, str):
            raise TypeError("include and exclude take a list of patterns, not a string")
        if not isinstance(self.cmp, bool):
            raise TypeError(f"cmp must be a bool, not {type(self.cmp).__name__}")
        for p in [*(self.include or ()), *self.exclude, *self.always]:
            if not isinstance(p, str) or not p:
                raise TypeError(f"module name patterns must be non-empty strings, got {p!r}")
        self.include = list(self.include) if self.include is not None else None
        self.exclude = list(self.exclude)
        self._dir = _folder(self.directory or os.getcwd())
        if not self.include:
            # Only the no-include rule needs them: computed here, before the hook is
            # installed (computing them imports modules), and only then (~1-4 ms).
            self._site, self._stdlib = _site_dirs(), _stdlib_dirs()

    def matches(self, name: str, origin: str) -> bool:
        """Whether the module ``name`` loaded from file ``origin`` is instrumented."""
        path = _norm(origin)
        if path.startswith(_KCOVX_DIR) or name == "kcovx" or name.startswith("kcovx."):
            return False
        if _name_matches(name, self.exclude):
            return False
        if _name_matches(name, self.always):
            return True
        if self.include:
            return _name_matches(name, self.include)
        if self._site is None or self._stdlib is None:
            self._site, self._stdlib = _site_dirs(), _stdlib_dirs()
        return path.startswith(self._dir) and not path.startswith((*self._site, *self._stdlib))

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if self.include and not (
            _name_matches(fullname, self.include) or _name_matches(fullname, self.always)
        ):
            return None
        spec: importlib.machinery.ModuleSpec | None = None
        found = False
        for finder in sys.meta_path:
            if finder is self:
                found = True
                continue
            if not found or isinstance(finder, ImportHook):
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.origin is None:
            return None
        if type(spec.loader) is not importlib.machinery.SourceFileLoader:
            return None
        if not self.matches(fullname, spec.origin):
            return None
        spec.loader = InstrumentingLoader(fullname, spec.origin, self.cmp)
        return spec

    def install(self) -> ImportHook:
        sys.meta_path.insert(0, self)
        return self

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)


class InstrumentingLoader(importlib.machinery.SourceFileLoader):
    """SourceFileLoader whose code is the instrumented form of the source (cached by kcovx,
    never written to __pycache__).

    It overrides where the code comes from, not how it runs: the module is executed by
    importlib's own ``exec_module`` (which removes its frames from tracebacks and which
    ``warnings`` skips for ``stacklevel``), so no kcovx frame is on the stack while the
    module body runs, and warnings and tracebacks at import are those of plain Python.  The
    probe is bound in the new module's globals when the module is created (the fast path of
    LOAD_GLOBAL) and in builtins (see unit.py)."""

    def __init__(self, fullname: str, path: str, cmp: bool = False) -> None:
        super().__init__(fullname, path)
        self._units: dict[str, Unit] = {}
        self._cmp = cmp

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        self.unit(spec.name).install(module.__dict__)
        return module

    def get_code(self, fullname: str) -> types.CodeType:
        return self.unit(fullname).code

    def unit(self, fullname: str) -> Unit:
        """The instrumented unit of the module's source (registered; cached by kcovx, and
        made once per loader: create_module and get_code share it)."""
        unit = self._units.get(fullname)
        if unit is None:
            path = self.get_filename(fullname)
            unit = instrument_source(self.get_data(path), path, fullname, cmp=self._cmp)
            unit.install()
            self._units[fullname] = unit
        return unit


@contextlib.contextmanager
def instrument_imports(
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    *,
    directory: str | None = None,
    cmp: bool = False,
) -> Iterator[ImportHook]:
    """Instrument the modules imported inside the ``with`` block that match (see
    ``ImportHook``); ``cmp``: their comparisons record too (README.md, "Comparison
    records").  Modules already in ``sys.modules`` are not re-imported; use
    ``instrument_module`` for those."""
    hook = ImportHook(include, exclude, directory, cmp=cmp).install()
    try:
        yield hook
    finally:
        hook.remove()
