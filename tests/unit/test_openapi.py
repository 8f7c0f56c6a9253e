"""``xnat_bridge/serverext/openapi.yaml`` is valid OpenAPI 3 and describes exactly the handlers."""

from __future__ import annotations

import re

import pytest
import yaml
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from tornado import web

from xnat_bridge.serverext import OPENAPI_PATH
from xnat_bridge.serverext import handlers as h

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def spec():
    return yaml.safe_load(OPENAPI_PATH.read_text())


def test_spec_is_valid_openapi_3(spec):
    assert spec["openapi"].startswith("3.0")
    validate(spec)  # raises OpenAPIValidationError with the path of the first problem


def test_validator_catches_a_broken_spec(spec):
    broken = yaml.safe_load(OPENAPI_PATH.read_text())
    broken["paths"]["/scope"]["get"]["responses"] = {"200": {"content": {}}}  # no description
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_paths_and_methods_equal_the_handler_table(spec):
    documented = {path: sorted(m for m in item if m in METHODS) for path, item in spec["paths"].items()}
    implemented = {path: sorted(methods) for path, methods in h.route_table().items()}
    assert documented == implemented


def test_route_table_is_derived_from_the_handlers():
    table = h.route_table()
    assert table["/datasets"] == ["get", "post"]
    assert table["/datasets/{name}"] == ["get", "delete"]
    assert table["/jobs/{job_id}/cancel"] == ["post"]
    # every URL pattern the extension registers comes from ROUTES (plus the JSON 404 catch-all)
    patterns = [p for p, _ in h.url_handlers()]
    assert len(patterns) == len(h.ROUTES) + 1
    assert patterns[-1] == "xnat-hpc/api/(?P<path>.*)"
    for (template, handler), pattern in zip(h.ROUTES, patterns):
        assert pattern == h.route_pattern(template) + "/?"
        concrete = re.sub(r"\{\w+\}", "X1", template)
        assert re.fullmatch(pattern, f"xnat-hpc/api/{concrete}")
        assert issubclass(handler, h.XnatHpcHandler)


def test_path_parameters_match_the_route_groups(spec):
    for template, _ in h.ROUTES:
        item = spec["paths"]["/" + template]
        declared = set()
        for p in item.get("parameters", []):
            p = _deref(spec, p)
            if p["in"] == "path":
                declared.add(p["name"])
        assert declared == set(re.findall(r"\{(\w+)\}", template)), template


def test_every_handler_method_is_authenticated():
    # tornado's @authenticated wrapper is what jupyter_server checks for; it calls get_current_user
    for _, handler in h.ROUTES:
        for m in h.handler_methods(handler):
            fn = getattr(handler, m)
            assert fn is not getattr(web.RequestHandler, m)
            assert getattr(fn, "__wrapped__", None) is not None, f"{handler.__name__}.{m} is not wrapped"


def test_every_operation_documents_errors_and_success(spec):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            codes = set(op["responses"])
            assert "default" in codes, (path, method)
            assert codes & {"200", "201", "202", "204"}, (path, method)


def _deref(spec, obj):
    ref = obj.get("$ref")
    if not ref:
        return obj
    node = spec
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node
