"""devxnat's own schema subset agrees with XNAT's real data model
(../shared/reference/xnat-schemas/xnat.xsd): every type it declares exists
there with the same base type, and every field and attribute it declares
exists there too (so xnatpy builds the same classes and properties)."""

import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import pytest

XS = "{http://www.w3.org/2001/XMLSchema}"
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "xnat-schemas" / "xnat.xsd"


def types(root) -> dict:
    out = {}
    for ct in root.findall(f"{XS}complexType"):
        ext = ct.find(f"{XS}complexContent/{XS}extension")
        if ext is None:
            ext = ct.find(f"{XS}simpleContent/{XS}extension")
        names = {e.get("name") for e in ct.iter(f"{XS}element") if e.get("name")}
        names |= {a.get("name") for a in ct.iter(f"{XS}attribute") if a.get("name")}
        out[ct.get("name")] = (ext.get("base") if ext is not None else None, names)
    return out


@pytest.fixture(scope="module")
def ours():
    text = resources.files("devxnat").joinpath("schemas", "xnat.xsd").read_text()
    return types(ET.fromstring(text))


@pytest.fixture(scope="module")
def real():
    assert REFERENCE.exists(), f"reference schema missing: {REFERENCE}"
    return types(ET.parse(REFERENCE).getroot())


def test_every_type_exists_with_the_same_base(ours, real):
    for name, (base, _) in ours.items():
        assert name in real, f"xnat:{name} is not an XNAT type"
        assert base == real[name][0], f"xnat:{name} extends {base}, XNAT says {real[name][0]}"


def test_every_field_exists_in_xnat(ours, real):
    for name, (_, fields) in ours.items():
        extra = fields - real[name][1]
        assert not extra, f"xnat:{name} declares fields XNAT does not have: {sorted(extra)}"


def test_the_types_the_server_serves_are_declared(ours):
    for needed in ("projectData", "subjectData", "experimentData", "subjectAssessorData",
                   "imageSessionData", "mrSessionData", "eegSessionData", "ecgSessionData",
                   "imageScanData", "mrScanData", "eegScanData", "ecgScanData",
                   "abstractResource", "resource", "resourceCatalog"):
        assert needed in ours


def test_xdat_subset_has_the_simple_types_xnat_needs():
    text = resources.files("devxnat").joinpath("schemas", "xdat.xsd").read_text()
    names = {st.get("name") for st in ET.fromstring(text).findall(f"{XS}simpleType")}
    assert {"LONGVARCHAR", "jsonb"} <= names
