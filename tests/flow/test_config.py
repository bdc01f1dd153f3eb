"""Recipe loading: overrides, validation, one-line errors with suggestions, exit code 2."""

import subprocess
import sys

import pytest

from flowlm.config import apply_overrides
from flowlm.errors import ConfigError
from flowlm.flow.runner import load_recipe


def test_builtin_recipe_loads_and_overrides_apply():
    recipe, origin = load_recipe("tiny", ["stages.pretrain.steps=3", "stages.pretrain.optim.lr=0.01"])
    assert origin == "builtin:tiny"
    assert recipe.stages["pretrain"].steps == 3
    assert recipe.stages["pretrain"].optim.lr == 0.01
    assert recipe.stages["pretrain"].kind == "train"


def test_config_is_frozen():
    recipe, _ = load_recipe("tiny", [])
    with pytest.raises(Exception):
        recipe.stages["pretrain"].steps = 5


@pytest.mark.parametrize(
    "override, needle",
    [
        ("stages.pretrain.optim.betass=1", "did you mean 'stages.pretrain.optim.betas'"),
        ("seeed=1", "did you mean 'seed'"),
        ("stages.pretrain.optim.lr=-1", "stages.pretrain.optim.lr"),
        ("stages.pretrain.schedule.kind=foo", "'cosine', 'linear' or 'constant'"),
        ("stages.pretrian.steps=3", "did you mean 'pretrain'"),
        ("stages.soup.from=[nope]", "refers to 'nope'"),
        ("stages.pretrain.grad_accum=3", "divisible by grad_accum"),
    ],
)
def test_bad_overrides_give_one_line_errors(override, needle):
    with pytest.raises(ConfigError) as info:
        load_recipe("tiny", [override])
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_malformed_override_and_unknown_recipe():
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        load_recipe("tinyy", [])


def test_yaml_syntax_error_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_recipe(str(bad), [])


def test_cli_exit_code_2_and_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "flowlm.cli", "run", "tiny", "stages.pretrain.lrr=1", "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "stages.pretrain.lrr" in lines[0]
    assert not (tmp_path / "flow.json").exists()


def test_extends_starts_from_another_recipe_and_appends_stages(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: tiny\nseed: 3\nstages:\n  pretrain: {steps: 5}\n"
                     "  sft: {kind: train, init: long_context, data: midtrain, objective: sft, seq_len: 64, batch_size: 2}\n")
    recipe, origin = load_recipe(str(child), [])
    base, _ = load_recipe("tiny", [])
    assert recipe.name == "child" and recipe.seed == 3 and origin == str(child)
    assert list(recipe.stages) == [*base.stages, "sft"]  # the base's stages in order, then the new one
    assert recipe.stages["pretrain"].steps == 5 and recipe.stages["pretrain"].seq_len == base.stages["pretrain"].seq_len
    assert recipe.stages["midtrain"] == base.stages["midtrain"]


def test_extends_cycle_is_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\nstages: {{}}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\nstages: {{}}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(str(tmp_path / "a.yaml"), [])


def test_builtin_post_recipe_extends_tiny():
    recipe, _ = load_recipe("tiny-post", [])
    base, _ = load_recipe("tiny", [])
    assert list(recipe.stages)[: len(base.stages)] == list(base.stages)
    kinds = {name: st.kind for name, st in recipe.stages.items()}
    assert {"coldstart", "pairs", "eval"} <= set(kinds.values())
    assert recipe.stages["dpo"].objective.name == "dpo" and recipe.stages["sft"].objective.name == "sft"


def test_builtin_rl_recipe_extends_tiny_post_with_think_rl_zero_and_its_coin_control():
    recipe, _ = load_recipe("tiny-rl", [])
    post, _ = load_recipe("tiny-post", [])
    assert list(recipe.stages)[: len(post.stages)] == list(post.stages)
    rl = {name: st for name, st in recipe.stages.items() if st.kind == "rl"}
    assert set(rl) == {"think_rl", "rl_zero", "rl_zero_coin"} and rl["think_rl"].init == "sft"
    think = rl["think_rl"].rollout  # zero-std filtering, active sampling, 8 oversampling rounds
    assert think.filter_zero_std and think.active_sampling and think.max_draws == 8 and think.max_oversample == 4
    zero, coin = rl["rl_zero"], rl["rl_zero_coin"]
    assert zero.init == coin.init == "long_context" and zero.prompt_format == "plain"
    assert zero.rollout.stop == ["\nQuestion:"] and zero.rollout.mask_truncated
    # the control differs from the real run in its reward only
    assert coin.rollout.reward == "random" and zero.rollout.reward == "verifier"
    assert coin.model_dump(exclude={"rollout"}) == zero.model_dump(exclude={"rollout"})
    assert coin.rollout.model_dump(exclude={"reward"}) == zero.rollout.model_dump(exclude={"reward"})
    assert recipe.stages["evaluate_zero"].models == ["long_context", "rl_zero", "rl_zero_coin"]


