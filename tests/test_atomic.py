"""`flowlm.atomic`: directories and files appear complete or not at all; failures leave no temporaries."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from flowlm.atomic import (atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text, replacing,
                           temp_sibling, write_jsonl)


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_atomic_dir_creates_dest_through_a_hidden_sibling(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "out"
    with atomic_dir(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".tmp-") and not any(tmp.iterdir())
        assert not dest.exists()  # nothing visible until the block ends
        (tmp / "a.txt").write_text("new")
    assert _names(dest.parent) == ["out"]
    assert (dest / "a.txt").read_text() == "new"
    ref = tmp_path / "ref"
    ref.mkdir()  # the umask's default mode, not mkdtemp's private 0700
    assert stat.S_IMODE(dest.stat().st_mode) == stat.S_IMODE(ref.stat().st_mode)


def test_atomic_dir_replaces_an_existing_dir(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    with atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("new")
        assert (dest / "stale.txt").read_text() == "old"  # the old version stays readable meanwhile
    assert _names(dest) == ["a.txt"]  # replaced, not merged
    assert _names(tmp_path) == ["out"]  # neither the temporary nor the old copy is left


def test_atomic_dir_exception_keeps_old_content_and_removes_temp(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(dest) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("boom")
    assert (dest / "a.txt").read_text() == "old"
    assert _names(tmp_path) == ["out"]
    with pytest.raises(KeyboardInterrupt):  # also on BaseException: Ctrl-C leaves no temporary
        with atomic_dir(tmp_path / "new"):
            raise KeyboardInterrupt
    assert _names(tmp_path) == ["out"]


def test_atomic_dir_gives_each_use_a_fresh_temp(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with atomic_dir(dest) as a, atomic_dir(dest) as b:
        assert a != b


def test_file_writers_replace_and_leave_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "d" / "f.json"
    atomic_write_text(p, "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic_write_json(p, {"a": [1, 2]})
    assert p.read_text() == json.dumps({"a": [1, 2]}, indent=1)
    atomic_write_json(p, {"a": 1}, indent=None)
    assert p.read_text() == '{"a": 1}'
    assert _names(p.parent) == ["f.json"]
    assert temp_sibling(p) == p.with_name(f".tmp-f.json-{os.getpid()}")


def test_failed_file_write_keeps_old_content(tmp_path: Path) -> None:
    p = tmp_path / "f.json"
    atomic_write_json(p, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(p, {"v": object()})  # not serialisable: fails before anything is replaced
    assert json.loads(p.read_text()) == {"v": 1}

    def rows():
        yield {"v": 2}
        raise ValueError("generator failed half-way")

    with pytest.raises(ValueError):
        write_jsonl(p, rows())
    assert json.loads(p.read_text()) == {"v": 1}
    assert _names(tmp_path) == ["f.json"]


def test_write_jsonl_counts_rows_and_keeps_unicode(tmp_path: Path) -> None:
    p = tmp_path / "rows.jsonl"
    assert write_jsonl(p, ({"i": i, "t": "ü"} for i in range(3))) == 3
    lines = p.read_text(encoding="utf-8").splitlines()
    assert lines == [f'{{"i": {i}, "t": "ü"}}' for i in range(3)]
    assert write_jsonl(p, []) == 0 and p.read_text() == ""


def test_replacing_wraps_a_writer_of_ones_own(tmp_path: Path) -> None:
    p = tmp_path / "out.txt"
    p.write_text("old")
    with replacing(p) as tmp:
        assert tmp == temp_sibling(p)
        with open(tmp, "w") as f:
            f.write("new")
        assert p.read_text() == "old"  # replaced only when the block ends
    assert p.read_text() == "new"
    with pytest.raises(OSError):
        with replacing(p) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    assert p.read_text() == "new" and _names(tmp_path) == ["out.txt"]
