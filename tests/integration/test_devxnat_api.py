"""devxnat over real HTTP: XNAT's paths, JSON shapes, authentication and
permissions, checked with plain requests (what curl would see)."""

import hashlib
import io
import os
import signal
import zipfile

import pytest
import requests

pytestmark = pytest.mark.devxnat

ALL = {"NEURO_MRI", "SLEEP_EEG", "CARDIO_ECG"}


def ids(resp) -> set[str]:
    assert resp.status_code == 200, resp.text
    return {r["ID"] for r in resp.json()["ResultSet"]["Result"]}


def first_experiment(devxnat, project="NEURO_MRI", user="alice"):
    rows = devxnat.get(f"/data/projects/{project}/experiments?format=json", user).json()
    return rows["ResultSet"]["Result"][0]


def a_file(devxnat, project="NEURO_MRI", user="alice"):
    """(file URI, size, md5) of some scan file of *project*."""
    e = first_experiment(devxnat, project, user)
    scans = devxnat.get(f"/data/experiments/{e['ID']}/scans", user).json()["ResultSet"]["Result"]
    files = devxnat.get(f"/data/experiments/{e['ID']}/scans/{scans[0]['ID']}/files", user).json()
    f = files["ResultSet"]["Result"][0]
    return f["URI"], int(f["Size"]), f["digest"]


# -- shapes --------------------------------------------------------------------

def test_listing_shape_has_string_values(devxnat):
    body = devxnat.get("/data/projects?format=json", "admin").json()
    rs = body["ResultSet"]
    assert rs["totalRecords"] == str(len(rs["Result"])) and isinstance(rs["totalRecords"], str)
    for row in rs["Result"]:
        assert all(isinstance(v, str) for v in row.values()), row
        assert row["URI"] == f"/data/projects/{row['ID']}"
    e = first_experiment(devxnat)
    res = devxnat.get(f"/data/experiments/{e['ID']}/scans/1/resources").json()["ResultSet"]["Result"]
    # resource listings: counts and sizes are strings too, as XNAT sends them
    assert res and all(r["file_count"] == "2" and r["file_size"].isdigit() for r in res)


def test_single_item_shape(devxnat):
    e = first_experiment(devxnat)
    doc = devxnat.get(f"/data/experiments/{e['ID']}?format=json").json()
    (item,) = doc["items"]
    assert item["meta"]["xsi:type"] == "xnat:mrSessionData" and item["meta"]["isHistory"] is False
    assert item["data_fields"]["ID"] == e["ID"] and item["data_fields"]["project"] == "NEURO_MRI"
    scans = next(c for c in item["children"] if c["field"] == "scans/scan")["items"]
    assert scans and all(s["meta"]["xsi:type"] == "xnat:mrScanData" for s in scans)


def test_archive_and_rest_prefixes_are_aliases(devxnat):
    a = devxnat.get("/data/projects/NEURO_MRI/subjects").json()
    b = devxnat.get("/data/archive/projects/NEURO_MRI/subjects").json()
    c = devxnat.get("/REST/projects/NEURO_MRI/subjects").json()
    assert a == b == c and a["ResultSet"]["Result"]


def test_columns_parameter(devxnat):
    rows = devxnat.get("/data/projects/NEURO_MRI/experiments?columns=ID,label,subject_label").json()
    row = rows["ResultSet"]["Result"][0]
    assert set(row) == {"ID", "label", "subject_label", "URI", "xsiType"}


def test_site_endpoints(devxnat):
    assert devxnat.get("/data/version", None).status_code == 404
    assert devxnat.get("/xapi/siteConfig/buildInfo", None).json()["version"].startswith("1.8")
    assert set(devxnat.get("/xapi/schemas").json()) == {"xnat", "xdat"}
    xsd = devxnat.get("/xapi/schemas/xnat").text
    assert 'complexType name="mrSessionData"' in xsd


# -- authentication --------------------------------------------------------------

