"""A bounded property-based fuzz of the HTTP API (schemathesis, on a loopback port): from
its own OpenAPI schema it sends valid and invalid requests to every operation, and checks
that none gets a 500 and that every response has a status, content type and body the
schema documents."""
import collections

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_headers_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from tests.serve_support import runs, served, serving  # noqa: F401 - fixtures

OPERATIONS = ["GET /health", "GET /v1/models", "GET /v1/models/{model_id}",
              "POST /v1/chat/completions", "POST /v1/completions", "POST /v1/classify",
              "POST /v1/files", "GET /v1/files", "GET /v1/files/{file_id}",
              "DELETE /v1/files/{file_id}", "GET /v1/files/{file_id}/content",
              "POST /v1/fine_tuning/jobs", "GET /v1/fine_tuning/jobs",
              "GET /v1/fine_tuning/jobs/{job_id}", "POST /v1/fine_tuning/jobs/{job_id}/cancel",
              "GET /v1/fine_tuning/jobs/{job_id}/events",
              "GET /v1/fine_tuning/jobs/{job_id}/checkpoints"]
# operations a valid request can succeed on without state made first (a file, a job)
STATELESS = OPERATIONS[:8] + ["GET /v1/fine_tuning/jobs"]


@pytest.fixture(scope="module")
def api(served, tmp_path_factory):  # noqa: F811
    jobs_dir = tmp_path_factory.mktemp("fuzz-jobs")
    with serving(served, max_waiting=256, jobs_dir=jobs_dir) as (url, _):
        root = url.removesuffix("/v1")
        yield schemathesis.openapi.from_url(f"{root}/openapi.json"), root


def test_every_operation_is_fuzzed(api):
    schema, _ = api
    assert sorted(op.ok().label for op in schema.get_all_operations()) == sorted(OPERATIONS)


# invalid requests: every operation with a body or a query (any string is a valid id)
CASES = [(op, GenerationMode.POSITIVE) for op in OPERATIONS] + \
    [(op, GenerationMode.NEGATIVE) for op in OPERATIONS
     if op.startswith("POST") and "{" not in op or op.endswith(("/events", "checkpoints"))
     or op == "GET /v1/fine_tuning/jobs" or op == "GET /v1/files"]
# What the responses must satisfy. Not asked: that every schema-valid request succeeds
# (a valid request may name a model of the other kind, or ask for more tokens than the
# model's context holds: a documented 400), nor that every schema-invalid one fails
# (parameters the schema does not list are ignored, as OpenAI's clients expect).
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


@pytest.mark.parametrize("label, mode", CASES)
def test_no_server_errors_and_responses_keep_to_the_schema(api, label, mode):
    schema, root = api
    operation = schema.find_operation_by_label(label)
    # Most requests name a model the server has, so that they get past the lookup.
    models = st.sampled_from(["sft", "lora_a", "clf", None])
    statuses = collections.Counter()

    @given(case=operation.as_strategy(mode), model=models)
    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case, model):
        if model and isinstance(case.body, dict):
            case.body["model"] = model
        if model and case.path_parameters:
            case.path_parameters["model_id"] = model
        statuses[case.call_and_validate(base_url=root, timeout=60, checks=CHECKS)
                 .status_code] += 1

    fuzz()
    if mode == GenerationMode.POSITIVE and label in STATELESS:  # got past validation
        assert statuses[200] > 0, statuses
