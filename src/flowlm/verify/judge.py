"""LLM-as-judge verifier: a chat model rates a response, the score is normalised to [0, 1].

Backends: `HttpJudge` (any OpenAI-compatible `/v1/chat/completions` endpoint — vLLM, llama.cpp
server, ...; stdlib urllib, retries with backoff, per-request timeout) and `CallableJudge` (an
in-process `fn(messages) -> str`). Both go through an optional on-disk `JudgeCache` keyed by the
SHA-256 of the full request, so re-scoring the same response never calls the model twice.

Prompt templates are package data (`templates/*.txt`, placeholders `{{prompt}}`, `{{response}}`,
`{{reference}}`, `{{min_score}}`, `{{max_score}}`): `quality` without a reference, `quality_ref`
with one (used when the row's ground truth is a non-empty string). The judge answers
`{"REASONING": ..., "SCORE": n}`; the score is mapped from [min_score, max_score] to [0, 1].
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Protocol

from flowlm.verify.base import Verdict, register
from flowlm.verify.rows import prompt_text
from flowlm.verify.thinking import extract_answer


class Judge(Protocol):
    """Anything that maps a chat request to the model's reply text."""

    def complete(self, messages: list[dict[str, str]]) -> str: ...


def load_template(name: str) -> str:
    """A shipped prompt template (`quality`, `quality_ref`) or a path to a .txt file."""
    if os.path.sep in name or name.endswith(".txt"):
        return Path(name).read_text(encoding="utf-8")
    return resources.files("flowlm.verify").joinpath("templates", f"{name}.txt").read_text(encoding="utf-8")


def render(template: str, **values: Any) -> str:
    """Fill `{{key}}` placeholders (JSON braces in the template stay untouched)."""
    for k, v in values.items():
        template = template.replace("{{" + k + "}}", str(v))
    return template


class JudgeCache:
    """On-disk cache of judge replies: one JSON file per request hash."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, request: dict[str, Any]) -> str | None:
        p = self.dir / f"{self.key(request)}.json"
        try:
            return json.loads(p.read_text(encoding="utf-8"))["reply"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, request: dict[str, Any], reply: str) -> None:
        p = self.dir / f"{self.key(request)}.json"
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"request": request, "reply": reply}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, p)  # atomic: concurrent workers never read half a file


@dataclass
class HttpJudge:
    """OpenAI-compatible chat endpoint (e.g. `http://127.0.0.1:8000` or `.../v1`)."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 0.5
    max_tokens: int = 1024
    temperature: float = 0.0
    cache: JudgeCache | None = None

    def _url(self) -> str:
        base = self.base_url.rstrip("/")
        return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")

    def request_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                "temperature": self.temperature}

    def complete(self, messages: list[dict[str, str]]) -> str:
        body = self.request_body(messages)
        return _cached(self.cache, body, lambda: self._post_with_retries(body))

    def _post_with_retries(self, body: dict[str, Any]) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(self._url(), data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                return str(payload["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as exc:
                last = exc
                if exc.code < 500 and exc.code != 429:
                    break  # a client error will not fix itself by retrying
            except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError, IndexError) as exc:
                last = exc
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise RuntimeError(f"judge request failed after {self.retries + 1} attempts: {last}")


@dataclass
class CallableJudge:
    """In-process judge: `fn(messages) -> reply text`, optionally cached."""

    fn: Callable[[list[dict[str, str]]], str]
    cache: JudgeCache | None = None
    name: str = "callable"

    def complete(self, messages: list[dict[str, str]]) -> str:
        return _cached(self.cache, {"model": self.name, "messages": messages}, lambda: self.fn(messages))


def _cached(cache: JudgeCache | None, body: dict[str, Any], ask: Callable[[], str]) -> str:
    """The cached reply for `body`, or `ask()`'s reply, stored in the cache when there is one."""
    if cache and (hit := cache.get(body)) is not None:
        return hit
    reply = ask()
    if cache:
        cache.put(body, reply)
    return reply


_SCORE_RE = re.compile(r'"?SCORE"?\s*[:=]\s*"?(-?\d+(?:\.\d+)?)', re.I)


def parse_score(reply: str) -> tuple[float | None, str]:
    """(raw score, reasoning) from the judge's reply; the judge's own `<think>` block is ignored."""
    text = extract_answer(reply) or reply
    for m in re.finditer(r"\{.*?\}", text, re.S):
        try:
            obj = json.loads(m.group(0))
        except ValueError:
            continue
        obj = {str(k).upper(): v for k, v in obj.items()}
        if "SCORE" in obj:
            try:
                return float(obj["SCORE"]), str(obj.get("REASONING", ""))
            except (TypeError, ValueError):
                pass
    m = _SCORE_RE.search(text)
    return (float(m.group(1)), "") if m else (None, "")


_DEFAULT: dict[str, Judge] = {}


def set_default_judge(judge: Judge | None) -> None:
    """Judge used when a row names none (set once per process, e.g. before creating a pool)."""
    _DEFAULT.pop("judge", None)
    if judge is not None:
        _DEFAULT["judge"] = judge


def judge_from_row(row: dict[str, Any]) -> Judge:
    """The row's `judge` object, else `judge_url`/`judge_model` (or FLOWLM_JUDGE_URL/_MODEL), else the default."""
    if row.get("judge") is not None:
        return row["judge"]
    url = row.get("judge_url") or os.environ.get("FLOWLM_JUDGE_URL")
    if url:
        cache_dir = row.get("judge_cache_dir") or os.environ.get("FLOWLM_JUDGE_CACHE")
        return HttpJudge(url, row.get("judge_model") or os.environ.get("FLOWLM_JUDGE_MODEL", "default"),
                         api_key=os.environ.get("FLOWLM_JUDGE_API_KEY"), timeout=float(row.get("judge_timeout", 120)),
                         cache=JudgeCache(cache_dir) if cache_dir else None)
    if "judge" in _DEFAULT:
        return _DEFAULT["judge"]
    raise RuntimeError("no judge configured (row judge/judge_url, FLOWLM_JUDGE_URL or set_default_judge)")


@register("judge", "general-quality", "general-quality_ref")
def verify_with_judge(completion: str, ground_truth: Any, **row: Any) -> Verdict:
    """Ask the judge to rate the answer; with a string ground truth the reference template is used."""
    answer = extract_answer(completion)
    if not answer:
        return Verdict(0.0, "empty answer")
    lo, hi = float(row.get("min_score", 1)), float(row.get("max_score", 10))
    has_ref = isinstance(ground_truth, str) and ground_truth.strip()
    template = load_template(row.get("template") or ("quality_ref" if has_ref else "quality"))
    prompt = render(template, prompt=prompt_text(row), response=answer, reference=ground_truth if has_ref else "",
                    min_score=int(lo), max_score=int(hi))
    try:
        reply = judge_from_row(row).complete([{"role": "user", "content": prompt}])
    except Exception as exc:  # noqa: BLE001 - an unreachable judge scores 0 with the reason
        return Verdict(0.0, f"judge unavailable: {str(exc)[:200]}")
    raw, reasoning = parse_score(reply)
    if raw is None:
        return Verdict(0.0, f"judge reply has no score: {reply[:100]!r}")
    score = (min(max(raw, lo), hi) - lo) / (hi - lo)
    return Verdict(score, f"judge score {raw:g}/{hi:g}: {reasoning[:150]}", {"raw_score": raw, "reference": bool(has_ref)})
