"""LLM judge: OpenAI-compatible HTTP endpoint (a tiny server on 127.0.0.1), retries, timeouts, caching,
score parsing and normalisation, in-process callable judges, shipped templates."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flowlm.verify import verify
from flowlm.verify.judge import CallableJudge, HttpJudge, JudgeCache, load_template, parse_score


class FakeChat:
    """A scripted OpenAI-compatible server: replies in order; `"500"` means an HTTP 500, `"sleep"` a stall."""

    def __init__(self, replies: list[str]) -> None:
        self.replies, self.requests = list(replies), []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, body))
                reply = fake.replies.pop(0) if fake.replies else '{"SCORE": 1}'
                if reply == "500":
                    self.send_response(500)
                    self.end_headers()
                    return
                if reply == "sleep":
                    threading.Event().wait(2.0)
                    reply = '{"SCORE": 1}'
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except BrokenPipeError:
                    pass  # the client timed out first (the timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chat():
    servers = []

    def make(replies):
        servers.append(FakeChat(replies))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_http_judge_score_normalised_with_and_without_reference(chat):
    srv = chat(['{"REASONING": "good", "SCORE": 10}', '<think>hmm</think>{"REASONING": "meh", "SCORE": 4}'])
    j = HttpJudge(srv.url, "judge-model", retries=0)
    v = verify("judge", "<think>x</think>Paris", None, prompt="Capital of France?", judge=j)
    assert v.score == 1.0 and "10" in v.reason
    v = verify("judge", "Lyon", "Paris", prompt="Capital of France?", judge=j)
    assert v.score == pytest.approx(3 / 9) and v.meta["reference"] is True
    path, body = srv.requests[1]
    assert path == "/v1/chat/completions" and body["model"] == "judge-model"
    assert "REFERENCE:\nParis" in body["messages"][0]["content"]
    assert "REFERENCE" not in srv.requests[0][1]["messages"][0]["content"]
    assert "Paris" in srv.requests[0][1]["messages"][0]["content"]  # the answer, not the reasoning
    assert "<think>" not in srv.requests[0][1]["messages"][0]["content"]


def test_retries_after_server_errors(chat):
    srv = chat(["500", "500", '{"SCORE": 7}'])
    j = HttpJudge(srv.url + "/v1", "m", retries=3, backoff=0.01)
    assert verify("judge", "ok", None, judge=j).score == pytest.approx(6 / 9)
    assert len(srv.requests) == 3


def test_gives_up_and_scores_zero(chat):
    srv = chat(["500"] * 5)
    v = verify("judge", "ok", None, judge=HttpJudge(srv.url, "m", retries=1, backoff=0.01))
    assert v.score == 0.0 and v.reason.startswith("judge unavailable") and len(srv.requests) == 2


def test_timeout(chat):
    srv = chat(["sleep"])
    v = verify("judge", "ok", None, judge=HttpJudge(srv.url, "m", timeout=0.3, retries=0))
    assert v.score == 0.0 and "judge unavailable" in v.reason


def test_cache_avoids_second_request(chat, tmp_path):
    srv = chat(['{"SCORE": 8}', '{"SCORE": 2}'])
    j = HttpJudge(srv.url, "m", cache=JudgeCache(tmp_path / "cache"))
    a = verify("judge", "same answer", None, prompt="q", judge=j)
    b = verify("judge", "same answer", None, prompt="q", judge=j)
    assert a.score == b.score == pytest.approx(7 / 9) and len(srv.requests) == 1
    c = verify("judge", "other answer", None, prompt="q", judge=j)
    assert c.score == pytest.approx(1 / 9) and len(srv.requests) == 2
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2


def test_judge_url_in_row_and_callable_judge(chat):
    srv = chat(['{"SCORE": 10}'])
    assert verify("general-quality", "x", None, judge_url=srv.url, judge_model="m").score == 1.0
    seen = []
    j = CallableJudge(lambda msgs: seen.append(msgs) or "Score: 5")
    assert verify("judge", "x", None, judge=j).score == pytest.approx(4 / 9) and len(seen) == 1


def test_unparsable_reply_and_no_judge():
    assert verify("judge", "x", None, judge=CallableJudge(lambda m: "no idea")).score == 0.0
    v = verify("judge", "x", None)
    assert v.score == 0.0 and "no judge configured" in v.reason


def test_parse_score_and_templates():
    assert parse_score('{"REASONING": "fine", "SCORE": "6"}') == (6.0, "fine")
    assert parse_score("SCORE: 3.5") == (3.5, "")
    assert parse_score("nothing") == (None, "")
    for name in ("quality", "quality_ref"):
        t = load_template(name)
        assert "{{prompt}}" in t and "{{response}}" in t and "SCORE" in t
    assert "{{reference}}" in load_template("quality_ref")


def test_the_judge_sees_the_question_of_a_messages_row():
    """The judge template's {{prompt}} is the row's question whether the row holds a `prompt` string or
    chat `messages` (it was empty for messages rows until 2026-12-07: the judge rated answers blind)."""
    seen = []
    j = CallableJudge(lambda msgs: seen.append(msgs[0]["content"]) or "Score: 5")
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Name a prime above 10."}]
    verify("judge", "13", None, judge=j, messages=msgs)
    verify("judge", "13", None, judge=j, prompt="Name a prime above 10.")
    assert len(seen) == 2 and seen[0] == seen[1] and "Name a prime above 10." in seen[0]


def test_prompt_turns_and_text_of_untrusted_rows():
    from flowlm.verify.rows import prompt_text, prompt_turns

    convo = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
             {"role": "assistant", "content": "answer"}]
    assert prompt_turns({"messages": convo}) == convo[:3] and prompt_text({"messages": convo}) == "c"
    assert prompt_turns({"prompt": convo[:1]}) == convo[:1]  # TRL conversational prompt
    assert prompt_turns({"prompt": "q"}) == [{"role": "user", "content": "q"}] and prompt_text({"prompt": "q"}) == "q"
    for bad in ({}, {"prompt": 3}, {"messages": "x"}, {"messages": [1, None]}, {"messages": [{"role": "assistant"}]},
                {"messages": [{"role": "user", "content": 5}]}, {"prompt": ""}):
        assert prompt_turns(bad) == [] and prompt_text(bad) == ""
