"""Child processes under ``kcovx run`` (and the pytest plugin): each Python child records into
a cover file of its own, ``<output>.<pid>``, with its PC table ``<pcs-table>.<pid>``.

Owns: the environment variable ``KCOVX_CHILD`` and its encoding (``Config``), the parent side
(``enable``/``disable``: set the variable, the fork hook, the ``os._exit`` hook), the child
side (``start``, called at interpreter start by the ``kcovx.pth`` line in site-packages;
``_after_fork_child`` in a forked child): instrumenting as the parent does, a device of the
child's own enabled on the child's first thread, and the files written at exit (``finish``).

How each kind of child gets there:

- A forked child (``os.fork``, multiprocessing's fork context, the children of a forkserver)
  gets a fresh device in the fork hook, after kcovx's own fork hooks (tasks.py) have made the
  parent's devices not the child's: from the fork on, the child's PCs go to ``<output>.<pid>``
  and the parent's area is not written by it.  It inherits the parent's instrumented code.
- A spawned Python child (multiprocessing spawn, the forkserver process itself, ``subprocess``
  running ``sys.executable``) inherits the variable; the ``.pth`` line sees it at start and
  calls ``start``, which installs the same import hook as the parent (same include/exclude
  rules, the parent's folder for the no-include rule, so the same modules are instrumented
  and, PCs being a function of the source, get the same PCs) and the device.  The parent's
  main script, which multiprocessing runs again in the child as ``__mp_main__``, is
  instrumented under the module name ``__main__`` as in the parent (its PCs agree).
- A child that is not Python, or a Python without kcovx's ``.pth``, is not touched.

When the files are written (``finish``, once per process): at a normal exit (``atexit``), at
``os._exit`` (patched: multiprocessing's fork and forkserver children end that way), and when
``kcovx run``'s program returns in a forked child.  The cover file is the device's area file,
created at the child's start, so what the failure model of ``kcovx run`` says of a killed
process holds for each child (README, "Child processes").

Threading: ``enable``/``disable``/``start`` are called by one thread at a time (the main
thread, or the one thread of a fork child); the device is enabled on the thread that forks
or starts the interpreter, as ``kcovx run`` enables its main thread.  ``finish`` may run on
any thread (``os._exit`` from a worker thread); it takes the device's own lock.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast

if TYPE_CHECKING:
    import importlib.abc

    from kcovx import instrument

__all__ = [
    "ENV",
    "Config",
    "child_files",
    "disable",
    "enable",
    "finish",
    "remove_child_files",
    "start",
]

# The variable a parent sets for its children: a Config, as JSON.
ENV = "KCOVX_CHILD"
_VERSION = 1
# A variable longer than this is not ours (the kernel caps one at 128 KiB anyway).
_MAX_ENV = 1 << 16


@dataclass(frozen=True)
class Config:
    """What a child needs to record as its parent does.  Paths are absolute; the cover file of
    the child with pid P is ``f"{output}.{P}"``, its PC table ``f"{table}.{P}"``."""

    output: str
    table: str
    profile: str = "gvisor"
    size: int = 1 << 20
    include: tuple[str, ...] | None = None  # None: modules under ``directory``
    exclude: tuple[str, ...] = ()
    always: tuple[str, ...] = ()  # module names instrumented whatever include says
    directory: str = "/"  # the parent's current directory, for the no-include rule
    main: str | None = None  # the parent's main script, run again by multiprocessing
    cmp: bool = False

    def __post_init__(self) -> None:
        from kcovx.profiles import PROFILES

        for name in ("output", "table", "directory"):
            _check_path(name, getattr(self, name))
        if self.main is not None:
            _check_path("main", self.main)
        if not isinstance(self.profile, str) or self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if type(self.size) is not int or self.size < 2:
            raise ValueError(f"size must be an int of at least 2 words, got {self.size!r}")
        if type(self.cmp) is not bool:
            raise ValueError(f"cmp must be a bool, got {self.cmp!r}")
        if self.output == self.table:
            raise ValueError("output and table must differ")
        lists = {"include": self.include, "exclude": self.exclude, "always": self.always}
        for name, patterns in lists.items():
            if patterns is None and name == "include":
                continue
            if not isinstance(patterns, (tuple, list)) or not all(
                isinstance(p, str) and p for p in patterns
            ):
                raise ValueError(f"{name} must be a list of non-empty strings, got {patterns!r}")
            object.__setattr__(self, name, tuple(patterns))

    def encode(self) -> str:
        """The variable's value (JSON, one line)."""
        import json

        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("include", "exclude", "always"):
            if fields[k] is not None:
                fields[k] = list(fields[k])
        return json.dumps({"version": _VERSION, **fields}, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Config:
        """The Config of a variable's value; ValueError saying what is wrong with it."""
        import json

        if len(text) > _MAX_ENV:
            raise ValueError(f"longer than {_MAX_ENV} characters")
        try:
            data = json.loads(text, parse_float=_no_float, parse_constant=_no_float)
        except RecursionError:
            raise ValueError("nested too deeply") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.pop("version", None) != _VERSION:
            raise ValueError(f"not version {_VERSION} (a parent with another kcovx?)")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as e:  # a field missing
            raise ValueError(str(e)) from None


def _no_float(text: str) -> NoReturn:
    raise ValueError(f"a number that is not an integer: {text}")


def _check_path(name: str, path: object) -> None:
    if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
        raise ValueError(f"{name} must be an absolute path, got {path!r}")


def child_paths(config: Config, pid: int) -> tuple[str, str]:
    """The cover file and PC table of the child ``pid``."""
    return f"{config.output}.{pid}", f"{config.table}.{pid}"


def child_files(base: str) -> list[str]:
    """The per-process files ``<base>.<pid>`` present now (regular files), sorted by pid."""
    folder, name = os.path.split(os.path.abspath(base))
    prefix = name + "."
    found: list[tuple[int, str]] = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            rest = entry.name[len(prefix) :]
            if entry.name.startswith(prefix) and rest.isascii() and rest.isdigit():
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        found.append((int(rest), entry.path))
    return [path for _, path in sorted(found)]


def remove_child_files(config: Config) -> int:
    """Remove the per-process files a former run left at this config's paths (so a report
    merges only this run's children).  Returns how many were removed."""
    n = 0
    for path in [*child_files(config.output), *child_files(config.table)]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            n += 1
    return n


# -- the recorder of this process -----------------------------------------------------------------


def _warn(message: str) -> None:
    with contextlib.suppress(Exception):
        print(f"kcovx: child process {os.getpid()}: {message}", file=sys.stderr, flush=True)


class _Recorder:
    """This process's device, enabled on the thread that made it, recording into its own area
    file; ``finish`` writes the outputs once, in the process that made it only."""

    def __init__(self, config: Config) -> None:
        import kcovx
        from kcovx import abi

        self.pid = os.getpid()
        self.cover, self.table = child_paths(config, self.pid)
        self.size = config.size
        self.per = abi.KCOV_WORDS_PER_CMP if config.cmp else 1
        self.done = False
        self.kc = kcovx.open(profile=config.profile, path=self.cover)
        try:
            self.kc.init_trace(config.size)
            # The file stays sparse: reserving its blocks as kcovx run does for the parent's
            # (8 MiB by default) would add ~20 ms to every fork, in the allocation and in the
            # freeing when the file is cut.  So on a full disk a child's append faults.
            self.area: kcovx.Area | None = self.kc.map_area()
            self.kc.enable(abi.KCOV_TRACE_CMP if config.cmp else abi.KCOV_TRACE_PC)
        except BaseException:
            self.area = None
            with contextlib.suppress(OSError):
                self.kc.close()
            raise

    def finish(self) -> None:
        if self.done or os.getpid() != self.pid:
            return
        self.done = True
        from kcovx import cover, pcs

        kc, area = self.kc, self.area
        self.area = None
        if area is None:
            return
        trim = True
        try:
            kc.flush()  # gvisor: the pending PCs go into the area (also from another thread)
            try:
                kc.disable()
            except OSError:
                # Not the owner thread (os._exit from a worker thread): the owner may still
                # append, so the area keeps its size (readers take the count word).
                trim = False
            count = min(area.count, (self.size - 1) // self.per)
        finally:
            del area  # the mapping goes before the file is cut
            with contextlib.suppress(OSError):
                kc.close()
        if trim:
            cover.trim_area_file(self.cover, count * self.per)
        pcs.write_pcs_table(self.table)


_config: Config | None = None  # what forked children of this process record with
_recorder: _Recorder | None = None  # this process's own recording as a child, if any
_start_hook: instrument.ImportHook | None = None  # the hook start() installed
_hooks_installed = False
_started = False
_saved_env: str | None = None
_real_exit: Callable[[int], NoReturn] = os._exit


def finish() -> None:
    """Write this process's cover file and PC table if it records as a child (once; never
    raises: a failure is one line on stderr)."""
    rec = _recorder
    if rec is None:
        return
    try:
        rec.finish()
    except Exception as e:
        _warn(f"writing {rec.cover} failed: {e}")


def _at_exit() -> None:
    finish()


def _exit(status: int) -> NoReturn:
    """os._exit with this process's files written first (multiprocessing's fork and
    forkserver children end this way: atexit does not run)."""
    with contextlib.suppress(BaseException):
        finish()
    _real_exit(status)


def _after_fork_child() -> None:
    """A fork child of a process whose children record: a fresh device from here on."""
    global _recorder
    config = _config
    if config is None:
        return
    _recorder = None  # the parent's, if it had one: not this process's to finish
    try:
        _recorder = _Recorder(config)
    except Exception as e:
        _warn(f"records nothing: {e}")


def _install_hooks() -> None:
    global _hooks_installed, _real_exit
    if _hooks_installed:
        return
    _hooks_installed = True
    # What a child's recorder and finish use, imported here once rather than in every forked
    # child (each import there costs the child milliseconds).  kcovx.tasks registers its fork
    # hooks when kcovx is imported, so they run before ours (hooks run in registration
    # order) and have made the parent's devices not the child's when ours runs.
    import json  # noqa: F401  (the PC table)

    import kcovx  # noqa: F401
    from kcovx import abi, cover, pcs, sancov  # noqa: F401

    os.register_at_fork(after_in_child=_after_fork_child)
    atexit.register(_at_exit)
    current = os._exit
    if current is not _exit:
        _real_exit = current
        os._exit = _exit


def enable(config: Config) -> None:
    """Make this process's children record with ``config``: set ``KCOVX_CHILD`` for spawned
    children, give forked ones a device of their own.  Called by ``kcovx run`` before the
    program runs (and by the pytest plugin); ``disable`` undoes it.  A recording this process
    had as a child of another kcovx run is finished first (its files are written), so that the
    caller can enable its own device."""
    global _config, _saved_env
    if not isinstance(config, Config):
        raise TypeError(f"config must be a kcovx.children.Config, got {type(config).__name__}")
    if _recorder is not None:
        finish()
        if _start_hook is not None:
            _start_hook.remove()
    if _config is None:
        _saved_env = os.environ.get(ENV)
    os.environ[ENV] = config.encode()
    _config = config
    _install_hooks()


def disable() -> None:
    """Children started from now on do not record (the variable is put back as it was)."""
    global _config
    if _config is None:
        return
    _config = None
    if _saved_env is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = _saved_env


# -- the start of a spawned child -----------------------------------------------------------------


def start() -> None:
    """Called by the ``kcovx.pth`` line at interpreter start when ``KCOVX_CHILD`` is set:
    record this process as a child.  Runs once per process; never raises (a problem is one
    line on stderr and the process runs unrecorded)."""
    global _started
    if _started:
        return
    _started = True
    text = os.environ.get(ENV)
    if not text:
        return
    try:
        config = Config.decode(text)
    except ValueError as e:
        _warn(f"records nothing: {ENV} is not kcovx's: {e}")
        return
    try:
        _start(config)
    except Exception as e:
        _warn(f"records nothing: {e}")


def _start(config: Config) -> None:
    global _config, _recorder, _start_hook
    from kcovx import instrument

    hook = instrument.ImportHook(
        include=list(config.include) if config.include is not None else None,
        exclude=list(config.exclude),
        directory=config.directory,
        always=list(config.always),
        cmp=config.cmp,
    ).install()
    _start_hook = hook
    sys.meta_path.insert(0, _SpawnPatcher(config))
    _instrument_loaded(hook)
    _recorder = _Recorder(config)
    _config = config  # its own forked children record too
    _install_hooks()


def _instrument_loaded(hook: instrument.ImportHook) -> None:
    """Matching modules imported before the hook (by site or kcovx): instrumented in place,
    as kcovx run does.  Only include patterns can name them (the no-include rule takes
    modules under the parent's folder, and nothing from there is imported this early)."""
    import fnmatch

    from kcovx import instrument

    patterns = [*(hook.include or ()), *hook.always]
    for name, mod in list(sys.modules.items()):
        if not any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns):
            continue
        file = getattr(mod, "__file__", None)
        if not isinstance(mod, types.ModuleType) or not isinstance(file, str):
            continue
        if file.endswith(".py") and name != "__main__" and hook.matches(name, file):
            with contextlib.suppress(OSError, ValueError, SyntaxError):
                instrument.instrument_module(mod, cmp=hook.cmp)


class _SpawnPatcher:
    """A meta path finder that finds nothing: when ``multiprocessing.spawn`` is first
    imported, it wraps the module's loader so that, once loaded, the module runs the parent's
    main script instrumented (see ``_MainRunner``), and leaves ``sys.meta_path``."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> Any:
        if fullname != "multiprocessing.spawn":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = cast("importlib.abc.Loader", _PatchingLoader(spec.loader, self.config))
        return spec


class _PatchingLoader:
    """The module's own loader, then ``_MainRunner`` put in place of the module's ``runpy``."""

    def __init__(self, loader: Any, config: Config) -> None:
        self._loader, self._config = loader, config

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        runner = getattr(module, "runpy", None)
        if runner is not None and self._config.main is not None:
            module.runpy = _MainRunner(runner, self._config.main, self._config.cmp)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... for inspect
        return getattr(self._loader, name)


class _MainRunner:
    """``runpy`` as ``multiprocessing.spawn`` sees it: ``run_path`` of the parent's main script
    runs it instrumented as the parent did (module name ``__main__`` for the PCs, so they
    agree with the parent's); everything else is runpy's."""

    def __init__(self, runpy: types.ModuleType, main: str, cmp: bool) -> None:
        self._runpy, self._main, self._cmp = runpy, os.path.realpath(main), cmp

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runpy, name)

    def run_path(
        self,
        path_name: str,
        init_globals: dict[str, Any] | None = None,
        run_name: str | None = None,
    ) -> dict[str, Any]:
        real: Callable[..., dict[str, Any]] = self._runpy.run_path
        if not (
            isinstance(path_name, str)
            and path_name.endswith(".py")
            and os.path.realpath(path_name) == self._main
        ):
            return real(path_name, init_globals, run_name)
        from kcovx import instrument

        with open(path_name, "rb") as f:
            source = f.read()
        unit = instrument.instrument_source(source, path_name, "__main__", cmp=self._cmp)
        name = run_name if run_name is not None else "<run_path>"
        module = types.ModuleType(name)
        g = module.__dict__
        if init_globals is not None:
            g.update(init_globals)
        g.update(
            __name__=name,
            __file__=path_name,
            __cached__=None,
            __doc__=None,
            __loader__=None,
            __package__=name.rpartition(".")[0],
            __spec__=None,
        )
        saved_argv0 = sys.argv[0] if sys.argv else None
        saved_module = sys.modules.get(name)
        sys.modules[name] = module
        if sys.argv:
            sys.argv[0] = path_name
        try:
            instrument.run_code(unit, g)
        finally:
            if saved_argv0 is not None:
                sys.argv[0] = saved_argv0
            if saved_module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = saved_module
        return dict(g)
