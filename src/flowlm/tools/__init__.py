"""Tool use at generation time: the built-in tools (`builtin`: calculator, sandboxed python), the call formats
models write (`formats`: Hermes's `<tool_call>` JSON, OLMo 3's `<function_calls>`), and the engine wrapper that
runs a model's calls between its turns (`engine`); `flowlm generate --tools`, RL rollouts, eval and cold-start
teachers with tools. Calls are checked as answers by the `tool_call` verifier (`flowlm.verify.tool_call`)."""
