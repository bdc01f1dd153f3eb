"""Third-party objectives and stage kinds: modules imported once, before any registry is read.

A plugin is a module that registers what it adds (`@register_objective`, `register(StageKind(...))`) when
imported. flowlm imports every module named by the `flowlm.plugins` entry-point group of installed
packages, and every module listed (comma-separated) in the `FLOWLM_PLUGINS` environment variable:

    # pyproject.toml of a plugin package
    [project.entry-points."flowlm.plugins"]
    my_objectives = "my_package.objectives"

    FLOWLM_PLUGINS=my_package.objectives flowlm run my_recipe.yaml
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from flowlm.errors import ConfigError

_loaded = False


def load_plugins() -> None:
    """Import the plugin modules (once per process); a missing module is a one-line ConfigError."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    names = [ep.value.split(":")[0] for ep in entry_points(group="flowlm.plugins")]
    names += [n.strip() for n in os.environ.get("FLOWLM_PLUGINS", "").split(",") if n.strip()]
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"plugin module '{name}' (FLOWLM_PLUGINS / entry point flowlm.plugins) "
                              f"cannot be imported: {exc}") from None
