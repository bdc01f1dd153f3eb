"""The docs name every module of the package, so a contributor can find where each thing lives."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_is_named_in_the_docs():
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    missing = []
    for f in sorted((ROOT / "src" / "flowlm").rglob("*.py")):
        if f.name == "__init__.py":
            continue
        if not re.search(rf"\b{re.escape(f.stem)}\b", text):
            missing.append(str(f.relative_to(ROOT / "src")))
    assert not missing, f"modules no doc names: {missing}"
