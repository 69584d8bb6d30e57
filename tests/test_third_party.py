"""Code nobody here wrote, under ``kcovx run``: python-dateutil's own test suite.

python-dateutil's sdist ships its tests; among them ``tests/test_imports.py`` checks the
warnings and the modules an import gives, which is where kcovx once showed through (a warning
at import attributed to kcovx).  The test downloads the sdist and the
packages its tests need from PyPI (no dependencies pulled in: the test extra already has
pytest, hypothesis and coverage), runs a fixed set of its test files plainly and under
``kcovx run --include dateutil`` in both profiles, and requires the same outcome, test by
test, and that dateutil's own blocks were recorded.  Skipped, saying why, when PyPI cannot be
reached.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

DATEUTIL = "python-dateutil==4.0.0"
# What the selected test files import besides dateutil, pytest and hypothesis; pytest-cov
# registers the ``no_cover`` mark their conftest sets.
NEEDS = ["freezegun==1.5.5", "pytest-cov==7.1.0", "tzdata==2026.6"]
TEST_FILES = [
    "tests/test_imports.py",
    "tests/test_import_star.py",
    "tests/test_relativedelta.py",
    "tests/test_rrule.py",
    "tests/test_parser.py",
    "tests/test_isoparser.py",
    "tests/test_easter.py",
]
# -rA reports each test as "OUTCOME test-id" (skips as "SKIPPED [n] file:line: reason").
RESULT = re.compile(r"^(PASSED|FAILED|XFAIL|XPASS|ERROR|SKIPPED) (\S+)", re.M)


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def dateutil_suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the sdist's folder, a folder holding dateutil and what its tests need)."""
    where = tmp_path_factory.mktemp("dateutil")
    got = _pip("download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(where), DATEUTIL)
    if got.returncode != 0:
        pytest.skip(f"cannot download {DATEUTIL}'s sdist from PyPI: {got.stderr.strip()[-300:]}")
    site = where / "site"
    got = _pip("install", "-q", "--no-deps", "--target", str(site), DATEUTIL, *NEEDS)
    if got.returncode != 0:
        pytest.skip(f"cannot install {DATEUTIL} and {NEEDS}: {got.stderr.strip()[-300:]}")
    (sdist,) = where.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(where, filter="data")
    (root,) = (p for p in where.iterdir() if p.is_dir() and p.name != "site")
    # The tests must import the installed dateutil, not the sdist's sources.
    (root / "src").rename(root / "src.unused")
    return root, site


def _outcomes(root: Path, site: Path, *kcovx_run: str) -> tuple[dict[str, str], str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    pytest_args = ["-m", "pytest", "-rA", "-q", "-p", "no:cacheprovider", *TEST_FILES]
    cmd = (
        [sys.executable, "-m", "kcovx", "run", *kcovx_run, *pytest_args]
        if kcovx_run
        else [
            sys.executable,
            *pytest_args,
        ]
    )
    r = subprocess.run(
        cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    outcomes = {name: what for what, name in RESULT.findall(r.stdout)}
    return outcomes, r.stdout[-2000:] + r.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_dateutil_suite_runs_the_same_under_kcovx(
    dateutil_suite: tuple[Path, Path], profile: str
) -> None:
    root, site = dateutil_suite
    plain, plain_out = _outcomes(root, site)
    assert len(plain) > 1000, plain_out  # the suite really ran
    assert any(n.startswith("tests/test_imports.py") for n in plain)
    run = ("--profile", profile, "--size", str(1 << 22), "--include", "dateutil")
    under, under_out = _outcomes(root, site, *run)
    changed = {n: (plain.get(n), under.get(n)) for n in plain.keys() | under.keys()}
    changed = {n: v for n, v in changed.items() if v[0] != v[1]}
    assert not changed, (sorted(changed.items())[:20], under_out)
    # dateutil's own code was instrumented and recorded.
    summary = re.search(r"kcovx run: (\d+) PCs recorded .*?, (\d+) unique blocks", under_out)
    assert summary, under_out
    assert int(summary.group(2)) > 500, under_out
    assert re.search(r"dateutil/parser/_parser\.py", under_out), under_out
