"""Validation of responses against ``openapi.yaml``, the contract callers code against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
SPEC_URI = "urn:transactions-service:openapi"


def flask_rule_to_openapi(rule: str) -> str:
    """``/api/transactions/<uuid:transaction_id>`` -> ``/api/transactions/{transaction_id}``."""
    segments = []
    for segment in rule.split("/"):
        if segment.startswith("<") and segment.endswith(">"):
            segment = "{" + segment[1:-1].split(":")[-1] + "}"
        segments.append(segment)
    return "/".join(segments)


def _anchor_refs(node: Any) -> Any:
    """Point local ``#/components/...`` references at the registered spec document."""
    if isinstance(node, dict):
        return {
            key: SPEC_URI + value if key == "$ref" and isinstance(value, str) and value.startswith("#") else _anchor_refs(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_anchor_refs(item) for item in node]
    return node


class Contract:
    def __init__(self, path: Path = SPEC_PATH) -> None:
        self.spec: dict[str, Any] = yaml.safe_load(path.read_text())
        self._registry = Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(self.spec))

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def response_spec(self, path: str, method: str, status: int) -> dict[str, Any]:
        responses = self.spec["paths"][path][method.lower()]["responses"]
        # Every status the service really sends must be listed; `default` is for callers, not an escape hatch.
        found = responses.get(str(status))
        assert found is not None, f"{method} {path} does not document status {status}"
        return self._resolve(found)

    def validate(self, path: str, method: str, status: int, content_type: str | None, body: bytes) -> None:
        content = self.response_spec(path, method, status).get("content")
        if not content:
            assert not body, f"{method} {path} {status}: a body was sent but none is documented"
            return
        media = (content_type or "").split(";")[0].strip()
        assert media in content, f"{method} {path} {status}: {media!r} is not among {sorted(content)}"
        schema = content[media].get("schema")
        if schema is None or not (media == "application/json" or media.endswith("+json")):
            return
        validator = Draft202012Validator(_anchor_refs(schema), registry=self._registry)
        errors = list(validator.iter_errors(json.loads(body)))
        assert not errors, f"{method} {path} {status} violates the spec: " + "; ".join(
            f"{list(error.absolute_path)}: {error.message}" for error in errors[:5]
        )

    def validate_problem(self, status: int, content_type: str | None, body: bytes) -> None:
        """Responses to unrouted requests (404, 405) must still be problems."""
        assert (content_type or "").startswith("application/problem+json"), content_type
        schema = {"$ref": SPEC_URI + "#/components/schemas/Problem"}
        validator = Draft202012Validator(schema, registry=self._registry)
        document = json.loads(body)
        errors = list(validator.iter_errors(document))
        assert not errors and document["status"] == status, errors


def openapi_path_for(url_map: Map, path: str, method: str) -> str | None:
    """The spec path of the route that serves ``method path``, or None when none does."""
    adapter = url_map.bind("localhost")
    try:
        rule, _ = adapter.match(path, method=method, return_rule=True)
    except HTTPException:
        return None
    return flask_rule_to_openapi(rule.rule)
