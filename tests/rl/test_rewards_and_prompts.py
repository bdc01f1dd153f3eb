"""What the rollouts are sampled from and rewarded by: chat rollouts stop at the end-of-turn token, plain
(RL-Zero) prompts at the template's next question; the spurious-reward control's coins (deterministic,
fair, blind to correctness) drive the advantages while the logged reward stays the verifiers'; the `rl`
stage's built-in task filter and plain prompt format."""

from __future__ import annotations

import pytest
import torch

from flowlm.errors import ConfigError
from flowlm.rl.source import RolloutConfig, RolloutSource
from flowlm.rl.stats import coin_rewards, rollout_metrics
from flowlm.verify.base import Verdict, register
from tests.rl import test_source


@register("rl_test_always")
def _always(completion, ground_truth, **row):
    return Verdict(1.0, "always right")


tok, model = test_source.tok, test_source.model  # its micro tokenizer and model fixtures


def chat_rows(n: int, verifier: str = "rl_test_always") -> list[dict]:
    return [{"id": f"c{i}", "messages": [{"role": "user", "content": f"question {i}"}], "dataset": verifier,
             "ground_truth": "1"} for i in range(n)]


def test_chat_rollouts_stop_at_the_end_of_turn_and_plain_ones_at_the_stop_strings(tok, model, monkeypatch):
    from flowlm.model.tokenizer import turn_end_ids

    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert turn_end_ids(tok) == (im_end,) and im_end != tok.eos_token_id  # EOS ends a document, not a turn
    src = RolloutSource(chat_rows(4), tok, RolloutConfig(prompts_per_step=2, group_size=2, max_new_tokens=4,
                                                         stop=["\nQuestion:"], filter_zero_std=False,
                                                         active_sampling=False), seed=0, max_len=96)
    src.bind(model)
    seen = []
    real = src.engine.generate
    monkeypatch.setattr(src.engine, "generate", lambda prompts, params: seen.extend(params) or real(prompts, params))
    next(iter(src))
    assert seen and all(p.stop_token_ids == (im_end,) and p.stop == ("\nQuestion:",) for p in seen)


def test_coins_are_deterministic_fair_and_blind_to_correctness():
    from flowlm.generate.params import Completion

    comps = [Completion(tokens=[7, k, k % 5]) for k in range(2000)]
    coins = coin_rewards(0, 3, comps)
    assert torch.equal(coins, coin_rewards(0, 3, comps))  # the same completion gets the same coin
    assert set(coins.tolist()) == {0.0, 1.0} and 0.45 < float(coins.mean()) < 0.55
    assert not torch.equal(coins, coin_rewards(1, 3, comps)) and not torch.equal(coins, coin_rewards(0, 4, comps))


def test_random_reward_drives_the_advantages_and_the_logged_reward_stays_the_verifiers(tok, model):
    def batch(reward: str) -> dict:
        src = RolloutSource(chat_rows(8), tok, RolloutConfig(prompts_per_step=2, group_size=4, max_new_tokens=6,
                                                             reward=reward, max_draws=4), seed=0, max_len=96)
        src.bind(model)
        return next(iter(src))

    def logged(b: dict) -> dict[str, float]:
        return {k: float(m.value) if hasattr(m, "value") else float(m.total) / float(m.count)
                for k, m in rollout_metrics(b).items()}

    real = batch("verifier")  # every completion is right: no group is informative, nothing trains
    assert logged(real)["reward"] == 1.0 and logged(real)["informative"] == 0 and not real["loss_rows"].any()
    coins = batch("random")
    assert logged(coins)["reward"] == 1.0  # what the verifiers said, not the coins
    assert logged(coins)["informative"] == 2 and coins["loss_rows"].all()
    adv = coins["advantages"].view(2, 4)
    assert torch.allclose(adv.sum(dim=1), torch.zeros(2), atol=1e-6) and adv.abs().sum() > 0


