"""Rollouts that call tools (`flowlm.tools.engine.ToolEngine`, `rollout.tools`) and what is built on them.

- On a scripted engine (replies from a script; a tiny random model never calls a tool): trajectories are
  token ids end to end (the tool turn is the template's own rendering, flowlm's or a Qwen3-style one,
  appended as ids), limits and budgets end samples, calls run in threads beside decoding with the same
  samples as inline, and the RL source masks tool tokens out of the GRPO loss and logs the calls.
- On the real engine: a micro OLMo-3 that learnt one calculator trajectory by heart (`make_caller`) is
  sampled by the RL source in modes sync and async and through the vLLM stand-in (mode ray:
  `tests/rl/test_ray.py`), and the learner scores every trained token as the engine did; as a cold-start
  teacher with tools it gives SFT rows that are whole trajectories.
- RL rows with their own functions (BFCL's format): listed in their prompts, checked, never run."""

from __future__ import annotations

import json

import pytest
import torch

from flowlm.errors import ConfigError
from flowlm.generate.params import Completion, Result, SamplingParams, Timings
from flowlm.model.harmony import is_harmony
from flowlm.model.tokenizer import decode_reply, render_ids, train_tokenizer, turn_end_ids
from flowlm.rl.source import RolloutConfig, RolloutSource
from flowlm.tools.builtin import CALCULATOR
from flowlm.tools.engine import ToolEngine
from flowlm.verify.base import Verdict, register

SEEN: list[str] = []


@register("tool_test_record")
def _record(completion, ground_truth, **row):
    SEEN.append(completion)
    return Verdict(float(ground_truth in completion), "contains the ground truth")


def call(name, **args):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


def make_tok(out):
    from flowlm.model.tokenizer import load_tokenizer

    train_tokenizer(["The answer is 42. We add numbers and call tools to compute things exactly."] * 50, 400, out)
    return load_tokenizer(out)


class ScriptedEngine:
    """The engine interface with scripted replies: sample j of a request replies `script(prompt text, j, turn)`;
    every token has log-prob -0.5 and the engine's version. Records what was submitted."""

    def __init__(self, tok, script, context=100_000):
        self.tokenizer, self.script, self.context = tok, script, context
        self.version, self.stats = 0, {"generated_tokens": 0}
        self.submitted: list[tuple[list[int], SamplingParams]] = []
        self.pending: list = []
        self.next_id = 0

    def prepare(self, ids, params):
        return ids, (f"prompt has {len(ids)} tokens; the context is {self.context}" if len(ids) >= self.context else None)

    def update_weights(self, weights, version=None, **kw):
        self.version = version
        return version

    def submit(self, ids, params, tag=None):
        self.submitted.append((list(ids), params))
        self.pending.append((self.next_id, list(ids), params, tag))
        self.next_id += 1
        return self.next_id - 1

    def has_unfinished(self):
        return bool(self.pending)

    @staticmethod
    def tool_turns(text):
        """Tool turns in a prompt so far: flowlm's `tool` role, a user turn of <tool_response>s (Qwen3's),
        OLMo 3's `environment` role, Llama 3's and 4's `ipython` role, Mistral's `[TOOL_RESULTS]`,
        DeepSeek's tool outputs, or harmony's messages from `functions.NAME`."""
        return (text.count("<|im_start|>tool") + text.count("<|im_start|>user\n<tool_response>")
                + text.count("<|im_start|>environment") + text.count("<|start_header_id|>ipython")
                + text.count("<|header_start|>ipython") + text.count("[TOOL_RESULTS]")
                + text.count("<｜tool▁output▁begin｜>") + text.count("<|start|>functions."))

    def step(self):
        out = []
        for rid, ids, params, tag in self.pending:
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            comps = []
            for j in range(params.n):
                reply = self.script(text, j if tag[1] is None else tag[1], self.tool_turns(text))
                tokens = self.tokenizer.encode(reply, add_special_tokens=False)
                cut = len(tokens) > params.max_new_tokens
                ends = list(turn_end_ids(self.tokenizer))  # (a reply may end with its own: harmony's <|call|>)
                tokens = tokens[: params.max_new_tokens] if cut else tokens + ([] if tokens and tokens[-1] in ends
                                                                               else ends[:1])
                text = (decode_reply(self.tokenizer, tokens) if is_harmony(self.tokenizer)
                        else self.tokenizer.decode(tokens, skip_special_tokens=True))
                comps.append(Completion(tokens=tokens, logprobs=[-0.5] * len(tokens), versions=[self.version] * len(tokens),
                                        text=text,
                                        finish_reason="length" if cut else "stop"))
            out.append(Result(rid, ids, comps, Timings(), tag=tag))
        self.pending = []
        return out


def calculator_script(text, j, turn):
    """Sample 0 calls the calculator, reads its answer and answers; sample 1 answers at once, wrongly."""
    if j == 0 and turn == 0:
        return "<think>\nBig.\n</think>\n\n" + call("calculator", expression="48213 * 9127")
    return "<think>\nok\n</think>\n\nThe answer is " + ("440040051." if j == 0 else "7.")