def test_builtin_rl_modes_recipe_has_instruct_and_qwen3_rl_after_tiny_post():
    recipe, _ = load_recipe("tiny-rl-modes", [])
    post, _ = load_recipe("tiny-post", [])
    assert list(recipe.stages)[: len(post.stages)] == list(post.stages)
    st = recipe.stages
    inst, reason, general = st["instruct_rl"], st["qwen3_reasoning_rl"], st["qwen3_general_rl"]
    # Instruct RL: from DPO, IF instructions on half the prompts, shorter completions, solved prompts
    # skipped, several optimizer steps per rollout batch
    assert inst.init == "dpo" and inst.instructions == 0.5 and inst.rollout.skip_solved_threshold == 0.875
    assert inst.rollout.minibatches > 1 and inst.rollout.max_new_tokens < reason.rollout.max_new_tokens
    # Qwen3: reasoning RL from the cold-start SFT with entropy control, general RL adding the BT reward model
    assert reason.init == "sft" and st["sft"].data == "sft_data" and st["sft_data"].kind == "coldstart"
    assert reason.objective.entropy_target is not None and reason.objective.entropy_coef > 0
    assert general.init == "qwen3_reasoning_rl" and general.reward_model == "reward_model"
    assert st["reward_model"].objective.name == "reward_model" and general.instructions > 0
    assert "builtin_instruct" in st["evaluate_modes"].suites
    # the IF domain by itself: every prompt with an instruction, scored by ifeval alone, evaluated on builtin_if
    if_rl = st["if_rl"]
    assert if_rl.init == "sft" and if_rl.instructions == 1.0 and if_rl.instruction_reward == "alone"
    assert st["evaluate_if"].models == ["sft", "if_rl"] and "builtin_if" in st["evaluate_if"].suites
    # RL-Zero on the IF domain and its coin control: from the base model, curves in the plain template,
    # the two runs differing in the reward only
    zero, coin = st["rl_zero_if"], st["rl_zero_if_coin"]
    assert zero.init == "long_context" and zero.prompt_format == "plain" and zero.instruction_reward == "alone"
    assert zero.generation_eval.format == "plain" and "builtin_if" in zero.generation_eval.suites
    assert zero.rollout.reward == "verifier" and coin.rollout.reward == "random"
    assert coin.model_dump(exclude={"rollout"}) == zero.model_dump(exclude={"rollout"})
    assert coin.rollout.model_dump(exclude={"reward"}) == zero.rollout.model_dump(exclude={"reward"})
    # the pair with the lowercase instruction only: rl_zero_if's settings otherwise, again differing in the reward
    lower, lower_coin = st["rl_zero_lower"], st["rl_zero_lower_coin"]
    assert lower.instruction_ids == ["change_case:english_lowercase"] and zero.instruction_ids is None
    # and in the in-loop eval: sampled, 300 items, per instruction (the lowercase curve is the one that counts)
    assert lower.model_dump(exclude={"instruction_ids", "generation_eval"}) == zero.model_dump(
        exclude={"instruction_ids", "generation_eval"})
    assert lower_coin.model_dump(exclude={"instruction_ids", "generation_eval"}) == coin.model_dump(
        exclude={"instruction_ids", "generation_eval"})
    assert lower.generation_eval == lower_coin.generation_eval
    assert lower.generation_eval.model_dump(include={"suites", "max_items", "temperature", "n", "by_category"}) == {
        "suites": ["builtin_if"], "max_items": 300, "temperature": 0.8, "n": 4, "by_category": True}


def test_a_missing_required_key_is_named_in_full_even_inside_an_objective(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages:\n  dpo:\n    kind: train\n    init: ckpt\n    seq_len: 64\n    batch_size: 2\n    data: pairs\n"
                      "    objective: {name: dpo}\n")
    with pytest.raises(ConfigError) as exc:
        load_recipe(str(recipe), [])
    assert str(exc.value) == f"{recipe}: missing required key 'stages.dpo.objective.beta'"
    recipe.write_text("name: r\nstages:\n  dpo:\n    kind: train\n    init: ckpt\n    seq_len: 64\n    batch_size: 2\n    objective: {name: dpo, beta: 0.1}\n")
    with pytest.raises(ConfigError, match="missing required key 'stages.dpo.data'$"):
        load_recipe(str(recipe), [])