def test_bad_password_and_unknown_user_are_401(devxnat):
    for user, pw in (("alice", "wrong"), ("nobody", "x"), ("alice", "")):
        r = devxnat.get("/data/projects", user, pw or "''")
        assert r.status_code == 401 and "Basic" in r.headers["WWW-Authenticate"]
    assert devxnat.get("/data/projects", None).status_code == 401


def test_jsession_login_logout(devxnat):
    s = requests.Session()
    r = s.put(devxnat.url + "/data/services/auth", data={"username": "bob", "password": "bob-demo"})
    assert r.status_code == 200 and len(r.text) == 32 and s.cookies["JSESSIONID"] == r.text
    assert s.get(devxnat.url + "/data/auth").text == "User 'bob' is logged in"
    assert s.delete(devxnat.url + "/data/JSESSION").status_code == 200
    s.cookies.set("JSESSIONID", r.text)
    assert s.get(devxnat.url + "/data/auth").status_code == 401
    bad = requests.put(devxnat.url + "/data/services/auth", data={"username": "bob", "password": "x"})
    assert bad.status_code == 401 and "<h3>" in bad.text


def test_alias_token_issue_validate_invalidate(devxnat):
    alias, secret = devxnat.token("bob")
    assert devxnat.get("/data/services/tokens/validate/%s/%s" % (alias, secret), None).json() == {"valid": "bob"}
    # the token logs in like a password, as that user
    assert devxnat.get("/data/auth", alias, secret).text == "User 'bob' is logged in"
    assert ids(devxnat.get("/data/projects", alias, secret)) == {"NEURO_MRI", "CARDIO_ECG"}
    r = devxnat.get(f"/data/services/tokens/invalidate/{alias}/{secret}", alias, secret)
    assert r.status_code == 200 and r.json() == {"result": "OK"}
    assert devxnat.get("/data/projects", alias, secret).status_code == 401
    assert devxnat.get(f"/data/services/tokens/validate/{alias}/{secret}", None).json() == {}
    assert devxnat.get(f"/data/services/tokens/validate/{alias}/wrong", None).json() == {}


def test_token_checked_and_ended_without_its_secret_in_a_url(devxnat):
    """What the hub does (as XNAT allows): authenticate with the token, ask who that is;
    end it by its alias alone."""
    alias, secret = devxnat.token("bob")
    r = devxnat.get("/xapi/users/username", alias, secret)
    assert r.status_code == 200 and r.text == "bob" and r.headers["Content-Type"].startswith("text/plain")
    assert devxnat.get("/xapi/users/username", alias, "wrong").status_code == 401
    assert devxnat.get("/xapi/users/username", None).status_code == 401
    assert devxnat.get("/xapi/users/username", "alice").text == "alice"  # a password login too
    # only the owner (or an admin) ends a token; the alias alone names it
    assert devxnat.get(f"/data/services/tokens/invalidate/{alias}", "alice").status_code == 403
    assert devxnat.get("/data/services/tokens/invalidate/no-such-alias", "alice").status_code == 404
    r = devxnat.get(f"/data/services/tokens/invalidate/{alias}", alias, secret)
    assert r.status_code == 200 and r.json() == {"result": "OK"}
    assert devxnat.get("/xapi/users/username", alias, secret).status_code == 401
    alias, secret = devxnat.token("dave")
    assert devxnat.get(f"/data/services/tokens/invalidate/{alias}", "admin").json() == {"result": "OK"}
    assert devxnat.get("/xapi/users/username", alias, secret).status_code == 401


def test_disabled_account_cannot_log_in_and_its_tokens_stop(devxnat):
    alias, secret = devxnat.token("dave")
    assert devxnat.request("PUT", "/xapi/users/dave/enabled/false", "admin").status_code == 200
    try:
        assert devxnat.get("/data/projects", "dave").status_code == 401
        assert devxnat.get("/data/projects", alias, secret).status_code == 401
    finally:
        devxnat.request("PUT", "/xapi/users/dave/enabled/true", "admin")
    assert devxnat.get("/data/projects", "dave").status_code == 200


def test_only_admins_issue_tokens_for_others(devxnat):
    assert devxnat.get("/data/services/tokens/issue/user/bob", "alice").status_code == 403
    r = devxnat.get("/data/services/tokens/issue/user/bob", "admin")
    assert r.status_code == 200 and r.json()["xdatUserId"] == "bob"