def test_a_trajectory_is_token_ids_end_to_end_and_matches_the_template(tok):
    prompt = [{"role": "user", "content": "q"}]
    prompt_ids = render_ids(tok, prompt, add_generation_prompt=True, tools=[CALCULATOR.schema])
    inner = ScriptedEngine(tok, calculator_script)
    engine = ToolEngine(inner, {"calculator": CALCULATOR}, max_calls=3)
    res = engine.generate([prompt_ids], [SamplingParams(n=2, max_new_tokens=200, seed=5)])[0]
    first, second = res.completions
    assert first.tool_calls == 1 and first.tool_errors == 0 and first.finish_reason == "stop"
    assert second.tool_calls == 0 and second.tool_mask == [0] * len(second.tokens)
    assert first.text == "<think>\nok\n</think>\n\nThe answer is 440040051." and second.text.endswith("is 7.")
    # the whole trajectory is what the template renders for the same conversation (its final newline aside)
    called = {"role": "assistant", "content": "", "reasoning_content": "Big.", "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "48213 * 9127"}}}]}
    whole = render_ids(tok, prompt + [called, {"role": "tool", "name": "calculator", "content": "440040051"},
                                      {"role": "assistant", "content": "The answer is 440040051.",
                                       "reasoning_content": "ok"}], tools=[CALCULATOR.schema])
    assert whole[: len(prompt_ids) + len(first.tokens)] == prompt_ids + first.tokens
    # the tool turn (answer + next generation prompt) is masked; the sampled turns are not
    mask = torch.tensor(first.tool_mask, dtype=torch.bool)
    tool_text = tok.decode(torch.tensor(first.tokens)[mask].tolist(), skip_special_tokens=False)
    assert tool_text == "\n<|im_start|>tool\n440040051<|im_end|>\n<|im_start|>assistant\n"
    assert all(lp == 0.0 for lp, m in zip(first.logprobs, first.tool_mask) if m)
    assert all(lp == -0.5 for lp, m in zip(first.logprobs, first.tool_mask) if not m)
    # the continuation was submitted as the exact ids so far (nothing decoded and re-encoded), n = 1,
    # with what is left of the budget and a seed of its own
    ids, params = inner.submitted[1]
    turn1 = first.tokens.index(turn_end_ids(tok)[0]) + 1
    assert ids == prompt_ids + first.tokens[: turn1 + int(mask.sum())]
    assert params.n == 1 and params.max_new_tokens == 200 - turn1 - int(mask.sum()) and params.seed not in (None, 5)


def test_limits_budgets_and_bad_calls_end_samples(tok):
    prompt_ids = render_ids(tok, [{"role": "user", "content": "q"}], add_generation_prompt=True,
                            tools=[CALCULATOR.schema])

    def run(script, max_new_tokens=300, max_calls=2):
        engine = ToolEngine(ScriptedEngine(tok, script), {"calculator": CALCULATOR}, max_calls=max_calls)
        return engine.generate([prompt_ids], [SamplingParams(max_new_tokens=max_new_tokens)])[0].completions[0]

    looping = run(lambda text, j, turn: call("calculator", expression="1+1"))
    assert looping.tool_calls == 2 and looping.finish_reason == "stop" and sum(looping.tool_mask) > 0
    assert looping.text.count("calculator") == 1  # the last reply (a third call, not run) is the text
    bad = run(lambda text, j, turn: call("search", q="x") if turn == 0 else "done")
    assert bad.tool_calls == 1 and bad.tool_errors == 1 and bad.text == "done"
    assert "error: no tool named 'search'" in tok.decode(bad.tokens, skip_special_tokens=False)
    # a call in the think block is thinking, not a call
    thought = run(lambda text, j, turn: "<think>\n" + call("calculator", expression="2") + "\n</think>\n\nno")
    assert thought.tool_calls == 0 and not any(thought.tool_mask)
    # no room left for the tool's answer: the sample ends, cut, without it
    first = len(tok.encode(call("calculator", expression="1+1"), add_special_tokens=False)) + 1
    cut = run(lambda text, j, turn: call("calculator", expression="1+1"), max_new_tokens=first + 3)
    assert cut.finish_reason == "length" and not any(cut.tool_mask) and len(cut.tokens) == first
    with pytest.raises(ConfigError, match="max_calls"):
        ToolEngine(ScriptedEngine(tok, calculator_script), {"calculator": CALCULATOR}, max_calls=0)


@pytest.mark.parametrize("workers", [0, 4])
def test_trajectories_hold_the_conversation_with_calls_answers_and_limits(tok, workers):
    """Per sample, the messages after the prompt: each calling turn with its reasoning and calls, each tool's
    answer (an unknown tool or a malformed call is answered `error: ...`), the final reply; limits end samples."""
    scripts = {
        0: ["<think>\nBig numbers: use the calculator.\n</think>\n\n" + call("calculator", expression="48213 * 9127"),
            "<think>\n</think>\n\nThe answer is 440040051."],
        1: ["Let me look. " + call("search", q="x"), "I cannot search."],
        2: ['<tool_call>{"name": oops}</tool_call>', "Sorry."],
        3: ["<tool_call>{broken</tool_call>"] * 4,  # never a valid call: the turns are bounded all the same
    }
    engine = ToolEngine(ScriptedEngine(tok, lambda text, j, turn: scripts[int(text.split("question ")[1][0])][turn]),
                        {"calculator": CALCULATOR}, max_calls=2, workers=workers)
    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(4)]
    res = [r.completions[0] for r in engine.generate(convs, [SamplingParams(max_new_tokens=300)] * 4)]
    first, answer, final = res[0].trajectory
    assert first == {"role": "assistant", "content": "", "reasoning_content": "Big numbers: use the calculator.",
                     "tool_calls": [{"type": "function", "function": {"name": "calculator",
                                                                      "arguments": {"expression": "48213 * 9127"}}}]}
    assert answer == {"role": "tool", "name": "calculator", "content": "440040051"}
    assert final == {"role": "assistant", "content": "The answer is 440040051.", "reasoning_content": ""}
    assert res[0].tool_calls == 1 and res[0].tool_errors == 0
    said, unknown, _ = res[1].trajectory
    assert said["content"] == "Let me look." and unknown["content"] == "error: no tool named 'search' (tools: calculator)"
    assert res[1].text == "I cannot search." and res[1].tool_calls == 1 and res[1].tool_errors == 1
    assert res[2].trajectory[1]["content"].startswith("error: call 1 is not JSON") and res[2].text == "Sorry."
    assert res[2].tool_calls == 0 and res[2].tool_errors == 1
    # two tool turns, then the third reply (still a broken call) ends the sample unrun
    assert [m["role"] for m in res[3].trajectory] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert res[3].finish_reason == "stop" and "tool_calls" not in res[3].trajectory[-1]


