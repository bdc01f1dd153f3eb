"""Optional dependencies: import one where a feature needs it, or fail with a one-line error naming the extra.

    xxhash = require("xxhash", "data", "MinHash hash_family 'datatrove'")

Each extra in `pyproject.toml` ([project.optional-dependencies]) lists what its features import, so the
message's `pip install 'flowlm[<extra>]'` is the whole fix. Only a missing top-level package becomes a
`ConfigError`; an installed package that fails to import (a broken build, a missing shared library)
keeps its own error, since installing the extra again would not help.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from flowlm.errors import ConfigError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import and return `module`, or raise a `ConfigError` saying `feature` needs `pip install 'flowlm[extra]'`."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # the package is there but one of its own dependencies is missing: not ours to rename
        raise ConfigError(f"{feature} needs the '{top}' package: pip install 'flowlm[{extra}]'") from None
