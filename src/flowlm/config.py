"""Recipes: load YAML, apply dotted `key.sub=value` overrides, validate into typed, frozen configs.

A recipe is found by name among the YAML files shipped in `flowlm/flow/recipes/` (`flowlm run tiny`) or
given as a path. Validation happens once, at load: an unknown key or a bad value becomes one
`ConfigError` line naming the key, what is allowed and, for typos, the closest known key. A key written
twice in one YAML mapping, or a file that is not UTF-8, is an error naming the file and line.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from flowlm.errors import ConfigError

RECIPE_PACKAGE = "flowlm.flow.recipes"


class Strict(BaseModel):
    """Base for every config: unknown keys are errors and a validated config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def recipe_names() -> list[str]:
    """Names of the recipes shipped inside the package."""
    root = resources.files(RECIPE_PACKAGE)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def read_recipe(name_or_path: str, _seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """Return the raw recipe mapping and where it came from (a path or `builtin:NAME`).

    `extends: OTHER` (a built-in name or a path) starts from that recipe: its keys are deep-merged with
    this one's, and this recipe's new stages come after the other's, in order (a stage both name is
    merged in place). `name` is never inherited.
    """
    raw, origin = _read_one(name_or_path)
    base_ref = raw.pop("extends", None)
    if base_ref is None:
        return raw, origin
    if not isinstance(base_ref, str):
        raise ConfigError(f"{origin}: extends must be a recipe name or path")
    if base_ref in _seen or base_ref == name_or_path:
        raise ConfigError(f"{origin}: extends forms a cycle ({' -> '.join((*_seen, name_or_path, base_ref))})")
    base, _ = read_recipe(base_ref, (*_seen, name_or_path))
    base.pop("name", None)
    stages = {**base.get("stages", {})}
    for sname, scfg in (raw.get("stages") or {}).items():
        both = isinstance(stages.get(sname), dict) and isinstance(scfg, dict)
        stages[sname] = deep_merge(stages[sname], scfg) if both else scfg
    merged = deep_merge({k: v for k, v in base.items() if k != "stages"},
                       {k: v for k, v in raw.items() if k != "stages"})
    return {**merged, "stages": stages}, origin


def _read_one(name_or_path: str) -> tuple[dict[str, Any], str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        text, origin = _read_text(path), str(path)
    else:
        names = recipe_names()
        if name_or_path not in names:
            hint = difflib.get_close_matches(name_or_path, names, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"unknown recipe '{name_or_path}'{extra}; built-in recipes: {', '.join(names)}")
        text = resources.files(RECIPE_PACKAGE).joinpath(f"{name_or_path}.yaml").read_text()
        origin = f"builtin:{name_or_path}"
    return parse_yaml_mapping(text, origin), origin


def _read_text(path: Path) -> str:
    """The text of a recipe / config file; a one-line ConfigError when it is missing, a directory or not UTF-8."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a recipe file")
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start})") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that rejects a key written twice in one mapping (YAML itself keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges; its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = first.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if seen is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first set on line {seen + 1})", key_node.start_mark)
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def parse_yaml_mapping(text: str, origin: str) -> dict[str, Any]:
    """Parse YAML whose top level is a mapping; bad YAML or a duplicate key is a ConfigError naming ORIGIN:LINE."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{origin}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: a recipe must be a mapping at the top level")
    if _holds_itself(raw):  # `a: &x [*x]`: every later walk over the recipe would recurse forever
        raise ConfigError(f"{origin}: invalid YAML (an alias refers to a node that contains it)")
    return raw


def _holds_itself(obj: Any) -> bool:
    """Whether a parsed YAML value contains itself (an alias to one of its own ancestors)."""
    stack: list[tuple[Any, frozenset[int]]] = [(obj, frozenset())]
    while stack:
        node, above = stack.pop()
        if isinstance(node, (dict, list)):
            if id(node) in above:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack += [(child, above | {id(node)}) for child in children]
    return False


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a copy of the raw recipe."""
    out = _deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{'.'.join(parts[: i + 1])}' is not a section")
            node = child
        node[parts[-1]] = parsed
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `base` with `over` laid on top. Where both hold a dict at a key they merge
    recursively; any other value in `over` (None included) replaces. Neither input is changed, and
    the result shares no dict or list with them.
    """
    out = _deepcopy(base)
    _merge_into(out, over)
    return out


def _merge_into(dst: dict[str, Any], over: dict[str, Any]) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge_into(dst[k], v)
        else:
            dst[k] = _deepcopy(v)


def _deepcopy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deepcopy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deepcopy(v) for v in obj]
    return obj