def test_rl_stage_tasks_and_plain_format():
    from flowlm.errors import FlowError
    from flowlm.flow.stages.rl import RLStageConfig, plain_row
    from flowlm.post.procedural import builtin_rows

    rows = builtin_rows(40, 0, tasks=["counting", "sorting"])
    assert len(rows) == 40 and {r["task"] for r in rows} == {"counting", "sorting"}
    with pytest.raises(FlowError, match="unknown arithmetics"):
        builtin_rows(4, 0, tasks=["arithmetics"])
    plain = plain_row(rows[0])
    assert "messages" not in plain and plain["dataset"] == rows[0]["dataset"]
    assert plain["prompt"] == f"Question: {rows[0]['messages'][0]['content']}\nAnswer:"
    assert plain_row(plain) is plain
    base = {"kind": "rl", "init": "x", "steps": 2, "seq_len": 64, "rollout": {"prompts_per_step": 2, "group_size": 2}}
    cfg = RLStageConfig(**{**base, "prompt_format": "plain",
                           "rollout": {**base["rollout"], "thinking": False}})
    assert cfg.rollout.stop == ["\nQuestion:"]  # the template's next question ends a completion
    assert RLStageConfig(**base).rollout.stop == []
    with pytest.raises(ValueError, match="set rollout.thinking: false"):
        RLStageConfig(**{**base, "prompt_format": "plain"})
    with pytest.raises(ValueError, match="tasks only apply to prompts: builtin"):
        RLStageConfig(**{**base, "prompts": "rows.jsonl", "tasks": ["counting"]})
    with pytest.raises(ValueError, match="grad_accum 2 must divide the groups of one optimizer step"):
        RLStageConfig(**{**base, "grad_accum": 2, "rollout": {**base["rollout"], "minibatches": 2}})


def test_instructions_scored_alone_route_to_ifeval_only():
    """`instruction_reward: alone`: a prompt with an instruction is scored by ifeval alone (the IF domain by
    itself), with the same instruction text it gets with its task's verifier."""
    from flowlm.flow.stages.rl import RLStageConfig
    from flowlm.post.procedural import builtin_rows
    from flowlm.rl.instruct import add_instructions
    from flowlm.verify import verify_row

    rows = builtin_rows(20, 0, tasks=["counting"])
    both, alone = add_instructions(rows, 1.0, 0), add_instructions(rows, 1.0, 0, alone=True)
    for a, b in zip(both, alone):
        assert a["messages"] == b["messages"]  # the same instruction
        assert [v["name"] for v in a["verifiers"]] == ["math", "ifeval"]
        assert b["verifiers"] == [a["verifiers"][1]]
    row = next(r for r in alone if "lowercase" in r["messages"][-1]["content"])
    assert verify_row(row, "the answer is \\boxed{123456}").score == 1.0  # wrong answer, instruction followed
    assert verify_row(row, "The answer is \\boxed{123456}").score == 0.0
    assert add_instructions(rows, 0.5, 0, alone=True) == add_instructions(rows, 0.5, 0, alone=True)
    base = {"kind": "rl", "init": "x", "steps": 2, "seq_len": 64, "rollout": {"prompts_per_step": 2, "group_size": 2}}
    assert RLStageConfig(**base, instructions=1.0, instruction_reward="alone").instruction_reward == "alone"
    with pytest.raises(ValueError, match="instruction_reward applies to prompts with instructions"):
        RLStageConfig(**base, instruction_reward="alone")


def test_instruction_ids_limit_the_draw_and_all_of_them_change_nothing():
    from flowlm.flow.stages.rl import RLStageConfig
    from flowlm.post.procedural import builtin_rows
    from flowlm.rl.instruct import INSTRUCTION_IDS, add_instructions

    rows = builtin_rows(40, 0, tasks=["counting", "sorting"])
    lower = add_instructions(rows, 1.0, 0, alone=True, only=["change_case:english_lowercase"])
    assert {r["verifiers"][0]["ground_truth"]["instruction_id_list"][0] for r in lower} == {
        "change_case:english_lowercase"}
    assert all(r["messages"][-1]["content"].endswith("No capital letters are allowed.") for r in lower)
    two = add_instructions(rows, 1.0, 0, only=["keywords:existence", "punctuation:no_comma"])
    got = {r["verifiers"][1]["ground_truth"]["instruction_id_list"][0] for r in two}
    assert got == {"keywords:existence", "punctuation:no_comma"}
    assert all("commas" not in r["messages"][-1]["content"] for r in two if r["task"] == "sorting")  # the clash
    assert add_instructions(rows, 1.0, 3, only=list(INSTRUCTION_IDS)) == add_instructions(rows, 1.0, 3)
    with pytest.raises(ValueError, match=r"row sorting-\w+: no instruction of \['punctuation:no_comma'\] fits "
                                         r"task 'sorting'"):
        add_instructions(rows, 1.0, 0, only=["punctuation:no_comma"])
    base = {"kind": "rl", "init": "x", "steps": 2, "seq_len": 64, "rollout": {"prompts_per_step": 2, "group_size": 2}}
    with pytest.raises(ValueError, match=r"instruction_ids: unknown \['keywords:frequency'\]; known: "):
        RLStageConfig(**base, instructions=1.0, instruction_ids=["keywords:frequency"])
    with pytest.raises(ValueError, match="instruction_ids apply to prompts with instructions"):
        RLStageConfig(**base, instruction_ids=["punctuation:no_comma"])


