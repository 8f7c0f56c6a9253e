"""``hub_ext/audit_api.yaml`` is valid OpenAPI 3 and agrees with the ingestion handler's
route and limits."""

from __future__ import annotations

from pathlib import Path

import yaml
from openapi_spec_validator import validate

from hub_ext import audit_api
from xnat_bridge.audit import OUTCOMES

SPEC = Path(audit_api.__file__).with_name("audit_api.yaml")


def test_spec_is_valid_and_matches_the_handler():
    spec = yaml.safe_load(SPEC.read_text())
    validate(spec)
    assert list(spec["paths"]) == [audit_api.ROUTE.removeprefix("/api")]
    assert spec["servers"][0]["url"] == "/hub/api"
    batch = spec["components"]["schemas"]["Batch"]["properties"]["events"]
    assert batch["maxItems"] == audit_api.MAX_EVENTS
    event = spec["components"]["schemas"]["Event"]["properties"]
    assert event["items"]["maxItems"] == audit_api.MAX_ITEMS
    assert tuple(event["outcome"]["enum"]) == OUTCOMES
