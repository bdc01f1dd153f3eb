"""Score IFEval / IFBench response files and compare with reference per-item results.

`python -m flowlm.verify.ifeval.benchmark ifeval DATA_DIR` prints strict/loose prompt- and
instruction-level accuracy and the per-item agreement with `eval_results_{strict,loose}.jsonl`.
Responses are matched to prompts by exact prompt text, falling back to file position (IFEval's
response file has one prompt whose text was later corrected, key 2785).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowlm.jsonlines import read_json_objects
from flowlm.verify.ifeval.core import evaluate, parse_ground_truth


@dataclass
class ModeResult:
    """Verdicts of one mode (strict or loose) over a response file."""

    per_prompt: dict[str, list[bool]] = field(default_factory=dict)  # prompt text -> per-instruction

    @property
    def prompt_accuracy(self) -> float:
        return sum(all(v) for v in self.per_prompt.values()) / len(self.per_prompt)

    @property
    def instruction_accuracy(self) -> float:
        flat = [x for v in self.per_prompt.values() for x in v]
        return sum(flat) / len(flat)


def score_file(inputs: list[dict[str, Any]], responses: list[dict[str, Any]], mode: str) -> ModeResult:
    """Verdicts for every input row that has a response."""
    by_prompt = {r["prompt"]: r["response"] for r in responses}
    out = ModeResult()
    for i, row in enumerate(inputs):
        resp = by_prompt.get(row["prompt"])
        if resp is None and len(responses) == len(inputs):
            resp = responses[i]["response"]  # position fallback
        if resp is None:
            continue
        constraints = parse_ground_truth(row)
        out.per_prompt[row["prompt"]] = evaluate(constraints, resp, mode, row["prompt"])
    return out


def agreement(result: ModeResult, reference: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-prompt and per-instruction agreement with reference `eval_results_*.jsonl` rows."""
    same_prompt = same_instr = n_instr = n = 0
    disagree = []
    for ref in reference:
        ours = result.per_prompt.get(ref["prompt"])
        if ours is None:
            continue
        n += 1
        same_prompt += all(ours) == ref["follow_all_instructions"]
        for a, b in zip(ours, ref["follow_instruction_list"]):
            same_instr += a == b
            n_instr += 1
        if ours != ref["follow_instruction_list"]:
            disagree.append(ref["prompt"][:60])
    return {"prompts": n, "prompt_agree": same_prompt, "instructions": n_instr,
            "instruction_agree": same_instr, "disagreements": disagree}


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _pair_ifbench(inputs: list[dict[str, Any]], responses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input rows re-keyed to the response file's prompt text.

    IFBench's sample responses were generated from a slightly different prompt file: 4 prompts
    differ (trailing whitespace, or an edited ending). Match exactly, then after stripping, then to
    the input sharing the longest common prefix when it covers 95% of the shorter prompt; prompts
    left unmatched are not scored.
    """
    by_text = {r["prompt"]: r for r in inputs}
    by_strip = {r["prompt"].strip(): r for r in inputs}
    out = []
    for resp in responses:
        p = resp["prompt"]
        row = by_text.get(p) or by_strip.get(p.strip())
        if row is None:
            best = max(inputs, key=lambda r: _common_prefix(r["prompt"], p))
            shared = _common_prefix(best["prompt"], p)
            row = best if shared >= 0.95 * min(len(p), len(best["prompt"])) else None
        if row is not None:
            out.append({**row, "prompt": p})
    return out


def run(name: str, data_dir: Path) -> dict[str, Any]:
    """Score the benchmark's bundled response file in both modes and compare with the references."""
    if name == "ifeval":
        inputs = read_json_objects(data_dir / "input_data.jsonl")
        responses = read_json_objects(data_dir / "input_response_data_gpt4_20231107_145030.jsonl")
    else:
        inputs = read_json_objects(data_dir / "IFBench_test.jsonl")
        responses = read_json_objects(data_dir / "sample_output.jsonl")
        inputs = _pair_ifbench(inputs, responses)
    report: dict[str, Any] = {}
    for mode in ("strict", "loose"):
        res = score_file(inputs, responses, mode)
        report[mode] = {"prompt_accuracy": res.prompt_accuracy, "instruction_accuracy": res.instruction_accuracy,
                        "n_prompts": len(res.per_prompt)}
        ref_path = data_dir / f"eval_results_{mode}.jsonl"
        if ref_path.exists():
            report[mode]["agreement"] = agreement(res, read_json_objects(ref_path))
    return report


def main(argv: list[str]) -> int:
    """CLI: `benchmark.py {ifeval,ifbench} DATA_DIR`."""
    name, data_dir = argv[0], Path(argv[1])
    report = run(name, data_dir)
    for mode in ("strict", "loose"):
        r = report[mode]
        line = f"{name} {mode:6s} prompt {r['prompt_accuracy']:.4f}  instruction {r['instruction_accuracy']:.4f}"
        if "agreement" in r:
            a = r["agreement"]
            line += (f"  agree prompts {a['prompt_agree']}/{a['prompts']}"
                     f" instructions {a['instruction_agree']}/{a['instructions']}")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