def validate(model_cls: type[BaseModel], raw: dict[str, Any], origin: str) -> Any:
    """Validate `raw` into `model_cls`; the first error becomes a one-line `ConfigError`."""
    try:
        return model_cls.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_error(model_cls, exc.errors()[0], origin)) from None


_NESTED_MISSING = re.compile(r"^\w+: missing required key '([^']+)'$")


def format_error(model_cls: type[BaseModel], err: dict[str, Any], origin: str) -> str:
    """One line naming the dotted key, the problem and (for unknown keys) the closest allowed key."""
    loc, classes = _walk(model_cls, [str(p) for p in err.get("loc", ())])
    key = ".".join(loc)
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        allowed = sorted({n for c in classes for n in _fields(c)})
        hint = difflib.get_close_matches(loc[-1], allowed, n=1, cutoff=0.5)
        extra = f" (did you mean '{'.'.join(loc[:-1] + [hint[0]])}'?)" if hint else ""
        return f"{origin}: unknown key '{key}'{extra}; allowed here: {', '.join(allowed)}"
    if not key:
        return f"{origin}: {msg}"
    if err.get("type") == "missing":
        return f"{origin}: missing required key '{key}'"
    nested = _NESTED_MISSING.match(msg)  # a sub-config's own missing key (e.g. an objective's beta)
    if nested:
        return f"{origin}: missing required key '{key}.{nested.group(1)}'"
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    return f"{origin}: bad value for '{key}': {msg}{shown}"


def _walk(model_cls: type[BaseModel], parts: list[str]) -> tuple[list[str], list[Any]]:
    """Follow `parts` through the config classes; drop pydantic's union tags from the shown location.

    Returns the cleaned location and the candidate classes holding its last element.
    """
    shown: list[str] = []
    classes: list[Any] = [model_cls]
    parents: list[Any] = classes
    for part in parts:
        members = [c for c in classes if isinstance(c, type) and issubclass(c, BaseModel)]
        tagged = [c for c in members if _tag(c) == part] if len(members) > 1 else []
        if tagged:  # a discriminated-union tag, not a key the user wrote
            classes = tagged
            continue
        parents = classes
        shown.append(part)
        nxt = [child for c in classes for child in _children(c, part)]
        classes = nxt or classes
    return shown, parents


def _tag(cls: type[BaseModel]) -> str | None:
    field = cls.model_fields.get("kind")
    return field.default if field is not None and isinstance(field.default, str) else None


def _fields(cls: Any) -> list[str]:
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return [f.alias or n for n, f in cls.model_fields.items()]
    return []


def _children(cls: Any, part: str) -> list[Any]:
    """Config classes reachable from `cls` through field or mapping key `part`."""
    import typing

    if isinstance(cls, type) and issubclass(cls, BaseModel):
        for name, field in cls.model_fields.items():
            if part in (name, field.alias):
                return _flatten(field.annotation)
        return []
    if typing.get_origin(cls) is dict:
        return _flatten(typing.get_args(cls)[1])
    return []


def _flatten(tp: Any) -> list[Any]:
    import types
    import typing

    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _flatten(args[0])
    if origin in (typing.Union, types.UnionType):
        return [c for a in args for c in _flatten(a)]
    return [tp]
