"""Post-training data builders: cold-start SFT rows by rejection sampling, and DPO preference pairs.

- `teachers`: the `Teacher` protocol (`sample(prompts, n, thinking=, seed=)`), `ModelTeacher` (any local
  checkpoint through the rollout engine), `ProceduralTeacher` / `WeakProceduralTeacher` (the built-in
  tasks: the miniature's strong and weak models), `builtin_rows`;
- `filters`: the Qwen3 query and response filters, each a small function returning a drop reason;
- `coldstart`: `build_coldstart(rows, teacher, cfg)` -> SFT chat rows + accounting;
- `delta`: `build_delta_pairs(rows, strong, weak, cfg)` and `build_judge_pairs(rows, pool, judge)`;
- `cli`: the `flowlm post {coldstart,pairs}` verb.

Kept import-free so `flowlm --help` does not load the builders; see docs/post.md.
"""
