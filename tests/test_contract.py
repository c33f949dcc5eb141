"""openapi.yaml is a valid OpenAPI 3.1 document describing exactly the app's routes."""

from __future__ import annotations

from openapi_spec_validator import validate

from .contract import flask_rule_to_openapi

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def test_spec_is_valid_openapi_3_1(contract):
    assert contract.spec["openapi"].startswith("3.1")
    validate(contract.spec)


def test_spec_paths_and_methods_are_exactly_the_apps_routes(app, contract):
    routes = {
        (flask_rule_to_openapi(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {
        (path, method)
        for path, item in contract.spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert routes == documented


def test_every_operation_documents_a_problem_response(contract):
    for path, item in contract.spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                assert "default" in operation["responses"], f"{method} {path}"
