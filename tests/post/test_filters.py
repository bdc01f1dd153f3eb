"""Each Qwen3 filter on hand-made responses: it drops what it should and keeps what it should."""

from __future__ import annotations

from flowlm.data.decontam import DecontamCfg, Decontaminator
from flowlm.post import filters as F
from flowlm.post.filters import QueryFilterCfg, ResponseFilterCfg

MATH = {"messages": [{"role": "user", "content": "Compute 6 * 7."}], "dataset": "math", "ground_truth": "42"}
REASONING = ("We multiply the two numbers step by step. Six times seven is the same as six added seven times: "
             "6 + 6 + 6 + 6 + 6 + 6 + 6 = 42. So the product is 42.\n\\boxed{42}")


def resp(reasoning: str = REASONING, content: str = "The answer is \\boxed{42}.", **kw) -> dict:
    return {"reasoning": reasoning, "content": content, "finish_reason": "stop", **kw}


def test_a_good_response_passes_every_filter():
    assert F.check_response(MATH, resp(), ResponseFilterCfg(), thinking=True) is None


def test_format_problems():
    assert F.format_problem(resp(finish_reason="error", error="boom")) == "teacher_error"
    assert F.format_problem(resp(finish_reason="length")) == "truncated"
    assert F.format_problem(resp(content="  ")) == "empty_answer"
    assert F.format_problem(resp()) is None


def test_wrong_answer_uses_the_row_verifier():
    assert F.wrong_answer(MATH, resp()) is None
    assert F.wrong_answer(MATH, resp(content="The answer is \\boxed{41}.")) == "wrong_answer"
    # The answer is read after </think>: a right answer only inside the trace does not count.
    assert F.wrong_answer(MATH, resp(content="I am not sure.")) == "wrong_answer"
    # A row without verifier tags has nothing to check against.
    assert F.wrong_answer({"prompt": "Write a haiku."}, resp(content="anything")) is None
    # A graded verifier: min_score decides.
    row = {"prompt": "Sort 3, 1, 2.", "dataset": "sequence", "ground_truth": "1, 2, 3"}
    assert F.wrong_answer(row, resp(content="\\boxed{1, 2, 3}")) is None
    assert F.wrong_answer(row, resp(content="\\boxed{2, 1, 3}")) == "wrong_answer"


def test_repetition_ratio_and_filter():
    assert F.repetition_ratio("a b c", 8) == 0.0  # too short to judge
    loop = " ".join(["Wait, let me check that again."] * 20)
    assert F.repetition_ratio(loop, 8) > 0.9
    assert F.repetition(resp(reasoning=REASONING + "\n" + loop)) == "repetition"
    assert F.repetition(resp(content=loop)) == "repetition"  # the answer loops
    assert F.repetition(resp()) is None
    # Templated working lines (the sorting task's) are not repetition at n=8.
    steps = "\n".join(f"Smallest of the remaining numbers is {v}; sorted so far: {v}." for v in range(8))
    assert F.repetition(resp(reasoning=steps)) is None


def test_guess_short_trace_or_answer_first():
    assert F.guess(resp(reasoning="It is 42.")) == "guess"
    assert F.guess(resp(reasoning="")) == "guess"
    assert F.guess(resp(reasoning="It is 42."), multi_step=False) is None
    assert F.guess(resp(reasoning="It is 42."), min_words=None) is None
    first = "The final answer is 42.\n" + REASONING
    assert F.guess(resp(reasoning=first)) == "guess"
    assert F.guess(resp(reasoning=first), answer_first=False) is None
    assert F.guess(resp()) is None


def test_guess_applies_in_thinking_mode_only():
    cfg = ResponseFilterCfg()
    direct = resp(reasoning="", content="6 * 7 = 42. The answer is \\boxed{42}.")
    assert F.check_response(MATH, direct, cfg, thinking=True) == "guess"
    assert F.check_response(MATH, direct, cfg, thinking=False) is None
    assert F.check_response({**MATH, "multi_step": False}, direct, cfg, thinking=True) is None