def test_the_tool_turn_is_the_templates_and_filled_in_one_pass(tok):
    from flowlm.tools.engine import fill_tool_turn, tool_turn_text

    two = tool_turn_text(tok, ["calculator", "python"], enable_thinking=False)
    filled = fill_tool_turn(two, ["4", "\x00flowlm-tool-answer-0\x00"])  # an answer printing a placeholder stays
    assert filled == ("\n<|im_start|>tool\n4<|im_end|>\n<|im_start|>tool\n\x00flowlm-tool-answer-0\x00<|im_end|>\n"
                      "<|im_start|>assistant\n<think>\n\n</think>\n\n")


class SlowEngine(ScriptedEngine):
    """A request is answered after `delay(prompt text)` steps, not at the next one."""

    def __init__(self, tok, script, delay):
        super().__init__(tok, script)
        self.delay, self.left = delay, {}

    def step(self):
        for rid, ids, *_ in self.pending:
            self.left.setdefault(rid, self.delay(self.tokenizer.decode(ids, skip_special_tokens=False)))
            self.left[rid] -= 1
        due, self.pending = [p for p in self.pending if self.left[p[0]] <= 0], [p for p in self.pending
                                                                                if self.left[p[0]] > 0]
        waiting, self.pending = self.pending, due
        out = super().step()
        self.pending = waiting
        return out


@pytest.mark.parametrize("workers", [0, 2])
def test_calls_run_beside_decoding_and_the_results_do_not_depend_on_it(tok, workers):
    """With tool threads, the engine goes on stepping the other requests while a call runs (here: a long reply
    finishes while a slow tool is still running); inline, the call holds the step. The samples are the same."""
    import threading

    from flowlm.tools.builtin import Tool

    release = threading.Event()
    slow = Tool("slow", "waits", {"type": "object", "properties": {}}, lambda args: str(release.wait(0.5)))
    script = lambda text, j, turn: (call("slow") if turn == 0 else "done") if "question 0" in text else "long"  # noqa: E731
    engine = ToolEngine(SlowEngine(tok, script, lambda text: 1 if "question 0" in text else 4), {"slow": slow},
                        workers=workers)
    order = []
    for i in range(2):
        engine.submit([{"role": "user", "content": f"question {i}"}], SamplingParams(max_new_tokens=200), tag=i)
    results = {}
    while engine.has_unfinished():
        for res in engine.step():
            order.append(res.tag)
            results[res.tag] = res.completions[0]
            release.set()  # the long reply is out: let the slow call finish
    assert order == ([1, 0] if workers else [0, 1])
    assert results[0].text == "done" and results[0].tool_calls == 1 and results[1].text == "long"
    answer = results[0].trajectory[1]["content"]
    assert answer == ("True" if workers else "False")  # inline, the call waited out its 0.5 s: nothing could set it
    engine.close()


def test_a_chat_prompt_is_rendered_with_the_tools_and_a_bad_one_is_reported(tok):
    inner = ScriptedEngine(tok, lambda text, j, turn: "ok")
    engine = ToolEngine(inner, {"calculator": CALCULATOR})
    ids, problem = engine.prepare([{"role": "user", "content": "q"}], SamplingParams())
    assert problem is None and ids == render_ids(tok, [{"role": "user", "content": "q"}], add_generation_prompt=True,
                                                 tools=[CALCULATOR.schema])
    (res,) = engine.generate([[{"role": "user", "content": "q"}]], SamplingParams(stop_token_ids=(3,)))
    assert inner.submitted[0][0] == ids and set(inner.submitted[0][1].stop_token_ids) == {3, *turn_end_ids(tok)}
    (bad,) = engine.generate([[{"role": "robot", "content": "q"}]])
    assert not bad.ok and bad.error.startswith("bad prompt:") and "robot" in bad.error


