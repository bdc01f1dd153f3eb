"""Shared fixtures for flowlm.data tests: the real benchmark data directory and clean text chunks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip("../shared/data (the shared/ checkout beside the repo) not found")
    return DATA_DIR


def gutenberg_chunks(data_dir: Path, n: int, min_chars: int = 800, max_chars: int = 3000) -> list[str]:
    """Clean prose documents: Project Gutenberg books (headers/licence stripped) cut on paragraphs."""
    out: list[str] = []
    for f in sorted((data_dir / "text_corpus").glob("pg*.txt")):
        text = f.read_text(encoding="utf-8", errors="ignore")
        m1 = re.search(r"\*\*\* ?START OF.*?\*\*\*", text)
        m2 = re.search(r"\*\*\* ?END OF", text)
        body = text[m1.end() if m1 else 0: m2.start() if m2 else len(text)]
        cur = ""
        for para in re.split(r"\n\s*\n", body):
            cur += para.strip() + "\n\n"
            if len(cur) >= min_chars:
                out.append(cur[:max_chars].strip())
                cur = ""
    step = max(len(out) // n, 1)
    return out[::step][:n]
