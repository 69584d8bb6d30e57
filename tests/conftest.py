"""Session set-up shared by every test file.

The suite tests whichever kcovx the interpreter imports: the installed package in CI and in the
README's command (``.venv/bin/pytest``), or an in-place build with ``PYTHONPATH=.`` while
developing.  Subprocesses must import that same kcovx, so the session runs from an empty
working directory (``python -c`` puts the working directory first on sys.path, and from the
repository root that would be the unbuilt source tree) with the package's parent folder first
on PYTHONPATH.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _kcovx_support import Devices
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

import kcovx

KCOVX_HOME = str(Path(kcovx.__file__).resolve().parent.parent)

# Hypothesis keeps the failures it found (and replays them first) in the folder pytest started
# in, not in the session's temporary working directory below.
settings.register_profile(
    "kcovx", database=DirectoryBasedExampleDatabase(Path.cwd() / ".hypothesis" / "examples")
)
settings.load_profile("kcovx")


def pytest_report_header() -> str:
    where = Path(kcovx.__file__).parent
    return f"kcovx {kcovx.__version__} from {where} (Python {sys.version.split()[0]})"


@pytest.fixture(autouse=True, scope="session")
def _subprocesses_import_this_kcovx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    old_cwd = os.getcwd()
    old_path = os.environ.get("PYTHONPATH")
    old_cache = os.environ.get("KCOVX_CACHE_DIR")
    os.chdir(tmp_path_factory.mktemp("cwd"))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (KCOVX_HOME, old_path) if p)
    # The instrumented-code cache of this session (and its subprocesses) starts empty.
    os.environ["KCOVX_CACHE_DIR"] = str(tmp_path_factory.mktemp("kcovx-cache"))
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_cache is None:
            os.environ.pop("KCOVX_CACHE_DIR", None)
        else:
            os.environ["KCOVX_CACHE_DIR"] = old_cache
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path


@pytest.fixture(autouse=True, scope="module")
def _earlier_objects_left_alone_by_the_gc() -> Iterator[None]:
    """Each test module starts with the objects of the modules before it collected or frozen.

    The cyclic GC runs C code of the objects it visits (an extension type's tp_traverse, and
    tp_clear and dealloc when it frees one).  For the instrumented C extensions of the native
    tests that code records, and the gvisor profile's coverage is global: a collection inside a
    later test would put those PCs into whatever gvisor device that test has collecting (a real
    program sees the same; README, "Native code").  So: collect now, while nothing records, then
    freeze what is left, which later collections never visit."""
    gc.collect()
    gc.freeze()
    yield


@pytest.fixture
def devices() -> Iterator[Devices]:
    """Devices opened by the test; disabled (if this thread owns them) and closed after it."""
    d = Devices()
    try:
        yield d
    finally:
        d.cleanup()