def test_roles_and_groups(devxnat):
    assert devxnat.get("/xapi/users/alice/groups", "alice").json() == ["NEURO_MRI_owner", "SLEEP_EEG_member"]
    assert "Administrator" in devxnat.get("/xapi/users/admin/roles", "admin").json()
    assert devxnat.get("/xapi/users/alice/roles", "bob").status_code == 403
    assert devxnat.get("/xapi/users/nobody/roles", "admin").status_code == 404
    assert devxnat.request("PUT", "/xapi/users/carol/roles/Jupyter", "alice").status_code == 403
    assert devxnat.request("PUT", "/xapi/users/carol/roles/Jupyter", "admin").status_code == 200
    assert "Jupyter" in devxnat.get("/xapi/users/carol/roles", "carol").json()
    devxnat.request("DELETE", "/xapi/users/carol/roles/Jupyter", "admin")
    assert "Jupyter" not in devxnat.get("/xapi/users/carol/roles", "carol").json()


# -- permissions -------------------------------------------------------------------

@pytest.mark.parametrize("user, visible", [
    ("admin", ALL),
    ("alice", {"NEURO_MRI", "SLEEP_EEG"}),
    ("bob", {"NEURO_MRI", "CARDIO_ECG"}),
    ("dave", {"SLEEP_EEG", "CARDIO_ECG"}),
    ("carol", set()),
])
def test_project_listing_per_user(devxnat, user, visible):
    assert ids(devxnat.get("/data/projects?format=json", user)) == visible
    assert ids(devxnat.get("/data/projects?accessible=true", user)) == visible


def test_owner_member_filters(devxnat):
    assert ids(devxnat.get("/data/projects?owner=true", "alice")) == {"NEURO_MRI"}
    assert ids(devxnat.get("/data/projects?member=true", "alice")) == {"SLEEP_EEG"}
    assert ids(devxnat.get("/data/projects?collaborator=true", "bob")) == {"NEURO_MRI"}


@pytest.mark.parametrize("user, status", [
    ("alice", 200), ("bob", 200), ("admin", 200), ("carol", 403), ("dave", 403)])
def test_data_access_by_role(devxnat, user, status):
    e = first_experiment(devxnat, "NEURO_MRI", "admin")
    uri, _, _ = a_file(devxnat, "NEURO_MRI", "admin")
    for path in ("/data/projects/NEURO_MRI", "/data/projects/NEURO_MRI/subjects",
                 f"/data/experiments/{e['ID']}", f"/data/experiments/{e['ID']}/scans", uri):
        assert devxnat.get(path, user).status_code == status, (path, user)


def test_experiments_listing_only_readable(devxnat):
    rows = devxnat.get("/data/experiments?format=json", "bob").json()["ResultSet"]["Result"]
    assert rows and {r["project"] for r in rows} == {"NEURO_MRI", "CARDIO_ECG"}
    assert devxnat.get("/data/experiments", "carol").json()["ResultSet"]["Result"] == []


def test_unknown_items_are_404(devxnat):
    for path in ("/data/projects/NOPE", "/data/projects/NEURO_MRI/subjects/NOPE",
                 "/data/experiments/XNAT_E99999", "/data/projects/NEURO_MRI/experiments/NOPE",
                 "/data/nonsense"):
        r = devxnat.get(path, "admin")
        assert r.status_code == 404 and "<h3>" in r.text, path
    uri, _, _ = a_file(devxnat)
    assert devxnat.get(uri.rsplit("/", 1)[0] + "/missing.nii").status_code == 404


