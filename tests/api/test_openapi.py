"""The served OpenAPI schema is valid and says what the API really answers."""

from __future__ import annotations

import pytest
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

LISTS = [
    "/api/v1/api-keys/",
    "/api/v1/invitations/",
    "/api/v1/jobs/",
    "/api/v1/jobs/{job_id}/tasks/",
    "/api/v1/kernels/",
    "/api/v1/members/",
]


@pytest.fixture(scope="module")
def schema():
    generated = SchemaGenerator().get_schema(request=None, public=True)
    validate_schema(generated)
    return generated


def _json_schema(schema, response):
    ref = response["content"]["application/json"]["schema"]["$ref"]
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]]


@pytest.mark.parametrize("path", LISTS)
def test_lists_are_documented_as_the_paginated_envelope(schema, path):
    operation = schema["paths"][path]["get"]
    body = _json_schema(schema, operation["responses"]["200"])
    assert body["type"] == "object"
    assert set(body["properties"]) == {"count", "next", "previous", "results"}
    assert body["properties"]["results"]["type"] == "array"
    assert {p["name"] for p in operation["parameters"]} >= {"limit", "offset"}


def test_every_operation_documents_its_errors_in_the_one_format(schema):
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "429" in responses, (method, path)
            for code, response in responses.items():
                if code.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"]["$ref"].endswith(
                        "/Error"
                    ), (method, path, code)
            if path != "/api/v1/contributors/anonymous/":
                assert {"401", "403"} <= set(responses), (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
            if method in ("post", "patch"):
                assert "400" in responses, (method, path)


def test_deletes_document_what_they_return(schema):
    paths = schema["paths"]
    assert set(paths["/api/v1/members/{membership_id}/"]["delete"]["responses"]) >= {"204"}
    for path in ("/api/v1/invitations/{invitation_id}/", "/api/v1/api-keys/{api_key_id}/"):
        assert "200" in paths[path]["delete"]["responses"]
        assert "204" not in paths[path]["delete"]["responses"]


def test_results_document_both_formats(schema):
    content = schema["paths"]["/api/v1/jobs/{job_id}/result/"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/csv"}


def test_job_params_are_documented_as_numbers(schema):
    params = schema["components"]["schemas"]["JobCreateInputRequest"]["properties"]["params"]
    kinds = {option["type"] for option in params["oneOf"]}
    assert kinds == {"object", "array"}
