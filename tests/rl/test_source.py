"""The rollout data source: deterministic batches, labels / engine log-probs aligned with the sampled tokens
(and equal to the learner's), zero-std filtering with active sampling, verifier faults scored 0 and
counted, skipping solved prompts, domain weights, exact resume from `state_dict`; minibatches > 1 (whole
groups, `old_logps` of the policy before the first step, the ratio against it by hand, clip fractions
through the trainer, and a checkpoint between two minibatches resuming to identical losses).

Rewards come from verifiers registered here (in this process; a forked `VerifyPool` inherits them):
`rl_test_parity` (1 when the completion text has an even number of characters: random-looking, so groups
are mixed or uniform by chance), `rl_test_const` (the ground truth as the score), `rl_test_raise`,
`rl_test_sleep`, `rl_test_record` (records the texts it is shown) and `rl_test_digits` (the share of digits
in the text: easy to learn, for the end-to-end check that GRPO raises a reward)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from flowlm.errors import FlowError
from flowlm.rl.source import RolloutConfig, RolloutSource, is_verifier_error
from flowlm.rl.stats import rollout_metrics
from flowlm.verify.base import Verdict, register

SEEN: list[str] = []


@register("rl_test_parity")
def _parity(completion, ground_truth, **row):
    return Verdict(float(len(completion) % 2 == 0), "parity")


@register("rl_test_const")
def _const(completion, ground_truth, **row):
    return Verdict(float(ground_truth), "constant")


@register("rl_test_raise")
def _raise(completion, ground_truth, **row):
    raise RuntimeError("boom")


@register("rl_test_sleep")
def _sleep(completion, ground_truth, **row):
    time.sleep(30)
    return Verdict(1.0, "late")


@register("rl_test_record")
def _record(completion, ground_truth, **row):
    SEEN.append(completion)
    return Verdict(0.0, "recorded")


@register("rl_test_digits")
def _digits(completion, ground_truth, **row):
    return Verdict(sum(ch.isdigit() for ch in completion) / max(len(completion), 1), "share of digits")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from flowlm.data import tasks
    from flowlm.model.tokenizer import load_tokenizer, train_tokenizer

    out = tmp_path_factory.mktemp("rl_tok")
    train_tokenizer([tasks.as_text(it) for it in tasks.generate(0, 300)], 400, out)
    return load_tokenizer(out)


@pytest.fixture(scope="module")
def model(tok):
    from flowlm.model.config import ModelConfig
    from flowlm.model.olmo3 import Olmo3

    torch.manual_seed(0)
    torch.set_num_threads(1)
    # a wide init spreads the logits, so samples vary (and some end early)
    return Olmo3(ModelConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                             intermediate_size=64, max_seq_len=128, sliding_window=16, init_std=0.2)).eval()


def rows(n: int, verifier: str = "rl_test_parity", gt: str = "0", prefix: str = "p") -> list[dict]:
    return [{"id": f"{prefix}{i}", "prompt": f"question number {i}", "dataset": verifier, "ground_truth": gt}
            for i in range(n)]


def source(tok, model, prompt_rows, seed=0, log=None, **cfg) -> RolloutSource:
    settings = {"prompts_per_step": 3, "group_size": 4, "max_new_tokens": 6, **cfg}
    src = RolloutSource(prompt_rows, tok, RolloutConfig(**settings), seed=seed, max_len=96, log_path=log)
    src.bind(model)
    return src


def take(src: RolloutSource, n: int) -> list[dict]:
    it = iter(src)
    return [next(it) for _ in range(n)]


def metrics(batch: dict) -> dict[str, float]:
    out = {}
    for k, m in rollout_metrics(batch).items():
        out[k] = float(m.value) if hasattr(m, "value") else float(m.total) / float(m.count)
    return out


def same(a: dict, b: dict) -> bool:
    keys = [k for k in a if not k.startswith("stat_sum/time_")]
    return keys == [k for k in b if not k.startswith("stat_sum/time_")] and all(
        torch.equal(a[k].nan_to_num(7.0), b[k].nan_to_num(7.0)) for k in keys)


def test_batches_are_deterministic_for_a_seed(tok, model):
    first = take(source(tok, model, rows(12)), 2)
    again = take(source(tok, model, rows(12)), 2)
    other = take(source(tok, model, rows(12), seed=1), 2)
    assert all(same(a, b) for a, b in zip(first, again))
    assert not same(first[0], other[0])
    b = first[0]
    assert b["input_ids"].shape[0] == 12 and b["advantages"].shape == (12,)
    assert torch.equal(b["group_ids"], torch.arange(3).repeat_interleave(4))


def test_labels_and_rollout_logps_are_the_sampled_tokens_and_match_the_learner(tok, model):
    from flowlm.train.objectives.grpo import GRPOObjective, token_mask

    SEEN.clear()
    src = source(tok, model, rows(6, "rl_test_record"), filter_zero_std=False, active_sampling=False)
    batch = take(src, 1)[0]
    labelled = batch["labels"] != -100
    assert torch.equal(labelled, ~batch["rollout_logps"].isnan())
    for r in range(batch["input_ids"].shape[0]):
        prompt = src.prompt_ids[int(batch["prompt_index"][r])]
        ids = batch["input_ids"][r]
        n = int(labelled[r].sum())
        assert ids[: len(prompt)].tolist() == prompt
        # position j predicts token j + 1: the labels are the completion, right after the prompt
        assert labelled[r, len(prompt) - 1: len(prompt) - 1 + n].all()
        assert batch["labels"][r, labelled[r]].tolist() == ids[len(prompt): len(prompt) + n].tolist()
        # the verifier saw exactly the decoded labelled tokens (token ids passed end to end)
        assert tok.decode(batch["labels"][r, labelled[r]].tolist(), skip_special_tokens=True) == SEEN[r]
    # trainer log-probs vs generation log-probs: the same fp32 model gives the same numbers
    obj = GRPOObjective()
    with torch.no_grad():
        logps, entropy = obj.token_logps(model, batch, token_mask(batch))
    diff = (logps - batch["rollout_logps"].nan_to_num(0.0)).abs()[labelled]
    assert diff.max().item() < 1e-4
    assert (entropy[labelled] > 0).all()


@pytest.mark.parametrize("tempered", [True, False])
def test_at_a_temperature_the_learner_and_the_engine_score_the_same_policy(tok, model, tempered):
    """`tempered_logprobs` (default): at temperature 0.6 the engine records log_softmax(logits / 0.6), the
    batch's `temperature` column makes the learner divide by the same, and the two agree; off, both are at
    temperature 1 (and agree too). The rollouts themselves are the same either way."""
    from flowlm.train.objectives.grpo import GRPOObjective, token_mask

    def batch_of(flag):
        src = source(tok, model, rows(6, "rl_test_record"), filter_zero_std=False, active_sampling=False,
                     temperature=0.6, tempered_logprobs=flag)
        return take(src, 1)[0]

    batch = batch_of(tempered)
    labelled = batch["labels"] != -100
    assert batch["temperature"].tolist() == pytest.approx([0.6 if tempered else 1.0] * 12)
    with torch.no_grad():
        logps = GRPOObjective().token_logps(model, batch, token_mask(batch))[0]
    assert (logps - batch["rollout_logps"].nan_to_num(0.0)).abs()[labelled].max().item() < 1e-4
    other = batch_of(not tempered)
    assert torch.equal(other["input_ids"], batch["input_ids"])
    assert (other["rollout_logps"] - batch["rollout_logps"]).abs()[labelled].max().item() > 0.1


def test_zero_std_filtering_with_active_sampling_gives_only_informative_groups(tok, model, tmp_path):
    log = tmp_path / "rollouts.jsonl"
    src = source(tok, model, rows(40), log=log, prompts_per_step=4, group_size=2, max_draws=10)
    batches = take(src, 3)
    filtered = 0
    for b in batches:
        m = metrics(b)
        assert m["informative_share"] == 1.0 and b["loss_rows"].all()
        # every filtered group was replaced; later rounds may draw more than the shortfall (surplus dropped)
        assert m["filtered"] + m["surplus"] == m["resampled"] == m["prompts"] - 4
        assert m["groups_mixed"] == 4 + m["surplus"]
        filtered += m["filtered"]
        adv = b["advantages"].view(4, 2)
        assert (adv.abs().sum(dim=1) > 0).all()  # no zero-advantage group trains
    assert filtered > 0 and src.totals["filtered"] == filtered
    logged = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["position"] for r in logged] == [0, 1, 2] and all(len(r["trained"]) == 4 for r in logged)
    drawn = [p for r in logged for p in r["drawn"]]
    assert len(drawn) == len(set(drawn))  # 40 prompts: none drawn twice within the epoch


def test_active_sampling_oversamples_later_rounds_on_a_hard_prompt_set(tok, model, tmp_path):
    """85 in 100 prompts can never be informative (constant reward): in 3 rounds, drawing only the shortfall
    leaves batches short; drawing the shortfall over the informative share seen so far fills every batch."""
    hard = rows(85, "rl_test_const", "0", prefix="c") + rows(15, prefix="p")
    log = tmp_path / "rollouts.jsonl"
    src = source(tok, model, hard, log=log, prompts_per_step=2, group_size=4, max_draws=3, max_oversample=8)
    oversampled = False
    for b in take(src, 4):
        m = metrics(b)
        assert m["informative_share"] == 1.0 and b["loss_rows"].all()
        assert m["filtered"] + m["surplus"] == m["resampled"] == m["prompts"] - 2
        oversampled |= m["prompts"] > 2 * m["draws"]  # more than shortfall-only rounds can draw
    assert oversampled
    logged = [json.loads(x) for x in log.read_text().splitlines()]
    assert all(len(r["trained"]) == 2 for r in logged)
    shortfall_only = source(tok, model, hard, prompts_per_step=2, group_size=4, max_draws=3, max_oversample=1)
    shares = [metrics(b)["informative_share"] for b in take(shortfall_only, 4)]
    assert sum(s < 1.0 for s in shares) >= 2, shares  # measured: 0.5, 0.5, 0.0, 0.5


def test_without_active_sampling_filtered_groups_are_masked_padding(tok, model):
    b = take(source(tok, model, rows(40), prompts_per_step=6, group_size=2, active_sampling=False), 1)[0]
    m = metrics(b)
    informative = int(m["informative"])
    assert m["draws"] == 1 and m["filtered"] == 6 - informative and m["informative_share"] == informative / 6
    trained = b["loss_rows"].view(6, 2)
    assert trained[:informative].all() and not trained[informative:].any()
    assert (b["advantages"].view(6, 2)[informative:] == 0).all()
    # all solved: nothing is informative, every draw is used, the batch is all padding (no loss)
    b = take(source(tok, model, rows(30, "rl_test_const", "1"), prompts_per_step=2, group_size=2, max_draws=3), 1)[0]
    m = metrics(b)
    # (rounds of 2, then 2 x 4 / (0 + 1) = 8 capped at max_oversample 4 x 2, twice)
    assert m["draws"] == 3 and m["groups_solved"] == m["filtered"] == 2 + 8 + 8 and not b["loss_rows"].any()
    # filtering off: zero-std groups train (with zero advantages)
    b = take(source(tok, model, rows(4, "rl_test_const", "0"), prompts_per_step=2, group_size=2,
                    filter_zero_std=False, active_sampling=False), 1)[0]
    assert b["loss_rows"].all() and metrics(b)["groups_unsolved"] == 2 and metrics(b)["informative_share"] == 0


def test_a_raising_verifier_scores_zero_is_counted_and_the_run_goes_on(tok, model):
    prompt_rows = rows(2, "rl_test_raise") + rows(2, "rl_test_const", "1", prefix="c")
    src = source(tok, model, prompt_rows, prompts_per_step=4, group_size=2, filter_zero_std=False,
                 active_sampling=False)
    batches = take(src, 2)
    for b in batches:
        m = metrics(b)
        assert m["verifier_errors"] == 4 and m["reward"] == 0.5  # 2 of 4 prompts raise: 4 of 8 samples
    assert src.totals["verifier_errors"] == 8
    assert is_verifier_error(Verdict(0.0, "timeout: verifier x ran over 1s"))
    assert not is_verifier_error(Verdict(0.0, "wrong answer"))


def test_a_verifier_timeout_in_the_pool_scores_zero_and_is_counted(tok, model):
    prompt_rows = rows(1, "rl_test_sleep") + rows(1, "rl_test_const", "1", prefix="c")
    src = source(tok, model, prompt_rows, prompts_per_step=2, group_size=2, filter_zero_std=False,
                 active_sampling=False, verify_workers=2, verify_timeout=0.5)
    try:
        t0 = time.perf_counter()
        b = take(src, 1)[0]
        assert time.perf_counter() - t0 < 20
    finally:
        src.close()
    m = metrics(b)
    assert m["verifier_errors"] == 2 and m["reward"] == 0.5


def test_solved_prompts_are_skipped_and_all_solved_is_a_clear_error(tok, model, tmp_path):
    log = tmp_path / "r.jsonl"
    prompt_rows = rows(2, "rl_test_const", "1", prefix="easy") + rows(4, "rl_test_parity", prefix="hard")
    src = source(tok, model, prompt_rows, log=log, prompts_per_step=2, group_size=2, filter_zero_std=False,
                 active_sampling=False, skip_solved_threshold=1.0)
    take(src, 6)  # 12 draws over 6 prompts: the easy ones are seen in epoch 0, skipped afterwards
    logged = [json.loads(x) for x in log.read_text().splitlines()]
    first_epoch = [p for r in logged[:3] for p in r["drawn"]]
    later = [p for r in logged[3:] for p in r["drawn"]]
    assert sorted(first_epoch) == sorted(r["id"] for r in prompt_rows)
    assert not any(p.startswith("easy") for p in later)
    assert src.totals["skipped_solved"] >= 2
    src = source(tok, model, rows(3, "rl_test_const", "1"), prompts_per_step=2, group_size=2,
                 filter_zero_std=False, active_sampling=False, skip_solved_threshold=0.9)
    with pytest.raises(FlowError, match="every prompt is solved"):
        take(src, 3)


def test_domain_weights_choose_what_is_drawn(tok, model, tmp_path):
    log = tmp_path / "r.jsonl"
    prompt_rows = rows(4, "rl_test_parity", prefix="a") + rows(4, "rl_test_const", "1", prefix="b")
    src = source(tok, model, prompt_rows, log=log, prompts_per_step=2, group_size=2, filter_zero_std=False,
                 active_sampling=False, domain_weights={"rl_test_parity": 1.0, "rl_test_const": 0.0})
    b = take(src, 3)[-1]
    drawn = [p for ln in log.read_text().splitlines() for p in json.loads(ln)["drawn"]]
    assert drawn and all(p.startswith("a") for p in drawn)
    assert "reward/rl_test_parity" in metrics(b) and "reward/rl_test_const" not in metrics(b)
    with pytest.raises(FlowError, match="without prompts"):
        source(tok, model, prompt_rows, domain_weights={"math": 1.0})


def test_state_dict_resumes_to_the_same_batches_and_trims_the_log(tok, model, tmp_path):
    cfg = {"prompts_per_step": 2, "group_size": 2, "skip_solved_threshold": 1.0}
    straight = source(tok, model, rows(16), log=tmp_path / "a.jsonl", **cfg)
    it = iter(straight)
    first = [next(it)]
    state = json.loads(json.dumps(straight.state_dict()))  # what a checkpoint keeps (JSON-safe)
    first += [next(it) for _ in range(3)]
    resumed = source(tok, model, rows(16), log=tmp_path / "a.jsonl", **cfg)
    resumed.load_state_dict(state)
    again = take(resumed, 3)
    assert all(same(a, b) for a, b in zip(first[1:], again))
    logged = [json.loads(x)["position"] for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert logged == [0, 1, 2, 3]  # the straight run's records past position 1 were replaced, not repeated


def test_mask_truncated_and_config_errors(tok, model):
    from flowlm.train.objectives.grpo import GRPOObjective

    b = take(source(tok, model, rows(4), prompts_per_step=2, group_size=2, max_new_tokens=1, mask_truncated=True,
                    filter_zero_std=False, active_sampling=False), 1)[0]
    assert b["masked_rows"].all() and metrics(b)["truncated_share"] == 1.0
    assert GRPOObjective().count_units(b) == 0 and GRPOObjective(norm="sequence").count_units(b) == 4
    with pytest.raises(ValueError, match="active_sampling needs filter_zero_std"):
        RolloutConfig(filter_zero_std=False)
    with pytest.raises(ValueError, match="did you mean 'centered'"):
        RolloutConfig(advantage="centred")
    with pytest.raises(FlowError, match="row 1"):
        RolloutSource([rows(1)[0], {"prompt": "no routing"}], tok, RolloutConfig(), seed=0, max_len=96)


def test_overlong_penalty_shapes_rewards(tok, model):
    from flowlm.rl.advantages import centered_advantages, overlong_penalty

    b = take(source(tok, model, rows(2, "rl_test_const", "1"), prompts_per_step=2, group_size=2, max_new_tokens=4,
                    overlong_buffer=2, filter_zero_std=False, active_sampling=False), 1)[0]
    assert metrics(b)["reward"] == 1.0  # the logged reward is the verifier's
    lengths = (b["labels"] != -100).sum(dim=1)
    expected = centered_advantages(1.0 + overlong_penalty(lengths, 4, 2), 2)
    assert torch.allclose(b["advantages"], expected)


def test_grpo_through_the_trainer_raises_an_easy_reward(tok, tmp_path):
    """The sign and plumbing end to end: 30 synchronous steps (source -> engine -> verifier -> grpo ->
    AdamW) take the reward 'share of digits in the answer' from < 0.15 to > 0.6 (measured: mean of the first
    5 steps 0.051, of the last 5 steps 0.831)."""
    from flowlm.model.config import ModelConfig
    from flowlm.model.olmo3 import Olmo3
    from flowlm.train.config import EngineConfig
    from flowlm.train.engine import Trainer
    from flowlm.train.objectives import build_objective

    torch.manual_seed(0)
    policy = Olmo3(ModelConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                               intermediate_size=64, max_seq_len=128, sliding_window=16, init_std=0.2))
    src = RolloutSource(rows(64, "rl_test_digits"), tok, RolloutConfig(prompts_per_step=8, group_size=8,
                                                                      max_new_tokens=8), seed=0, max_len=64)
    src.bind(policy)
    cfg = EngineConfig(steps=30, seq_len=64, batch_size=64, optim={"lr": 3e-3}, schedule={"kind": "constant"},
                       checkpoint_every=1000)
    Trainer(policy, build_objective("grpo"), src, cfg, tmp_path, show_progress=False).fit()
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    first, last = (sum(r["reward"] for r in part) / 5 for part in (recs[:5], recs[-5:]))
    assert first < 0.15 and last > 0.6, (first, last)
    assert recs[-1]["entropy"] < recs[0]["entropy"]


# --- minibatches > 1 ----------------------------------------------------------------------------------

def test_minibatches_split_whole_groups_with_the_old_policy_logps(tok, model):
    from flowlm.train.objectives.grpo import token_mask
    from tests.rl.test_grpo_objective import full_logps

    whole = take(source(tok, model, rows(12)), 2)
    src = source(tok, model, rows(12), minibatches=3)
    parts = take(src, 6)
    assert (src.position, src.steps, src.batches_per_epoch) == (2, 6, 12)
    for k, part in enumerate(parts):
        batch = whole[k // 3]
        rows_k = slice((k % 3) * 4, (k % 3 + 1) * 4)  # one whole group of 4 per minibatch, in row order
        for key in ("input_ids", "labels", "advantages", "loss_rows", "group_ids", "prompt_index"):
            assert torch.equal(part[key], batch[key][rows_k]), key
        # old_logps: the policy's log-prob of every trained token (the learner's code), NaN elsewhere
        mask = token_mask(part)
        assert torch.equal(~part["old_logps"].isnan(), mask)
        with torch.no_grad():
            assert torch.allclose(part["old_logps"][mask], full_logps(model, part)[mask], atol=1e-5)
        # the rollout statistics ride on the first minibatch of their batch only
        stats = sorted(key for key in part if key.startswith("stat_"))
        assert (stats != []) == (k % 3 == 0)
        if k % 3 == 0:
            assert metrics(part)["prompts"] == metrics(batch)["prompts"] and "time_old_logps_s" in metrics(part)
    # version = optimizer steps done: the second rollout batch was sampled after 3 minibatches
    for k, version in ((0, 0), (3, 3)):
        labelled = parts[k]["labels"] != -100
        assert (parts[k]["rollout_versions"][labelled] == version).all()
    with pytest.raises(ValueError, match="minibatches 2 must divide prompts_per_step 3"):
        RolloutConfig(prompts_per_step=3, minibatches=2)
    # modes async and ray take them too (tests/rl/test_async.py): OLMo 3 Instruct RL ran 4 with async_steps 8
    assert RolloutConfig(prompts_per_step=4, minibatches=4, mode="async").steps_per_batch() == 4


def test_num_epochs_serve_the_minibatches_again_with_the_same_old_logps(tok, model):
    """minibatches 3 x num_epochs 2: six optimizer steps per rollout batch, the second pass the same three
    minibatches in the same order, with the old-policy log-probs taken once before the first."""
    first_pass = take(source(tok, model, rows(12), minibatches=3), 3)
    src = source(tok, model, rows(12), minibatches=3, num_epochs=2)
    parts = take(src, 7)
    assert (src.position, src.steps, src.batches_per_epoch) == (2, 7, 24)
    for k, part in enumerate(parts[:6]):
        ref = first_pass[k % 3]
        for key in ("input_ids", "labels", "advantages", "loss_rows", "group_ids", "old_logps"):
            assert torch.equal(part[key].nan_to_num(7.0), ref[key].nan_to_num(7.0)), (k, key)
        assert any(key.startswith("stat_") for key in part) == (k == 0)  # statistics once per rollout batch
    assert parts[3] is not parts[0] and parts[3] is not parts[6]
    # the next rollout batch was sampled for the policy after six optimizer steps
    labelled = parts[6]["labels"] != -100
    assert (parts[6]["rollout_versions"][labelled] == 6).all()
    # num_epochs alone (minibatches 1) also takes the old-policy pass: the second epoch needs its ratio
    one = take(source(tok, model, rows(12), num_epochs=2), 2)
    assert torch.equal(one[0]["old_logps"].nan_to_num(7.0), one[1]["old_logps"].nan_to_num(7.0))
    assert torch.equal(one[0]["input_ids"], one[1]["input_ids"])
    assert RolloutConfig(prompts_per_step=4, num_epochs=2, mode="ray").steps_per_batch() == 2
    assert RolloutConfig(prompts_per_step=4, minibatches=2, num_epochs=3).steps_per_batch() == 6


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_minibatch_ratio_is_against_the_policy_before_the_first_step(tok, model, temperature):
    """The ratio of minibatch 2, by hand: exp(learner after an update - learner before the batch), both at
    the sampling temperature (the old-policy pass divides by it too, so minibatch 1's ratio is exactly 1)."""
    import copy

    from flowlm.train.objectives.grpo import GRPOObjective, token_mask

    def full_logps(policy, batch):
        logits = policy(batch["input_ids"]).float() / temperature
        lp = torch.log_softmax(logits, -1).gather(-1, batch["labels"].clamp_min(0)[..., None]).squeeze(-1)
        return torch.where(batch["labels"] != -100, lp, 0.0)

    policy = copy.deepcopy(model)
    src = source(tok, policy, rows(12), minibatches=3, temperature=temperature)
    first, second = take(src, 2)
    obj = GRPOObjective(is_mode="off")
    m = obj.loss(policy, first).metrics
    assert m["ratio_max"].value.item() == pytest.approx(1.0, abs=1e-5)  # before any update: ratio 1
    with torch.no_grad():  # "an optimizer step"
        policy.lm_head.weight.add_(0.3 * torch.randn(policy.lm_head.weight.shape, generator=torch.Generator()
                                                     .manual_seed(0)))
    m = obj.loss(policy, second).metrics
    mask = token_mask(second)
    with torch.no_grad():
        ratio = torch.exp(full_logps(policy, second) - second["old_logps"].nan_to_num(0.0))[mask]
    assert m["ratio_mean"].total / m["ratio_mean"].count == pytest.approx(ratio.mean().item(), rel=1e-4)
    assert m["ratio_max"].value.item() == pytest.approx(ratio.max().item(), rel=1e-4)
    assert ratio.max().item() > 1.3  # the update moved it beyond the band


class _Crash(Exception):
    pass


def _minibatch_run(tok, out, *, stop_at: int | None = None, resume: bool = False,
                   split: str = "minibatches") -> list[dict]:
    """6 optimizer steps = 3 rollout batches x 2 (`split`: 2 minibatches, or 2 epochs of one) at a large LR;
    checkpoints every step; `stop_at`: crash right after that step's checkpoint."""
    from flowlm.model.config import ModelConfig
    from flowlm.model.olmo3 import Olmo3
    from flowlm.train.config import EngineConfig
    from flowlm.train.engine import Callback, Trainer
    from flowlm.train.objectives import build_objective

    class Stop(Callback):
        def on_step_end(self, trainer, step, record):
            if step == stop_at:
                raise _Crash

    torch.manual_seed(0)
    policy = Olmo3(ModelConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                               intermediate_size=64, max_seq_len=128, sliding_window=16, init_std=0.2))
    src = RolloutSource(rows(40, "rl_test_digits"), tok, RolloutConfig(prompts_per_step=4, group_size=4,
                                                                      max_new_tokens=6, **{split: 2}),
                        seed=0, max_len=64)
    src.bind(policy)
    cfg = EngineConfig(steps=6, seq_len=64, batch_size=16, optim={"lr": 0.05}, schedule={"kind": "constant"},
                       checkpoint_every=1, keep_last=10)
    trainer = Trainer(policy, build_objective("grpo"), src, cfg, out, show_progress=False, callbacks=[Stop()])
    if resume:
        assert trainer.resume() and trainer.step == stop_at
    try:
        trainer.fit()
    except _Crash:
        pass
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