def test_instructions_reach_plain_prompts_for_rl_zero(tmp_path):
    """RL-Zero on the IF domain: the instruction goes into the question of the plain template; a JSONL row
    with a plain `prompt` string has no user turn to add one to, a one-line error naming the stage."""
    from types import SimpleNamespace

    from flowlm.errors import FlowError
    from flowlm.flow.stages.rl import RLStageConfig, prompt_rows
    from flowlm.rl.instruct import INSTRUCTIONS

    settings = {"kind": "rl", "init": "x", "steps": 2, "seq_len": 64, "n_prompts": 6, "prompt_format": "plain",
                "instructions": 1.0, "instruction_reward": "alone",
                "rollout": {"prompts_per_step": 2, "group_size": 2, "thinking": False}}
    for row in prompt_rows(None, "rl_zero_if", RLStageConfig(**settings)):
        question = row["prompt"].removeprefix("Question: ").removesuffix("\nAnswer:")
        assert row["prompt"] == f"Question: {question}\nAnswer:" and "messages" not in row
        assert any(question.endswith(text) for text, _, _ in INSTRUCTIONS)
        assert [v["name"] for v in row["verifiers"]] == ["ifeval"]
    rows = tmp_path / "plain.jsonl"
    rows.write_text('{"id": "q", "prompt": "Question: 2+2?\\nAnswer:", "dataset": "math", "ground_truth": "4"}\n')
    ctx = SimpleNamespace(recipe=SimpleNamespace(stages={}))
    with pytest.raises(FlowError, match="stage 'rl_zero_if': instructions: row q: no user turn to add an instruction"):
        prompt_rows(ctx, "rl_zero_if", RLStageConfig(**{**settings, "prompts": str(rows)}))


def test_plain_prompts_are_the_eval_plain_prompts_without_chat_markup(tok):
    """RL-Zero (`prompt_format: plain`) samples from the base-model template as text: the same token ids as
    `flowlm eval --format plain` gives the item. Until 2026-12-07 each plain prompt went through the chat
    template as a user turn (with the empty think block of thinking off), which a base model never saw."""
    from flowlm.eval.prompting import PromptFormat, render
    from flowlm.eval.suites import load_suite
    from flowlm.flow.stages.rl import plain_row

    suite = load_suite("counting", n=6)
    rows = [plain_row({"messages": [{"role": "user", "content": it.question}], "dataset": "math", "ground_truth": "1"})
            for it in suite.items]
    cfg = RolloutConfig(prompts_per_step=2, group_size=2, thinking=False)
    src = RolloutSource(rows, tok, cfg, seed=0, max_len=256, plain=True)
    assert len(src.prompt_ids) == len(suite.items) == 6
    for item, ids in zip(suite.items, src.prompt_ids):
        assert ids == render(item, suite, PromptFormat(style="plain"), tok).ids
        assert tok.decode(ids) == f"Question: {item.question}\nAnswer:" and "<|im_start|>" not in tok.decode(ids)
    with pytest.raises(ConfigError, match="plain prompts need a `prompt` string"):
        RolloutSource(chat_rows(2), tok, cfg, seed=0, max_len=256, plain=True)


