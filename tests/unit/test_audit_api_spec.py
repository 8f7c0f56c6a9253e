"""``xnat_hpc_governance/audit_api.yaml`` is valid OpenAPI 3 and agrees with the ingestion handler's
route, limits and refusals (413 too large, 429 with Retry-After)."""

from __future__ import annotations

from pathlib import Path

import yaml
from openapi_spec_validator import validate

from xnat_hpc_governance import audit_api
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


def test_spec_states_the_ingest_limits_and_the_429():
    spec = yaml.safe_load(SPEC.read_text())
    post = spec["paths"]["/xnat-hpc/audit"]["post"]
    assert {"200", "400", "403", "409", "413", "429"} <= set(post["responses"])
    busy = post["responses"]["429"]
    assert busy["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert "nothing of the batch" in busy["description"]
    traits = audit_api.AuditIngest.class_traits()
    text = spec["info"]["description"] + post["requestBody"]["description"]
    for name in ("max_events_per_minute", "max_bytes_per_minute", "max_batch_bytes"):
        assert name in text and str(traits[name].default_value) in text, name
    assert traits["max_batch_bytes"].default_value == audit_api.MAX_BATCH_BYTES
