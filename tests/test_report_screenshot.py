"""examples/report_screenshot.py: headless Chromium's screenshot of the HTML report of
examples/calc.py is a real PNG of the requested size that shows both coverage.py's colour for
run lines (the green bar, #00dd00) and for missed lines (the red bar #ff0000 or the pink
background #ffdddd).  The PNG is decoded here with zlib and struct (no image library).
Skipped, saying why, without Chromium (Debian: apt-get install chromium).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

pytest.importorskip("coverage", reason="coverage.py (the test extra) is not installed")

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "report_screenshot.py"
RUN = (0x00, 0xDD, 0x00)
MISSED = ((0xFF, 0x00, 0x00), (0xFF, 0xDD, 0xDD))


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    assert header is not None, "no IHDR"
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(b for i, b in enumerate(line) if i % bpp < 3))
        prev = line
    return width, height, rows


def has_colour(rows: list[bytes], rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels are within ``tolerance`` of ``rgb`` in each channel."""
    n = 0
    for row in rows:
        for x in range(0, len(row), 3):
            if all(abs(row[x + c] - rgb[c]) <= tolerance for c in range(3)):
                n += 1
    return n


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="no chromium (apt-get install chromium)"
)
def test_screenshot_shows_run_and_missed_lines(tmp_path: Path) -> None:
    out = tmp_path / "calc.png"
    width, height = 900, 700
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--size", f"{width}x{height}",
         "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == str(out)
    assert list((tmp_path / "work" / "html").glob("*calc_py.html"))
    got_w, got_h, rows = decode_png(out.read_bytes())
    assert (got_w, got_h) == (width, height)
    assert len({row[x : x + 3] for row in rows[::25] for x in range(0, len(row), 30)}) > 10
    assert has_colour(rows, RUN) > 100, "no run-line green in the screenshot"
    assert sum(has_colour(rows, rgb) for rgb in MISSED) > 100, "no missed-line red"


def test_decode_png_rejects_other_files(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="not a PNG"):
        decode_png(b"GIF89a" + bytes(20))