@pytest.mark.parametrize("split", ["minibatches", "num_epochs"])
def test_minibatches_through_the_trainer_clip_from_the_second_and_resume_exactly_mid_batch(tok, tmp_path, split):
    straight = _minibatch_run(tok, tmp_path / "a", split=split)
    assert [r["step"] for r in straight] == [1, 2, 3, 4, 5, 6]
    for r in straight[0::2]:  # the first minibatch of each rollout batch: the policy it was sampled for
        assert r["clip_frac_low"] == r["clip_frac_high"] == 0 and r["ratio_max"] == pytest.approx(1.0, abs=1e-4)
        assert "reward" in r and "prompts" in r
    later = straight[1::2]  # after one step at LR 0.05 the ratio leaves the band
    assert all("reward" not in r for r in later)
    assert all(r["clip_frac_low"] + r["clip_frac_high"] > 0 for r in later), [
        (r["clip_frac_low"], r["clip_frac_high"], r["ratio_max"]) for r in later]
    # crash after step 3 (the first minibatch of rollout batch 1), resume from its checkpoint: the
    # second minibatch comes from the checkpoint, with its old_logps; every loss equals the straight run's
    out = tmp_path / "b"
    cut = _minibatch_run(tok, out, stop_at=3, split=split)
    assert [r["step"] for r in cut] == [1, 2, 3]
    resumed = _minibatch_run(tok, out, stop_at=3, resume=True, split=split)
    keys = ("loss", "grad_norm", "clip_frac_low", "clip_frac_high", "ratio_max", "entropy")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    assert [r.get("reward") for r in resumed] == [r.get("reward") for r in straight]


def test_max_groups_bounds_what_one_batch_may_roll_out():
    # 4 in the first round, then at most floor(4 x 4) = 16 in each of the 3 others; the async actor's cap
    assert RolloutConfig(prompts_per_step=4, max_draws=4).max_groups() == 4 + 3 * 16
    assert RolloutConfig(prompts_per_step=4, max_draws=4, max_oversample=1).max_groups() == 16
    assert RolloutConfig(prompts_per_step=3, max_draws=2, max_oversample=2.5).max_groups() == 3 + 7
    assert RolloutConfig(prompts_per_step=4, active_sampling=False).max_groups() == 4
