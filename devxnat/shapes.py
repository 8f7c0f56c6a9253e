"""XNAT's JSON shapes, built from the store's rows (pure; unit-tested).

Two shapes, as XNAT 1.8 answers ``?format=json``:

* listings: ``{"ResultSet": {"Result": [...], "totalRecords": "N", "title": ...}}``
  where every value is a **string** (numbers too: ``"file_count": "3"``);
* single items: ``{"items": [{"children": [...], "meta": {...}, "data_fields": {...}}]}``
  where children are ``{"field": "scans/scan", "items": [...]}``.

Listings honour XNAT's ``columns`` parameter: the requested columns that exist,
plus ``URI`` and ``xsiType`` where the row has them (xnatpy relies on those).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def s(value) -> str:
    """XNAT's string rendering of a listing value (None → "")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def result_set(rows: Iterable[Mapping], columns: str | None = None, title: str = "") -> dict:
    """The ``ResultSet`` listing of *rows*, restricted to *columns* when given."""
    wanted = None
    if columns and columns.strip().upper() != "DEFAULT":
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
    out = []
    for row in rows:
        if wanted is None:
            out.append({k: s(v) for k, v in row.items()})
        else:
            item = {c: s(row[c]) for c in wanted if c in row}
            for always in ("URI", "xsiType"):
                if always in row:
                    item[always] = s(row[always])
            out.append(item)
    body = {"Result": out, "totalRecords": str(len(out))}
    if title:
        body["title"] = title
    return {"ResultSet": body}


def item(xsi_type: str, data_fields: Mapping, children: list | None = None, *,
         event_id: int = 1, start_date: str = "") -> dict:
    """One XNAT item: ``{"children", "meta", "data_fields"}``."""
    return {
        "children": children or [],
        "meta": {
            "create_event_id": event_id,
            "xsi:type": xsi_type,
            "isHistory": False,
            "start_date": start_date,
        },
        "data_fields": {k: v for k, v in data_fields.items() if v not in (None, "")},
    }


def child(field: str, items: list[dict]) -> dict:
    return {"field": field, "items": items}


def items_doc(*items: dict) -> dict:
    return {"items": list(items)}


# -- listing rows ----------------------------------------------------------

def project_row(p: Mapping) -> dict:
    return {
        "ID": p["id"],
        "secondary_ID": p["secondary_id"] or p["id"],
        "name": p["name"],
        "description": p["description"],
        "pi_firstname": p["pi_firstname"],
        "pi_lastname": p["pi_lastname"],
        "URI": f"/data/projects/{p['id']}",
    }


def subject_row(sub: Mapping) -> dict:
    return {
        "ID": sub["id"],
        "project": sub["project"],
        "label": sub["label"],
        "gender": sub["gender"],
        "yob": sub["yob"],
        "insert_date": sub["insert_date"],
        "insert_user": sub["insert_user"],
        "URI": f"/data/subjects/{sub['id']}",
    }


def experiment_row(e: Mapping, *, extra: bool = False) -> dict:
    row = {
        "ID": e["id"],
        "project": e["project"],
        "date": e["date"],
        "xsiType": e["xsi_type"],
        "label": e["label"],
        "insert_date": e["insert_date"],
        "URI": f"/data/experiments/{e['id']}",
    }
    if extra:  # columns XNAT gives on request (``columns=subject_ID,subject_label,...``)
        row.update(subject_ID=e["subject_id"], subject_label=e["subject_label"],
                   modality=e["modality"], insert_user=e["insert_user"])
    return row


def scan_row(experiment_id: str, sc: Mapping) -> dict:
    return {
        "xsiType": sc["xsi_type"],
        "xnat_imagescandata_id": sc["pk"],
        "note": sc["note"],
        "series_description": sc["series_description"],
        "ID": sc["scan_id"],
        "type": sc["type"],
        "quality": sc["quality"],
        "frames": sc["frames"],
        "URI": f"/data/experiments/{experiment_id}/scans/{sc['scan_id']}",
    }


