"""The run record (`flow.json`): what every stage ran with, read, wrote and measured.

For each stage: kind, effective config, a fingerprint (config + input artifact hashes + code version),
the content hashes of its inputs, its output paths and their hash, start/end time, status and headline
metrics. The file is rewritten atomically after every change, so a crash never leaves it torn.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import flowlm
from flowlm.atomic import atomic_write_text
from flowlm.errors import FlowError

RECORD = "flow.json"


def sha256_path(path: Path) -> str:
    """Content hash of a file, or of a directory (relative names + contents, sorted; temp dirs skipped)."""
    path = Path(path)
    if path.is_file():
        return sha256_files([path], path.parent)
    if path.is_dir():
        return sha256_files([p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".tmp") for part in p.parts)], path)
    raise FlowError(f"{path}: not found (cannot hash a missing artifact)")


def sha256_files(files: list[Path], base: Path) -> str:
    """Hash of `files` (names relative to `base`, then bytes), in sorted order."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(base)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """Package version, a hash of the package's own source files, and the git commit when available."""
    root = Path(flowlm.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.suffix in (".py", ".yaml", ".jinja", ".txt") and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    out = {"version": flowlm.__version__, "source_sha256": h.hexdigest()[:16]}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            out["git"] = sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def read_record(path: Path) -> dict[str, Any]:
    """The parsed `flow.json` at `path`; FlowError naming the file when it is unreadable or not a run record."""
    path = Path(path)
    if path.is_dir():
        raise FlowError(f"{path}: is a directory, not a flowlm run record")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise FlowError(f"{path}: corrupt run record (not UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise FlowError(f"{path}:{exc.lineno}: corrupt run record ({exc.msg})") from None
    problem = record_problem(data)
    if problem:
        raise FlowError(f"{path}: not a flowlm run record ({problem})")
    return data


def record_problem(data: Any) -> str | None:
    """Why `data` is not shaped like a run record (the parts the runner and the report read), or None."""
    if not isinstance(data, dict):
        return f"the top level is a JSON {_json_type(data)}, not an object"
    for key in ("recipe", "stages"):
        if key in data and not isinstance(data[key], dict):
            return f"'{key}' is a JSON {_json_type(data[key])}, not an object"
    for name, st in data.get("stages", {}).items():
        if not isinstance(st, dict):
            return f"stage '{name}' is a JSON {_json_type(st)}, not an object"
        for key in ("metrics", "outputs", "config"):
            if st.get(key) is not None and not isinstance(st[key], dict):
                return f"'stages.{name}.{key}' is a JSON {_json_type(st[key])}, not an object"
        metrics = st.get("metrics") or {}
        for key in ("eval", "eval_init", "results"):
            if metrics.get(key) and not isinstance(metrics[key], dict):
                return f"'stages.{name}.metrics.{key}' is a JSON {_json_type(metrics[key])}, not an object"
        for model, suites in (metrics.get("results") or {}).items():
            if not isinstance(suites, dict) or not all(isinstance(v, dict) or v is None for v in suites.values()):
                return f"'stages.{name}.metrics.results.{model}' is not an object of suite summaries"
    return None


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


class FlowRecord:
    """In-memory view of `flow.json` with atomic saves."""

    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.run_dir, self.data = run_dir, data

    @classmethod
    def open(cls, run_dir: Path) -> "FlowRecord":
        path = run_dir / RECORD
        data = read_record(path) if path.exists() else {"created": _now(), "stages": {}}
        return cls(run_dir, data)

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        return self.data.setdefault("stages", {})

    def set_recipe(self, name: str, origin: str, overrides: list[str], config: dict[str, Any]) -> None:
        self.data.update(
            recipe={"name": name, "origin": origin, "overrides": overrides, "config": config},
            code=code_version(),
            flowlm_version=flowlm.__version__,
        )
        self.save()

    def begin(self, name: str, kind: str, config: dict[str, Any], fingerprint: str, inputs: dict[str, str]) -> None:
        prev = self.stages.get(name, {})
        resumed = prev.get("fingerprint") == fingerprint and prev.get("status") in ("running", "failed")
        self.stages[name] = {
            "kind": kind,
            "config": config,
            "fingerprint": fingerprint,
            "inputs": inputs,
            "code": code_version(),
            "status": "running",
            "started": _now(),
            "resumed": resumed or None,
            "attempts": prev.get("attempts", 0) + 1 if resumed else 1,
        }
        self.save()

    def finish(self, name: str, outputs: dict[str, str], output_hash: str, metrics: dict[str, Any], wall_s: float) -> None:
        st = self.stages[name]
        st.update(status="done", ended=_now(), wall_s=round(wall_s, 2), outputs=outputs, output_hash=output_hash, metrics=metrics)
        self.save()

    def fail(self, name: str, error: str) -> None:
        st = self.stages.setdefault(name, {})
        st.update(status="failed", ended=_now(), error=error)
        self.save()

    def save(self) -> None:
        self.data["updated"] = _now()
        atomic_write_text(self.run_dir / RECORD, json.dumps(self.data, indent=1, default=str))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