@pytest.fixture(scope="module")
def model(tok):
    from flowlm.model.config import ModelConfig
    from flowlm.model.olmo3 import Olmo3

    torch.manual_seed(0)
    return Olmo3(ModelConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                             intermediate_size=64, max_seq_len=1024, sliding_window=16)).eval()


def test_the_rl_source_masks_tool_tokens_out_of_the_loss_and_logs_calls(tok, model):
    from flowlm.rl.stats import rollout_metrics
    from flowlm.train.objectives.grpo import GRPOObjective, token_mask

    rows = [{"id": f"p{i}", "prompt": f"question {i}", "dataset": "tool_test_record", "ground_truth": "440040051"}
            for i in range(2)]
    cfg = RolloutConfig(prompts_per_step=2, group_size=2, max_new_tokens=300, tools=["calculator"], max_tool_calls=2)
    src = RolloutSource(rows, tok, cfg, seed=0, max_len=1024)
    assert '"name": "calculator"' in tok.decode(src.prompt_ids[0], skip_special_tokens=False)  # listed in the prompt
    src.bind(model)
    src.engine = ToolEngine(ScriptedEngine(tok, calculator_script), src.tools, max_calls=2)
    SEEN.clear()
    batch = next(iter(src))
    assert SEEN == ["<think>\nok\n</think>\n\nThe answer is 440040051.", "<think>\nok\n</think>\n\nThe answer is 7."] * 2
    labelled = batch["labels"] != -100
    assert torch.equal(labelled, ~batch["rollout_logps"].isnan())
    assert torch.equal(labelled, batch["rollout_versions"] >= 0)
    for r in range(4):
        prompt = src.prompt_ids[int(batch["prompt_index"][r])]
        ids, start = batch["input_ids"][r], len(prompt) - 1
        text = tok.decode(ids[len(prompt):].tolist(), skip_special_tokens=False)
        calls = r % 2 == 0  # sample 0 of each group
        assert ("<|im_start|>tool\n440040051" in text) == calls
        tool = tok.encode("\n<|im_start|>tool\n440040051<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
        # every completion token is labelled, except the tool turn's, whose positions predict exactly it
        last = int(torch.nonzero(labelled[r]).max())
        unlabelled = [j for j in range(start, last + 1) if not labelled[r, j]]
        assert ids[[j + 1 for j in unlabelled]].tolist() == (tool if calls else [])
    m = {k: float(v.total) / float(v.count) for k, v in rollout_metrics(batch).items() if k.startswith("tool_")}
    assert m == {"tool_calls": 0.5, "tool_errors": 0.0}
    sampled = lambda reply: len(tok.encode(reply, add_special_tokens=False)) + 1  # noqa: E731 (+ <|im_end|>)
    per_group = sum(sampled(calculator_script("", j, turn)) for j, turn in ((0, 0), (0, 1), (1, 0)))
    assert float(rollout_metrics(batch)["rollout_tokens"].value) == 2 * per_group  # sampled tokens, not tool turns
    # the learner trains on the sampled tokens only: the tool turns are out of the loss and of its token count
    assert int(token_mask(batch).sum()) == int(labelled.sum()) == 2 * per_group
    out = GRPOObjective().loss(model, batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_tools_config_errors(tok):
    rows = [{"id": "p", "prompt": "q", "dataset": "tool_test_record", "ground_truth": "1"}]
    with pytest.raises(ValueError, match="unknown tool 'search'; built-in tools: calculator, python"):
        RolloutConfig(tools=["search"])
    with pytest.raises(ValueError, match="max_tool_calls, tool_workers only applies with tools"):
        RolloutConfig(max_tool_calls=3, tool_workers=0)
    with pytest.raises(ConfigError, match="tools need chat prompts"):
        RolloutSource(rows, tok, RolloutConfig(tools=["calculator"]), seed=0, max_len=512, plain=True)


ROW = {"id": "p0", "prompt": "question 0", "dataset": "tool_test_record", "ground_truth": "440040051"}


def real_source(tok, **cfg) -> RolloutSource:
    settings = {"prompts_per_step": 1, "group_size": 2, "max_new_tokens": 150, "tools": ["calculator"],
                "max_tool_calls": 1, "temperature": 0.5, "filter_zero_std": False, "active_sampling": False, **cfg}
    return RolloutSource([ROW], tok, RolloutConfig(**settings), seed=0, max_len=1024)


@pytest.fixture(scope="module")
def caller(tok):
    return make_caller(tok)


ANSWER = "<think>\nThe calculator says 440040051.\n</think>\n\nThe answer is \\boxed{440040051}."


def make_caller(tok):
    """A micro OLMo-3 that has memorised a whole tool trajectory as its reply to ROW's prompt: a calculator
    call, then (after the tool turn) `ANSWER`; with the prompt's and the call's lengths in tokens."""
    from tests.tools.memorize import memorize

    prompt = real_source(tok).prompt_ids[0]
    end = list(turn_end_ids(tok))
    reply = tok.encode(call("calculator", expression="48213 * 9127"), add_special_tokens=False) + end
    tool = tok.encode("\n<|im_start|>tool\n440040051<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    answer = tok.encode(ANSWER, add_special_tokens=False) + end
    model = memorize(len(tok), [(prompt, False), (reply, True), (tool, False), (answer, True)])
    return model, len(prompt), len(reply)


@pytest.mark.parametrize("mode,backend", [("sync", "native"), ("async", "native"), ("sync", "vllm")])
def test_a_real_engine_rollout_with_calls_scores_as_the_learner_does(tok, caller, mode, backend, monkeypatch):
    """The memorised caller sampled through the real engine by the RL source (a rollout thread in mode async;
    backend vllm: the engine behind `tests/fake_vllm.py`, vLLM's calls and prefix-cache rules): the call runs,
    the next turn is sampled after the tool's answer, and the learner's log-prob of every sampled token (the
    tool turn in its context) equals the engine's."""
    if backend == "vllm":
        import sys

        from tests import fake_vllm

        monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    check_real_rollouts(tok, caller, mode=mode, backend=backend)


def check_real_rollouts(tok, caller, **cfg):
    from flowlm.train.objectives.grpo import GRPOObjective, token_mask

    model, start, reply = caller
    src = real_source(tok, **cfg)
    src.bind(model)
    try:
        batch = next(iter(src))
    finally:
        src.close()
    labelled = batch["labels"] != -100
    tool_turns = [tok.decode(batch["input_ids"][r].tolist(), skip_special_tokens=False).count("<|im_start|>tool\n440040051")
                  for r in range(2)]
    assert tool_turns == [1, 1]  # both samples called, and read the answer
    tool = tok.encode("\n<|im_start|>tool\n440040051<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    at = start + reply  # where the tool turn begins in each row
    assert all(batch["input_ids"][r, at:at + len(tool)].tolist() == tool for r in range(2))
    assert labelled[:, start - 1:at - 1].all()  # the call is trained,
    assert not labelled[:, at - 1:at - 1 + len(tool)].any()  # the tool turn is not,
    assert labelled[:, at - 1 + len(tool)].all()  # and the turn after it is
    with torch.no_grad():
        logps, _ = GRPOObjective().token_logps(model, batch, token_mask(batch))
    assert (logps - batch["rollout_logps"].nan_to_num(0.0)).abs()[labelled].max().item() < 1e-4


# A template in Qwen3's style for tool answers (written for this test): consecutive tool messages share one
# user turn, each answer inside <tool_response> tags; a calling assistant turn writes its calls after its text.
QWEN_STYLE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- elif m.role == 'assistant' -%}{{- '<|im_start|>assistant\\n' + (m.content or '') -}}"
    "{%- for c in (m.tool_calls or []) -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + c.function.name + '\", \"arguments\": ' + (c.function.arguments | tojson) + '}\\n</tool_call>' -}}"
    "{%- endfor -%}{{- '<|im_end|>\\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")


def test_a_template_that_writes_tool_answers_in_a_user_turn(tok, tmp_path):
    """Qwen3's way (answers grouped in one user turn, in <tool_response> tags): the tool turn is still the
    template's own text, and the trajectory still equals the template's rendering of the conversation."""
    from flowlm.model.tokenizer import load_tokenizer
    from flowlm.tools.engine import fill_tool_turn, tool_turn_text

    tok.save_pretrained(tmp_path / "q")
    qtok = load_tokenizer(tmp_path / "q")
    qtok.chat_template = QWEN_STYLE
    turn = fill_tool_turn(tool_turn_text(qtok, ["calculator", "calculator"]), ["6", "8"])
    assert turn == ("\n<|im_start|>user\n<tool_response>\n6\n</tool_response>\n<tool_response>\n8\n</tool_response>"
                    "<|im_end|>\n<|im_start|>assistant\n")
    prompt = [{"role": "user", "content": "q"}]
    prompt_ids = render_ids(qtok, prompt, add_generation_prompt=True)

    def script(text, j, turn):
        return call("calculator", expression="2*3") if turn == 0 else "It is 6."

    res = ToolEngine(ScriptedEngine(qtok, script), {"calculator": CALCULATOR}).generate(
        [prompt_ids], [SamplingParams(max_new_tokens=200)])[0].completions[0]
    assert res.tool_calls == 1 and res.text == "It is 6."
    whole = render_ids(qtok, prompt + res.trajectory)
    assert whole[: len(prompt_ids) + len(res.tokens)] == prompt_ids + res.tokens


def test_coldstart_with_a_tool_calling_teacher_keeps_whole_trajectories(tok, caller, tmp_path):
    """`flowlm post coldstart` with `teacher.tools`: the teacher's calls run, the final reply is verified and
    filtered, and a kept row is the whole conversation (call, tool answer, final reply) with the tools listed,
    which SFT renders with loss on both assistant turns and none on the tool turn."""
    from flowlm.data.chat import render_chat_example
    from flowlm.model.hf import save_pretrained
    from flowlm.post.coldstart import ColdStartCfg, build_coldstart
    from flowlm.post.teachers import ModelTeacher
    from tests.flow.test_post_flow import flowlm

    model, _, _ = caller
    row = {**ROW, "dataset": "math", "multi_step": False}
    teacher = ModelTeacher(model=model, tokenizer=tok, temperature=0.5, max_new_tokens=200, tools=["calculator"])
    out, acc = build_coldstart([row], teacher, ColdStartCfg(n=2, keep_per_prompt=2))
    assert len(out) >= 1 and acc["candidates"].kept.docs == len(out)
    kept = out[0]
    assert [m["role"] for m in kept["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert kept["messages"][2]["content"] == "440040051" and kept["tool_calls"] == 1
    assert kept["messages"][3]["content"] == "The answer is \\boxed{440040051}."
    assert kept["tools"] == [CALCULATOR.schema]
    ids, mask = render_chat_example(tok, kept)
    text = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert '"expression": "48213 * 9127"' in text and "\\boxed{440040051}" in text and "<|im_start|>tool" not in text
    # through the CLI: a checkpoint teacher, the tools as a --set override; pairs refuse them
    save_pretrained(model, tok, tmp_path / "teacher")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(row) + "\n")
    args = ("--file", str(rows), "--set", "teacher.tools=[calculator]", "--set", "teacher.max_new_tokens=200",
            "--set", "teacher.temperature=0.5")
    proc = flowlm("post", "coldstart", "--teacher", str(tmp_path / "teacher"), "-n", "2", *args)
    got = [json.loads(x) for x in proc.stdout.splitlines()]
    assert got and got[0]["messages"][2]["role"] == "tool" and got[0]["tools"] == [CALCULATOR.schema]
    bad = flowlm("post", "pairs", "--strong", str(tmp_path / "teacher"), "--weak", "weak", *args, check=False)
    assert bad.returncode == 1 and "teacher 'weak': teacher.tools needs a model teacher" in bad.stderr
    named = flowlm("post", "coldstart", "--teacher", "procedural", "--builtin", "2", "--set",
                   "teacher.tools=[calculator]", check=False)
    assert named.returncode == 1 and "teacher.tools needs a model teacher" in named.stderr
    own = tmp_path / "own.jsonl"  # a row's own functions (declared, not run) beside tools that run: refused
    own.write_text(json.dumps({**row, "tools": [CALCULATOR.schema]}) + "\n")
    refused = flowlm("post", "coldstart", "--teacher", str(tmp_path / "teacher"), "--file", str(own), *args[2:],
                     check=False)
    assert refused.returncode == 2 and "rows that list their own functions" in refused.stderr
    assert "use one or the other" in refused.stderr.strip().splitlines()[-1]


def dpo_one_step(init, data, run_dir):
    """`flowlm train --objective dpo` on a one-pair file: one step, with a gradient."""
    from tests.flow.test_post_flow import flowlm

    flowlm("train", "--objective", "dpo", "--init", str(init), "--data", str(data), "--run-dir", str(run_dir),
           "stages.dpo.objective.beta=0.1", "stages.dpo.seq_len=1024", "stages.dpo.batch_size=1",
           "--no-progress", "eval.max_items=2", "eval.heldout_docs=1", "eval.tasks=[prose]", "threads=1")
    steps = [json.loads(x) for x in (run_dir / "dpo" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert len(steps) == 1 and steps[0]["grad_norm"] > 0


def test_delta_pairs_of_tool_trajectories_train_dpo_on_the_assistant_turns_only(tok, caller, tmp_path):
    """`flowlm post pairs` with `teacher.tools`: the strong teacher's side is its verified trajectory (call, tool
    answer, final reply), the weak teacher's its own answer (here a wrong guess without a call), the pair lists
    the tools, DPO's chosen mask covers both assistant turns and not the tool's answer, and `flowlm train
    --objective dpo` trains on it."""
    from flowlm.data.chat import pair_row
    from flowlm.data.pairs import render_pair
    from flowlm.model.hf import save_pretrained
    from tests.flow.test_post_flow import flowlm
    from tests.tools.memorize import memorize

    model, _, _ = caller
    save_pretrained(model, tok, tmp_path / "strong")
    prompt = real_source(tok).prompt_ids[0]
    guess = "<think>\nAbout 440 million.\n</think>\n\nThe answer is \\boxed{440000000}."
    weak = memorize(len(tok), [(prompt, False), (tok.encode(guess, add_special_tokens=False) + list(turn_end_ids(tok)), True)])
    save_pretrained(weak, tok, tmp_path / "weak")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({**ROW, "dataset": "math", "multi_step": False}) + "\n")
    out = tmp_path / "pairs.jsonl"
    flowlm("post", "pairs", "--strong", str(tmp_path / "strong"), "--weak", str(tmp_path / "weak"), "--file", str(rows),
           "--set", "teacher.tools=[calculator]", "--set", "teacher.max_new_tokens=200", "--set", "teacher.temperature=0",
           "--set", "n_chosen=1", "--out", str(out))
    [pair] = [json.loads(x) for x in out.read_text().splitlines()]
    assert [m["role"] for m in pair["chosen"]] == ["assistant", "tool", "assistant"] and pair["tools"] == [CALCULATOR.schema]
    assert pair["chosen"][1]["content"] == "440040051" and pair["chosen"][2]["content"] == "The answer is \\boxed{440040051}."
    assert [m["role"] for m in pair["rejected"]] == ["assistant"] and pair["rejected_correct"] is False
    ids, mask = render_pair(tok, pair_row(pair))["chosen"]
    labelled = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert '"expression": "48213 * 9127"' in labelled and "\\boxed{440040051}" in labelled
    assert "<|im_start|>tool" not in labelled and "440040051<|im_end|>\n<|im_start|>assistant" not in labelled
    assert '"name": "calculator"' in tok.decode(ids[: mask.index(1)])  # the prompt lists the tools
    dpo_one_step(tmp_path / "strong", out, tmp_path / "dpo")


def test_rows_with_their_own_functions_are_listed_in_their_prompts_and_checked(tok, model, tmp_path):
    """Function-calling RL rows (`flowlm rl prompts --suite bfcl=...`, or a user's rows with `tools`): each
    prompt lists the row's own functions; the completions are scored by the `tool_call` verifier, never
    run. Mixed with built-in tools that run, with plain prompts, or malformed: one-line errors."""
    from flowlm.errors import FlowError
    from flowlm.rl.prompts import suite_rows
    from tests.eval.test_bfcl import write_bfcl

    rows, _ = suite_rows("bfcl", write_bfcl(tmp_path / "bfcl"))
    assert [r["dataset"] for r in rows] == ["tool_call"] * 2 and rows[0]["tools"][0]["function"]["name"] == \
        "calculate_triangle_area"
    cfg = dict(prompts_per_step=1, group_size=2, max_new_tokens=8, filter_zero_std=False, active_sampling=False)
    src = RolloutSource(rows, tok, RolloutConfig(**cfg), seed=0, max_len=1024)
    prompts = [tok.decode(ids, skip_special_tokens=False) for ids in src.prompt_ids]
    assert '"name": "calculate_triangle_area"' in prompts[0] and "get_weather" not in prompts[0]
    assert '"name": "get_weather"' in prompts[1]
    src.bind(model)
    batch = next(iter(src))  # the micro model makes no valid call: every completion scores 0, nothing raises
    assert batch["input_ids"].shape[0] == 2
    with pytest.raises(ConfigError, match="offers its own functions"):
        RolloutSource(rows, tok, RolloutConfig(**cfg, tools=["calculator"]), seed=0, max_len=1024)
    with pytest.raises(ConfigError, match="rows with `tools` need chat prompts"):
        RolloutSource([{**rows[0], "prompt": "q"}], tok, RolloutConfig(**cfg), seed=0, max_len=1024, plain=True)
    with pytest.raises(FlowError, match=r"row 0 \(x\): `tools` must be a non-empty list"):
        RolloutSource([{**rows[0], "id": "x", "tools": "calculator"}], tok, RolloutConfig(**cfg), seed=0, max_len=1024)


def test_on_policy_distillation_samples_with_tools_and_trains_on_the_sampled_tokens_only(tok, caller, tmp_path):
    """`on_policy.tools`: the student samples through the tool loop; the batch keeps the tool's answer as
    context (the teacher reads it) and labels only what the student sampled; the calls are counted in the
    batch statistics, and through `flowlm train --objective distill` in the step metrics."""
    from flowlm.model.hf import save_pretrained
    from flowlm.train.objectives.distill import DistillConfig, DistillObjective
    from flowlm.train.onpolicy import OnPolicyLoader
    from tests.flow.test_post_flow import flowlm

    model, start, reply = caller
    loader = OnPolicyLoader([[{"role": "user", "content": ROW["prompt"]}]], tok, batch_size=1, seed=0,
                            max_new_tokens=150, temperature=0.5, tools=["calculator"], max_tool_calls=1)
    loader.bind(model)
    batch = next(iter(loader))
    tool = tok.encode("\n<|im_start|>tool\n440040051<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    at = start + reply
    assert batch["input_ids"][0, at:at + len(tool)].tolist() == tool  # the answer is in the sequence
    labelled = batch["labels"][0] != -100  # position j predicts token j + 1
    assert labelled[start - 1:at - 1].all() and not labelled[at - 1:at - 1 + len(tool)].any()
    assert labelled[at - 1 + len(tool)] and not labelled[: start - 1].any()
    assert batch["stat_sum/tool_calls"].sum() == 1 and batch["stat_sum/tool_errors"].sum() == 0
    assert batch["stat_sum/generated_tokens"].sum() == int(labelled.sum())
    objective = DistillObjective(DistillConfig(teacher="unused"))
    objective.teacher = model
    metrics = objective.loss(model, batch).metrics
    agreement = metrics["teacher_agreement"]
    assert float(metrics["tool_calls"].value) == 1.0 and float(agreement.total.detach() / agreement.count) == 1.0
    # the stage, through the installed command: the calls in every step's metrics
    save_pretrained(model, tok, tmp_path / "m")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": ROW["prompt"]}) + "\n" + json.dumps({"prompt": ROW["prompt"]}) + "\n")
    flowlm("train", "--objective", "distill", "--init", str(tmp_path / "m"), "--data", str(prompts),
           f"stages.distill.objective.teacher={tmp_path / 'm'}", "stages.distill.steps=2",
           "stages.distill.on_policy={max_new_tokens: 150, temperature: 0.5, tools: [calculator], max_tool_calls: 1}",
           "stages.distill.seq_len=1024", "stages.distill.batch_size=2", "--run-dir", str(tmp_path / "r"),
           "--no-progress", "eval.max_items=2", "eval.heldout_docs=1", "eval.tasks=[prose]", "threads=1")
    steps = [json.loads(x) for x in (tmp_path / "r" / "distill" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert [s["step"] for s in steps] == [1, 2] and all(s["tool_calls"] == 2 for s in steps)
    assert all(s["loss_tokens"] == s["generated_tokens"] for s in steps)
    bad = flowlm("train", "--objective", "distill", "--init", str(tmp_path / "m"), "--data", str(prompts),
                 f"stages.distill.objective.teacher={tmp_path / 'm'}", "stages.distill.on_policy={tool_workers: 2}",
                 check=False)
    assert bad.returncode != 0 and "tool_workers only applies with tools" in bad.stderr


def test_function_calling_rows_give_sft_rows_and_delta_pairs_with_their_functions_listed(tok, tmp_path):
    """BFCL-style rows (their own `tools`, a `tool_call` ground truth), from `flowlm rl prompts --suite bfcl=`,
    through `flowlm post coldstart`: the teacher's prompt lists each row's functions, the `tool_call` verifier
    keeps the right calls, and a kept row holds them as structured calls with its functions, which SFT
    renders in the template's format. A micro teacher learnt the right call for the first row only. Then
    `flowlm post pairs` against a weak teacher that learnt a wrong call, and DPO on the pair."""
    from flowlm.data.chat import render_chat_example
    from flowlm.generate.prompts import to_prompt_ids
    from flowlm.model.hf import save_pretrained
    from flowlm.post.teachers import prompt_messages, with_mode
    from flowlm.rl.rows import row_tools
    from tests.eval.test_bfcl import write_bfcl
    from tests.flow.test_post_flow import flowlm
    from tests.tools.memorize import memorize

    rows = tmp_path / "rows.jsonl"
    flowlm("rl", "prompts", "--suite", f"bfcl={write_bfcl(tmp_path / 'bfcl')}", "--out", str(rows))
    first = json.loads(rows.read_text().splitlines()[0])
    assert first["dataset"] == "tool_call" and row_tools(first)[0]["function"]["name"] == "calculate_triangle_area"
    prompt = to_prompt_ids(with_mode(prompt_messages(first), True), tok, enable_thinking=True, tools=row_tools(first))
    reply = "<think>\nThe area function takes the base and the height.\n</think>\n\n" + call(
        "calculate_triangle_area", base=10, height=5)
    end = list(turn_end_ids(tok))
    teacher = memorize(len(tok), [(prompt, False), (tok.encode(reply, add_special_tokens=False) + end, True)],
                       context=2048)
    save_pretrained(teacher, tok, tmp_path / "teacher")
    out = tmp_path / "sft.jsonl"
    proc = flowlm("post", "coldstart", "--teacher", str(tmp_path / "teacher"), "--file", str(rows), "-n", "2",
                  "--set", "teacher.max_new_tokens=300", "--set", "teacher.temperature=0", "--out", str(out))
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(kept) == 1 and kept[0]["tools"] == row_tools(first), proc.stderr
    answer = kept[0]["messages"][-1]
    assert answer["content"] == "" and answer["tool_calls"] == [{"type": "function", "function": {
        "name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}}]
    ids, mask = render_chat_example(tok, kept[0])
    text = tok.decode(ids, skip_special_tokens=False)
    assert '"name": "calculate_triangle_area"' in text.split("<|im_start|>user")[0]  # listed in the system turn
    assert '{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}' in tok.decode(
        [t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
    # the second row (not learnt) is accounted for, not lost
    assert "no_valid_candidate" in proc.stderr
    # delta pairs on the same rows: a weak teacher that learnt a wrong call is the rejected side; DPO trains on
    # the pair with the functions listed in its prompt
    wrong = reply.replace('"base": 10, "height": 5', '"base": 5, "height": 10')
    weak = memorize(len(tok), [(prompt, False), (tok.encode(wrong, add_special_tokens=False) + end, True)],
                    context=2048)
    save_pretrained(weak, tok, tmp_path / "weak")
    pairs_out = tmp_path / "pairs.jsonl"
    flowlm("post", "pairs", "--strong", str(tmp_path / "teacher"), "--weak", str(tmp_path / "weak"), "--file", str(rows),
           "--set", "teacher.max_new_tokens=300", "--set", "teacher.temperature=0", "--set", "n_chosen=1",
           "--out", str(pairs_out))
    pair = json.loads(pairs_out.read_text().splitlines()[0])
    assert pair["tools"] == row_tools(first) and pair["rejected_correct"] is False
    assert pair["chosen"][0]["tool_calls"][0]["function"]["arguments"] == {"base": 10, "height": 5}
    assert pair["rejected"][0]["tool_calls"][0]["function"]["arguments"] == {"base": 5, "height": 10}
    from flowlm.data.chat import pair_row
    from flowlm.data.pairs import render_pair

    sides = render_pair(tok, pair_row(pair))
    for side, args in (("chosen", '"base": 10, "height": 5'), ("rejected", '"base": 5, "height": 10')):
        ids, mask = sides[side]
        assert '"name": "calculate_triangle_area", "description"' in tok.decode(ids[: mask.index(1)])  # listed
        assert args in tok.decode([t for t, m in zip(ids, mask) if m])
    dpo_one_step(tmp_path / "teacher", pairs_out, tmp_path / "dpo")
