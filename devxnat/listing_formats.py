"""XNAT's ``format=csv`` and ``format=xml`` renderings of a listing (pure; unit-tested).

XNAT builds every ``/data`` listing as an ``XFTTable`` and writes it per the requested
format (``SecureResource.representTable``): JSON ``ResultSet`` (:func:`.shapes.result_set`),
CSV (``XFTTable.toCSV``: a header line of the column names, then one line per row, fields
escaped as commons-lang's ``StringEscapeUtils.escapeCsv``, ``\\n`` line ends, newlines in
values flattened) or XML (``XMLTableRepresentation``: ``<ResultSet …><results><columns>
<column>…</column></columns>\\n<rows><row><cell>…</cell></row>\\n</rows></results></ResultSet>``,
``<``/``>`` escaped in cells). The columns are those of the JSON rows, in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

CONTENT_TYPES = {"csv": "text/csv;charset=UTF-8", "xml": "text/xml;charset=UTF-8"}


def columns(doc: Mapping) -> list[str]:
    """The listing's columns: every key of its rows, in first-seen order."""
    seen: dict[str, None] = {}
    for row in doc["ResultSet"]["Result"]:
        for k in row:
            seen.setdefault(k, None)
    return list(seen)


def _flat(value) -> str:
    """``ValueParserNoNewline``: the value as text without line breaks."""
    return "" if value is None else str(value).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def escape_csv(value: str) -> str:
    """``StringEscapeUtils.escapeCsv``: quoted (with doubled quotes) when it holds a comma,
    a quote or a line break."""
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def to_csv(doc: Mapping) -> str:
    cols = columns(doc)
    lines = [",".join(escape_csv(c) for c in cols)]
    for row in doc["ResultSet"]["Result"]:
        lines.append(",".join(escape_csv(_flat(row.get(c))) if row.get(c) is not None else ""
                              for c in cols))
    return "\n".join(lines) + "\n"


def to_xml(doc: Mapping) -> str:
    rs = doc["ResultSet"]
    cols = columns(doc)
    attrs = "".join(f' {k}="{escape(str(rs[k]))}"' for k in ("title", "totalRecords") if k in rs)
    out = [f"<ResultSet{attrs}><results><columns>"]
    out.extend(f"<column>{c}</column>" for c in cols)
    out.append("</columns>\n<rows>")
    for row in rs["Result"]:
        cells = "".join("<cell>" + _flat(row.get(c)).replace(">", "&gt;").replace("<", "&lt;") + "</cell>"
                        for c in cols)
        out.append(f"<row>{cells}</row>\n")
    out.append("</rows></results></ResultSet>")
    return "".join(out)


def render(doc: Mapping, fmt: str) -> str:
    """The listing *doc* (a ``ResultSet``) as ``csv`` or ``xml``."""
    return to_csv(doc) if fmt == "csv" else to_xml(doc)
