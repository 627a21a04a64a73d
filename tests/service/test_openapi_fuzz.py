"""Schemathesis over /openapi.json: whatever the schema admits, the service never answers 5xx."""

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from service_helpers import API_KEY


def test_no_server_errors(service):
    schema = schemathesis.openapi.from_url(f"{service}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /solve",
        "POST /solve/batch",
        "GET /models/{ref}",
        "POST /admin/reload",
    }
    statuses: dict[str, set[int]] = {}

    def fuzz(op, mode):
        name = f"{op.method.upper()} {op.path}"

        @given(case=op.as_strategy(mode))
        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case):
            response = case.call(base_url=service, headers={"X-API-Key": API_KEY}, timeout=60)
            statuses.setdefault(name, set()).add(response.status_code)
            assert response.status_code < 500, (name, response.text[:500])

        run()

    for op in operations:
        fuzz(op, GenerationMode.POSITIVE)
        if op.path.startswith("/solve"):  # the operations with a body to get wrong
            fuzz(op, GenerationMode.NEGATIVE)
    assert statuses["POST /solve"] & {422}  # the fuzzer reached validation
