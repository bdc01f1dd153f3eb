"""`flowlm.jsonlines`: the strict reader stops at the first bad line naming FILE:LINE; gz is read by suffix."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from flowlm.errors import FlowError
from flowlm.jsonlines import iter_json_objects, read_json_objects


def test_objects_with_line_numbers_blank_lines_skipped(tmp_path: Path) -> None:
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n\n  \n{"b": "ü"}\n', encoding="utf-8")
    assert list(iter_json_objects(p)) == [(1, {"a": 1}), (4, {"b": "ü"})]
    assert read_json_objects(p) == [{"a": 1}, {"b": "ü"}]


def test_gzip_by_suffix(tmp_path: Path) -> None:
    p = tmp_path / "rows.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write('{"a": 1}\n{"a": 2}\n')
    assert read_json_objects(p) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("bad, reason", [
    (b"{not json", "invalid JSON"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"a": "\xff"}', "invalid UTF-8"),
    # json raises RecursionError, not a decode error, past its nesting limit: it crashed every reader
    (b'{"a": ' + b"[" * 100_000, r"invalid JSON \(nested too deeply\)"),
])
def test_first_bad_line_is_named(tmp_path: Path, bad: bytes, reason: str) -> None:
    p = tmp_path / "rows.jsonl"
    p.write_bytes(b'{"ok": 1}\n' + bad + b"\n")
    with pytest.raises(FlowError, match=rf"rows\.jsonl:2: {reason}"):
        read_json_objects(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FlowError, match="not found"):
        read_json_objects(tmp_path / "nope.jsonl")


def test_a_multi_frame_zst_is_read_whole(tmp_path):
    import zstandard

    from flowlm.jsonlines import iter_lines

    rows = [json.dumps({"id": i}) + "\n" for i in range(300)]
    path = tmp_path / "multi.jsonl.zst"  # three independent frames, as `cat a.zst b.zst c.zst` makes
    path.write_bytes(b"".join(zstandard.ZstdCompressor().compress("".join(rows[i:i + 100]).encode())
                              for i in range(0, 300, 100)))
    assert [json.loads(raw)["id"] for _, raw in iter_lines(path)] == list(range(300))
