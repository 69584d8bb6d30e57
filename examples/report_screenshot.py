"""A screenshot of the HTML report of ``examples/calc.py``, taken with headless Chromium.

    python examples/report_screenshot.py [--out calc-report.png] [--size 1280x1600]

Runs, in a temporary folder (or ``--workdir``), what a user types:

    kcovx run --profile linux examples/calc.py
    kcovx report --html html
    chromium --headless --screenshot=OUT --window-size=W,H file://.../html/<calc page>.html

and prints the PNG's path.  Needs coverage.py (``pip install 'kcovx[report]'``) and Chromium
(Debian: ``apt-get install chromium``; ``--chromium`` names another binary).  Exit status 0
when the screenshot was written, 2 when a step failed (its output is printed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CALC = Path(__file__).resolve().parent / "calc.py"


def _step(cmd: list[str], cwd: Path) -> None:
    print("$ " + " ".join(cmd), file=sys.stderr)
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"report_screenshot: {cmd[0]} failed with status {r.returncode}")


def calc_page(html: Path) -> Path:
    """The page of calc.py in coverage.py's HTML report folder ``html``."""
    pages = sorted(p for p in html.glob("*calc_py.html"))
    if len(pages) != 1:
        raise SystemExit(f"report_screenshot: no single calc.py page in {html}: {pages}")
    return pages[0]


def screenshot(out: Path, width: int, height: int, workdir: Path, chromium: str) -> Path:
    kcovx = [sys.executable, "-m", "kcovx"]
    _step([*kcovx, "run", "--profile", "linux", str(CALC)], workdir)
    _step([*kcovx, "report", "--html", "html"], workdir)
    page = calc_page(workdir / "html")
    out = out.resolve()
    out.unlink(missing_ok=True)
    _step(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # as root (a container) Chromium refuses to start otherwise
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={out}",
            f"--window-size={width},{height}",
            page.as_uri(),
        ],
        workdir,
    )
    if not out.is_file():
        raise SystemExit(f"report_screenshot: {chromium} wrote no {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="calc-report.png", help="the PNG to write")
    p.add_argument("--size", default="1280x1600", help="window WIDTHxHEIGHT in pixels")
    p.add_argument("--workdir", help="where to run (default: a temporary folder)")
    p.add_argument("--chromium", default="chromium", help="the Chromium binary")
    opts = p.parse_args(argv)
    try:
        width, height = (int(n) for n in opts.size.lower().split("x"))
    except ValueError:
        p.error(f"--size WIDTHxHEIGHT, not {opts.size!r}")
    chromium = shutil.which(opts.chromium)
    if chromium is None:
        print(f"report_screenshot: no {opts.chromium} (apt-get install chromium)", file=sys.stderr)
        return 2
    out = Path(opts.out)
    try:
        if opts.workdir:
            os.makedirs(opts.workdir, exist_ok=True)
            path = screenshot(out, width, height, Path(opts.workdir), chromium)
        else:
            with tempfile.TemporaryDirectory(prefix="kcovx-screenshot-") as tmp:
                path = screenshot(out, width, height, Path(tmp), chromium)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