def test_thinking_off_needs_a_template_with_the_switch(tok):
    """Thinking off (`rollout.thinking: false`, `flowlm eval --no-thinking`) on a template that ignores
    `enable_thinking` (ChatML, Llama 3) would give the thinking-on prompts under the non-thinking label:
    a one-line error names the setting; flowlm's own template has the switch."""
    import copy

    from flowlm.eval.prompting import PromptFormat, render
    from flowlm.eval.suites import load_suite
    from flowlm.model.tokenizer import has_thinking_switch

    chatml = copy.deepcopy(tok)
    chatml.chat_template = ("{%- for m in messages -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}"
                            "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")
    assert has_thinking_switch(tok) and not has_thinking_switch(chatml)
    off = RolloutConfig(prompts_per_step=2, group_size=2, thinking=False)
    assert RolloutSource(chat_rows(2), tok, off, seed=0, max_len=96).prompt_ids
    with pytest.raises(ConfigError, match="rollout.thinking: false: the chat template .* ignores enable_thinking"):
        RolloutSource(chat_rows(2), chatml, off, seed=0, max_len=96)
    assert RolloutSource(chat_rows(2), chatml, RolloutConfig(prompts_per_step=2, group_size=2), seed=0, max_len=96)
    suite = load_suite("counting")
    with pytest.raises(ConfigError, match="--no-thinking"):
        render(suite.items[0], suite, PromptFormat(thinking=False), chatml)
    assert render(suite.items[0], suite, PromptFormat(thinking=False), tok).ids


def test_rl_filter_plain_samples_the_rl_zero_prompts(tok, model, tmp_path, monkeypatch):
    """`flowlm rl filter --set prompt_format=plain` samples what an RL-Zero stage samples: the plain template
    as text (no chat markup), stopped at the template's next question; chat rows stop at the end of turn."""
    from flowlm.generate.engine import Engine
    from flowlm.model.hf import save_pretrained
    from flowlm.rl.cli import FilterCfg, pass_rates

    ckpt = save_pretrained(model, tok, tmp_path / "ckpt")
    seen: list = []
    real = Engine.generate
    monkeypatch.setattr(Engine, "generate", lambda self, prompts, params: seen.append((prompts, params))
                        or real(self, prompts, params))
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"}], "dataset": "math", "ground_truth": "1"}
            for i in range(3)]
    rates, counts, _ = pass_rates(ckpt, rows, FilterCfg(k=2, max_new_tokens=4, prompt_format="plain"))
    prompts, params = seen[-1]
    assert prompts == [f"Question: What is {i} + 1?\nAnswer:" for i in range(3)] and counts["samples"] == 6
    assert all(p.stop == ("\nQuestion:",) for p in params) and all(r is not None for r in rates)
    pass_rates(ckpt, rows, FilterCfg(k=2, max_new_tokens=4))
    prompts, params = seen[-1]
    assert prompts == [r["messages"] for r in rows] and all(p.stop == () for p in params)


def test_rl_prompts_used_by_the_cold_start_are_excluded(tmp_path):
    """Qwen3 takes RL queries the cold-start SFT did not use: `exclude` leaves out every prompt an SFT file
    (or stage) holds, matched on the last user turn without its mode switch, case and spacing aside; with the
    instructions the stage adds afterwards, so they do not hide a match."""
    import json
    from types import SimpleNamespace

    from flowlm.errors import FlowError
    from flowlm.flow.stages.rl import RLStageConfig, prompt_rows
    from flowlm.post.procedural import builtin_rows
    from flowlm.rl.prompts import exclude_seen, prompt_key

    assert prompt_key({"messages": [{"role": "user", "content": "  What is 2+2?\n /no_think"}]}) == "what is 2+2?"
    assert prompt_key({"prompt": "what is  2+2?"}) == "what is 2+2?" and prompt_key({"messages": []}) is None
    rows = builtin_rows(40, 0)
    sft = [{"messages": [{"role": "user", "content": r["messages"][0]["content"].upper() + " /no_think"},
                         {"role": "assistant", "content": "x"}]} for r in rows[:15]]
    kept, n = exclude_seen(rows, sft)
    assert n == 15 and kept == rows[15:]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sft))
    settings = {"kind": "rl", "init": "x", "steps": 2, "seq_len": 64, "n_prompts": 40, "exclude": [str(path)],
                "instructions": 1.0, "rollout": {"prompts_per_step": 2, "group_size": 2}}
    ctx = SimpleNamespace(recipe=SimpleNamespace(stages={}))
    counts = {}
    got = prompt_rows(ctx, "think_rl", RLStageConfig(**settings), counts)
    assert counts == {"excluded_prompts": 15} and len(got) == 25
    assert [r["id"] for r in got] == [r["id"] for r in rows[15:]]
    everything = tmp_path / "all.jsonl"
    everything.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(FlowError, match="stage 'think_rl': every prompt is in exclude"):
        prompt_rows(ctx, "think_rl", RLStageConfig(**{**settings, "exclude": [str(everything)]}))
    with pytest.raises(ValueError, match="not 'builtin'"):
        RLStageConfig(**{**settings, "exclude": ["builtin"]})