def test_owner_manages_users_member_cannot(devxnat):
    path = "/data/projects/NEURO_MRI/users/Members/carol"
    assert devxnat.request("PUT", path, "bob").status_code == 403  # collaborator
    assert devxnat.request("PUT", "/data/projects/SLEEP_EEG/users/Members/carol", "alice").status_code == 403
    try:
        assert devxnat.request("PUT", path, "alice").status_code == 200
        assert "NEURO_MRI" in ids(devxnat.get("/data/projects", "carol"))
        users = devxnat.get("/data/projects/NEURO_MRI/users", "alice").json()["ResultSet"]["Result"]
        assert {"login": "carol", "displayname": "Members"}.items() <= next(
            u for u in users if u["login"] == "carol").items()
    finally:
        assert devxnat.request("DELETE", path, "alice").status_code == 200
    assert devxnat.get("/data/projects/NEURO_MRI", "carol").status_code == 403
    # XNAT's ProjectMemberResource: a group it cannot identify is 404
    assert devxnat.request("PUT", "/data/projects/NEURO_MRI/users/Admins/carol", "alice").status_code == 404
    assert devxnat.request("PUT", "/data/projects/NEURO_MRI/users/Members/nobody", "alice").status_code == 404


def test_archive_is_read_only(devxnat):
    assert devxnat.request("PUT", "/data/projects/NEURO_MRI/subjects/NEW", "admin").status_code == 405


# -- files ---------------------------------------------------------------------

