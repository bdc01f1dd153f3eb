"""Tool use at generation time: the built-in tools (`builtin`: calculator, sandboxed python) and the loop
that executes a model's `<tool_call>`s and feeds the answers back (`loop`); `flowlm generate --tools`.
Calls are checked as answers by the `tool_call` verifier (`flowlm.verify.tool_call`)."""
