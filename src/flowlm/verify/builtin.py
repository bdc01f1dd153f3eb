"""Imports every module that registers a built-in verifier (see `base.register`)."""

from flowlm.verify import code_verifier, judge, math_verifier, reward_model, sequence, thinking, tool_call  # noqa: F401
from flowlm.verify.ifeval import verifier as _ifeval  # noqa: F401
