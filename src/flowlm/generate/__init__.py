"""Rollout engine: continuous batching over a KV cache, raw-policy logprobs, inflight weight updates.

`engine.Engine` / `engine.GenerateConfig` (native backend, CPU or CUDA), `vllm_backend.VLLMEngine`
(same interface on vLLM), `params.SamplingParams` / `Result` / `Completion`, and the
`flowlm generate` verb in `cli`. Kept import-free so `flowlm --help` does not load torch; see
docs/generate.md.
"""
