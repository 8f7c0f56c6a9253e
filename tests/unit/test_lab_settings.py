"""The lab settings the package ships (jupyter-config/lab/settings/overrides.d/xnat-hpc-hub.json,
installed as {sys.prefix}/share/jupyter/lab/settings/overrides.d/): no "get notified about
Jupyter news?" prompt and no update check — valid against JupyterLab's own schema and read by
jupyterlab_server the way JupyterLab reads its overrides."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ROOT / "jupyter-config" / "lab" / "settings" / "overrides.d" / "xnat-hpc-hub.json"
PLUGIN = "@jupyterlab/apputils-extension:notification"


def test_overrides_turn_the_news_prompt_and_update_check_off():
    doc = json.loads(OVERRIDES.read_text())
    assert doc == {PLUGIN: {"fetchNews": "false", "checkForUpdates": False}}


def test_overrides_are_valid_for_the_installed_jupyterlab():
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = Path(sys.prefix) / "share/jupyter/lab/schemas/@jupyterlab/apputils-extension/notification.json"
    assert schema_path.exists(), f"JupyterLab's schema {schema_path} is missing: is jupyterlab installed?"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(json.loads(OVERRIDES.read_text())[PLUGIN], schema)
    # a wrong value (the boolean false instead of the string "false") would not validate
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"fetchNews": False}, schema)


def test_jupyterlab_server_reads_them_from_overrides_d(tmp_path):
    from jupyterlab_server.settings_utils import _get_overrides

    settings = tmp_path / "settings"
    (settings / "overrides.d").mkdir(parents=True)
    shutil.copy(OVERRIDES, settings / "overrides.d" / OVERRIDES.name)
    overrides, error = _get_overrides(str(settings))
    assert not error and overrides[PLUGIN]["fetchNews"] == "false"
    # the site's (or user's) own overrides.json comes later and wins
    (settings / "overrides.json").write_text(json.dumps({PLUGIN: {"fetchNews": "true"}}))
    overrides, _ = _get_overrides(str(settings))
    assert overrides[PLUGIN] == {"fetchNews": "true", "checkForUpdates": False}
