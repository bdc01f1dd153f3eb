"""Shared fixtures of the tool tests: `tok`, a small flowlm tokenizer (flowlm's chat template)."""

from __future__ import annotations

import pytest

from tests.tools.test_tool_rollouts import make_tok


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tok(tmp_path_factory.mktemp("tok") / "tok")
