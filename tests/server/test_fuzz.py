"""Fuzz the server with schemathesis against its own OpenAPI schema: whatever the input, never a
5xx (the engine is healthy and the queue never fills here, so 503 is a failure too). Driven through
hypothesis directly: schemathesis' pytest plugin does not run under pytest 9."""
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.server.conftest import start_server, stop_server, tiny_serve_args

EXAMPLES = 15  # per operation


@pytest.mark.slow  # 2-5 minutes on 2 busy cores: generation requests draw up to n=64 and the whole context
def test_no_input_makes_a_server_error(tmp_path):
    server = start_server(*tiny_serve_args(tmp_path))
    try:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operations = [r.ok() for r in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/cluster/merge"}
        for op in operations:
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy())
            def check(case):
                response = case.call(timeout=60)
                assert response.status_code < 500, \
                    f"{case.method} {case.formatted_path} {case.body!r} -> {response.status_code}: {response.text[:300]}"
            check()
        assert server.proc.poll() is None, "the server died under fuzzing"
    finally:
        stop_server(server)