def test_file_download_matches_md5_and_range(devxnat):
    uri, size, md5 = a_file(devxnat)
    r = devxnat.get(uri)
    assert r.status_code == 200 and len(r.content) == size
    assert hashlib.md5(r.content).hexdigest() == md5
    part = devxnat.get(uri, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == r.content[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{size}"
    tail = devxnat.get(uri, headers={"Range": "bytes=-5"})
    assert tail.content == r.content[-5:]
    assert devxnat.get(uri, headers={"Range": f"bytes={size}-"}).status_code == 416
    head = requests.head(devxnat.url + uri, auth=("alice", "alice-demo"))
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == size


def test_zip_download_in_xnat_layout(devxnat):
    e = first_experiment(devxnat)
    r = devxnat.get(f"/data/experiments/{e['ID']}/scans/ALL/files?format=zip")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert names and all(n.startswith(f"{e['label']}/scans/") and "/resources/" in n for n in names)
    assert devxnat.get(f"/data/experiments/{e['ID']}/scans/ALL/files?format=zip", "carol").status_code == 403


@pytest.mark.parametrize("suffix", ["%2E%2E/%2E%2E/devxnat.sqlite3", "../../x", "a/./b", "%2Fetc%2Fpasswd"])
def test_traversal_is_refused(devxnat, suffix):
    uri, _, _ = a_file(devxnat)
    base = uri.rsplit("/files/", 1)[0]
    r = requests.get(f"{devxnat.url}{base}/files/{suffix}", auth=("alice", "alice-demo"), timeout=10)
    assert r.status_code in (400, 404)
    assert b"SQLite" not in r.content and b"root:" not in r.content


def test_symlink_leading_outside_the_archive_is_never_served(devxnat, tmp_path):
    uri, _, _ = a_file(devxnat)
    secret = tmp_path / "outside.txt"
    secret.write_text("TOP SECRET outside the archive")
    real = next(p for p in devxnat.archive.rglob(uri.rsplit("/", 1)[1]))
    backup = real.with_name(real.name + ".bak")
    os.rename(real, backup)
    try:
        os.symlink(secret, real)
        r = devxnat.get(uri)
        assert r.status_code == 400 and b"TOP SECRET" not in r.content
    finally:
        os.unlink(real)
        os.rename(backup, real)


# -- persistence -------------------------------------------------------------

def test_state_survives_a_kill(devxnat_factory, tmp_path):
    server = devxnat_factory(tmp_path / "d1")
    alias, secret = server.token("alice")
    assert server.request("PUT", "/data/projects/NEURO_MRI/users/Members/carol", "alice").status_code == 200
    server.stop(signal.SIGKILL)
    again = devxnat_factory(tmp_path / "d1")
    assert again.get("/data/auth", alias, secret).text == "User 'alice' is logged in"
    assert "NEURO_MRI" in ids(again.get("/data/projects", "carol"))


# -- issue 13 item 4: XNAT fidelity found with other clients ----------------------------

def test_listings_in_csv_and_xml_have_the_json_columns(devxnat):
    js = devxnat.get("/data/projects/NEURO_MRI/experiments?format=json").json()["ResultSet"]["Result"]
    r = devxnat.get("/data/projects/NEURO_MRI/experiments?format=csv")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    lines = r.text.rstrip("\n").split("\n")
    assert lines[0].split(",") == list(js[0])
    assert len(lines) == 1 + len(js) and lines[1].split(",")[0] == js[0]["ID"]
    r = devxnat.get("/data/projects?format=xml", "alice")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/xml")
    import xml.etree.ElementTree as ET

    root = ET.fromstring(r.text)
    assert root.tag == "ResultSet" and root.get("title") == "Projects"
    cols = [c.text for c in root.find("results/columns")]
    rows = [[c.text or "" for c in row] for row in root.find("results/rows")]
    pj = devxnat.get("/data/projects", "alice").json()["ResultSet"]["Result"]
    assert cols == list(pj[0]) and [dict(zip(cols, row)) for row in rows] == pj
    # scans and files too; single items stay JSON-only here
    e = js[0]["ID"]
    assert devxnat.get(f"/data/experiments/{e}/scans?format=csv").text.startswith("xsiType,")
    assert devxnat.get(f"/data/experiments/{e}/scans/ALL/files?format=csv").text.startswith("Name,Size,URI")
    assert devxnat.get(f"/data/experiments/{e}?format=xml").status_code == 400
    assert devxnat.get("/data/projects?format=pdf").status_code == 400


def test_project_users_are_listed_to_owners_and_admins_only(devxnat):
    assert devxnat.get("/data/projects/NEURO_MRI/users", "alice").status_code == 200   # owner
    assert devxnat.get("/data/projects/NEURO_MRI/users", "admin").status_code == 200
    assert devxnat.get("/data/projects/NEURO_MRI/users", "bob").status_code == 403     # collaborator
    assert devxnat.get("/data/projects/SLEEP_EEG/users", "alice").status_code == 403   # member
    assert devxnat.get("/data/projects/NEURO_MRI/users", "carol").status_code == 403   # outsider
    r = devxnat.get("/data/projects/NEURO_MRI/users?format=csv", "alice")
    assert r.status_code == 200 and "login" in r.text.split("\n")[0]


def test_member_changes_by_group_id_and_user_id(devxnat):
    carol = devxnat.store().user("carol")
    for group, user in (("NEURO_MRI_member", "carol"), ("member", str(carol["xdat_user_id"])),
                        ("Members", carol["email"])):
        path = f"/data/projects/NEURO_MRI/users/{group}/{user}"
        assert devxnat.request("PUT", path, "alice").status_code == 200
        assert devxnat.store().group_of("NEURO_MRI", "carol") == "Members"
        assert devxnat.request("DELETE", path, "alice").status_code == 200
        assert devxnat.store().group_of("NEURO_MRI", "carol") is None
    assert devxnat.request("DELETE", "/data/projects/NEURO_MRI/users/Members/nobody", "alice").status_code == 404


def test_site_wide_data_groups(devxnat):
    st = devxnat.store()
    st.add_site_group("carol", "ALL_DATA_ACCESS")
    try:
        assert devxnat.get("/data/projects/NEURO_MRI/experiments", "carol").status_code == 200
        assert "ALL_DATA_ACCESS" in devxnat.get("/xapi/users/carol/groups", "carol").json()
        assert devxnat.request("PUT", "/data/projects/NEURO_MRI/users/Members/dave", "carol").status_code == 403
        st.add_site_group("carol", "ALL_DATA_ADMIN")
        assert devxnat.request("PUT", "/data/projects/NEURO_MRI/users/Members/dave", "carol").status_code == 200
        assert devxnat.request("DELETE", "/data/projects/NEURO_MRI/users/Members/dave", "carol").status_code == 200
    finally:
        st.remove_site_group("carol", "ALL_DATA_ACCESS")
        st.remove_site_group("carol", "ALL_DATA_ADMIN")
    assert devxnat.get("/data/projects/NEURO_MRI/experiments", "carol").status_code == 403
