"""Helpers the tests import: servers, clients, fakes at the edge, waiting.

pytest rewrites asserts only in test modules and conftest; these modules hold shared
test bodies and checks, so their failures get the same introspection."""

import pytest

pytest.register_assert_rewrite(
    "tests.support.agent_contract",
    "tests.support.app",
    "tests.support.orchestrator",
    "tests.support.postgres",
    "tests.support.scada",
    "tests.support.scenarios",
)
