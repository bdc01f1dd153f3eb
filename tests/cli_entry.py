"""How CLI tests start flowlm as a user does: the installed console script."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def flowlm_command() -> list[str]:
    """The installed console script of this interpreter (else the one on PATH; `-m` only if none is installed)."""
    beside = Path(sys.executable).with_name("flowlm")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("flowlm")
    return [found] if found else [sys.executable, "-m", "flowlm.cli"]