def resource_row(r: Mapping, cat_desc: str = " ") -> dict:
    """A row of ``CatalogResourceList``: no ID/URI columns (xnatpy makes them up); ``cat_id``
    the scan's or experiment's ID, empty for a project's or subject's resource; ``cat_desc``
    one space, a scan's type for a scan's resource (docs/xnat-resource-api.md §5)."""
    return {
        "xnat_abstractresource_id": r["id"],
        "label": r["label"],
        "element_name": "xnat:resourceCatalog",
        "category": "scans" if r["scan_id"] else "resources",
        "cat_id": r["scan_id"] or r["experiment_id"] or "",
        "cat_desc": cat_desc,
        "format": r["format"],
        "content": r["content"],
        "tags": "",
        "file_count": r["file_count"],
        "file_size": r["file_size"],
    }


def file_row(resource_uri: str, f: Mapping, resource: Mapping) -> dict:
    """A row of ``FileList``: the file's URI below *resource_uri*; ``collection`` the
    resource's label, ``cat_ID`` its id (docs/xnat-resource-api.md §5)."""
    return {
        "Name": f["path"].rsplit("/", 1)[-1],
        "Size": f["size"],
        "URI": f"{resource_uri}/files/{f['path']}",
        "collection": resource["label"],
        "file_tags": "",
        "file_format": f["format"],
        "file_content": f["content"],
        "cat_ID": resource["id"],
        "digest": f["md5"],
    }


# -- single items ----------------------------------------------------------

def project_item(p: Mapping) -> dict:
    pi = item("xnat:investigatorData", {"firstname": p["pi_firstname"], "lastname": p["pi_lastname"]})
    return item(
        "xnat:projectData",
        {"ID": p["id"], "secondary_ID": p["secondary_id"] or p["id"], "name": p["name"],
         "description": p["description"], "active": "true"},
        [child("PI", [pi])] if (p["pi_firstname"] or p["pi_lastname"]) else [],
        start_date=p["insert_date"],
    )


def subject_item(sub: Mapping) -> dict:
    demo = item("xnat:demographicData", {"gender": sub["gender"], "yob": sub["yob"]})
    return item(
        "xnat:subjectData",
        {"ID": sub["id"], "label": sub["label"], "project": sub["project"]},
        [child("demographics", [demo])],
        start_date=sub["insert_date"],
    )


def resource_item(r: Mapping, uri: str) -> dict:
    return item(
        "xnat:resourceCatalog",
        {"xnat_abstractresource_id": r["id"], "label": r["label"], "format": r["format"],
         "content": r["content"], "file_count": r["file_count"], "file_size": r["file_size"],
         "URI": uri},
    )


def scan_item(e: Mapping, sc: Mapping, resources: list[Mapping]) -> dict:
    base = f"/data/experiments/{e['id']}/scans/{sc['scan_id']}/resources"
    return item(
        sc["xsi_type"],
        {"ID": sc["scan_id"], "type": sc["type"], "series_description": sc["series_description"],
         "quality": sc["quality"], "note": sc["note"], "frames": sc["frames"],
         "image_session_ID": e["id"], "xnat_imagescandata_id": sc["pk"], "project": e["project"]},
        [child("file", [resource_item(r, f"{base}/{r['id']}") for r in resources])] if resources else [],
    )


def experiment_item(e: Mapping, scans: list[tuple[Mapping, list[Mapping]]],
                    resources: list[Mapping]) -> dict:
    children = []
    if scans:
        children.append(child("scans/scan", [scan_item(e, sc, res) for sc, res in scans]))
    if resources:
        base = f"/data/experiments/{e['id']}/resources"
        children.append(child("resources/resource",
                              [resource_item(r, f"{base}/{r['id']}") for r in resources]))
    return item(
        e["xsi_type"],
        {"ID": e["id"], "label": e["label"], "project": e["project"], "subject_ID": e["subject_id"],
         "date": e["date"], "modality": e["modality"]},
        children,
        start_date=e["insert_date"],
    )


def alias_token(tok: Mapping, secret: str, user_id: int) -> dict:
    """XNAT's alias-token JSON (times in milliseconds since the epoch)."""
    return {
        "alias": tok["alias"],
        "secret": secret,
        "xdatUserId": user_id,
        "id": tok["id"],
        "enabled": True,
        "singleUse": False,
        "created": int(tok["created"] * 1000),
        "timestamp": int(tok["created"] * 1000),
        "estimatedExpirationTime": int(tok["expires"] * 1000),
        "validIPAddresses": [],
    }
