"""Cover files (kcovx.cover): the area on disk.  Round trip, the file of a process that died
(the whole area: the count word says how many words are PCs), validation as untrusted input
(CoverFileError), and writing only over regular files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import kcovx
from kcovx import cover


def words(*values: int) -> bytes:
    return b"".join(v.to_bytes(8, "little") for v in values)


def test_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "c.cover"
    pcs = [1, 2**64 - 1, 0x1000, 0x1000]
    assert kcovx.write_cover(path, pcs) == 4
    assert path.read_bytes() == words(4, *pcs)
    assert kcovx.read_cover(path).tolist() == pcs
    assert kcovx.write_cover(path, []) == 0
    assert kcovx.read_cover(path).tolist() == []
    with pytest.raises(OverflowError):
        kcovx.write_cover(path, [2**64])
    assert kcovx.read_cover(path).tolist() == []  # the failed write left the file alone


def test_the_area_of_a_process_that_died_is_read_by_its_count(tmp_path: Path) -> None:
    path = tmp_path / "c.cover"
    path.write_bytes(words(2, 0xA, 0xB, 0, 0, 0, 0, 0))  # a whole area, 2 PCs recorded
    assert kcovx.read_cover(path).tolist() == [0xA, 0xB]
    cover.trim_area_file(path, 2)
    assert path.read_bytes() == words(2, 0xA, 0xB)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a whole number of 8-byte words"),
        (b"\x01" * 7, "not a whole number"),
        (words(1) + b"\x00", "not a whole number"),
        (words(3, 1, 2), "count word says 3 PCs, the file holds 2"),
        (words(2**64 - 1), "count word says"),
    ],
)
def test_malformed_files_are_cover_file_errors(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "c.cover"
    path.write_bytes(content)
    with pytest.raises(kcovx.CoverFileError, match=message) as info:
        kcovx.read_cover(path)
    assert isinstance(info.value, ValueError) and isinstance(info.value, kcovx.KcovxError)


def test_files_that_are_not_regular(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="FIFO"):
        kcovx.read_cover(fifo)  # no writer: a blocking open would hang here
    with pytest.raises(OSError, match="FIFO"):
        kcovx.write_cover(fifo, [1])
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(OSError, match="device"):
        kcovx.read_cover("/dev/zero")  # read-only: refused before any read
    with pytest.raises(FileNotFoundError):
        kcovx.read_cover(tmp_path / "missing")
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate((cover.MAX_WORDS + 1) * 8)  # sparse
    with pytest.raises(kcovx.CoverFileError, match="more than"):
        kcovx.read_cover(big)
    assert sorted(os.listdir(tmp_path)) == ["big", "fifo"]
