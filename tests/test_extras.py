"""`flowlm.extras.require`: optional packages fail with one line naming the extra, and every extra named
in the source is declared in pyproject.toml with the package it promises."""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

from flowlm.errors import ConfigError
from flowlm.extras import require

REPO = Path(__file__).resolve().parents[1]


def test_require_returns_the_installed_module() -> None:
    assert require("json", "data", "a feature") is json


def test_require_missing_package_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xxhash", None)  # as if not installed
    with pytest.raises(ConfigError) as info:
        require("xxhash", "data", "MinHash hash_family 'datatrove'")
    assert str(info.value) == "MinHash hash_family 'datatrove' needs the 'xxhash' package: pip install 'flowlm[data]'"
    assert info.value.exit_code == 2


def test_require_names_the_top_level_package_of_a_submodule() -> None:
    with pytest.raises(ConfigError, match=r"^f needs the 'flowlm_no_such_pkg' package: pip install 'flowlm\[x\]'$"):
        require("flowlm_no_such_pkg.sub.mod", "x", "f")


def test_require_keeps_the_error_of_an_installed_package_with_a_missing_dependency(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "flowlm_half_pkg.py").write_text("import flowlm_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("flowlm_half_pkg", "x", "f")
    assert info.value.name == "flowlm_absent_dependency"  # reinstalling the extra would not fix this


def _require_calls() -> list[tuple[str, str, str]]:
    """(file, module, extra) of every `require("module", "extra", ...)` call under src/."""
    out = []
    for path in sorted((REPO / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and len(node.args) == 3:
                mod, extra = (a.value for a in node.args[:2])
                out.append((path.name, mod, extra))
    return out


def _extras() -> dict[str, set[str]]:
    """extra -> normalised requirement names, with `flowlm[a,b]` self-references expanded."""
    raw = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def names(extra: str) -> set[str]:
        out: set[str] = set()
        for req in raw[extra]:
            name, _, rest = re.match(r"([A-Za-z0-9_.-]+)(\[([^\]]*)\])?", req).group(1, 2, 3)
            if name == "flowlm":
                for sub in rest.split(","):
                    out |= names(sub.strip())
            else:
                out.add(name.lower().replace("_", "-"))
        return out

    return {extra: names(extra) for extra in raw}


def test_every_required_package_is_in_the_extra_its_error_names() -> None:
    calls = _require_calls()
    assert {(f, m) for f, m, _ in calls} >= {("dtcompat.py", "xxhash"), ("dtcompat.py", "spacy"),
                                              ("executor.py", "ray"), ("vllm_backend.py", "vllm")}
    extras = _extras()
    for path, mod, extra in calls:
        assert extra in extras, f"{path}: extra '{extra}' is not declared in pyproject.toml"
        assert mod.split(".")[0].replace("_", "-") in extras[extra], f"{path}: '{mod}' is not in flowlm[{extra}]"
    assert extras["dev"] >= extras["data"] | extras["ray"] | extras["bench"]  # the suite never skips for them


def test_datatrove_hash_family_without_xxhash(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowlm.data.dedup import dtcompat

    monkeypatch.setitem(sys.modules, "xxhash", None)
    with pytest.raises(ConfigError, match=r"^MinHash hash_family 'datatrove' .*pip install 'flowlm\[data\]'$"):
        dtcompat.hash_function("xxhash", 64)
    assert dtcompat.hash_function("sha1", 32)("a b c d e") >= 0  # sha1 shingles need no extra


def test_spacy_word_split_without_spacy(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowlm.data.dedup import dtcompat

    monkeypatch.setitem(sys.modules, "spacy", None)
    with pytest.raises(ConfigError, match=r"^MinHash word_split 'spacy' needs the 'spacy' package"):
        dtcompat.make_splitter("spacy")


def test_ray_executor_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowlm.data.executor import make_executor

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"^executor 'ray' needs the 'ray' package: pip install 'flowlm\[ray\]'$"):
        make_executor("ray")