def test_think_summary_mismatch():
    assert F.think_summary_mismatch(resp()) is None
    assert F.think_summary_mismatch(resp(reasoning=REASONING.replace("{42}", "{40}"))) == "think_summary_mismatch"
    # Equivalent forms agree; a trace without an extractable answer cannot disagree.
    assert F.think_summary_mismatch(resp(reasoning="so \\boxed{0.5}", content="\\boxed{\\frac{1}{2}}")) is None
    assert F.think_summary_mismatch(resp(reasoning="six sevens make forty-two")) is None
    # GSM8K-style answers and lists (in order, not as sets).
    assert F.think_summary_mismatch(resp(reasoning="... #### 12", content="#### 13")) == "think_summary_mismatch"
    assert F.think_summary_mismatch(resp(reasoning="\\boxed{1, 2, 3}", content="\\boxed{2, 1, 3}")) \
        == "think_summary_mismatch"
    assert F.think_summary_mismatch(resp(reasoning="\\boxed{1, 2, 3}", content="\\boxed{1,2,3}")) is None


def test_language_mix():
    assert F.language_mix(resp(), prompt="Compute 6 * 7.") is None
    mixed = REASONING + "\n接下来我们继续计算,然后检查每一步的结果是否正确。"
    assert F.language_mix(resp(reasoning=mixed), prompt="Compute 6 * 7.") == "language_mix"
    # Greek letters are math, not a second language.
    assert F.language_mix(resp(reasoning="The area is π r² with θ = 2π, so α + β = γ."), prompt="Area?") is None
    # One script throughout, in the prompt's script: fine.
    zh = "我们先把六乘以七,得到四十二,然后检查结果。"
    assert F.language_mix(resp(reasoning=zh, content="答案是 \\boxed{42}。"), prompt="计算六乘以七。") is None
    # A style jump: thinks in Chinese, answers in English (the prompt has no letters to decide by).
    jump = resp(reasoning=zh * 4, content="The answer is \\boxed{42}.")
    assert F.language_mix(jump, prompt="6 * 7 = ?", max_share=0.5) == "language_mix"
    assert F.language_mix(resp(reasoning="", content="42"), prompt="6*7") is None  # no letters at all


def test_contaminated_by_benchmark_items():
    question = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                "How many clips did Natalia sell altogether in April and May?")
    deco = Decontaminator([{"benchmark": "gsm8k", "item_id": "0", "question": question, "answer": "72"}],
                          DecontamCfg(mode="posttrain"))
    assert F.contaminated(f"Let me restate: {question} Then add.", deco) == "contaminated"
    assert F.contaminated(REASONING, deco) is None
    assert F.contaminated(question, None) is None
    leak = resp(reasoning=REASONING + "\n" + question)
    assert F.check_response(MATH, leak, ResponseFilterCfg(), thinking=True, decontam=deco) == "contaminated"
    row = {"prompt": question, "dataset": "gsm8k", "ground_truth": "72"}
    assert F.query_problem(row, QueryFilterCfg(), decontam=deco) == "contaminated"


def test_first_reason_wins_in_qwen3_order():
    loop = " ".join(["Wait, let me check that again."] * 20)
    bad = resp(reasoning=REASONING + loop, content="The answer is \\boxed{41}.")
    assert F.check_response(MATH, bad, ResponseFilterCfg(), thinking=True) == "wrong_answer"
    assert F.check_response(MATH, bad, ResponseFilterCfg(min_score=None), thinking=True) == "repetition"
    off = ResponseFilterCfg(min_score=None, max_repetition=None, min_reasoning_words=None, check_answer_first=False,
                            check_consistency=False, max_foreign_script=None)
    assert F.check_response(MATH, bad, off, thinking=True) is None


def test_query_filters():
    assert F.too_easy(0.75, max_pass_rate=0.75) == "too_easy"
    assert F.too_easy(0.5, max_pass_rate=0.75) is None
    assert F.query_problem({"prompt": "Write a poem."}, QueryFilterCfg()) == "unverifiable"
    assert F.query_problem({"prompt": "Write a poem."}, QueryFilterCfg(require_verifier=False)) is None
    assert F.query_problem(MATH, QueryFilterCfg()) is None


def test_pass_rates_sample_without_reasoning():
    class Direct:
        """Answers right without reasoning on the first prompt only; records the mode it was asked for."""

        name = "direct"
        modes: list[bool] = []

        def sample(self, prompts, n, *, thinking, seed):
            self.modes.append(thinking)
            return [[resp(reasoning="", content="\\boxed{42}" if i == 0 or j % 2 else "\\boxed{1}") for j in range(n)]
                    for i, _ in enumerate(prompts)]

    teacher = Direct()
    rates = F.pass_rates([MATH, MATH], [MATH["messages"]] * 2, teacher, k=4, seed=0)
    assert rates == [1.0, 0.5] and teacher.modes == [False]
