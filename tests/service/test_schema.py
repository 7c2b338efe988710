"""schemathesis against a real `loyaltylens serve`: every operation `/openapi.json` publishes,
called with requests made from the schema (valid ones, and invalid ones), must answer as the
schema says: no 500s, only documented status codes and content types, bodies that match their
response schemas, what the schema allows accepted and what it forbids refused (issue #30:
"make the schema the truth").

Bounded and derandomized: the same examples every run, and the run ends by itself.
(schemathesis' own pytest integration, `from_fixture`, does not run on pytest 9, so the
operations are driven here with hypothesis directly.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

pytestmark = pytest.mark.slow

EXAMPLES = 30


def failures_of(operation, mode: schemathesis.GenerationMode) -> list[str]:
    """Every example of one operation in one mode called against the server; what failed."""
    failed: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def examples(case) -> None:
        try:
            case.call_and_validate(timeout=30)
        except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis: one failure, or a group of them
            failed.append(f"{operation.label} ({mode.value}): {str(exc).strip()[:3000]}")

    try:
        examples()
    except Unsatisfiable:
        # Nothing to get wrong: an operation with no parameters and no body has no invalid call.
        assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    return failed


def test_the_server_answers_as_its_schema_says(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5, [op.label for op in operations]
    failed = [f for op in operations for mode in schemathesis.GenerationMode for f in failures_of(op, mode)]
    assert not failed, "\n\n".join(dict.fromkeys(failed))
